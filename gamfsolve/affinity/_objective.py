"""The GAMF objective at exact permutations: mean Gaussian affinity of matched edges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec._permute import apply_maps
from ..spec._spec import PermutationSpec, groups_of
from ._features import edge_rows
from ._kernels import _numba

__all__ = ["matched_affinity"]

Array = Any


def matched_affinity(
    models: Sequence[Mapping[str, Array]], spec: PermutationSpec, perms: Sequence[Mapping[str, Array]],
    sigmas: Mapping[str, float], xp: Any, edge_weights: Mapping[str, float] | None = None,
    memo: dict[str, tuple[tuple[Any, ...], float, float]] | None = None,
) -> float:
    """Weighted mean of ``exp(-||e - e'||^2 / sigma)`` over matched edges ``e, e'`` and model pairs, in [0, 1].

    With exact permutations only the diagonal of the QAP survives: edge ``(i, a)`` of one
    model meets edge ``(P i, P a)`` of the other, so this is the Lawler objective
    ``sum P K P`` divided by the (weighted) number of edges. ``edge_weights``: the weight of each
    parameter's edges (``_affinity.edge_weights``; 1 where absent, the paper's plain mean).
    ``perms[k]`` may leave groups out (not moved). NumPy arrays with Numba: summed in float64
    by a compiled pass (:func:`._kernels._numba.matched_sum`). ``memo``: a dict kept between
    calls; a parameter whose groups' index vectors are the very same objects as last time
    (vectors are replaced, never changed in place) keeps its sum, so a call after a sweep that
    moved a few groups sums only their parameters.
    """
    total, count = 0.0, 0.0
    for name, s in sigmas.items():
        groups = list(dict.fromkeys(g for entry in spec.axes[name] for g in groups_of(entry)))
        deps = tuple(p.get(g) for p in perms for g in groups)
        hit = None if memo is None else memo.get(name)
        if hit is not None and len(hit[0]) == len(deps) and all(a is b for a, b in zip(hit[0], deps, strict=True)):
            part, edges = hit[1], hit[2]
        else:
            part, edges = _param_sum(models, spec, perms, name, s, xp)
            if memo is not None:
                memo[name] = (deps, part, edges)
        w = 1.0 if edge_weights is None else edge_weights.get(name, 1.0)
        total += w * part
        count += w * edges
    return total / count if count else 0.0


def _param_sum(models: Sequence[Mapping[str, Array]], spec: PermutationSpec, perms: Sequence[Mapping[str, Array]],
               name: str, sigma: float, xp: Any) -> tuple[float, float]:
    """Sum of matched-edge affinities of parameter ``name`` over all model pairs, and the edge count."""
    aligned = [apply_maps(m[name], spec.axes[name], p, xp) for m, p in zip(models, perms, strict=True)]
    compiled = _numba.available() and all(isinstance(x, np.ndarray) for x in aligned)
    total, count = 0.0, 0.0
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            if compiled:  # one pass, no temporaries (ResNet-18: 0.07 s -> 0.02 s for all parameters)
                x, y = (edge_rows(a, spec.axes[name], xp) for a in (aligned[i], aligned[j]))
                total += _numba.matched_sum(x, y, sigma)
                count += x.shape[0]
                continue
            diff = edge_rows(aligned[i] - aligned[j], spec.axes[name], xp)
            total += float(xp.sum(xp.exp(-xp.sum(diff * diff, axis=1) / sigma)))
            count += diff.shape[0]
    return total, count
