"""Projectors onto (relaxed) permutations: log-domain Sinkhorn on the device, Hungarian on the host."""

from __future__ import annotations

import math
from collections.abc import Hashable, MutableMapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .._xp import device, from_host, to_host
from ..affinity._kernels import _numba

__all__ = ["hungarian", "logsumexp", "sinkhorn"]

Array = Any

# Below this many entries a NumPy Sinkhorn runs as one compiled loop (when Numba is there): each
# step of the array code costs ~10 us of call overhead whatever the size; measured on 500 steps,
# compiled 24x faster at 6 x 6, 7x at 16 x 16, slower from about 40 x 40 (its exp is scalar).
COMPILED_SINKHORN_MAX = 1024
CHECK_EVERY = 5
# Square assignments at least this wide use the compiled Jonker-Volgenant kernel; narrower ones
# SciPy's, which takes a few milliseconds there: loading Numba and the kernel costs 0.1-0.3 s
# once per process (weight matching on the quick ResNet-50, groups up to 512 wide, 0.42 s with
# SciPy alone, 0.52 s with the kernel for every group).
COMPILED_LSAP_MIN = 512
_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))  # Numba has no float16 arithmetic


def _max(s: Array, axis: int | None, xp: Any, keepdims: bool = True) -> Array:
    # NumPy: the ufunc reduction np.max itself calls, without its Python wrappers (Sinkhorn on
    # small matrices spent half its time in them); the same numbers bit for bit.
    if isinstance(s, np.ndarray):
        out = np.maximum.reduce(s, axis=axis, keepdims=True)
        return out if keepdims else out.reshape(())
    return xp.max(s, axis=axis, keepdims=keepdims)


def _sum(s: Array, axis: int, xp: Any) -> Array:
    if isinstance(s, np.ndarray):
        return np.add.reduce(s, axis=axis, keepdims=True)
    return xp.sum(s, axis=axis, keepdims=True)


def logsumexp(s: Array, axis: int, xp: Any) -> Array:
    """``log(sum(exp(s), axis))`` computed stably, keeping the reduced axis."""
    m = _max(s, axis, xp)
    return m + xp.log(_sum(xp.exp(s - m), axis, xp))


def sinkhorn(
    scores: Array, tau: float, xp: Any, *, tol: float = 1e-4, max_iter: int = 500, v: Array | None = None
) -> tuple[Array, Array, int]:
    """Doubly stochastic ``P = exp(scores / tau - u - v)`` by alternating row and column normalisation.

    Parameters
    ----------
    scores : (n, n) array
        Affinity (higher is better).
    tau : float
        Temperature; ``P`` tends to the best permutation as ``tau -> 0``.
    tol : float
        Stop when every column sum is within ``tol`` of one (rows are exact after each step).
    v : (1, n) array, optional
        Column potential to warm-start from (the previous call's).

    Returns
    -------
    P : (n, n) array, v : (1, n) array, iterations : int

    Small NumPy plans run as one compiled log-domain loop; larger ones (and every other backend)
    iterate on scalings with absorption (see :func:`_sinkhorn_scaling`): the same steps in exact
    arithmetic, two matrix-vector products each instead of two passes of ``exp``.
    """
    s = scores / tau
    if v is None:
        v = xp.zeros((1, s.shape[1]), dtype=s.dtype, device=device(s))
    if isinstance(s, np.ndarray) and s.size <= COMPILED_SINKHORN_MAX and s.dtype in _COMPILED_DTYPES and _numba.available():
        return _numba.sinkhorn_numba(s, v, tol, max_iter, CHECK_EVERY)
    out = _sinkhorn_scaling(s, v, tol, max_iter, xp)
    return out if out is not None else _sinkhorn_log(s, v, tol, max_iter, xp)


def _normalised_rows(s: Array, v: Array, xp: Any) -> Array:
    """``K = exp(s - u - v)`` with ``u`` the row log-sum-exp of ``s - v``: every row of ``K`` sums to one."""
    z = s - v
    e = xp.exp(z - _max(z, 1, xp))
    return e / _sum(e, 1, xp)


