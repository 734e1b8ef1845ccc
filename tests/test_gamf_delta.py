"""gamf's Hungarian stage (two models) updates a group's scores over only the edges whose values
changed since they were last computed; the update must equal scoring afresh."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import conv_chain, mlp, noisy, random_perms, residual

import gamfsolve as g
from gamfsolve.affinity import _scores

NETS = {
    "mlp": lambda rng: mlp([8, 40, 32, 3], rng),
    "conv": lambda rng: conv_chain([2, 12, 10], rng),
    "residual": lambda rng: residual(4, 24, 16, 2, rng),
}


def _pair(net: str, seed: int, level: float | None) -> tuple[list[dict], g.PermutationSpec]:
    rng = np.random.default_rng(seed)
    base, spec, _ = NETS[net](rng)
    if level is None:
        return [base, NETS[net](rng)[0]], spec
    return [base, noisy(g.permute(base, spec, random_perms(spec, base, rng)), level, rng)], spec


@settings(max_examples=20, deadline=None)
@given(net=st.sampled_from(sorted(NETS)), seed=st.integers(0, 2**16), level=st.sampled_from([0.5, None]),
       series=st.booleans(), kernel=st.sampled_from(["auto", "numba"]))
def test_updated_scores_equal_fresh_ones(net: str, seed: int, level: float | None, series: bool, kernel: str) -> None:
    models, spec = _pair(net, seed, level)
    checked = []
    delta = _scores.GroupScores._delta

    def both(self, k, old, raw, which):
        out = delta(self, k, old, raw, which)
        if out is not None:
            fresh = self._raw(k, [{} for _ in self.features], which)  # the partner has no maps
            np.testing.assert_allclose(out, fresh, rtol=2e-5, atol=2e-5 * float(np.abs(fresh).max()))
            checked.append(self.group)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_scores.GroupScores, "_delta", both)
        result = g.match(models, spec, method="gamf", seed=0, series=series, kernel=kernel, hungarian_tol=0.0)
    assert result.converged


@pytest.mark.parametrize("series", [True, False])
def test_updates_happen_and_agree_with_the_plain_solve(series: bool) -> None:
    # two independent initialisations of wider nets: the Hungarian stage moves a few units per sweep
    rng = np.random.default_rng(5)
    models = [mlp([8, 96, 80, 3], rng)[0] for _ in range(2)]
    spec = mlp([8, 96, 80, 3], rng)[1]
    calls = []
    delta = _scores.GroupScores._delta

    def both(self, k, old, raw, which):
        out = delta(self, k, old, raw, which)
        if out is not None:
            fresh = self._raw(k, [{} for _ in self.features], which)
            np.testing.assert_allclose(out, fresh, rtol=2e-5, atol=2e-5 * float(np.abs(fresh).max()))
            calls.append(self.group)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_scores.GroupScores, "_delta", both)
        updated = g.match(models, spec, method="gamf", seed=0, series=series, hungarian_tol=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_scores.GroupScores, "_deltas_apply", lambda self, k: False)
        plain = g.match(models, spec, method="gamf", seed=0, series=series, hungarian_tol=0.0)
    assert calls
    assert updated.objective[-1] == pytest.approx(plain.objective[-1], rel=1e-6)


def test_scores_of_another_series_degree_are_regraded_not_rescored() -> None:
    """The Hungarian stage's last part raises scalar edges' series degrees: the stored scores gain
    the products of the new terms alone, and then equal scores computed afresh."""
    rng = np.random.default_rng(5)
    models = [mlp([8, 96, 80, 3], rng)[0] for _ in range(2)]
    spec = mlp([8, 96, 80, 3], rng)[1]
    regraded = []
    regrade = _scores.GroupScores._regrade

    def checked(self, k, old, raw, before, which):
        out = regrade(self, k, old, raw, before, which)
        if out is not None:
            # on the stored features, at the degrees of now
            fresh = _scores.GroupScores._raw(_Rescored(self, old), k, [{} for _ in self.features], which)
            np.testing.assert_allclose(out, fresh, rtol=2e-5, atol=2e-5 * float(np.abs(fresh).max()))
            regraded.append([b[2] for b in before if b not in self._config(k, which)])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_scores.GroupScores, "_regrade", checked)
        g.match(models, spec, method="gamf", seed=0, hungarian_tol=0.0)
    assert regraded and all(regraded)


class _Rescored:
    """A view of a GroupScores whose mover has the stored features ``old`` (for a fresh score)."""

    def __init__(self, scores: _scores.GroupScores, old: list) -> None:
        self.__dict__.update(scores.__dict__)
        k = 1
        self.features = [list(f) for f in scores.features]
        self.features[k] = [f._replace(x=x) for f, x in zip(scores.features[k], old, strict=True)]
        self.phi = {f: list(p) for f, p in scores.phi.items()}
        for f in self.series_degree:
            self.phi[f][k] = None  # rebuilt from the stored features
        self.stamps = [list(st) for st in scores.stamps]
        self.stamps[k] = [None] * len(old)

    def __getattr__(self, name: str):
        return getattr(_scores.GroupScores, name).__get__(self)


def test_no_updates_for_the_node_affinity_or_the_universe() -> None:
    models, spec = _pair("mlp", 0, 0.5)
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_scores.GroupScores, "_delta", lambda self, k, old, raw, which: calls.append(1))
        g.match(models, spec, method="gamf", seed=0, affinity="node")
        g.match([*models, models[0]], spec, method="gamf", seed=0, max_iter=60)
    assert not calls
