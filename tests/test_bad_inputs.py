"""A battery of bad inputs to the core: each gets a correct result or a FusionError naming the input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from nets import mlp

import gamfsolve as g
from gamfsolve import FusionError, FusionTypeError, OptionError

METHODS = ["gamf", "weight_matching", "ot", "average"]
ALIGNING = ["gamf", "weight_matching", "ot"]


@pytest.fixture
def pair():
    """A model and a copy with hidden units permuted (every aligning method recovers the copy)."""
    rng = np.random.default_rng(0)
    model = mlp([4, 6, 3], rng)[0]
    spec = g.mlp_spec(2)
    copy = g.permute(model, spec, {"h0": rng.permutation(6)})
    return [model, copy], spec


def _aligned(models, spec, method, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", g.ConvergenceWarning)
        fused = g.fuse(models, spec, method=method, seed=0, **kw)
    return all(np.allclose(fused[k], models[0][k], rtol=1e-5, atol=0) for k in fused), fused


BAD_OPTIONS = [
    ("gamf", {"tau0": "1"}, "tau0"),
    ("gamf", {"tau0": 0}, "tau0"),
    ("gamf", {"tau0": float("nan")}, "tau0"),
    ("gamf", {"max_iter": 2.5}, "max_iter"),
    ("gamf", {"max_iter": 0}, "max_iter"),
    ("gamf", {"max_iter": True}, "max_iter"),
    ("gamf", {"universe": "no"}, "universe"),
    ("gamf", {"universe": 1}, "universe"),
    ("gamf", {"gamma": 1.0}, "gamma"),
    ("gamf", {"sigma": -1.0}, "sigma"),
    ("gamf", {"sigma": {"layers.0.weight": "wide"}}, "sigma"),
    ("gamf", {"sigma_scale": float("inf")}, "sigma_scale"),
    ("gamf", {"sinkhorn_max_iter": -3}, "sinkhorn_max_iter"),
    ("gamf", {"tol": -1e-3}, "tol"),
    ("gamf", {"affinity": 3}, "affinity"),
    ("gamf", {"affinity": "nearest"}, "affinity"),
    ("gamf", {"init": None}, "init"),
    ("weight_matching", {"max_iter": 0}, "max_iter"),
    ("weight_matching", {"max_iter": "10"}, "max_iter"),
    ("ot", {"max_iter": 3}, "max_iter"),
    ("average", {"tau0": 1.0}, "tau0"),
]


@pytest.mark.parametrize(("method", "options", "name"), BAD_OPTIONS)
def test_bad_option_named(pair, method, options, name):
    models, spec = pair
    with pytest.raises(OptionError, match=name):
        g.match(models, spec, method=method, **options)


@pytest.mark.parametrize("seed", ["abc", -1, 1.5, True, [1]])
@pytest.mark.parametrize("method", METHODS)
def test_bad_seed(pair, method, seed):
    models, spec = pair
    with pytest.raises(FusionError, match="seed"):
        g.match(models, spec, method=method, seed=seed)


def test_numpy_seed_accepted(pair):
    models, spec = pair
    assert g.match(models, spec, method="weight_matching", seed=np.int64(3)).n_models == 2


def test_weight_matching_limit_not_converged():
    rng = np.random.default_rng(5)
    copy = g.permute(mlp([4, 40, 3], rng)[0], g.mlp_spec(2), {"h0": rng.permutation(40)})
    other = mlp([4, 40, 3], rng)[0]
    result = g.match([other, copy], g.mlp_spec(2), method="weight_matching", max_iter=1, seed=0)
    assert not result.converged


@pytest.mark.parametrize(
    "weights", [[-1, 1], [np.nan, 1], [np.inf, 1], [0, 0], [1], [1, 2, 3], ["a", 1], "12", 3, {"a": 1, "b": 1}]
)
def test_bad_weights(pair, weights):
    models, spec = pair
    with pytest.raises(FusionError, match="weights"):
        g.fuse(models, spec, method="average", weights=weights)


@pytest.mark.parametrize("weights", [[1e308, 1e308], [1e308, 1.0], [5e-324, 5e-324], [1e-300, 3e-300]])
def test_extreme_weights_normalised(pair, weights):
    models, spec = pair
    fused = g.fuse(models, spec, method="average", weights=weights)
    w = np.array(weights, dtype=float) / max(weights)
    w = w / w.sum()
    for k in fused:
        np.testing.assert_allclose(fused[k], w[0] * models[0][k] + w[1] * models[1][k], rtol=1e-12)


@pytest.mark.parametrize("scale", [1e19, 1e-20, 1e-25, 1e30, 1e-30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ALIGNING)
def test_extreme_magnitudes_still_align(pair, scale, dtype, method):
    models, spec = pair
    scaled = [{k: (v * scale).astype(dtype) for k, v in m.items()} for m in models]
    ok, fused = _aligned(scaled, spec, method)
    assert ok
    assert all(x.dtype == dtype and np.isfinite(x).all() for x in fused.values())


def test_user_sigma_follows_rescale(pair):
    models, spec = pair
    scaled = [{k: v * 1e-25 for k, v in m.items()} for m in models]
    plain = g.match(models, spec, sigma=0.5, seed=0)
    small = g.match(scaled, spec, sigma=0.5 * 1e-50, seed=0)
    for a, b in zip(plain.perms["h0"], small.perms["h0"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert small.info["sigmas"]["layers.0.weight"] == pytest.approx(0.5e-50)


@pytest.mark.parametrize("method", ALIGNING)
def test_mixed_float_dtypes_promoted(pair, method):
    models, spec = pair
    mixed = [{k: v.astype(np.float32) for k, v in models[0].items()}, models[1]]
    ok, fused = _aligned(mixed, spec, method)
    assert ok
    assert all(x.dtype == np.float64 for x in fused.values())


@pytest.mark.parametrize("method", ALIGNING)
def test_float16_matched_in_float32(pair, method):
    models, spec = pair
    half = [{k: v.astype(np.float16) for k, v in m.items()} for m in models]
    ok, fused = _aligned(half, spec, method)
    assert ok
    assert all(x.dtype == np.float16 for x in fused.values())


@pytest.mark.parametrize("method", ALIGNING)
def test_bfloat16_torch(pair, method):
    torch = pytest.importorskip("torch")
    models, spec = pair
    bf = [{k: torch.from_numpy(v).to(torch.bfloat16) for k, v in m.items()} for m in models]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", g.ConvergenceWarning)
        fused = g.fuse(bf, spec, method=method, seed=0)
    assert all(x.dtype == torch.bfloat16 for x in fused.values())
    for k in fused:
        torch.testing.assert_close(fused[k], bf[0][k])


@pytest.mark.parametrize("method", METHODS)
def test_zero_width_layer(method):
    rng = np.random.default_rng(0)
    models = [mlp([4, 0, 3], rng)[0] for _ in range(2)]
    with pytest.raises(FusionError, match=r"h0.*width 0"):
        g.fuse(models, g.mlp_spec(2), method=method)


@pytest.mark.parametrize(
    ("perm", "error"),
    [
        ([0, 0, 1, 2, 3, 4], FusionError),
        ([-1, 0, 1, 2, 3, 4], FusionError),
        ([0, 1, 2, 3, 4, 6], FusionError),
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], FusionTypeError),
        ([True] * 6, FusionTypeError),
        ([[0, 1, 2, 3, 4, 5]], FusionError),
        ([0, 1, 2], FusionError),
    ],
)
def test_permute_refuses_non_permutations(pair, perm, error):
    models, spec = pair
    with pytest.raises(error, match="perms"):
        g.permute(models[0], spec, {"h0": np.array(perm)})


def test_permute_refuses_wrong_kinds(pair):
    models, spec = pair
    with pytest.raises(FusionTypeError):
        g.permute(models[0], spec, [np.arange(6)])  # type: ignore[arg-type]
    with pytest.raises(FusionTypeError):
        g.permute(list(models[0].values()), spec, {})  # type: ignore[arg-type]
    with pytest.raises(FusionTypeError):
        g.permute(models[0], {"h0": None}, {})  # type: ignore[arg-type]
    with pytest.raises(FusionError, match="groups the spec does not have"):
        g.permute(models[0], spec, {"nope": np.arange(6)})


def test_models_not_a_list(pair):
    models, spec = pair
    for bad in (models[0], "ab", 3, None):
        with pytest.raises(FusionTypeError):
            g.fuse(bad, spec)  # type: ignore[arg-type]


def test_merge_checks_models(pair):
    models, spec = pair
    result = g.match(models, spec, method="average")
    bad = dict(models[1], **{"layers.0.weight": np.full((6, 4), np.nan)})
    with pytest.raises(FusionError, match="NaN"):
        g.merge([models[0], bad], spec, result)
    with pytest.raises(FusionError, match="matches 2 models"):
        g.merge(models * 2, spec, result)


def test_inputs_not_mutated(pair):
    models, spec = pair
    before = [{k: v.copy() for k, v in m.items()} for m in models]
    scaled = [{k: v * 1e-25 for k, v in m.items()} for m in models]
    kept = [{k: v.copy() for k, v in m.items()} for m in scaled]
    g.fuse(scaled, spec, seed=0)
    g.fuse(models, spec, method="weight_matching", weights=[1e308, 1e308])
    for a, b in zip(models + scaled, before + kept, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
