"""gamf's Hungarian stage skips a group none of whose read maps moved since its last assignment:
the same permutations, iterations and objective as scoring every group in every sweep."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import conv_chain, mlp, noisy, random_perms, residual

import gamfsolve as g
from gamfsolve.solvers import _gamf

NETS = {
    "mlp": lambda rng: mlp([6, 24, 20, 3], rng),
    "conv": lambda rng: conv_chain([2, 12, 10], rng),
    "residual": lambda rng: residual(4, 16, 12, 2, rng),
}


def _pair(net: str, seed: int, level: float | None) -> tuple[list[dict], g.PermutationSpec]:
    """A model and a noisy permuted copy, or (``level`` None) two independent initialisations,
    whose Hungarian stage takes several sweeps."""
    rng = np.random.default_rng(seed)
    base, spec, _ = NETS[net](rng)
    if level is None:
        return [base, NETS[net](rng)[0]], spec
    other = noisy(g.permute(base, spec, random_perms(spec, base, rng)), level, rng)
    return [base, other], spec


@settings(max_examples=15, deadline=None)
@given(net=st.sampled_from(sorted(NETS)), seed=st.integers(0, 2**16), level=st.sampled_from([0.3, 1.0, None]))
def test_the_same_answer_as_scoring_every_group(net: str, seed: int, level: float | None) -> None:
    models, spec = _pair(net, seed, level)
    skipping = g.match(models, spec, method="gamf", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_gamf, "_unmoved", lambda last, now: False)
        plain = g.match(models, spec, method="gamf", seed=0)
    assert skipping.n_iter == plain.n_iter and skipping.objective == plain.objective
    for grp in spec.groups:
        np.testing.assert_array_equal(np.asarray(skipping.perms[grp][1]), np.asarray(plain.perms[grp][1]))


@pytest.mark.parametrize("net", sorted(NETS))
def test_the_hungarian_stage_scores_less(net: str, monkeypatch: pytest.MonkeyPatch) -> None:
    models, spec = _pair(net, 1, None)
    counts = []
    for skip in (True, False):
        calls: list[str] = []
        scores = _gamf._Problem.group_scores
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_gamf._Problem, "group_scores",
                       lambda self, grp, maps, tau=None, discrete=False, calls=calls, scores=scores: calls.append(grp)
                       or scores(self, grp, maps, tau, discrete=discrete))
            if not skip:
                mp.setattr(_gamf, "_unmoved", lambda last, now: False)
            result = g.match(models, spec, method="gamf", seed=0)
        assert result.converged and len(result.objective) >= 2  # at least two Hungarian sweeps
        counts.append(len(calls))
    assert counts[0] < counts[1]  # the sweep that finds the fixed point rescored only what moved


def test_only_the_very_same_maps_count_as_unmoved() -> None:
    a = np.arange(3)
    assert _gamf._unmoved((False, a), (False, a))
    assert not _gamf._unmoved((False, a), (False, np.arange(3)))  # equal values, another object: scored again
    assert not _gamf._unmoved((False, a), (True, a))  # the exact kernel replaced the series
    assert not _gamf._unmoved(None, (False, a))  # never assigned
