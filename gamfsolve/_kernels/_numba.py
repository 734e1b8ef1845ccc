"""The exact edge affinity compiled with Numba: parallel over output rows, NumPy inputs only.

Numba is optional: nothing here imports it until a kernel is first used, and a missing or
broken Numba makes :func:`available` false instead of failing ``import gamfsolve``. Compiled
code is cached on disk (``cache=True``) unless the environment sets
``GAMFSOLVE_NUMBA_CACHE=0``. The first call per dtype and edge width compiles (about a second).

Cost: ``n * m * E`` calls of ``exp`` plus ``3 * n * m * E * D`` flops. Without Intel SVML,
``exp`` does not vectorise, so the ``exp`` calls are the floor (about 1 ns each per core).
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib.util import find_spec
from typing import Any

import numpy as np

__all__ = ["available", "cheb_features", "edge_affinity_numba"]


def _use_cache() -> bool:
    return os.environ.get("GAMFSOLVE_NUMBA_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


@lru_cache(maxsize=1)
def _compiled() -> Any:
    """Compile (lazily, once) and return the kernels, or None when Numba cannot be imported."""
    try:
        import numba
    except Exception:  # ImportError, or a Numba that fails to load against this NumPy
        return None
    jit = numba.njit(parallel=True, cache=_use_cache())

    @jit
    def scalar_edges(x, y, inv_sigma, out):  # pragma: no cover - compiled
        # x (n, E), y (m, E): one scalar per edge. Each row a is written by one thread only.
        n, n_edges = x.shape
        m = y.shape[0]
        for a in numba.prange(n):
            for b in range(m):
                acc = 0.0  # float64 accumulator for either dtype
                for e in range(n_edges):
                    d = x[a, e] - y[b, e]
                    acc += np.exp(-(d * d) * inv_sigma)
                out[a, b] = acc

    @jit
    def vector_edges(x, y, inv_sigma, out):  # pragma: no cover - compiled
        # x (n, E, D), y (m, E, D): squared distance of D-vectors, then exp.
        n, n_edges, dim = x.shape
        m = y.shape[0]
        for a in numba.prange(n):
            for b in range(m):
                acc = 0.0
                for e in range(n_edges):
                    d2 = x[a, e, 0] - x[a, e, 0]  # a zero of the input dtype
                    for k in range(dim):
                        d = x[a, e, k] - y[b, e, k]
                        d2 += d * d
                    acc += np.exp(-d2 * inv_sigma)
                out[a, b] = acc

    @numba.njit(parallel=True, fastmath=True, cache=_use_cache())
    def cheb_features(t, w, out):  # pragma: no cover - compiled
        # out[a, j, e] = sum_k T_k(t[a, e]) w[k, j]: the recurrence fused with the basis change,
        # in blocks of 64 edges so T (q x 64) and one accumulator stay in L1; vectorised over e.
        n, n_edges = t.shape
        q, r = w.shape
        blk = 64
        for a in numba.prange(n):
            cheb = np.empty((q, blk), dtype=out.dtype)
            acc = np.empty(blk, dtype=out.dtype)
            for e0 in range(0, n_edges, blk):
                width = min(blk, n_edges - e0)
                for i in range(width):
                    cheb[0, i] = 1.0
                    cheb[1, i] = t[a, e0 + i]
                for k in range(2, q):
                    for i in range(width):
                        cheb[k, i] = 2.0 * cheb[1, i] * cheb[k - 1, i] - cheb[k - 2, i]
                for j in range(r):
                    for i in range(width):
                        acc[i] = w[0, j]
                    for k in range(1, q):
                        wkj = w[k, j]
                        for i in range(width):
                            acc[i] += wkj * cheb[k, i]
                    for i in range(width):
                        out[a, j, e0 + i] = acc[i]

    return scalar_edges, vector_edges, cheb_features


def available() -> bool:
    """True when Numba is installed and loads (triggers the import, not compilation)."""
    return find_spec("numba") is not None and _compiled() is not None


def edge_affinity_numba(x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """Exact ``R[a, b] = sum_e exp(-||x[a, e] - y[b, e]||^2 / sigma)`` for NumPy float32/float64."""
    kernels = _compiled()
    if kernels is None:  # callers check available() first; this is a guard for direct use
        raise ImportError("the 'numba' kernel needs Numba: pip install numba")
    scalar_edges, vector_edges, _ = kernels
    dtype = x.dtype
    out = np.empty((x.shape[0], y.shape[0]), dtype=dtype)
    inv = dtype.type(1.0 / sigma)
    if x.shape[2] == 1:
        scalar_edges(np.ascontiguousarray(x[:, :, 0]), np.ascontiguousarray(y[:, :, 0]), inv, out)
    else:
        vector_edges(np.ascontiguousarray(x), np.ascontiguousarray(y), inv, out)
    return out


def cheb_features(t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``phi`` ``(n, r * E)`` from scaled values ``t`` ``(n, E)`` and a basis ``w`` ``(Q, r)`` (Q >= 2).

    The same numbers, in the same ``(n, r, E)`` layout, as :func:`._factorised.features_scaled`,
    without its ``(n E, Q)`` temporary: ``n E Q r`` multiply-adds, vectorised over ``E``.
    """
    kernels = _compiled()
    if kernels is None:
        raise ImportError("cheb_features needs Numba: pip install numba")
    n, n_edges = t.shape
    out = np.empty((n, w.shape[1], n_edges), dtype=t.dtype)
    kernels[2](np.ascontiguousarray(t), np.ascontiguousarray(w, dtype=t.dtype), out)
    return out.reshape(n, -1)
