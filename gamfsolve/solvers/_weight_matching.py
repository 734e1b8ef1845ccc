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
from ..spec._spec import PermutationSpec
from ..spec._validate import Checked
from ._assign import hungarian

__all__ = ["align_to"]

Array = Any


def _gain(x: Mapping[str, Array], ref: Sequence[Array], spec: PermutationSpec, group: str, sizes: Mapping[str, int],
          maps: Mapping[str, Array], xp: Any) -> Array:
    """``C[b, a] = sum_f <x_f[b], target_f[a]>``: model unit ``b`` against target unit ``a``;
    ``ref``: the target's unit features of ``group``, each ``(n, F)`` transposed to ``(F, n)``."""
    own = unit_features(x, spec, group, sizes, maps, xp)
    n, total = sizes[group], None
    for a, b in zip(own, ref, strict=True):
        term = xp.reshape(a.x, (n, -1)) @ b
        total = term if total is None else total + term
    return total


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
    ref = _target_features(target, spec, sizes, xp)
    for it in range(1, max_iter + 1):
        changed = False
        for g in rng.permutation(list(sizes)):
            g = str(g)
            block = None if live is None else [live[g]]
            (new,) = hungarian([_gain(x, ref[g], spec, g, sizes, maps, xp)], xp, live=block)
            if not np.array_equal(to_host(new), to_host(maps[g])):
                maps[g], changed = new, True
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