def _sinkhorn_scaling(s: Array, v: Array, tol: float, max_iter: int, xp: Any) -> tuple[Array, Array, int] | None:
    """Sinkhorn on scalings: ``P = diag(a) K diag(b)``, ``K`` row-normalised for the potential ``v``.

    The first step is taken in the log domain; then each step is a row step ``a = 1 / (K b)`` and
    a column step ``b = 1 / (a^T K)``: the log-domain steps of :func:`_sinkhorn_log` exactly
    (``u = u_K - log a``, ``v = v_K - log b``), at the cost of two matrix-vector products. A
    fresh ``K`` follows a column step, so each of its columns sums to at least ``1/n``: none is
    lost to underflow. Every ``CHECK_EVERY`` steps, scalings outside ``[e^-T, e^T]`` are absorbed
    into ``v`` and ``K`` is recomputed (``T = -ln(tiny) / 4`` of the dtype: entries of ``K`` that
    underflow weigh less than ``tiny^(1/2)``, far below ``tol``). Returns None if a scaling stops
    being finite and positive in between; the caller then runs the log-domain loop.
    """
    n, m = s.shape
    dtype, dev = s.dtype, device(s)
    limit = -math.log(float(xp.finfo(dtype).smallest_normal)) / 4
    hi, lo = math.exp(limit), math.exp(-limit)
    v = logsumexp(s - logsumexp(s - v, 1, xp), 0, xp)  # step 1, in the log domain
    k = _normalised_rows(s, v, xp)  # and the row step of step 2
    a = xp.ones((n, 1), dtype=dtype, device=dev)
    b = xp.ones((1, m), dtype=dtype, device=dev)
    rows_done, it = True, 1  # rows_done: a is the row step for the current b
    col_sums = None  # a^T K from the last check, when a and K have not changed since
    quiet = np.errstate(divide="ignore", over="ignore", invalid="ignore") if isinstance(s, np.ndarray) else nullcontext()
    with quiet:  # an overflow is detected below and handed to the log-domain loop
        while it < max_iter:
            it += 1
            if not rows_done:
                a = 1.0 / (k @ b.T)
            b = 1.0 / (a.T @ k if col_sums is None else col_sums)
            rows_done, col_sums = False, None
            if it % CHECK_EVERY == 0 or it == max_iter:  # check every few steps: no device sync each step
                a = 1.0 / (k @ b.T)
                rows_done = True
                top = max(float(xp.max(a)), float(xp.max(b)))
                bottom = min(float(xp.min(a)), float(xp.min(b)))
                if not (math.isfinite(top) and bottom > 0):
                    return None
                if top > hi or bottom < lo:  # absorb: the row step for the new v is the fresh K
                    v = v - xp.log(b)
                    k = _normalised_rows(s, v, xp)
                    a = xp.ones((n, 1), dtype=dtype, device=dev)
                    b = xp.ones((1, m), dtype=dtype, device=dev)
                col_sums = a.T @ k  # the next column step divides by it
                if float(_max(xp.abs(b * col_sums - 1.0), None, xp, keepdims=False)) < tol:
                    break
        if not rows_done:
            a = 1.0 / (k @ b.T)
        return a * k * b, v - xp.log(b), it


def _sinkhorn_log(s: Array, v: Array, tol: float, max_iter: int, xp: Any) -> tuple[Array, Array, int]:
    """Log-domain Sinkhorn on scaled scores ``s``: robust at any temperature, one ``exp`` pass per half-step."""
    it, u, p = 0, None, None  # u: the row potential for the current v; p: the plan for (u, v)
    for it in range(1, max_iter + 1):
        if u is None:
            u = logsumexp(s - v, 1, xp)
        v = logsumexp(s - u, 0, xp)
        u = p = None
        if it % CHECK_EVERY == 0 or it == max_iter:  # check every few steps: no device sync each step
            u = logsumexp(s - v, 1, xp)  # kept for the next step, which would compute it again
            p = xp.exp(s - u - v)
            if float(_max(xp.abs(_sum(p, 0, xp) - 1.0), None, xp, keepdims=False)) < tol:
                break
    if u is None:
        u = logsumexp(s - v, 1, xp)
    return (xp.exp(s - u - v) if p is None else p), v, it


