"""Two models: a group that reads no other group's map and whose map no group reads has constant
scores, so gamf leaves it out of the annealing and solves it in the Hungarian stage alone: the
same permutations, iterations and objective as annealing it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import mlp, noisy, random_perms

import gamfsolve as g
from gamfsolve.solvers import _gamf

WIDTHS = [6, 20, 16, 18, 14, 3]


def _spec(permuted: frozenset[str]) -> g.PermutationSpec:
    """The 5-layer MLP's spec with only the hidden groups ``permuted`` (the others' axes fixed)."""
    groups = [None, *(f"h{i}" if f"h{i}" in permuted else None for i in range(len(WIDTHS) - 2)), None]
    return g.make_spec(*(g.dense(f"layers.{i}", groups[i], groups[i + 1]) for i in range(len(WIDTHS) - 1)))


SPECS = {  # which groups are isolated in each
    "h0 h1 h3": (frozenset({"h0", "h1", "h3"}), {"h3"}),  # h0 and h1 read each other
    "h0 h2": (frozenset({"h0", "h2"}), {"h0", "h2"}),
    "all": (frozenset({"h0", "h1", "h2", "h3"}), set()),
}


def _pair(spec: g.PermutationSpec, seed: int, level: float | None) -> list[dict]:
    rng = np.random.default_rng(seed)
    base = mlp(WIDTHS, rng)[0]
    if level is None:  # two independent initialisations
        return [base, mlp(WIDTHS, rng)[0]]
    return [base, noisy(g.permute(base, spec, random_perms(spec, base, rng)), level, rng)]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_isolated_groups_are_found(name: str) -> None:
    permuted, isolated = SPECS[name]
    spec = _spec(permuted)
    models = _pair(spec, 0, None)
    seen: list[frozenset[str]] = []
    init = _gamf._Problem.__init__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_gamf._Problem, "__init__", lambda self, *a, **k: init(self, *a, **k) or seen.append(self.isolated))
        g.match(models, spec, method="gamf", seed=0)
        g.match([*models, models[0]], spec, method="gamf", seed=0)  # the universe: every group's scores move
    assert seen == [frozenset(isolated), frozenset()]


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(SPECS)), seed=st.integers(0, 2**16), level=st.sampled_from([0.3, 1.0, None]))
def test_the_same_answer_as_annealing_them(name: str, seed: int, level: float | None) -> None:
    spec = _spec(SPECS[name][0])
    models = _pair(spec, seed, level)
    calls: list[str] = []
    scores = _gamf._Problem.group_scores
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_gamf._Problem, "group_scores",
                   lambda self, grp, maps, tau=None, discrete=False: calls.append(grp)
                   or scores(self, grp, maps, tau, discrete=discrete))
        fast = g.match(models, spec, method="gamf", seed=0)
        isolated_calls = len(calls)
        init = _gamf._Problem.__init__
        mp.setattr(_gamf._Problem, "__init__",
                   lambda self, *a, **k: init(self, *a, **k) or setattr(self, "isolated", frozenset()))
        calls.clear()
        plain = g.match(models, spec, method="gamf", seed=0)
    assert fast.n_iter == plain.n_iter and fast.objective == plain.objective
    for grp in spec.groups:
        np.testing.assert_array_equal(np.asarray(fast.perms[grp][1]), np.asarray(plain.perms[grp][1]))
    if SPECS[name][1]:
        assert isolated_calls < len(calls)  # their annealing sweeps were not scored


def test_models_of_different_widths_the_same_answer() -> None:
    """A narrower second model (empty slots in its isolated groups): the same as annealing them."""
    rng = np.random.default_rng(3)
    spec = _spec(frozenset({"h0", "h2"}))
    wide = mlp(WIDTHS, rng)[0]
    narrow = mlp([6, 14, 16, 11, 14, 3], rng)[0]
    init = _gamf._Problem.__init__
    fast = g.match([wide, narrow], spec, method="gamf", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_gamf._Problem, "__init__",
                   lambda self, *a, **k: init(self, *a, **k) or setattr(self, "isolated", frozenset()))
        plain = g.match([wide, narrow], spec, method="gamf", seed=0)
    assert fast.n_iter == plain.n_iter and fast.objective == plain.objective
    for grp in spec.groups:
        np.testing.assert_array_equal(np.asarray(fast.perms[grp][1]), np.asarray(plain.perms[grp][1]))


def test_groups_out_of_the_annealing_do_not_hold_a_temperature() -> None:
    """Their plans never change while annealing (an identity start stays an index vector): with
    every group out, each temperature ends after one sweep whatever ``max_sweeps`` allows."""
    spec = _spec(frozenset({"h0", "h2"}))
    models = _pair(spec, 4, None)
    one = g.match(models, spec, method="gamf", seed=0, init="identity", max_sweeps=1)
    three = g.match(models, spec, method="gamf", seed=0, init="identity", max_sweeps=3)
    assert three.n_iter == one.n_iter and three.objective == one.objective
