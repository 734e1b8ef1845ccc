"""Screens of a round's accepted Flower updates: update size against the round, safe weights.

The update-norm screen measures each client's distance to the previous global model,
``d_k = ||x_k - x_global||_2`` over the floating-point arrays (in float64), and leaves out a
client whose distance is far beyond the round's typical one::

    d_k > m + threshold * max(1.4826 * MAD, m)

where ``m`` is the round's lower median of the distances (for two clients the smaller one)
and MAD the lower median of ``|d_j - m|``. The lower median is kept by every honest majority,
so the clients whose updates a poisoner scaled up cannot raise their own bar; the term
``max(..., m)`` keeps the bar at least ``(1 + threshold) * m``, generous to the spread of
honest updates under label skew (clients with more data take more steps). With fewer than
two clients, or when ``m`` is 0, there is nothing to compare with and every update passes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ._flower_checks import Accepted

__all__ = ["DEFAULT_NORM_SCREEN", "safe_weights", "screen_update_norms", "update_distance"]

logger = logging.getLogger("gamfsolve.adapters.flower")

DEFAULT_NORM_SCREEN = 10.0


def update_distance(arrays: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray]) -> float:
    """Euclidean distance (float64) between two models over their floating-point arrays.

    A narrower array is compared with the leading slice of the previous one (a client of
    smaller width gets and returns that slice).
    """
    total = 0.0
    for name, x in arrays.items():
        g = previous.get(name)
        if g is None or not np.issubdtype(x.dtype, np.floating) or g.ndim != x.ndim:
            continue
        g = g[tuple(slice(0, n) for n in x.shape)]
        if g.shape != x.shape:
            continue
        d = x.astype(np.float64) - g.astype(np.float64)
        scale = float(np.max(np.abs(d))) if d.size else 0.0
        if scale > 0:  # scaled sum of squares: no overflow even for float64 extremes
            total += scale * scale * float(np.sum((d / scale) ** 2))
    return math.sqrt(total) if math.isfinite(total) else math.inf


def _lower_median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def screen_update_norms(
    accepted: list[Accepted], previous: Mapping[str, np.ndarray] | None, threshold: float | None, *, server_round: int
) -> list[Accepted]:
    """The accepted updates whose distance to ``previous`` passes the screen (module docstring).

    ``threshold=None`` (or no previous model) turns the screen off. Every update left out is
    logged at WARNING level with its distance and the bar.
    """
    if threshold is None or previous is None or len(accepted) < 2:
        return accepted
    dist = [update_distance(a.arrays, previous) for a in accepted]
    m = _lower_median(dist)
    if not math.isfinite(m) or m <= 0:
        return accepted
    mad = _lower_median([abs(d - m) for d in dist])
    bar = m + threshold * max(1.4826 * mad, m)
    kept = []
    for a, d in zip(accepted, dist, strict=True):
        if d > bar:
            logger.warning(
                "round %d: node %d left out: its update is %.3g from the global model, beyond the round's bar %.3g "
                "(lower median %.3g, threshold %g)",
                server_round, a.node_id, d, bar, m, threshold,
            )
            continue
        kept.append(a)
    return kept


def safe_weights(weights: Sequence[float]) -> list[float]:
    """Positive finite weights scaled by their maximum, so that their sum cannot overflow.

    ``[1e308, 1e308]`` -> ``[1.0, 1.0]``; the proportions are kept (up to rounding).
    """
    top = max(weights)
    return [w / top for w in weights]
