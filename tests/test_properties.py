"""Hypothesis properties of the solver invariants on random MLP, conv-chain and residual nets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import conv_chain, mlp, random_perms, residual

import gamfsolve as g
from gamfsolve.solvers._assign import sinkhorn

seeds = st.integers(0, 2**31 - 1)
widths = st.integers(2, 9)


@st.composite
def nets(draw):
    kind = draw(st.sampled_from(["mlp", "conv", "residual"]))
    rng = np.random.default_rng(draw(seeds))
    if kind == "mlp":
        net = mlp([draw(widths) for _ in range(draw(st.integers(3, 5)))], rng, bias=draw(st.booleans()))
        x = rng.normal(size=(3, net[0]["layers.0.weight"].shape[1]))
    elif kind == "conv":
        net = conv_chain([draw(st.integers(1, 3)), draw(widths), draw(widths)], rng)
        x = rng.normal(size=(3, net[0]["conv0.weight"].shape[1], 4, 4))
    else:
        net = residual(draw(widths), draw(widths), draw(widths), draw(st.integers(1, 3)), rng)
        x = rng.normal(size=(3, net[0]["inp.weight"].shape[1]))
    return (*net, x, rng)


@given(nets())
def test_fusing_with_a_permuted_copy_returns_the_model(net):
    # (weight_matching's coordinate descent can stop in a local optimum here: residual nets)
    params, spec, forward, x, rng = net
    copy = g.permute(params, spec, random_perms(spec, params, rng))
    fused = g.fuse([params, copy], spec, method="gamf", seed=0)
    np.testing.assert_allclose(forward(fused, x), forward(params, x), rtol=1e-9, atol=1e-9)


@given(nets())
def test_recovered_perms_undo_random_perms(net):
    params, spec, _, _, rng = net
    copy = g.permute(params, spec, random_perms(spec, params, rng))
    result = g.match([params, copy], spec, method="gamf", seed=0)
    restored = g.permute(copy, spec, result.model_perms(1))
    for k in params:
        np.testing.assert_allclose(restored[k], params[k], rtol=0, atol=1e-12)


@given(nets(), st.integers(2, 4), st.sampled_from(["gamf", "weight_matching", "ot"]))
def test_match_always_returns_permutations(net, n_models, method):
    params, spec, _, _, rng = net
    models = [params] + [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(n_models - 1)]
    result = g.match(models, spec, method=method, seed=0)
    sizes = spec.group_sizes({k: v.shape for k, v in params.items()})
    for grp, ps in result.perms.items():
        assert len(ps) == n_models
        for p in ps:
            assert np.array_equal(np.sort(p), np.arange(sizes[grp]))


@given(seeds, st.integers(1, 30), st.floats(0.5, 5.0))
def test_sinkhorn_is_doubly_stochastic(seed, n, tau):
    import array_api_compat.numpy as xp

    scores = np.random.default_rng(seed).normal(size=(n, n))  # standardised scores, as in the solver
    p, _, it = sinkhorn(scores, tau, xp, tol=1e-9, max_iter=5000)
    assert it < 5000 and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-9)


@given(seeds, st.integers(1, 30), st.floats(0.01, 0.5))
def test_sinkhorn_at_low_temperature(seed, n, tau):
    import array_api_compat.numpy as xp

    scores = np.random.default_rng(seed).normal(size=(n, n))
    p, _, it = sinkhorn(scores, tau, xp, tol=1e-6, max_iter=300)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)  # rows are exact after the last step
    if it < 300:
        np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-6)


@given(seeds, st.integers(1, 32), st.floats(0.02, 2.0), st.sampled_from([np.float32, np.float64]))
def test_compiled_sinkhorn_matches_the_array_code(seed, n, tau, dtype):
    import array_api_compat.numpy as xp
    import pytest

    import gamfsolve.solvers._assign as assign
    from gamfsolve.affinity._kernels import _numba

    if not _numba.available():
        pytest.skip("numba not installed")
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, n)).astype(dtype)
    v0 = rng.normal(size=(1, n)).astype(dtype)
    v_copy = v0.copy()
    assert n * n <= assign.COMPILED_SINKHORN_MAX  # the default call below takes the compiled loop
    p1, v1, it1 = sinkhorn(scores, tau, xp, tol=1e-4, max_iter=200, v=v0)
    limit, assign.COMPILED_SINKHORN_MAX = assign.COMPILED_SINKHORN_MAX, 0
    try:
        p2, v2, it2 = sinkhorn(scores, tau, xp, tol=1e-4, max_iter=200, v=v0)
    finally:
        assign.COMPILED_SINKHORN_MAX = limit
    assert p1.dtype == p2.dtype == v1.dtype == dtype and v1.shape == v2.shape == (1, n)
    assert abs(it1 - it2) <= 5  # the same stopping rule; a check may fall either side of tol
    if it1 == it2:
        # exp/log differ by an ulp, and 200 steps at tau = 0.02 amplify that only to a few 1e-4
        atol = 1e-3 if dtype == np.float32 else 1e-8
        np.testing.assert_allclose(p1, p2, atol=atol)
    np.testing.assert_array_equal(v0, v_copy)  # the warm start is not modified


def test_sinkhorn_small_float16_plan_uses_the_array_code():
    import array_api_compat.numpy as xp

    scores = np.random.default_rng(0).normal(size=(5, 5)).astype(np.float16)
    p, _, _ = sinkhorn(scores, 0.5, xp, tol=1e-2)
    assert p.dtype == np.float16
    np.testing.assert_allclose(p.astype(np.float64).sum(axis=1), 1.0, atol=1e-2)


@given(seeds, st.integers(2, 40), st.sampled_from([2.0, 0.3, 0.05, 0.005]), st.sampled_from([np.float32, np.float64]))
def test_scaling_sinkhorn_takes_the_log_domain_steps(seed, n, tau, dtype):
    """Iterating on scalings with absorption is the log-domain iteration in exact arithmetic."""
    import array_api_compat.numpy as xp

    from gamfsolve.solvers._assign import _sinkhorn_log, _sinkhorn_scaling

    rng = np.random.default_rng(seed)
    s = (rng.normal(size=(n, n)) / tau).astype(dtype)
    v0 = (rng.normal(size=(1, n)) / tau).astype(dtype)
    p1, _, it1 = _sinkhorn_log(s, v0, 1e-4, 300, xp)
    out = _sinkhorn_scaling(s, v0, 1e-4, 300, xp)
    assert out is not None  # the first step in the log domain leaves no column to underflow
    p2, v2, it2 = out
    assert p2.dtype == v2.dtype == dtype and v2.shape == (1, n)
    np.testing.assert_allclose(p2.sum(axis=1), 1.0, atol=1e-5 if dtype == np.float32 else 1e-12)
    assert abs(it1 - it2) <= 5  # the same stopping rule; a check may fall either side of tol
    if it1 == it2 and it1 < 300:
        np.testing.assert_allclose(p1, p2, atol=1e-3 if dtype == np.float32 else 1e-7)


def test_scaling_sinkhorn_absorbs_large_scalings_and_falls_back_when_they_overflow(monkeypatch):
    import array_api_compat.numpy as xp

    import gamfsolve.solvers._assign as assign

    rng = np.random.default_rng(1)
    s = (rng.normal(size=(50, 50)) / 0.005).astype(np.float32)  # low temperature: potentials move a lot
    v0 = np.zeros((1, 50), np.float32)
    fresh = []
    real = assign._normalised_rows
    monkeypatch.setattr(assign, "_normalised_rows", lambda *a: fresh.append(1) or real(*a))
    p, _, it = assign._sinkhorn_scaling(s, v0, 1e-4, 300, xp)
    assert len(fresh) > 1  # absorbed at least once
    p_log, _, it_log = assign._sinkhorn_log(s, v0, 1e-4, 300, xp)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert abs(it - it_log) <= 5
    np.testing.assert_allclose(p, p_log, atol=1e-3)
    # a plan whose scalings overflow between two checks: the log-domain loop takes over
    s = np.zeros((40, 40), dtype=np.float32)
    s[:, 0] = -500.0
    monkeypatch.setattr(assign, "logsumexp", lambda x, axis, xp: xp.zeros_like(x[:1] if axis == 0 else x[:, :1]))
    assert assign._sinkhorn_scaling(s, np.zeros((1, 40), np.float32), 1e-4, 100, xp) is None
    monkeypatch.undo()
    p, _, _ = assign.sinkhorn(s, 1.0, xp, tol=1e-4, max_iter=100)
    np.testing.assert_allclose(p, 1 / 40, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), extra=st.integers(0, 5), scale=st.floats(0.0, 1e3), seed=st.integers(0, 2**16),
       compiled=st.booleans())
def test_hungarian_ignores_row_and_column_offsets(n: int, extra: int, scale: float, seed: int, compiled: bool) -> None:
    """The assignment is an optimum of the scores as given: offsets per row and per column (which
    the solver removes before SciPy's search) change neither the total's optimum nor, on a
    narrower model's rectangular block, which columns are used."""
    from scipy.optimize import linear_sum_assignment

    from gamfsolve.solvers._assign import hungarian

    rng = np.random.default_rng(seed)
    m = n + extra
    s = rng.standard_normal((m, m))
    shifted = s + scale * rng.random((m, 1)) + scale * rng.random((1, m))
    live = None if extra == 0 else [(n, m)]  # n real rows of m
    from unittest import mock

    from gamfsolve.solvers import _assign

    with mock.patch.object(_assign, "COMPILED_LSAP_MIN", 2 if compiled else 10**9):  # Jonker-Volgenant or SciPy
        (p,) = hungarian([shifted], np, live=live)
    rows, cols = linear_sum_assignment(shifted[:n, :], maximize=True)
    best = shifted[rows, cols].sum()
    got = sum(shifted[p[u], u] for u in range(m) if p[u] < n)
    assert got == pytest.approx(best, rel=1e-9, abs=1e-9 * max(1.0, scale))
    assert sorted(p.tolist()) == list(range(m))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), ties=st.booleans(), warm=st.sampled_from([None, "small", "large"]), seed=st.integers(0, 2**16))
