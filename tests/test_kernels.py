"""Every edge-affinity kernel against the float64 reference, on every backend that runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import converter, to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gamfsolve import FusionError
from gamfsolve._xp import namespace
from gamfsolve.affinity._kernels import (
    AUTO_MAX_RANK_NUMBA,
    AUTO_MIN_SIDE_NUMBA,
    KERNELS,
    _cuda,
    _dispatch,
    _factorised,
    _numba,
    edge_affinity,
    edge_features,
    factorised_rank,
)
from gamfsolve.affinity._kernels._factorised import _cheb, anchor_coefficients, basis, bound_key
from gamfsolve.affinity._kernels._reference import edge_affinity_reference

torch = pytest.importorskip("torch")
xps = pytest.importorskip("array_api_strict")

RTOL = 1e-6
EXACT = ("reference", "numba", "matmul")
GPU = ("cupy", "torch_cuda")  # skipped without a CUDA device
BACKENDS = ("numpy", "numpy_readonly", "array_api_strict", "torch", *GPU)
OTHER_BACKENDS = ("array_api_strict", "torch", *GPU)
HAS_NUMBA = _numba.available()


def _to(backend: str, a: np.ndarray):
    return converter(backend)(a)


def _host(r) -> np.ndarray:
    return to_numpy(r)


def _runs(kernel: str, backend: str) -> bool:
    if kernel == "cuda":
        return backend in GPU and _cuda.available()
    return kernel != "numba" or (backend.startswith("numpy") and HAS_NUMBA)


def _pair(n: int, m: int, e: int, d: int, scale: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two models' edges; ``y`` is a noisy permuted copy of ``x``, so some pairs are close."""
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal((n, e, d))
    base = x[rng.integers(0, n, size=m)]
    y = base + 0.3 * scale * rng.standard_normal((m, e, d))
    return x, y


def _tol(dtype: np.dtype, exact: np.ndarray) -> float:
    """``rtol * max R`` plus the dtype's rounding (float32 inputs are rounded before the exact call)."""
    rounding = 8 * np.finfo(dtype).eps if dtype == np.float32 else 0.0
    return (RTOL + rounding) * float(np.max(np.abs(exact))) + 1e-300


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_type_dtype_device_follow_input(backend: str, kernel: str, dtype: type) -> None:
    if not _runs(kernel, backend):
        pytest.skip(f"{kernel} kernel does not take {backend} input here")
    x, y = (v.astype(dtype) for v in _pair(5, 4, 6, 1, 0.5))
    xb, yb = _to(backend, x), _to(backend, y)
    r = edge_affinity(xb, yb, 1.0, kernel=kernel)
    assert type(r) is type(xb)
    assert r.dtype == xb.dtype
    assert tuple(r.shape) == (5, 4)
    if backend.startswith("torch"):
        assert r.device == xb.device
    if backend == "cupy":
        assert r.device == xb.device
    exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), 1.0)
    np.testing.assert_allclose(_host(r), exact, rtol=0, atol=_tol(np.dtype(dtype), exact))


