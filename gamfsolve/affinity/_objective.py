"""The GAMF objective at exact permutations: mean Gaussian affinity of matched edges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..spec._permute import apply_maps
from ..spec._spec import PermutationSpec
from ._features import edge_rows
from ._kernels import _numba

__all__ = ["matched_affinity"]

Array = Any


def matched_affinity(
    models: Sequence[Mapping[str, Array]], spec: PermutationSpec, perms: Sequence[Mapping[str, Array]],
    sigmas: Mapping[str, float], xp: Any, edge_weights: Mapping[str, float] | None = None,
) -> float:
    """Weighted mean of ``exp(-||e - e'||^2 / sigma)`` over matched edges ``e, e'`` and model pairs, in [0, 1].

    With exact permutations only the diagonal of the QAP survives: edge ``(i, a)`` of one
    model meets edge ``(P i, P a)`` of the other, so this is the Lawler objective
    ``sum P K P`` divided by the (weighted) number of edges. ``edge_weights``: the weight of each
    parameter's edges (``_affinity.edge_weights``; 1 where absent, the paper's plain mean).
    ``perms[k]`` may leave groups out (not moved). NumPy arrays with Numba: summed in float64
    by a compiled pass (:func:`._kernels._numba.matched_sum`).
    """
    aligned = [
        {name: apply_maps(m[name], spec.axes[name], p, xp) for name in sigmas} for m, p in zip(models, perms, strict=True)
    ]
    compiled = _numba.available() and all(isinstance(x, np.ndarray) for m in aligned for x in m.values())
    total, count = 0.0, 0.0
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            for name, s in sigmas.items():
                w = 1.0 if edge_weights is None else edge_weights.get(name, 1.0)
                if compiled:  # one pass, no temporaries (ResNet-18: 0.07 s -> 0.02 s)
                    x, y = (edge_rows(a[name], spec.axes[name], xp) for a in (aligned[i], aligned[j]))
                    total += w * _numba.matched_sum(x, y, s)
                    count += w * x.shape[0]
                    continue
                diff = edge_rows(aligned[i][name] - aligned[j][name], spec.axes[name], xp)
                total += w * float(xp.sum(xp.exp(-xp.sum(diff * diff, axis=1) / s)))
                count += w * diff.shape[0]
    return total / count if count else 0.0

