"""The exact edge-affinity kernel in plain array-API code: the correctness oracle."""

from __future__ import annotations

from typing import Any

from array_api_compat import array_namespace, device

Array = Any


def edge_affinity_reference(x: Array, y: Array, sigma: float, *, block: int = 64) -> Array:
    """Exact ``R[a, b] = sum_e exp(-||x[a, e] - y[b, e]||^2 / sigma)``, blocked over rows of ``x``."""
    xp = array_namespace(x, y)
    if x.shape[0] == 0:
        return xp.zeros((0, y.shape[0]), dtype=x.dtype, device=device(x))
    rows = []
    for start in range(0, x.shape[0], block):
        xb = x[start : min(start + block, x.shape[0]), ...]
        diff = xb[:, None, :, :] - y[None, :, :, :]
        rows.append(xp.sum(xp.exp(-xp.sum(diff * diff, axis=-1) / sigma), axis=-1))
    return xp.concat(rows, axis=0)