@pytest.mark.parametrize("scale", [0.01, 0.1, 0.3, 0.7, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dim", [1, 4])
def test_every_scale_numpy(scale: float, kernel: str, dtype: type, dim: int) -> None:
    """Weights from 0.01 to 3 ``sqrt(sigma)`` (std), so the factorised kernel meets its fallback."""
    if not _runs(kernel, "numpy"):
        pytest.skip(f"{kernel} kernel does not take numpy input here")
    x, y = _pair(24, 20, 40, dim, scale, seed=int(scale * 100) + dim)
    x, y = x.astype(dtype), y.astype(dtype)
    exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), 1.0)
    r = edge_affinity(x, y, 1.0, kernel=kernel)
    np.testing.assert_allclose(r, exact, rtol=0, atol=_tol(np.dtype(dtype), exact))


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("scale", [0.01, 0.1, 0.3, 0.7, 1.0, 3.0])
@pytest.mark.parametrize("kernel", ["factorised", "matmul", "auto", "cuda"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_scale_other_backends(backend: str, scale: float, kernel: str, dtype: type) -> None:
    """The accuracy claim at every weight scale the benchmark tests, on the non-NumPy backends."""
    if not _runs(kernel, backend):
        pytest.skip(f"{kernel} kernel does not take {backend} input here")
    x, y = _pair(12, 10, 30, 1, scale * np.sqrt(2.0), seed=3)
    x, y = x.astype(dtype), y.astype(dtype)
    exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), 2.0)
    r = edge_affinity(_to(backend, x), _to(backend, y), 2.0, kernel=kernel)
    assert r.dtype == _to(backend, x).dtype
    np.testing.assert_allclose(_host(r), exact, rtol=0, atol=_tol(np.dtype(dtype), exact))


@pytest.mark.parametrize("backend", ["numpy", *OTHER_BACKENDS])
@pytest.mark.parametrize("scale", [0.01, 0.1, 0.3, 0.7])
def test_factorised_float32_long_sums(backend: str, scale: float) -> None:
    """Float32, 2048 edges: the length-``E r`` products keep ``rtol`` (mean split, float64 constant part)."""
    x, y = _pair(32, 24, 2048, 1, scale, seed=7)
    x, y = x.astype(np.float32), y.astype(np.float32)
    exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), 1.0)
    r, used = _dispatch(_to(backend, x), _to(backend, y), 1.0, "factorised", RTOL)
    assert used == "factorised"
    assert np.max(np.abs(_host(r).astype(np.float64) - exact)) <= (RTOL + 8 * np.finfo(np.float32).eps) * np.max(exact)


@pytest.mark.parametrize("backend", ["numpy", "torch", *GPU])
def test_factorised_float32_very_long_sums(backend: str) -> None:
    """Fan-in 4608 at scale 1 (``E r ~ 120 000``): float32 accumulation alone lost 1.1e-6; now float64."""
    x, y = _pair(24, 24, 4608, 1, 1.0, seed=8)
    x, y = x.astype(np.float32), y.astype(np.float32)
    exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), 1.0)
    r, used = _dispatch(_to(backend, x), _to(backend, y), 1.0, "factorised", RTOL)
    assert used == "factorised"
    assert np.max(np.abs(_host(r).astype(np.float64) - exact)) <= RTOL * np.max(exact)


def test_factorised_is_used_and_falls_back() -> None:
    """Small spread: the short map is used; spread beyond its budget: an exact kernel answers."""
    x, y = _pair(16, 16, 32, 1, 0.3, seed=1)
    assert _dispatch(x, y, 1.0, "factorised", RTOL)[1] == "factorised"
    assert _dispatch(torch.asarray(x), torch.asarray(y), 1.0, "auto", RTOL)[1] == "factorised"
    x, y = _pair(16, 16, 32, 1, 20.0, seed=1)
    assert _dispatch(x, y, 1.0, "factorised", RTOL)[1] in ("numba", "matmul")
    xd, yd = _pair(16, 16, 32, 9, 0.3, seed=1)
    assert _dispatch(xd, yd, 1.0, "factorised", RTOL)[1] in ("numba", "matmul")


