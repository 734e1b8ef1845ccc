"""weight_matching reuses each group's gain terms while the maps they read are unchanged:
the same permutations and pass count as recomputing everything, and less work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import conv_chain, mlp, noisy, random_perms, residual

import gamfsolve as g
from gamfsolve.solvers import _weight_matching as wm


def _concat(rng: np.random.Generator) -> tuple[dict, g.PermutationSpec, None]:
    """Two branches concatenated into one dense layer: its term for ``c`` reads two maps."""
    spec = g.PermutationSpec({"a.w": ("a", None), "b.w": ("b", None), "c.w": ("c", g.Concat("a", "b")),
                              "d.w": (None, "c")})
    shapes = {"a.w": (40, 6), "b.w": (36, 6), "c.w": (34, 76), "d.w": (3, 34)}
    return {k: rng.normal(size=s) for k, s in shapes.items()}, spec, None


NETS = {
    "concat": _concat,
    "mlp": lambda rng: mlp([6, 40, 36, 3], rng),
    "conv": lambda rng: conv_chain([2, 34, 33], rng),
    "residual": lambda rng: residual(5, 40, 36, 2, rng),
}


def _models(net: str, n_models: int, seed: int, level: float) -> tuple[list[dict], g.PermutationSpec]:
    rng = np.random.default_rng(seed)
    base, spec, _ = NETS[net](rng)
    return [noisy(g.permute(base, spec, random_perms(spec, base, rng)), level, rng) for _ in range(n_models)], spec


def _uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wm, "CACHE_MIN_EDGES", 1 << 62)  # no term kept
    monkeypatch.setattr(wm._Gains, "fresh", lambda self, g, maps: False)  # every group reassigned


@settings(max_examples=12, deadline=None)
@given(net=st.sampled_from(sorted(NETS)), n_models=st.sampled_from([2, 3]), seed=st.integers(0, 2**16),
       level=st.sampled_from([0.3, 1.0, 3.0]))
def test_the_same_answer_as_recomputing_everything(net: str, n_models: int, seed: int, level: float) -> None:
    models, spec = _models(net, n_models, seed, level)
    _assert_as_recomputed(g.match(models, spec, method="weight_matching", seed=seed), models, spec, seed)


def _assert_as_recomputed(result: g.MatchResult, models: list[dict], spec: g.PermutationSpec, seed: int) -> None:
    """``result`` has the permutations, passes and convergence of weight matching recomputing everything."""
    with pytest.MonkeyPatch.context() as mp:
        _uncached(mp)
        plain = g.match(models, spec, method="weight_matching", seed=seed)
    assert result.n_iter == plain.n_iter and result.converged == plain.converged
    for grp in spec.groups:
        for a, b in zip(result.perms[grp], plain.perms[grp], strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("net", sorted(NETS))
def test_a_pass_without_change_computes_less(net: str, monkeypatch: pytest.MonkeyPatch) -> None:
    models, spec = _models(net, 2, 0, 1.0)
    calls = []
    gain = wm._Gains.gain
    monkeypatch.setattr(wm._Gains, "gain", lambda self, grp, maps: calls.append(grp) or gain(self, grp, maps))
    result = g.match(models, spec, method="weight_matching", seed=0)
    assert result.converged and result.n_iter >= 2
    assert len(calls) < len(spec.groups) * result.n_iter  # the last pass reassigned at most what changed before it


def test_the_cache_keeps_within_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    models, spec = _models("mlp", 2, 1, 1.0)
    seen = []
    init = wm._Gains.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.room = 40 * 36 * 8  # room for one of the hidden groups' terms, not two
        seen.append(self)

    monkeypatch.setattr(wm._Gains, "__init__", spy)
    g.match(models, spec, method="weight_matching", seed=0)
    [gains] = seen
    held = sum(wm._array_bytes(t) + (0 if x is None else wm._array_bytes(x)) for _, t, x, _ in gains.terms.values())
    assert held <= 40 * 36 * 8 and gains.room >= 0


@pytest.mark.parametrize("moved", [("a",), ("b",), ("a", "b"), ()])
def test_a_term_is_recomputed_when_any_map_it_reads_moves(moved: tuple[str, ...]) -> None:
    rng = np.random.default_rng(3)
    (x, spec, _), (target, _, _) = _concat(rng), _concat(rng)
    sizes = spec.group_sizes({k: v.shape for k, v in x.items()})
    maps = {grp: np.arange(n) for grp, n in sizes.items()}
    gains = wm._Gains(x, target, spec, sizes, np)
    gains.gain("c", maps)
    after = dict(maps) | {grp: rng.permutation(sizes[grp]) for grp in moved}
    np.testing.assert_array_equal(gains.gain("c", after), wm._Gains(x, target, spec, sizes, np).gain("c", after))


@settings(max_examples=25, deadline=None)
@given(net=st.sampled_from(sorted(NETS)), seed=st.integers(0, 2**16), share=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
       steps=st.integers(1, 12))
def test_terms_updated_over_the_changed_edges_equal_fresh_ones(net: str, seed: int, share: float, steps: int) -> None:
    """With every kept term updated from its features (``DELTA_MIN_NUMBERS`` 1), a gain read after
    some units of the other groups moved equals the gain computed from scratch, however many
    units moved and across the refresh (``DELTA_REFRESH`` updates in a row)."""
    rng = np.random.default_rng(seed)
    (x, spec, _), (target, _, _) = NETS[net](rng), NETS[net](rng)
    sizes = spec.group_sizes({k: v.shape for k, v in x.items()})
    maps = {grp: np.arange(n) for grp, n in sizes.items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wm, "DELTA_MIN_NUMBERS", 1)
        gains = wm._Gains(x, target, spec, sizes, np)
        for _ in range(steps):
            for grp, n in sizes.items():  # swap a share of each group's units (a new map object)
                k = round(share * n) // 2 * 2
                idx = rng.choice(n, size=k, replace=False)
                new = maps[grp].copy()
                new[idx] = new[idx[::-1]]
                maps[grp] = new
            for grp in sizes:
                got = gains.gain(grp, maps)
                fresh = wm._Gains(x, target, spec, sizes, np).gain(grp, maps)
                np.testing.assert_allclose(got, fresh, rtol=1e-10, atol=1e-10 * float(np.abs(fresh).max()))
        assert all(t[3] <= wm.DELTA_REFRESH for t in gains.terms.values())


def test_an_updated_term_is_computed_afresh_after_delta_refresh_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    x, spec, _ = mlp([6, 40, 36, 3], rng)
    target = mlp([6, 40, 36, 3], rng)[0]
    sizes = spec.group_sizes({k: v.shape for k, v in x.items()})
    monkeypatch.setattr(wm, "DELTA_MIN_NUMBERS", 1)
    gains = wm._Gains(x, target, spec, sizes, np)
    maps = {grp: np.arange(n) for grp, n in sizes.items()}
    counts = []
    for _ in range(2 * wm.DELTA_REFRESH + 2):
        maps["h1"] = maps["h1"].copy()
        maps["h1"][[0, 1]] = maps["h1"][[1, 0]]  # two of 36 edges of h0's term from layers.1 move
        gains.gain("h0", maps)
        counts.append(gains.terms[("h0", "layers.1.weight", 1)][3])
    assert counts[: wm.DELTA_REFRESH + 3] == [*range(wm.DELTA_REFRESH + 1), 0, 1]  # computed afresh, 8 updates, afresh


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("seed", [0, 1])
def test_a_whole_match_with_updated_terms_finds_the_same_permutations(net: str, seed: int) -> None:
    """Every kept term updated over its changed edges (float64 models: rounding far below any gap
    between assignments): the permutations and passes of recomputing everything."""
    models, spec = _models(net, 2, seed, 1.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wm, "DELTA_MIN_NUMBERS", 1)
        updated = g.match(models, spec, method="weight_matching", seed=seed)
    _assert_as_recomputed(updated, models, spec, seed)
