"""Same results on every array library; same library, dtype and device out as in."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy
from nets import mlp, noisy, random_perms

import gamfsolve as g


def _pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    base, spec, _ = mlp([6, 10, 8, 3], rng)
    other = noisy(g.permute(base, spec, random_perms(spec, base, rng)), 0.3, rng)
    return [base, other], spec


@pytest.mark.parametrize("method", ["gamf", "weight_matching", "ot", "average"])
def test_backend_parity(method, to_backend):
    models, spec = _pair()
    reference = g.match(models, spec, method=method, seed=0)
    converted = [{k: to_backend(v) for k, v in m.items()} for m in models]
    result = g.match(converted, spec, method=method, seed=0)
    for grp in spec.groups:
        for p_ref, p in zip(reference.perms[grp], result.perms[grp], strict=True):
            assert type(p) is type(converted[0]["layers.0.bias"]) or hasattr(p, "__array_namespace__")
            np.testing.assert_array_equal(to_numpy(p), to_numpy(p_ref))
    fused = g.fuse(converted, spec, method=method, seed=0)
    expected = g.fuse(models, spec, method=method, seed=0)
    for k, v in fused.items():
        assert type(v) is type(converted[0][k])
        np.testing.assert_allclose(to_numpy(v), expected[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_dtype_and_device_kept(dtype):
    torch = pytest.importorskip("torch")
    models, spec = _pair(1)
    tmodels = [{k: torch.from_numpy(v).to(getattr(torch, dtype)) for k, v in m.items()} for m in models]
    fused = g.fuse(tmodels, spec, method="gamf", seed=0)
    assert all(v.dtype == getattr(torch, dtype) and v.device.type == "cpu" for v in fused.values())


def test_clip_and_accelerator_flag(to_backend):
    """The kernels' clip (the library's own method where it has one) and the block-size switch."""
    from array_api_compat import array_namespace

    from gamfsolve._xp import clip, on_accelerator

    x = to_backend(np.array([-2.0, -0.5, 0.0, 0.5, 2.0]))
    xp = array_namespace(x)
    np.testing.assert_array_equal(to_numpy(clip(x, 0.0, None, xp)), [0.0, 0.0, 0.0, 0.5, 2.0])
    np.testing.assert_array_equal(to_numpy(clip(x, -1.0, 1.0, xp)), [-1.0, -0.5, 0.0, 0.5, 1.0])
    assert type(clip(x, 0.0, None, xp)) is type(x)
    assert on_accelerator(x) == (type(x).__module__.startswith("cupy") or str(getattr(x, "device", "")).startswith("cuda"))