@pytest.mark.skipif(not HAS_NUMBA, reason="the auto choice against exact Numba")
def test_auto_against_numba_takes_only_short_maps() -> None:
    """NumPy + Numba: ``auto`` takes the map only when it is short and the layer wide enough to pay."""
    n = AUTO_MIN_SIDE_NUMBA
    x, y = _pair(n, n, 8, 1, 0.02, seed=2)  # B ~ 0.1: rank 3
    assert factorised_rank(x, y, 1.0) <= AUTO_MAX_RANK_NUMBA
    assert _dispatch(x, y, 1.0, "auto", RTOL)[1] == "factorised"
    assert _dispatch(x[: n - 1], y, 1.0, "auto", RTOL)[1] == "numba"  # too narrow to pay
    x, y = _pair(n, n, 8, 1, 0.7, seed=2)  # the solver's default width: rank ~ 20
    assert factorised_rank(x, y, 1.0) > AUTO_MAX_RANK_NUMBA
    assert _dispatch(x, y, 1.0, "auto", RTOL)[1] == "numba"
    assert _dispatch(x, y, 1.0, "factorised", RTOL)[1] == "factorised"
    assert factorised_rank(*_pair(4, 4, 3, 9, 0.1), 1.0) is None


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 7),
    m=st.integers(1, 7),
    e=st.integers(1, 24),
    d=st.integers(1, 3),
    log_scale=st.floats(np.log10(0.01), np.log10(3.0)),
    sigma=st.floats(0.05, 20.0),
    kernel=st.sampled_from(KERNELS),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_property_agrees_with_reference(n, m, e, d, log_scale, sigma, kernel, dtype, seed) -> None:
    if not _runs(kernel, "numpy"):
        return
    x, y = _pair(n, m, e, d, 10.0**log_scale * np.sqrt(sigma), seed=seed)
    x, y = x.astype(dtype), y.astype(dtype)
    exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), sigma)
    r = edge_affinity(x, y, sigma, kernel=kernel)
    assert r.dtype == dtype
    np.testing.assert_allclose(r, exact, rtol=0, atol=_tol(np.dtype(dtype), exact))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(16, 48),
    e=st.integers(32, 160),
    log_scale=st.floats(np.log10(0.003), np.log10(0.5)),
    law=st.sampled_from(["normal", "uniform", "student3", "sparse"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_property_factorised_within_rtol(n, e, log_scale, law, dtype, seed) -> None:
    """The short map with trailing terms left out stays within rtol * max R, whatever the weights' law."""
    rng = np.random.default_rng(seed)
    draw = {
        "normal": lambda size: rng.standard_normal(size),
        "uniform": lambda size: rng.uniform(-1.7, 1.7, size),  # every edge near the range's edge: the worst case
        "student3": lambda size: rng.standard_t(3, size),  # heavy tails: a few edges far out
        "sparse": lambda size: rng.standard_normal(size) * (rng.random(size) < 0.1),
    }[law]
    scale = 10.0**log_scale
    x = (scale * draw((n, e, 1))).astype(dtype)
    y = (scale * draw((n + 3, e, 1))).astype(dtype)
    exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), 1.0)
    r = edge_affinity(x, y, 1.0, kernel="factorised", rtol=1e-6)
    rounding = 8 * float(np.finfo(dtype).eps)
    assert float(np.max(np.abs(r - exact))) <= (1e-6 + rounding) * float(np.max(exact))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    bound=st.floats(0.01, 6.0),
    sigma=st.floats(0.1, 10.0),
    centre=st.floats(-3.0, 3.0),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_property_feature_contract(bound, sigma, centre, seed, dtype) -> None:
    """``|Phi(x) Phi(y)^T - A(x, y)| <= rtol E`` for every y within ``bound`` of ``center``."""
    rng = np.random.default_rng(seed)
    half = bound * np.sqrt(sigma)
    x = (centre + rng.uniform(-half, half, (9, 30, 1))).astype(dtype)
    ys = [(centre + rng.uniform(-half, half, (7, 30, 1))).astype(dtype) for _ in range(2)]
    ys.append(np.clip(x[::-1] + 0.01 * half, centre - half, centre + half).astype(dtype))  # near-identical units
    fx = edge_features(x, sigma, bound=half, center=centre)
    if fx is None:  # only when the rank would exceed the auto budget
        assert bound_key(bound) > 5.0
        return
    assert fx.dtype == dtype and fx.shape[0] == 9
    rounding = 8 * np.finfo(dtype).eps if dtype == np.float32 else 1e-12
    for y in ys:
        fy = edge_features(y, sigma, bound=half, center=centre)
        exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), sigma)
        err = np.max(np.abs(fx.astype(np.float64) @ fy.astype(np.float64).T - exact))
        assert err <= (RTOL + rounding) * 30


