"""Weight matching (Ainsworth, Hayase & Srinivasa, "Git Re-Basin", ICLR 2023), for N models.

Two models: coordinate descent over groups in random order; each step solves the linear
assignment ``max_P <P, sum_f X_f Y_f^T>`` for one group with the others held fixed, until a
full pass changes nothing. More models: MergeMany, i.e. every model is aligned in turn to the
weighted mean of the others (in the common order) until a pass changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._api import register_method
from .._progress import Progress
from .._result import MatchResult
from .._xp import to_host
from ..affinity._features import unit_features
from ..affinity._scores import array_nbytes as _array_bytes
from ..spec._spec import PermutationSpec, groups_beside
from ..spec._validate import Checked
from ._assign import hungarian
from ._stamps import unmoved

__all__ = ["align_to"]

Array = Any


# Cached gain terms (one ``n x n`` product per parameter of a group, and for large ones the features
# they came from) may hold at most this many bytes, or three times the aligned model's weights if
# that is more; terms of parameters with fewer than ``CACHE_MIN_EDGES`` numbers per unit are
# recomputed (about as cheap as reading them back). AlexNet's pair (244 MB of weights a model):
# 150 s with twice the weights (the first dense layer's term kept without its features), 103 s
# with three times, +1.0 GiB.
CACHE_BYTES = 1 << 28
CACHE_MIN_EDGES = 32
# A kept term of at least this many feature numbers (units x edges) is also kept with the features
# it was computed from; when its maps change it is updated over the changed edges alone
# (``C += (X_new - X_old)[:, S] B[S]``) while they are under half of them, and computed afresh
# after ``DELTA_REFRESH`` updates in a row (rounding does not pile up). On AlexNet's 4,096-wide
# dense groups (two random initialisations) 3-7% of the edges move per pass after the tenth.
DELTA_MIN_NUMBERS = 1 << 20
DELTA_REFRESH = 8


class _Gains:
    """``C[b, a] = sum_f <x_f[b], target_f[a]>`` per group: model unit ``b`` against target unit
    ``a``, recomputing only what a changed map touches.

    Group ``g``'s term from parameter ``f`` depends on the maps of the groups on ``f``'s other
    axes; it is kept with those map objects (a map is replaced when it changes, never modified)
    and reused while they are the same. :meth:`fresh` says whether every term of ``g`` is as at
    its last assignment, which would then be repeated.
    """

    def __init__(self, x: Mapping[str, Array], target: Mapping[str, Array], spec: PermutationSpec,
                 sizes: Mapping[str, int], xp: Any) -> None:
        self.x, self.spec, self.sizes, self.xp = x, spec, sizes, xp
        self.ref = _target_features(target, spec, sizes, xp)  # per group, (F, n) per user
        self.deps = {(g, name, axis): groups_beside(spec, name, axis) for g in sizes for name, axis in spec.users(g)}
        # key -> (map stamp, term, the features it came from or None, updates since computed afresh)
        self.terms: dict[tuple[str, str, int], tuple[tuple[Any, ...], Array, Array | None, int]] = {}
        self.solved: dict[str, tuple[Any, ...]] = {}
        self.room = max(CACHE_BYTES, 3 * sum(_array_bytes(v) for v in x.values()))

    def stamp(self, g: str, maps: Mapping[str, Array]) -> tuple[Any, ...]:
        """The map objects ``g``'s terms read."""
        return tuple(maps[h] for name, axis in self.spec.users(g) for h in self.deps[(g, name, axis)])

    def fresh(self, g: str, maps: Mapping[str, Array]) -> bool:
        """Whether ``g`` was assigned before and no map its terms read has changed since."""
        return unmoved(self.solved.get(g), self.stamp(g, maps))

    def mark(self, g: str, stamp: tuple[Any, ...]) -> None:
        """``g`` was just assigned from terms that read the maps in ``stamp``."""
        self.solved[g] = stamp

    def gain(self, g: str, maps: Mapping[str, Array]) -> Array:
        """``C`` ``(n, n)`` of group ``g`` with the other groups' ``maps``."""
        n, users, xp = self.sizes[g], self.spec.users(g), self.xp
        found: dict[tuple[str, int], Array] = {}
        for name, axis in users:
            hit = self.terms.get((g, name, axis))
            if hit is not None and unmoved(hit[0], tuple(maps[h] for h in self.deps[(g, name, axis)])):
                found[(name, axis)] = hit[1]
        missing = {name for name, axis in users if (name, axis) not in found}
        for f in unit_features(self.x, self.spec, g, self.sizes, maps, xp, only=missing) if missing else []:
            if (f.name, f.axis) in found:
                continue
            key = (g, f.name, f.axis)
            b = self.ref[g][users.index((f.name, f.axis))]
            x = xp.reshape(f.x, (n, -1))
            stale = self.terms.get(key)
            term, updates = None, 0
            if stale is not None and stale[2] is not None and stale[3] < DELTA_REFRESH:
                term, updates = _updated(stale[1], stale[2], x, b, xp), stale[3] + 1
            if term is None:
                term, updates = x @ b, 0
            found[(f.name, f.axis)] = term
            if b.shape[0] >= CACHE_MIN_EDGES:
                self._keep(key, term, maps, x if n * b.shape[0] >= DELTA_MIN_NUMBERS else None, updates)
        total = None
        for name, axis in users:  # in the spec's order: the same sum, bit for bit, as without the cache
            term = found[(name, axis)]
            total = term if total is None else total + term
        return total

    def _keep(self, key: tuple[str, str, int], term: Array, maps: Mapping[str, Array], x: Array | None,
              updates: int) -> None:
        old = self.terms.pop(key, None)
        if old is not None:
            self.room += _array_bytes(old[1]) + (0 if old[2] is None else _array_bytes(old[2]))
        if x is not None and _array_bytes(term) + _array_bytes(x) > self.room:
            x = None  # the term alone, if that fits
        size = _array_bytes(term) + (0 if x is None else _array_bytes(x))
        if size <= self.room:
            self.terms[key] = (tuple(maps[h] for h in self.deps[key]), term, x, updates)
            self.room -= size