def test_compiled_assignment_is_optimal_and_its_duals_certify_it(n: int, ties: bool, warm: str | None, seed: int) -> None:
    """Jonker-Volgenant, cold or warm-started from any column duals, finds a minimum-cost
    assignment (SciPy's total), and returns duals that certify it: every row's assigned column
    is its cheapest under them (complementary slackness), so they are valid to start from."""
    from scipy.optimize import linear_sum_assignment

    from gamfsolve.affinity._kernels import _numba

    if not _numba.available():
        pytest.skip("Numba is not installed")
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 3, (n, n)).astype(float) if ties else rng.standard_normal((n, n))
    v0 = None if warm is None else rng.standard_normal(n) * (0.1 if warm == "small" else 100.0)
    x, v = _numba.lapjv_numba(c, v0)
    assert sorted(x.tolist()) == list(range(n))
    rows, cols = linear_sum_assignment(c)
    assert c[np.arange(n), x].sum() == pytest.approx(c[rows, cols].sum(), abs=1e-9)
    if n:
        reduced = c - v[None, :]
        np.testing.assert_allclose(reduced[np.arange(n), x], reduced.min(axis=1), atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 30), ties=st.booleans(), warm=st.booleans(), seed=st.integers(0, 2**16))
def test_compiled_assignment_reads_float32_as_its_float64_copy(n: int, ties: bool, warm: bool, seed: int) -> None:
    """float32 costs are read as they are, with float64 sums: the assignment and the duals of
    their exact float64 copy, bit for bit."""
    from gamfsolve.affinity._kernels import _numba

    if not _numba.available():
        pytest.skip("Numba is not installed")
    rng = np.random.default_rng(seed)
    c = (rng.integers(0, 3, (n, n)) if ties else rng.standard_normal((n, n))).astype(np.float32)
    v0 = rng.standard_normal(n) if warm else None
    x32, v32 = _numba.lapjv_numba(c, v0)
    x64, v64 = _numba.lapjv_numba(c.astype(np.float64), v0)
    np.testing.assert_array_equal(x32, x64)
    np.testing.assert_array_equal(v32, v64)
    assert v32.dtype == np.float64


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), steps=st.integers(1, 4), noise=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_hungarian_warm_started_from_the_last_duals_stays_exact(n: int, steps: int, noise: float, seed: int) -> None:
    """A sequence of related score matrices under one key (a layer's scores from sweep to sweep):
    each warm-started solve reaches SciPy's optimum, and the duals are kept under the key."""
    from unittest import mock

    from scipy.optimize import linear_sum_assignment

    from gamfsolve.affinity._kernels import _numba
    from gamfsolve.solvers import _assign
    from gamfsolve.solvers._assign import hungarian

    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, n))
    duals: dict = {}
    with mock.patch.object(_assign, "COMPILED_LSAP_MIN", 2):  # the compiled kernel at these widths too
        for _ in range(steps):
            (p,) = hungarian([s], np, duals=duals, keys=["layer"])
            rows, cols = linear_sum_assignment(s, maximize=True)
            assert sum(s[p[u], u] for u in range(n)) == pytest.approx(s[rows, cols].sum(), rel=1e-9, abs=1e-9)
            assert sorted(p.tolist()) == list(range(n))
            s = s + noise * rng.standard_normal((n, n))
    assert ("layer" in duals) == _numba.available()