@pytest.mark.parametrize("backend", BACKENDS)
def test_feature_map_backends(backend: str) -> None:
    x, y = _pair(8, 6, 12, 1, 0.5, seed=2)
    bound = float(max(np.abs(x).max(), np.abs(y).max()))
    fx = edge_features(_to(backend, x), 1.0, bound=bound)
    fy = edge_features(_to(backend, y), 1.0, bound=bound)
    assert type(fx) is type(_to(backend, x)) and fx.dtype == _to(backend, x).dtype
    approx = _host(fx @ (fy.T if backend != "array_api_strict" else xps.permute_dims(fy, (1, 0))))
    np.testing.assert_allclose(approx, edge_affinity_reference(x, y, 1.0), rtol=0, atol=RTOL * 12)


def test_feature_map_none_and_errors() -> None:
    x, _ = _pair(4, 4, 5, 1, 0.5)
    assert edge_features(_pair(4, 4, 5, 9, 0.5)[0], 1.0) is None  # conv edges: no short map
    assert edge_features(x, 1.0, kernel="numba") is None  # an exact kernel was asked for
    assert edge_features(x, 1.0, bound=100.0) is None  # far beyond the rank budget
    with pytest.raises(FusionError, match="beyond bound"):
        edge_features(x, 1.0, bound=0.1 * float(np.abs(x).max()))
    with pytest.raises(FusionError, match="unknown kernel"):
        edge_features(x, 1.0, kernel="fast")


def test_feature_map_per_edge_centre() -> None:
    rng = np.random.default_rng(5)
    centre = rng.normal(size=12) * 10.0  # per-edge offsets far from zero
    x = centre[None, :, None] + 0.4 * rng.standard_normal((6, 12, 1))
    y = centre[None, :, None] + 0.4 * rng.standard_normal((5, 12, 1))
    bound = float(max(np.abs(x[:, :, 0] - centre).max(), np.abs(y[:, :, 0] - centre).max()))
    fx = edge_features(x, 1.0, bound=bound, center=centre)
    fy = edge_features(y, 1.0, bound=bound, center=centre)
    np.testing.assert_allclose(fx @ fy.T, edge_affinity_reference(x, y, 1.0), rtol=0, atol=RTOL * 12)


def test_unknown_kernel_lists_valid_ones() -> None:
    x = np.zeros((2, 3, 1))
    with pytest.raises(FusionError, match=r"unknown kernel 'fast'.*reference.*numba.*cuda.*factorised.*matmul"):
        edge_affinity(x, x, 1.0, kernel="fast")


def test_numba_kernel_refuses_other_backends() -> None:
    x = torch.zeros((2, 3, 1))
    with pytest.raises(FusionError, match="NumPy"):
        edge_affinity(x, x, 1.0, kernel="numba")


@pytest.mark.parametrize("backend", ["numpy", "torch", "array_api_strict"])
def test_cuda_kernel_refuses_host_arrays(backend: str) -> None:
    x = _to(backend, np.zeros((2, 3, 1)))
    with pytest.raises(FusionError, match="kernel 'cuda' needs CuPy arrays or torch CUDA tensors"):
        edge_affinity(x, x, 1.0, kernel="cuda")