def _updated(term: Array, old: Array, new: Array, b: Array, xp: Any) -> Array | None:
    """``new @ b`` from ``term = old @ b`` over the columns where ``new`` differs from ``old``;
    None where they are half of them or more (a fresh product is then as cheap)."""
    idx = xp.nonzero(xp.any(new != old, axis=0))[0]
    count = int(idx.shape[0])
    if 2 * count >= int(new.shape[1]):
        return None
    if count == 0:
        return term
    step = (xp.take(new, idx, axis=1) - xp.take(old, idx, axis=1)) @ xp.take(b, idx, axis=0)
    return term + step


def _target_features(target: Mapping[str, Array], spec: PermutationSpec, sizes: Mapping[str, int],
                     xp: Any) -> dict[str, list[Array]]:
    """The target's unit features of every group, ``(F, n)`` each: fixed while one model is aligned."""
    out = {}
    for g, n in sizes.items():
        out[g] = [xp.permute_dims(xp.reshape(f.x, (n, -1)), (1, 0)) for f in unit_features(target, spec, g, sizes, {}, xp)]
    return out


def align_to(x: Mapping[str, Array], target: Mapping[str, Array], spec: PermutationSpec, sizes: Mapping[str, int],
             maps: dict[str, Array], rng: np.random.Generator, xp: Any, *, max_iter: int = 100,
             live: Mapping[str, tuple[int, int] | None] | None = None,
             bar: Progress | None = None) -> tuple[dict[str, Array], int]:
    """Coordinate descent of linear assignments putting ``x`` into ``target``'s order.

    ``live[g]``: the real rows (``x``'s units) and columns (``target``'s) when widths differ.
    """
    maps = dict(maps)
    gains = _Gains(x, target, spec, sizes, xp)
    duals: dict[str, Any] = {}  # each group's assignment duals: the next pass's warm start
    for it in range(1, max_iter + 1):
        changed = False
        for g in rng.permutation(list(sizes)):
            g = str(g)
            if gains.fresh(g, maps):  # nothing it reads changed since it was assigned: the same answer
                continue
            block, stamp = None if live is None else [live[g]], gains.stamp(g, maps)
            (new,) = hungarian([gains.gain(g, maps)], xp, live=block, duals=duals, keys=[g])
            if not np.array_equal(to_host(new), to_host(maps[g])):
                maps[g], changed = new, True
            gains.mark(g, stamp)
        if bar is not None:
            bar.update(it, "coordinate descent pass")
        if not changed:
            return maps, it
    return maps, max_iter


