"""The annealing stage's series kernel: its accuracy, its error check, and gamf's use of it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import conv_chain, mlp, noisy, random_perms

import gamfsolve as g
from gamfsolve.affinity._kernels import edge_affinity
from gamfsolve.affinity._kernels._series import max_degree, series_error, series_features, series_rank


def _edges(rng: np.random.Generator, n: int, e: int, d: int, scale: float = 1.0) -> np.ndarray:
    return scale * rng.standard_normal((n, e, d))


@pytest.mark.parametrize("dim", [1, 3, 9])
def test_series_converges_to_the_exact_kernel(dim: int) -> None:
    rng = np.random.default_rng(dim)
    x, y = _edges(rng, 20, 15, dim), _edges(rng, 25, 15, dim)
    sigma = 30 * 2 * dim  # gamf's default width for unit-variance weights
    exact = edge_affinity(x, y, sigma, kernel="reference")
    errors = []
    for degree in range(1, max_degree(dim) + 1):
        phi_x = series_features(x, sigma, np, center=0.2, degree=degree)
        phi_y = series_features(y, sigma, np, center=0.2, degree=degree)
        assert phi_x.shape == (20, 15 * series_rank(dim, degree))
        errors.append(float(np.abs(phi_x @ phi_y.T - exact).max()))
    assert errors[0] < 0.02 * 15  # degree 1 already within 2% of an edge's affinity
    assert all(b < a / 5 for a, b in itertools.pairwise(errors))  # each degree far better


@settings(max_examples=25, deadline=None)
@given(dim=st.sampled_from([1, 2, 4, 9]), scale=st.floats(0.01, 3.0), degree=st.integers(1, 4), seed=st.integers(0, 99))
def test_series_error_check_agrees_with_the_full_matrix(dim: int, scale: float, degree: int, seed: int) -> None:
    degree = min(degree, max_degree(dim))
    rng = np.random.default_rng(seed)
    x, y = _edges(rng, 30, 8, dim, scale), _edges(rng, 30, 8, dim, scale)
    sigma = 2.0 * dim
    exact = edge_affinity(x, y, sigma, kernel="reference")
    full = series_features(x, sigma, np, degree=degree) @ series_features(y, sigma, np, degree=degree).T
    ratio_full = float(np.std(full - exact) / np.std(exact))
    ratio_sampled = series_error(x, y, sigma, np, degree=degree)
    # 384 of 900 pairs sampled: the estimate is within a factor of two of the whole matrix's
    assert ratio_sampled == pytest.approx(ratio_full, rel=0.5, abs=1e-6)


def test_series_follows_the_input_namespace(to_backend) -> None:
    from conftest import to_numpy

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    phi = series_features(to_backend(x), 20.0, _xp(to_backend(x)), degree=2)
    assert type(phi) is type(to_backend(x))
    np.testing.assert_allclose(to_numpy(phi), series_features(x, 20.0, np, degree=2), rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(dim=st.sampled_from([1, 2, 9, 25]), degree=st.integers(1, 6), n=st.integers(1, 40), e=st.integers(1, 70),
       center=st.floats(-0.5, 0.5), dtype=st.sampled_from([np.float32, np.float64]), pooled=st.booleans(),
       seed=st.integers(0, 99))
def test_compiled_series_matches_the_array_code(dim, degree, n, e, center, dtype, pooled, seed) -> None:
    from gamfsolve.affinity._kernels import _numba

    if not _numba.available():
        pytest.skip("numba is not installed")
    degree = 1 if dim > 1 else degree
    x = (0.7 * np.random.default_rng(seed).standard_normal((n, e, dim))).astype(dtype)
    before = x.copy()
    compiled = _numba.series_numba(x, 3.0, center, degree, pooled)
    xps = pytest.importorskip("array_api_strict")
    array_code = np.asarray(series_features(xps.asarray(x), 3.0, xps, center=center, degree=degree, pooled=pooled))
    width = e * series_rank(dim, degree, pooled) + (1 if pooled else 0)
    assert compiled.dtype == dtype and compiled.shape == (n, width)
    np.testing.assert_allclose(compiled, array_code, rtol=3e-6 if dtype == np.float32 else 1e-12, atol=1e-7)
    np.testing.assert_array_equal(x, before)


def _xp(x):
    from gamfsolve._xp import namespace

    return namespace(x)


@pytest.mark.parametrize("level", [0.0, 0.2])
def test_gamf_with_series_finds_what_the_exact_kernel_finds(level: float) -> None:
    rng = np.random.default_rng(1)
    base, spec, _ = mlp([40, 64, 48, 10], rng)
    planted = random_perms(spec, base, rng)
    other = noisy(g.permute(base, spec, planted), level, rng)
    fast = g.match([other, base], spec, method="gamf", seed=0)
    exact = g.match([other, base], spec, method="gamf", seed=0, series=False)
    for grp in spec.groups:
        np.testing.assert_array_equal(fast.perms[grp][1], exact.perms[grp][1])
    assert fast.objective[-1] == pytest.approx(exact.objective[-1], rel=1e-9)
    if level == 0.0:
        assert all(np.array_equal(fast.perms[grp][1], planted[grp]) for grp in spec.groups)


def test_series_off_for_an_explicit_kernel() -> None:
    rng = np.random.default_rng(2)
    base, spec, _ = mlp([12, 16, 8], rng)
    other = noisy(base, 0.1, rng)
    a = g.match([other, base], spec, method="gamf", seed=0, kernel="reference")
    b = g.match([other, base], spec, method="gamf", seed=0, kernel="reference", series=True)
    assert all(np.array_equal(a.perms[k][1], b.perms[k][1]) for k in spec.groups)


@pytest.mark.parametrize("level", [0.1, 0.4])
def test_gamf_on_convolutions_ends_where_the_exact_kernel_ends(level: float) -> None:
    # 3x3 kernels are edges of 9 numbers: the Hungarian stage scores them with the series first,
    # then settles with the exact kernel; the result is the exact kernel's own fixed point here
    rng = np.random.default_rng(3)
    base, spec, _ = conv_chain([3, 24, 32, 16], rng)
    other = noisy(g.permute(base, spec, random_perms(spec, base, rng)), level, rng)
    fast = g.match([other, base], spec, method="gamf", seed=0)
    exact = g.match([other, base], spec, method="gamf", seed=0, series=False)
    for grp in spec.groups:
        np.testing.assert_array_equal(fast.perms[grp][1], exact.perms[grp][1])
    assert max(fast.objective) == pytest.approx(max(exact.objective), rel=1e-9)


def test_hungarian_stage_ends_on_the_float32_level_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    from gamfsolve.solvers import _gamf

    temps: list[float | None] = []
    scores = _gamf._Problem.group_scores

    def spy(self, group, maps, tau=None, discrete=False):  # type: ignore[no-untyped-def]
        temps.append(tau)
        return scores(self, group, maps, tau, discrete=discrete)

    monkeypatch.setattr(_gamf._Problem, "group_scores", spy)
    rng = np.random.default_rng(4)
    base, spec, _ = conv_chain([3, 16, 16, 8], rng)
    other = noisy(g.permute(base, spec, random_perms(spec, base, rng)), 0.3, rng)
    result = g.match([other, base], spec, method="gamf", seed=0)
    assert result.converged
    assert temps[-1] is None  # the last sweep: series only at float32 rounding, else exact
    assert any(t is not None and t < 0.02 for t in temps)  # the series part of the Hungarian stage ran


@settings(max_examples=30, deadline=None)
@given(dim=st.sampled_from([1, 2, 9]), degree=st.integers(1, 6), scale=st.floats(0.05, 2.0),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 99))
def test_compiled_series_check_matches_the_array_code(dim, degree, scale, dtype, seed) -> None:
    """Every degree's error ratio from one compiled pass equals the array code's (float64 sums)."""
    from gamfsolve.affinity._kernels import _numba
    from gamfsolve.affinity._kernels._series import series_errors

    if not _numba.available():
        pytest.skip("numba is not installed")
    xps = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(seed)
    x, y = (_edges(rng, 25, 11, dim, scale).astype(dtype) for _ in range(2))
    before = x.copy()
    sigma = 2.0 * dim
    compiled = series_errors(x, y, sigma, np, center=0.1, degree=degree)
    array_code = series_errors(xps.asarray(x.astype(np.float64)), xps.asarray(y.astype(np.float64)), sigma, xps,
                               center=0.1, degree=degree)
    assert len(compiled[0]) == len(compiled[1]) == degree
    for got, want in zip(compiled, array_code, strict=True):  # plain, pooled
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float64 else 2e-3, atol=1e-9)
    assert series_error(x, y, sigma, np, center=0.1, degree=degree) == compiled[0][-1]
    assert series_error(x, y, sigma, np, center=0.1, degree=degree, pooled=True) == compiled[1][-1]
    np.testing.assert_array_equal(x, before)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 20000), dim=st.sampled_from([1, 3, 9]), sigma=st.floats(0.01, 100.0),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 99))
def test_compiled_matched_sum_matches_numpy(rows, dim, sigma, dtype, seed) -> None:
    from gamfsolve.affinity._kernels import _numba

    if not _numba.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(seed)
    x, y = (rng.standard_normal((rows, dim)).astype(dtype) for _ in range(2))
    d = x.astype(np.float64) - y.astype(np.float64)
    want = float(np.sum(np.exp(-np.sum(d * d, axis=1) / sigma)))
    assert _numba.matched_sum(x, y, sigma) == pytest.approx(want, rel=1e-5 if dtype == np.float32 else 1e-12, abs=1e-300)


@pytest.mark.parametrize("dim", [1, 9])
def test_pooled_series_is_checked_like_the_plain_one(dim: int) -> None:
    """A pooled map's product equals sum_e q(x) q(y) replaced by (sum q(x)) (sum q(y)) / E, and
    the sampled check measures that map's own error: on a full matrix the two agree."""
    rng = np.random.default_rng(dim)
    x, y = _edges(rng, 30, 40, dim), _edges(rng, 30, 40, dim)
    sigma = 30 * 2 * dim
    exact = edge_affinity(x, y, sigma, kernel="reference")
    plain = series_features(x, sigma, np, center=0.1) @ series_features(y, sigma, np, center=0.1).T
    pooled = series_features(x, sigma, np, center=0.1, pooled=True) @ series_features(y, sigma, np, center=0.1, pooled=True).T
    qx = np.exp(-np.sum((x - 0.1) ** 2, axis=2) / sigma)
    qy = np.exp(-np.sum((y - 0.1) ** 2, axis=2) / sigma)
    np.testing.assert_allclose(pooled, plain - qx @ qy.T + np.outer(qx.sum(1), qy.sum(1)) / 40, rtol=1e-10)
    for out, pool in ((plain, False), (pooled, True)):
        full = float(np.std(out - exact) / np.std(exact))
        sampled = series_error(x, y, sigma, np, center=0.1, pooled=pool)
        assert sampled == pytest.approx(full, rel=0.5)
    assert float(np.std(pooled - exact)) > float(np.std(plain - exact))  # pooling costs accuracy ...
    assert float(np.std(pooled - exact)) < 0.2 * float(np.std(exact))  # ... a little


def test_plain_series_never_pools_and_bad_values_are_refused(monkeypatch) -> None:
    from gamfsolve.affinity import _scores

    rng = np.random.default_rng(2)
    base, spec, _ = mlp([16, 64, 48, 4], rng)
    models = [base, noisy(g.permute(base, spec, random_perms(spec, base, rng)), 0.3, rng)]
    seen: dict[str, list[bool]] = {"plain": [], "default": []}
    init = _scores.GroupScores.__init__
    for name, option in (("plain", "plain"), ("default", True)):
        def record(self, *args, _name=name, **kwargs):
            init(self, *args, **kwargs)
            seen[_name].extend(self.series_pooled.values())
        monkeypatch.setattr(_scores.GroupScores, "__init__", record)
        result = g.match(models, spec, method="gamf", seed=0, series=option)
        assert result.converged
    assert seen["plain"] and not any(seen["plain"])
    assert any(seen["default"])  # pooled maps stand in at the first temperatures
    with pytest.raises(g.FusionError, match="'plain'"):
        g.match(models, spec, method="gamf", series="pooled")