@pytest.mark.parametrize("backend", GPU)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "m", "e", "d"), [(1, 1, 1, 1), (17, 33, 300, 1), (40, 9, 5, 9), (5, 6, 3, 128), (4, 4, 2, 129)])
def test_cuda_kernel_shapes(backend: str, dtype: type, n: int, m: int, e: int, d: int) -> None:
    """Tiles that do not divide the shapes, edge tiles of one and many edges, D at and past the tile limit."""
    if not _runs("cuda", backend):
        pytest.skip("needs CuPy and a CUDA device")
    x, y = _pair(n, m, e, d, 0.4, seed=n + e)
    x, y = x.astype(dtype), y.astype(dtype)
    r, used = _dispatch(_to(backend, x), _to(backend, y), 1.7, "cuda", RTOL)
    assert used == ("cuda" if d <= _cuda.MAX_D else "matmul")
    assert type(r) is type(_to(backend, x)) and r.dtype == _to(backend, x).dtype and tuple(r.shape) == (n, m)
    exact = edge_affinity_reference(x.astype(np.float64), y.astype(np.float64), 1.7)
    np.testing.assert_allclose(_host(r), exact, rtol=0, atol=_tol(np.dtype(dtype), exact))
    assert _dispatch(_to(backend, x), _to(backend, y), 1.7, "auto", RTOL)[1] in ("cuda", "matmul", "factorised")


@pytest.mark.parametrize(
    ("x", "y", "sigma", "match"),
    [
        (np.zeros((2, 3, 1)), np.zeros((2, 4, 1)), 1.0, "needs x"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 1.0, "needs x"),
        (np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), 0.0, "sigma"),
        (np.zeros((2, 3, 1), dtype=np.int64), np.zeros((2, 3, 1), dtype=np.int64), 1.0, "floating"),
        (np.zeros((2, 3, 1), dtype=np.float32), np.zeros((2, 3, 1)), 1.0, "floating"),
    ],
)
def test_invalid_input(x, y, sigma, match) -> None:
    with pytest.raises(FusionError, match=match):
        edge_affinity(x, y, sigma)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_and_identical(kernel: str) -> None:
    if not _runs(kernel, "numpy"):
        pytest.skip(f"{kernel} kernel does not take NumPy input here")
    assert edge_affinity(np.zeros((0, 3, 1)), np.zeros((2, 3, 1)), 1.0, kernel=kernel).shape == (0, 2)
    assert edge_affinity(np.zeros((2, 0, 1)), np.zeros((3, 0, 1)), 1.0, kernel=kernel).shape == (2, 3)
    x = np.full((3, 7, 2), 5.0)
    np.testing.assert_allclose(edge_affinity(x, x, 0.5, kernel=kernel), np.full((3, 3), 7.0), rtol=1e-6)


def test_basis_rank_grows_linearly() -> None:
    ranks = [basis(bound_key(b), 1e-7).shape[1] for b in (0.5, 1.5, 3.0, 5.0)]
    assert ranks == sorted(ranks) and ranks[-1] <= 36


