"""permute: reordering units leaves every network's function unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy
from nets import conv_chain, mlp, random_perms, residual

import gamfsolve as g

NETS = {
    "mlp": lambda rng: mlp([5, 7, 6, 3], rng),
    "mlp_in_out": lambda rng: mlp([5, 7, 6, 3], rng, layout="in_out"),
    "mlp_nobias": lambda rng: mlp([5, 7, 6, 3], rng, bias=False),
    "conv": lambda rng: conv_chain([2, 4, 3], rng),
    "residual": lambda rng: residual(4, 6, 5, 2, rng),
}


@pytest.mark.parametrize("name", list(NETS))
def test_permutation_preserves_function(name):
    rng = np.random.default_rng(0)
    params, spec, forward = NETS[name](rng)
    x = rng.normal(size=(3, 2, 4, 4)) if name == "conv" else rng.normal(size=(3, 5 if "mlp" in name else 4))
    permuted = g.permute(params, spec, random_perms(spec, params, rng))
    assert any(not np.array_equal(permuted[k], params[k]) for k in params)
    np.testing.assert_allclose(forward(permuted, x), forward(params, x), rtol=1e-10, atol=1e-12)


def test_channels_last_blocks():
    rng = np.random.default_rng(1)
    feat = rng.normal(size=(2, 2, 3))  # H*W = 2 positions x 3 channels, flattened channels-last
    w = rng.normal(size=(6, 4))
    spec = g.PermutationSpec({"w": (g.Blocks("c", outer=2), None), "v": ("c",)})
    p = np.array([2, 0, 1])
    out = g.permute({"w": w, "v": np.arange(3.0)}, spec, {"c": p})
    flat = feat.reshape(2, 6)
    np.testing.assert_allclose(feat[:, :, p].reshape(2, 6) @ out["w"], flat @ w)


def test_concat_axis():
    spec = g.PermutationSpec({"a": ("g",), "b": ("h",), "cat": (g.Concat("g", 1, "h"),)})
    out = g.permute(
        {"a": np.zeros(2), "b": np.zeros(3), "cat": np.arange(6.0)}, spec, {"g": np.array([1, 0]), "h": np.array([2, 1, 0])}
    )
    np.testing.assert_array_equal(out["cat"], [1, 0, 2, 5, 4, 3])


def test_inputs_not_mutated_and_same_backend(to_backend):
    rng = np.random.default_rng(2)
    params, spec, _ = mlp([4, 5, 3], rng)
    arrays = {k: to_backend(v) for k, v in params.items()}
    before = {k: to_numpy(v).copy() for k, v in arrays.items()}
    perm = {"h0": to_backend(np.array([4, 3, 2, 1, 0]))}
    out = g.permute(arrays, spec, perm)
    assert all(type(out[k]) is type(arrays[k]) for k in out)
    np.testing.assert_array_equal(to_numpy(out["layers.0.bias"]), params["layers.0.bias"][::-1])
    for k, v in arrays.items():
        np.testing.assert_array_equal(to_numpy(v), before[k])


def test_bad_perms():
    params, spec, _ = mlp([4, 5, 3], np.random.default_rng(0))
    with pytest.raises(g.FusionError, match="does not have"):
        g.permute(params, spec, {"nope": np.arange(5)})
    with pytest.raises(g.FusionError, match="length 5"):
        g.permute(params, spec, {"h0": np.arange(4)})
