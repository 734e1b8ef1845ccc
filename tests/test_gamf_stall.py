"""gamf's Hungarian stage ends when a sweep raises the objective by less than ``hungarian_tol`` of
it, as at a fixed point; 0 keeps the stage going to a fixed point or a 2-cycle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import conv_chain, mlp, residual

import gamfsolve as g

NETS = {
    "mlp": lambda rng: mlp([6, 24, 20, 3], rng),
    "conv": lambda rng: conv_chain([2, 12, 10], rng),
    "residual": lambda rng: residual(4, 16, 12, 2, rng),
}


def _pair(net: str, seed: int) -> tuple[list[dict], g.PermutationSpec]:
    rng = np.random.default_rng(seed)
    base, spec, _ = NETS[net](rng)
    return [base, NETS[net](rng)[0]], spec


@settings(max_examples=12, deadline=None)
@given(net=st.sampled_from(sorted(NETS)), seed=st.integers(0, 2**16), tol=st.sampled_from([1e-6, 1e-4, 1e-2]))
def test_a_stall_ends_the_stage_and_says_so(net: str, seed: int, tol: float) -> None:
    models, spec = _pair(net, seed)
    full = g.match(models, spec, method="gamf", seed=0, hungarian_tol=0.0)
    early = g.match(models, spec, method="gamf", seed=0, hungarian_tol=tol)
    assert full.converged and "hungarian_tol" not in full.message
    assert early.converged and early.n_iter <= full.n_iter
    # the same sweeps up to the first that gains less than the tolerance (a stall ends the series
    # part there and the exact part follows, so the traces may part after it)
    gains = np.diff(full.objective)
    first = next((i + 1 for i, d in enumerate(gains) if 0 <= d <= tol * abs(full.objective[i + 1])), len(gains))
    assert early.objective[: first + 1] == full.objective[: first + 1]
    if "hungarian_tol" in early.message:
        a, b = early.objective[-2:]
        assert 0 <= b - a <= tol * abs(b)
    else:
        assert "fixed point" in early.message or "2-cycle" in early.message


def test_stops_earlier_on_a_creeping_pair() -> None:
    # two independent initialisations of a wider MLP: the exact part gains by 1e-5 steps
    earlier = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        models = [mlp([16, 96, 96, 80, 5], rng)[0] for _ in range(2)]
        spec = mlp([16, 96, 96, 80, 5], rng)[1]
        full = g.match(models, spec, method="gamf", seed=0, hungarian_tol=0.0)
        early = g.match(models, spec, method="gamf", seed=0, hungarian_tol=1e-4)
        earlier.append(early.n_iter < full.n_iter)
    assert any(earlier)


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), "1e-6"])
def test_a_bad_tolerance_is_refused(bad) -> None:
    models, spec = _pair("mlp", 0)
    with pytest.raises(g.OptionError, match="hungarian_tol"):
        g.match(models, spec, method="gamf", seed=0, hungarian_tol=bad)