def _centred(h: np.ndarray) -> np.ndarray:
    """``h`` less its row and column means (plus the overall mean): every assignment's total moves
    by the same constant, so the optimum is the same, but SciPy's shortest augmenting paths no
    longer all run for the columns every row prefers. gamf's Gaussian scores carry such offsets
    (a unit's affinity to all others rises with how close its weights sit to the common centre):
    on ViT-S/16's 1,536-wide feed-forward groups (two random models) 0.47 s per assignment
    against 0.06 s for weight matching's scores of the same groups, before centring. A rectangular
    block (a narrower model's real units) assigns only some of its longer side: only the shorter
    side, every one of whose lines is assigned, is centred."""
    rows, cols = h.shape
    if rows < cols:
        return h - h.mean(axis=1, keepdims=True)
    if cols < rows:
        return h - h.mean(axis=0, keepdims=True)
    return h - h.mean(axis=1, keepdims=True) - h.mean(axis=0, keepdims=True) + h.mean()


def hungarian(scores: Sequence[Array], xp: Any, live: Sequence[tuple[int, int] | None] | None = None,
              duals: MutableMapping[Any, np.ndarray] | None = None,
              keys: Sequence[Hashable] | None = None) -> list[Array]:
    """Exact maximum-weight assignments of square score matrices, as index vectors.

    The one host hop of the library: all matrices go to the host together, each is solved there,
    and the index vectors come back to the device. ``p[u]`` is the row assigned to column ``u``.
    ``live[i] = (r, c)`` says that only the leading ``r`` rows and ``c`` columns of matrix ``i``
    are real units (the rest are empty slots of a narrower model): the real block is solved as a
    rectangular assignment and the rows left over fill the columns left over in increasing
    order, so empty slots never decide, or break a tie in, the result.

    Square matrices from :data:`COMPILED_LSAP_MIN` wide are solved by the compiled
    Jonker-Volgenant kernel where Numba is there (:func:`._numba.lapjv_numba`); narrower ones,
    rectangular blocks and everything without Numba by SciPy's ``linear_sum_assignment``.
    ``duals`` with ``keys`` (one per matrix) warm-starts the kernel: the column duals of the last
    problem solved under a key seed the next one under that key (a layer's scores from one sweep
    to the next), and are stored back.
    """
    host = [to_host(s) for s in scores]  # float32 scores stay float32: the compiled kernel reads them as they are
    out = []
    for i, (s, h) in enumerate(zip(scores, host, strict=True)):
        block = None if live is None else live[i]
        if block is None or block == h.shape:
            key = None if duals is None or keys is None else keys[i]
            p = _assign_square(h, duals, key)
        else:
            r, c = block
            rows, cols = linear_sum_assignment(_centred(np.asarray(h[:r, :c], dtype=np.float64)), maximize=True)
            p = np.full(h.shape[1], -1, dtype=np.int64)
            p[cols] = rows
            spare_rows = np.setdiff1d(np.arange(h.shape[0]), rows)
            p[p < 0] = spare_rows  # ascending rows into ascending free columns
        out.append(from_host(p.astype(np.int64), xp, s))
    return out


def _assign_square(h: np.ndarray, duals: MutableMapping[Any, np.ndarray] | None, key: Hashable) -> np.ndarray:
    """``p`` with ``p[u]`` the row of column ``u`` in the maximum-weight assignment of ``h`` (n, n).
    The compiled solver needs no centring (it starts from the column means; rows do not matter to
    it) and reads float32 scores without a float64 copy (its sums are float64 either way: the
    same assignment; on EfficientNet-B0 the copies of the 2,304-wide groups' scores cost 0.9 s of
    a 31 s solve); SciPy's gets centred float64 scores (:func:`_centred`)."""
    n = h.shape[0]
    if h.dtype not in _COMPILED_DTYPES:
        h = np.asarray(h, dtype=np.float64)
    if n >= COMPILED_LSAP_MIN and _numba.available() and bool(np.isfinite(h).all()):
        warm = None if duals is None or key is None else duals.get(key)
        cost = np.negative(h, order="C")
        cols_of, v = _numba.lapjv_numba(cost, warm if warm is not None and warm.shape == (n,) else None)
        if duals is not None and key is not None:
            duals[key] = v
        p = np.empty(n, dtype=np.int64)
        p[cols_of] = np.arange(n)  # row i takes column cols_of[i]
        return p
    _, cols = linear_sum_assignment(_centred(np.asarray(h, dtype=np.float64)), maximize=True)
    return np.argsort(cols)
