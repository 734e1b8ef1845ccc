"""A short power series of the Gaussian edge kernel for the annealing stage, with a sampled error check.

For edges ``x, y`` of ``D`` numbers, centred by a common ``c`` (the kernel depends only on
``x - y``), ``v = x - c`` and ``w = y - c``:

    exp(-||v - w||^2 / s) = q(v) q(w) exp(2 v.w / s),    q(v) = exp(-||v||^2 / s)
                          ~ q(v) q(w) sum_{t <= T} (2 v.w / s)^t / t!

Degree ``T = 1`` is a feature map of ``1 + D`` numbers per edge, ``q(v) [1, sqrt(2 / s) v]``, so
a group's scores ``R = sum_e k(x_e, y_e)`` are one matrix product ``Phi_x @ Phi_y^T`` of
``E (1 + D)`` columns: weight matching's product, plus one column per edge. Degree 2 adds the
``D (D + 1) / 2`` monomials of ``v v^T`` (taken only for short edges, ``D <= MAX_D_DEGREE2``);
scalar edges take degrees up to :data:`MAX_DEGREE_SCALAR` (``1 + T`` columns per edge).

Where it is accurate: near the kernel's linear limit. With gamf's default width (``sigma`` 30
times the expected squared distance of two independent edges) ``2 v.w / s`` is about 1/30 for
typical edges, and the first left-out term, ``(2 v.w / s)^2 / 2``, shifts scores by about 1% of
their spread across unit pairs. That is far below the temperature over most of the annealing
schedule (scores are standardised, temperatures run from 1 to 0.02), so there the series stands
in for the exact kernel. The Hungarian stage runs first at the last temperature's tolerance, then
to its fixed point with the series only where its error is at the level of float32 rounding
(higher degrees; the exact kernel elsewhere), so the returned permutations are a fixed point of
the exact objective's Hungarian sweep to that rounding; objective values are always exact.

Pooled maps (``pooled=True``): the per-edge column ``q`` (the term ``t = 0``) gives
``sum_e q(v_e) q(w_e)``, a product over every edge whose spread across unit pairs is mostly a row
plus a column offset. Pooled, it is one column per unit, ``sum_e q(v_e) / sqrt(E)``, whose product
is ``(sum_e q(v_e)) (sum_e q(w_e)) / E``: off by ``E`` times the covariance of the two units'
``q`` over their edges, a second-order term like the first left-out one. On random ResNet-50
1 x 1 convolutions (sampled spread ratios): degree 1 0.031-0.043 plain, 0.039-0.054 pooled,
degree 2 0.0017-0.0026 plain, 0.012-0.016 pooled; so a pooled map stands in at the first
temperatures at ``T E + 1`` columns instead of ``(T + 1) E`` (scalar edges: half the product at
degree 1).

The check (:func:`series_error`): on ``SAMPLE`` random unit pairs, the spread (standard
deviation) of ``series - exact`` against the spread of ``exact``. Only the spread counts: a
constant offset, or one per row or column, changes neither Sinkhorn's plan nor the assignment.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..._xp import device
from . import _numba

__all__ = ["MAX_DEGREE_SCALAR", "MAX_D_DEGREE2", "SAMPLE", "max_degree", "series_error", "series_errors", "series_features",
           "series_rank"]

Array = Any
_COMPILED = (np.dtype(np.float32), np.dtype(np.float64))
SAMPLE = 384  # unit pairs compared with the exact kernel per check
MAX_D_DEGREE2 = 4  # degree 2 only for edges of at most this many numbers (rank 1 + D + D(D+1)/2 <= 15)
MAX_DEGREE_SCALAR = 6  # scalar edges: degrees 1..6 (rank 2..7)


def series_rank(dim: int, degree: int, pooled: bool = False) -> int:
    """Feature columns per edge: ``1 + degree`` for scalar edges; ``1 + D`` (degree 1) or
    ``1 + D + D (D + 1) / 2`` (degree 2) for edges of ``D`` numbers; one fewer when ``pooled``
    (which adds one column per unit: ``series_rank * E + 1`` in all)."""
    plain = 1 + degree if dim == 1 else 1 + dim + (dim * (dim + 1) // 2 if degree >= 2 else 0)
    return plain - 1 if pooled else plain


def max_degree(dim: int) -> int:
    """The highest degree offered for edges of ``dim`` numbers (rank at most 15)."""
    return MAX_DEGREE_SCALAR if dim == 1 else 2 if dim <= MAX_D_DEGREE2 else 1


def series_features(x: Array, sigma: float, xp: Any, *, center: float = 0.0, degree: int = 1,
                    pooled: bool = False) -> Array:
    """Feature map ``(n, r E)`` (``(n, r E + 1)`` pooled) of the degree-``degree`` series; ``x``
    ``(n, E, D)``, ``center`` a scalar.

    ``series_features(x) @ series_features(y).T`` approximates ``edge_affinity(x, y, sigma)``
    when both are built with the same ``sigma``, ``center``, ``degree`` and ``pooled``; ``r`` is
    :func:`series_rank`. Columns are term-major (``phi[a, t E + e]``: term ``t`` of edge ``e``),
    so an ``x`` laid out ``(n, D, E)`` in memory (a soft plan's product) is read contiguously;
    pooled, the last column is ``sum_e q / sqrt(E)``. Scalar edges take any degree up to
    :data:`MAX_DEGREE_SCALAR`, vector edges 1 or 2. NumPy float input with Numba: one compiled
    pass (:func:`._numba.series_numba`), except degree 2 of vector edges.
    """
    n, n_edges, dim = x.shape
    if isinstance(x, np.ndarray) and x.dtype in _COMPILED and (dim == 1 or degree == 1) and _numba.available():
        return _numba.series_numba(x, sigma, center, degree, pooled)  # one pass instead of ~2 r + 6
    v = xp.permute_dims(x - center if center else x, (0, 2, 1))  # (n, D, E)
    q = xp.exp(-xp.sum(v * v, axis=1, keepdims=True) / sigma)  # (n, 1, E)
    if dim == 1:  # q (sqrt(2 / s) v)^t / sqrt(t!), t = 0..degree
        z = math.sqrt(2.0 / sigma) * v
        parts, term = [q], q
        for t in range(1, degree + 1):
            term = term * z / math.sqrt(t)
            parts.append(term)
    else:
        parts = [q, q * (math.sqrt(2.0 / sigma) * v)]
        if degree >= 2:
            c2 = (2.0 / sigma) / math.sqrt(2.0)
            for d in range(dim):
                scale = c2 * q
                parts.append(scale * v[:, d : d + 1, :] * v[:, d : d + 1, :])
                if d + 1 < dim:
                    parts.append(scale * math.sqrt(2.0) * v[:, d : d + 1, :] * v[:, d + 1 :, :])
    phi = xp.concat(parts[1:] if pooled else parts, axis=1)  # (n, r, E)
    phi = xp.reshape(phi, (n, phi.shape[1] * n_edges))
    if pooled:
        phi = xp.concat([phi, xp.reshape(xp.sum(q, axis=2), (n, 1)) / math.sqrt(n_edges)], axis=1)
    return phi


def series_error(x: Array, y: Array, sigma: float, xp: Any, *, center: float = 0.0, degree: int = 1,
                 seed: int = 0, pooled: bool = False) -> float:
    """Spread of ``series - exact`` over the spread of ``exact``, on :data:`SAMPLE` random unit pairs.

    ``x`` ``(n, E, D)``, ``y`` ``(m, E, D)`` the edges, ``center`` as for :func:`series_features`
    (a scalar). Returns ``inf`` where ``exact`` does not vary. See :func:`series_errors`.
    """
    plain, pooled_ratios = series_errors(x, y, sigma, xp, center=center, degree=degree, seed=seed)
    return (pooled_ratios if pooled else plain)[-1]


def series_errors(x: Array, y: Array, sigma: float, xp: Any, *, center: float = 0.0, degree: int = 1,
                  seed: int = 0) -> tuple[list[float], list[float]]:
    """:func:`series_error` of every degree ``1..degree``, plain and pooled, from one pass over the
    sampled edges: ``(plain, pooled)``, each a list by degree.

    About ``(4 D + degree) SAMPLE E`` operations; NumPy float input with Numba in one compiled
    pass (:func:`._numba.series_check_numba`), float64 sums.
    """
    n, m = x.shape[0], y.shape[0]
    n_edges = int(x.shape[1])
    rng = np.random.default_rng(seed)
    count = min(SAMPLE, n * m)
    flat = rng.choice(n * m, size=count, replace=False) if n * m > count else np.arange(n * m)
    dev = device(x)
    v = xp.take(x, xp.asarray(flat // m, device=dev), axis=0) - center
    w = xp.take(y, xp.asarray(flat % m, device=dev), axis=0) - center
    if isinstance(v, np.ndarray) and v.dtype in _COMPILED and _numba.available():
        exact, approx, sums = _numba.series_check_numba(v, w, sigma, degree)
        columns = [approx[:, t] for t in range(degree)]
        qq, qv, qw = sums[:, 0], sums[:, 1], sums[:, 2]
    else:
        d = v - w
        exact = xp.sum(xp.exp(-xp.sum(d * d, axis=2) / sigma), axis=1)
        z = 2.0 * xp.sum(v * w, axis=2) / sigma
        q_v, q_w = xp.exp(-xp.sum(v * v, axis=2) / sigma), xp.exp(-xp.sum(w * w, axis=2) / sigma)
        base = q_v * q_w
        poly, term, columns = 1.0 + z, z, []
        columns.append(xp.sum(base * poly, axis=1))
        for t in range(2, degree + 1):
            term = term * z / t
            poly = poly + term
            columns.append(xp.sum(base * poly, axis=1))
        qq, qv, qw = xp.sum(base, axis=1), xp.sum(q_v, axis=1), xp.sum(q_w, axis=1)
    spread = float(xp.std(exact))
    if not spread > 0:
        return [math.inf] * degree, [math.inf] * degree
    pool = qv * qw / n_edges - qq  # the pooled column's product in place of the per-edge q terms
    plain = [float(xp.std(c - exact)) / spread for c in columns]
    return plain, [float(xp.std(c + pool - exact)) / spread for c in columns]