@pytest.mark.parametrize("b", [0.02, 0.1, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("centred", [False, True])
def test_basis_meets_its_tolerance_off_the_grid(b: float, centred: bool) -> None:
    """The node scan may pick few nodes for short maps; the map still meets ``tol`` between grid points."""
    key, tol = bound_key(b), 2.5e-7
    w = basis(key, tol, centred)
    s, t = np.random.default_rng(0).uniform(-1.0, 1.0, (2, 4000))
    approx = np.sum((_cheb(s, w.shape[0]) @ w) * (_cheb(t, w.shape[0]) @ w), axis=1)
    exact = np.exp(-((key * (s - t)) ** 2))
    if centred:
        exact = exact - np.exp(-((key * s) ** 2)) - np.exp(-((key * t) ** 2)) + 1.0
    assert np.max(np.abs(approx - exact)) <= tol


def test_anchor_coefficients_accuracy_or_none() -> None:
    """``g(s) = 1 - exp(-b^2 s^2)`` from the basis' nodes within ``tol``; None when they are too few."""
    grid = np.linspace(-1.0, 1.0, 1001)
    for b in (0.05, 1.0, 3.0):
        q = basis(bound_key(b), 2.5e-7, True).shape[0]
        coef = anchor_coefficients(bound_key(b), q, 2.5e-7 / 8.0)
        assert coef is not None
        assert np.max(np.abs(_cheb(grid, q) @ coef + np.expm1(-((bound_key(b) * grid) ** 2)))) <= 2.5e-7 / 8.0
    assert anchor_coefficients(bound_key(3.0), 3, 1e-8) is None


@pytest.mark.skipif(not HAS_NUMBA, reason="the fused Numba pass against the array code")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_centred_side_matches_array_code(dtype: type) -> None:
    """One Numba pass (features + anchors from their series) gives the array code's features and anchor sums."""
    rng = np.random.default_rng(3)
    x = (0.4 * rng.standard_normal((37, 50))).astype(dtype)
    centre = (0.1 * rng.standard_normal(50)).astype(dtype)
    sigma, tol = 0.8, 2.5e-7
    half = float(np.max(np.abs(x - centre)))
    key = bound_key(half / np.sqrt(sigma))
    w = basis(key, tol, True)
    x_before = x.copy()
    scale = float(key * np.sqrt(sigma))
    phi, anchors = _factorised.centred_side(x, centre, key, scale, w, sigma, tol, np)
    phi_ref, anchors_ref = _factorised.centred_side(xps.asarray(x), xps.asarray(centre), key, scale,
                                                    w, sigma, tol, xps)
    np.testing.assert_array_equal(x, x_before)
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(phi, np.asarray(phi_ref), rtol=0, atol=50 * eps * float(np.max(np.abs(phi))))
    assert anchors.dtype == np.float64
    exact = np.sum(np.exp(-((x.astype(np.float64) - centre) ** 2) / sigma), axis=1)
    assert np.max(np.abs(anchors - exact)) <= 50 * (tol / 8.0 + 20 * eps)
    assert np.max(np.abs(np.asarray(anchors_ref) - exact)) <= 50 * 20 * eps


@pytest.mark.skipif(not HAS_NUMBA, reason="the in-place NumPy epilogue")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_product_overwrite_and_epilogue(dtype: type) -> None:
    """``overwrite=True`` gives the same numbers as the copying path; without it the features stay untouched."""
    rng = np.random.default_rng(4)
    px, py = (rng.standard_normal((9, 40)) + 3.0).astype(dtype), (rng.standard_normal((7, 40)) + 3.0).astype(dtype)
    row, col = rng.standard_normal(9), rng.standard_normal(7)
    keep = px.copy(), py.copy()
    plain, dropped = _factorised.product(px, py, np, row=row, col=col, shift=-2.0)
    assert dropped == 0.0
    np.testing.assert_array_equal(px, keep[0])
    np.testing.assert_array_equal(py, keep[1])
    in_place, _ = _factorised.product(px.copy(), py.copy(), np, row=row, col=col, shift=-2.0, overwrite=True)
    truth = keep[0].astype(np.float64) @ keep[1].astype(np.float64).T + row[:, None] + col[None, :] - 2.0
    assert plain.dtype == in_place.dtype == dtype
    np.testing.assert_allclose(in_place, plain, rtol=4 * float(np.finfo(dtype).eps))
    np.testing.assert_allclose(plain, truth, rtol=8 * float(np.finfo(dtype).eps))
    core = rng.standard_normal((5, 6)).astype(np.float32)
    got = _numba.add_outer(core.copy(), np.arange(5.0), np.arange(6.0))
    np.testing.assert_array_equal(got, (core.astype(np.float64) + np.arange(5.0)[:, None] + np.arange(6.0)).astype(np.float32))


@pytest.mark.parametrize("backend", ["numpy", *OTHER_BACKENDS])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_product_leaves_out_only_what_the_bound_affords(backend: str, dtype: str) -> None:
    """Trailing terms are left out of the product only within ``rtol`` of the result, and the bound holds."""
    rng = np.random.default_rng(5)
    n, m, width = 12, 9, 30
    # Three term blocks of falling size (like the eigen-ordered features), on top of a large common part.
    sizes = np.repeat([1e-1, 1e-3, 1e-6], width)
    px = (rng.standard_normal((n, 3 * width)) * sizes + 0.5).astype(dtype)
    py = (rng.standard_normal((m, 3 * width)) * sizes + 0.5).astype(dtype)
    row, col = np.full(n, 100.0), np.full(m, 100.0)
    truth = px.astype(np.float64) @ py.astype(np.float64).T + row[:, None] + col[None, :]
    convert = converter(backend)
    xp = namespace(convert(px))
    for rtol, committed, expect_dropped in [(1e-6, 0.0, True), (1e-15, 0.0, False), (1e-6, 1e-3, False)]:
        out, dropped = _factorised.product(convert(px), convert(py), xp, row=convert(row), col=convert(col),
                                           terms=3, rtol=rtol, committed=committed)
        out = to_numpy(out).astype(np.float64)
        assert (dropped > 0.0) == expect_dropped
        eps = float(np.finfo(dtype).eps)
        # Whatever was left out is within its bound, and the bound within rtol of the maximum.
        assert np.max(np.abs(out - truth)) <= dropped + 64 * eps * float(np.max(np.abs(truth)))
        if dropped > 0.0:
            assert committed + dropped <= rtol * float(np.max(truth))
    # The mean parts of left-out terms stay: a block that is large but equal on every unit costs nothing.
    flat = np.repeat([1e-1, 1e-5], width)
    pa = (rng.standard_normal((n, 2 * width)) * flat + np.repeat([0.0, 2.0], width)).astype(dtype)
    pb = (rng.standard_normal((m, 2 * width)) * flat + np.repeat([0.0, 2.0], width)).astype(dtype)
    out, dropped = _factorised.product(pa, pb, np, row=row, col=col, terms=2, rtol=1e-6)
    truth = pa.astype(np.float64) @ pb.astype(np.float64).T + row[:, None] + col[None, :]
    assert 0.0 < dropped < 1e-7
    assert np.max(np.abs(out - truth)) <= dropped + 64 * float(np.finfo(dtype).eps) * float(np.max(truth))


def test_numba_cache_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAMFSOLVE_NUMBA_CACHE", "0")
    assert not _numba._use_cache()
    monkeypatch.setenv("GAMFSOLVE_NUMBA_CACHE", "1")
    assert _numba._use_cache()


@pytest.mark.skipif(not HAS_NUMBA, reason="Numba's on-disk cache")
def test_numba_variants_have_cache_entries_of_their_own() -> None:
    """Serial and parallel variants of one kernel must not share a cache file (Numba's key
    ignores ``parallel``: a warm cache served the serial kernel for both, 2x slower)."""
    kernels = _numba._compiled()
    names = {key: k.py_func.__qualname__ for key, k in kernels.items()}
    assert len(set(names.values())) == len(kernels), names
    if _numba._use_cache():
        bases = [k._cache._impl.filename_base for k in kernels.values()]
        assert len(set(bases)) == len(bases), bases


@pytest.mark.skipif(not HAS_NUMBA, reason="needs Numba")
def test_numba_cache_hits_in_a_new_process(tmp_path) -> None:
    """A second process must load the kernels from the disk cache, not add new entries (a kernel
    whose closure holds another dispatcher gets a new cache key in every process: measured, the
    compiled Sinkhorn recompiled in each process, 0.45 s per call of the benchmark)."""
    code = (
        "import numpy as np; from gamfsolve.affinity._kernels import _numba as nb; "
        "s = np.ones((4, 4), np.float32); nb.sinkhorn_numba(s, np.zeros((1, 4), np.float32), 1e-4, 10, 5); "
        "x = np.ones((3, 2, 1), np.float32); nb.edge_affinity_numba(x, x, 1.0)"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "GAMFSOLVE_NUMBA_CACHE": "1"}
    counts = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        counts.append(len(list(tmp_path.rglob("*.nbc"))))
    assert counts[0] >= 2 and counts[1] == counts[0], counts


def test_import_loads_no_numba() -> None:
    code = "import sys, gamfsolve, gamfsolve.affinity._kernels; assert 'numba' not in sys.modules, 'numba imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not HAS_NUMBA, reason="the float64 truth here comes from the Numba kernel")
def test_matmul_float32_wide_conv_edges() -> None:
    """Regression: float32 conv edges at 3 sqrt(sigma) must be centred in float64, not float32."""
    x, y = _pair(64, 64, 64, 9, 3.0, seed=0)
    x, y = x.astype(np.float32), y.astype(np.float32)
    exact = _numba.edge_affinity_numba(x.astype(np.float64), y.astype(np.float64), 1.0)
    r = edge_affinity(x, y, 1.0, kernel="matmul")
    assert np.max(np.abs(r - exact)) <= 2 * RTOL * np.max(exact) / 4


def test_one_blas_thread_is_scoped() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from gamfsolve.affinity._kernels._threads import one_blas_thread

    def blas_threads() -> list[int]:
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    with one_blas_thread(False):
        assert blas_threads() == before
    with one_blas_thread():
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before


@pytest.mark.skipif(not HAS_NUMBA, reason="the limit applies to the Numba kernels' path")
@pytest.mark.parametrize(
    ("kernel", "affinity", "limited"),
    [("auto", "edge", True), ("numba", "edge", True), ("factorised", "edge", False), ("reference", "edge", False),
     ("auto", "node", False)],
)
def test_gamf_limits_blas_only_on_the_pairwise_numba_path(monkeypatch, kernel: str, affinity: str, limited: bool) -> None:
    import contextlib

    import gamfsolve
    import gamfsolve.solvers._gamf as gamf_module

    seen: list[bool] = []

    @contextlib.contextmanager
    def recorded(active: bool = True):
        seen.append(active)
        yield

    monkeypatch.setattr(gamf_module, "one_blas_thread", recorded)
    rng = np.random.default_rng(0)
    spec = gamfsolve.mlp_spec(2)
    models = [{"layers.0.weight": rng.standard_normal((6, 5)), "layers.0.bias": rng.standard_normal(6),
               "layers.1.weight": rng.standard_normal((3, 6)), "layers.1.bias": rng.standard_normal(3)} for _ in range(3)]
    gamfsolve.match(models, spec, method="gamf", seed=0, kernel=kernel, affinity=affinity)
    assert seen == [limited]


def test_map_kernel_threshold_follows_kernel_width() -> None:
    """Pairwise exact Numba below the pool size where feature maps pay off; sooner for wide kernels."""
    from gamfsolve.affinity._kernels._numba import available as numba_available
    from gamfsolve.solvers._gamf import MIN_POOL_FOR_MAPS_NUMBA, MIN_POOL_FOR_MAPS_NUMBA_WIDE, _map_kernel

    if not numba_available():
        pytest.skip("numba not installed")
    models = [{"w": np.zeros((2, 2), np.float32)}]
    assert MIN_POOL_FOR_MAPS_NUMBA_WIDE < MIN_POOL_FOR_MAPS_NUMBA
    assert _map_kernel("auto", models, MIN_POOL_FOR_MAPS_NUMBA_WIDE) == "numba"
    assert _map_kernel("auto", models, MIN_POOL_FOR_MAPS_NUMBA_WIDE, wide=True) == "auto"
    assert _map_kernel("auto", models, MIN_POOL_FOR_MAPS_NUMBA - 1, wide=True) == "auto"
    assert _map_kernel("auto", models, MIN_POOL_FOR_MAPS_NUMBA) == "auto"
    assert _map_kernel("factorised", models, 2) == "factorised"