def _mean(models: Sequence[Mapping[str, Array]], spec: PermutationSpec, maps: Sequence[Mapping[str, Array]],
          weights: Sequence[float], skip: int, xp: Any) -> dict[str, Array]:
    """Weighted mean of the other models in the common order.

    Empty slots of narrower models count as zeros here (not left out as in :func:`merge`): that
    keeps each step an ascent of one objective; leaving them out made MergeMany cycle (700-1000
    passes, mostly unconverged, on MNIST MLPs of widths 256, 192, 128, against 100-125 passes).
    """
    from ..spec._permute import apply_maps

    idx = [k for k in range(len(models)) if k != skip]
    total = sum(weights[k] for k in idx)
    ws = [weights[k] / total for k in idx] if total > 0 else [1.0 / len(idx)] * len(idx)
    out: dict[str, Array] = {}
    for k, w in zip(idx, ws, strict=True):
        for name in spec.axes:
            term = w * apply_maps(models[k][name], spec.axes[name], maps[k], xp)
            out[name] = term if name not in out else out[name] + term
    return out


@register_method("weight_matching")
def _weight_matching(models: Sequence[Mapping[str, Array]], spec: PermutationSpec, checked: Checked, *,
                     seed: int | None, max_iter: int = 100, progress: bool = False) -> MatchResult:
    """Git Re-Basin weight matching; MergeMany for more than two models. ``max_iter``: passes;
    ``progress``: report each pass (see :func:`gamfsolve.match`)."""
    with Progress(progress, "weight_matching") as bar:
        return _solve(models, spec, checked, seed=seed, max_iter=max_iter, bar=bar)


def _solve(models: Sequence[Mapping[str, Array]], spec: PermutationSpec, checked: Checked, *, seed: int | None,
           max_iter: int, bar: Progress) -> MatchResult:
    xp, sizes = checked.xp, checked.sizes
    rng = np.random.default_rng(seed)
    ident = {g: xp.arange(n, device=checked.device) for g, n in sizes.items()}
    maps = [dict(ident) for _ in models]
    total_iter, settled = 0, True
    for k in range(1, len(models)):  # start: everyone aligned to model 0
        live = None if checked.same_widths else {g: checked.live(k, g, partner=0) for g in sizes}
        maps[k], it = align_to(models[k], models[0], spec, sizes, maps[k], rng, xp, max_iter=max_iter, live=live, bar=bar)
        total_iter += it
        settled &= it < max_iter  # a pass without change came before the limit
    converged = len(models) == 2 and settled
    for _ in range(max_iter if len(models) > 2 else 0):
        changed = False
        for k in range(len(models)):
            target = _mean(models, spec, maps, checked.weights, k, xp)
            live = None if checked.same_widths else {g: checked.live(k, g) for g in sizes}
            new, it = align_to(models[k], target, spec, sizes, maps[k], rng, xp, max_iter=max_iter, live=live, bar=bar)
            total_iter += it
            changed |= any(not np.array_equal(to_host(new[g]), to_host(maps[k][g])) for g in sizes)
            maps[k] = new
        if not changed:
            converged = True
            break
    perms = {g: [maps[k][g] for k in range(len(models))] for g in spec.groups}
    return MatchResult(perms=perms, method="weight_matching", n_iter=total_iter, converged=converged,
                       message="no assignment changed in a full pass" if converged else "pass limit reached")
