"""The exact edge affinity compiled with Numba: parallel over output rows, NumPy inputs only.

Also the Chebyshev feature map of the factorised kernel, the series feature map of the
annealing stage, and the log-domain Sinkhorn loop for small plans (:func:`sinkhorn_numba`, used
by :func:`gamfsolve.solvers._assign.sinkhorn` where the array code's per-step call overhead
dominates).

Numba is optional: nothing here imports it until a kernel is first used, and a missing or
broken Numba makes :func:`available` false instead of failing ``import gamfsolve``. Compiled
code is cached on disk (``cache=True``) unless the environment sets
``GAMFSOLVE_NUMBA_CACHE=0``. The first call per dtype and edge width compiles (about a second).

Cost: ``n * m * E`` exponentials plus ``3 * n * m * E * D`` flops. Numba has no SVML here, so
``np.exp`` would not vectorise (about 1 ns per scalar call, plus a scalar loop over ``D``); the
kernel instead loops over ``b`` innermost on ``y`` laid out ``(E, D, m)`` and evaluates ``exp``
with a polynomial that LLVM vectorises (float64 input: float64, 8 lanes; float32 input: float32,
16 lanes, about 1 ulp like ``expf``); terms are summed in float64 as before.
Only tiny problems run on one thread (``SERIAL_WORK``).
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache
from importlib.util import find_spec
from typing import Any

import numpy as np

__all__ = ["add_outer", "available", "cheb_features", "edge_affinity_numba", "matched_sum", "series_check_numba",
           "series_numba", "sinkhorn_numba"]


# LLVM may fuse ``a * b + c`` into one FMA instruction (nothing else of fast-math: no
# reassociation, no finite-math assumptions). Each Horner step of the polynomial ``exp`` becomes
# one rounding instead of two; the exact kernels ran 1.5x faster (512 x 512 x 512 float32, one
# core: 39.6 -> 27.2 ms) with the same errors against float64.
CONTRACT = {"contract"}


def _exp_reduced(t: float) -> tuple[float, float]:  # pragma: no cover - compiled
    # exp(t) = p 2^k for float64 t >= -700: range reduction by ln 2 (split in two for
    # accuracy), |r| <= ln2/2, and a degree-13 Taylor polynomial (error < 2e-16 relative); plain
    # arithmetic, so loops calling it vectorise without SVML. Inlined into each caller.
    kk = np.floor(t * 1.4426950408889634 + 0.5)
    r = (t - kk * 6.93147180369123816490e-01) - kk * 1.90821492927058770002e-10
    q = 1.0 / 6227020800.0
    q = q * r + 1.0 / 479001600.0
    q = q * r + 1.0 / 39916800.0
    q = q * r + 1.0 / 3628800.0
    q = q * r + 1.0 / 362880.0
    q = q * r + 1.0 / 40320.0
    q = q * r + 1.0 / 5040.0
    q = q * r + 1.0 / 720.0
    q = q * r + 1.0 / 120.0
    q = q * r + 1.0 / 24.0
    q = q * r + 1.0 / 6.0
    q = q * r + 0.5
    q = q * r + 1.0
    return q * r + 1.0, kk


exp_reduced: Any = None  # _exp_reduced compiled (inlined into the kernels), set by _compiled


def _use_cache() -> bool:
    return os.environ.get("GAMFSOLVE_NUMBA_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


@lru_cache(maxsize=1)
def _compiled() -> Any:
    """Compile (lazily, once) and return the kernels, or None when Numba cannot be imported."""
    try:
        import numba
    except Exception:  # ImportError, or a Numba that fails to load against this NumPy
        return None

    def jit(parallel: bool, **options: Any) -> Any:
        """``numba.njit`` for one variant of a kernel, under a name of its own.

        Numba's on-disk cache keys a function by its qualified name, source line, signature and
        closure, not by ``parallel``: the serial and parallel variants of one definition would
        share a cache entry, and a warm cache then served whichever was compiled first for both
        (measured: the parallel kernel replaced by the serial one, gamf 2x slower on two cores).
        """

        def wrap(fn: Any) -> Any:
            fn.__qualname__ = f"{fn.__qualname__}_{'parallel' if parallel else 'serial'}"
            return numba.njit(parallel=parallel, cache=_use_cache(), **options)(fn)

        return wrap

    global exp_reduced  # a module global, not a closure variable: Numba's disk cache keeps its callers
    exp_reduced = numba.njit(inline="always", fastmath=CONTRACT)(_exp_reduced)

    def make_edges(parallel: bool) -> Any:
        @jit(parallel, fastmath=CONTRACT)
        def edges(x, yt, inv_sigma, out):  # pragma: no cover - compiled
            # x (n, E, D), yt (E, D, m) contiguous: out[a, b] = sum_e exp(-||x[a, e] - y[b, e]||^2 inv).
            # Vectorised over b: squared distances in the input dtype (same order as a scalar loop),
            # exp by range reduction and a degree-13 Taylor polynomial in float64 (|r| <= ln2/2,
            # error < 2e-16 relative: no SVML needed), scaled by 2^k built from its bits, then
            # summed over e in float64.
            n, n_edges, dim = x.shape
            m = yt.shape[2]
            for a in numba.prange(n):
                acc = np.zeros(m, dtype=np.float64)
                d2 = np.empty(m, dtype=x.dtype)
                p = np.empty(m, dtype=np.float64)
                bits = np.empty(m, dtype=np.int64)
                scale = bits.view(np.float64)
                for e in range(n_edges):
                    for b in range(m):
                        d2[b] = 0.0
                    k = 0
                    while k + 3 <= dim:  # three coordinates per pass: a third of the d2 traffic
                        x0, x1, x2 = x[a, e, k], x[a, e, k + 1], x[a, e, k + 2]
                        for b in range(m):
                            d = x0 - yt[e, k, b]
                            acc2 = d2[b] + d * d
                            d = x1 - yt[e, k + 1, b]
                            acc2 = acc2 + d * d
                            d = x2 - yt[e, k + 2, b]
                            d2[b] = acc2 + d * d
                        k += 3
                    while k < dim:
                        xk = x[a, e, k]
                        for b in range(m):
                            d = xk - yt[e, k, b]
                            d2[b] += d * d
                        k += 1
                    for b in range(m):
                        t = max(np.float64(-d2[b] * inv_sigma), -700.0)  # exp(-700) ~ 1e-304: no subnormals
                        p[b], kk = exp_reduced(t)
                        bits[b] = (np.int64(kk) + 1023) << 52
                    for b in range(m):
                        acc[b] += p[b] * scale[b]
                for b in range(m):
                    out[a, b] = acc[b]

        return edges

    def make_edges32(parallel: bool) -> Any:
        f32 = numba.float32
        rb = 8  # rows per task: each (D, m) slice of y is reused from L1 by 8 rows

        @jit(parallel, fastmath=CONTRACT)
        def edges32(x, yt, inv_sigma, out):  # pragma: no cover - compiled
            # The float32 twin of ``edges``: exp by a degree-7 Taylor polynomial in float32 (its
            # truncation error r^8 / 8! < 6e-9 for |r| <= ln2/2, a tenth of an ulp; about 1 ulp in
            # all, like ``expf``; 16 lanes), terms summed in float64.
            n, n_edges, dim = x.shape
            m = yt.shape[2]
            for blk in numba.prange((n + rb - 1) // rb):
                a0 = blk * rb
                rows = min(rb, n - a0)
                acc = np.zeros((rb, m), dtype=np.float64)
                d2 = np.empty(m, dtype=np.float32)
                p = np.empty(m, dtype=np.float32)
                bits = np.empty(m, dtype=np.int32)
                scale = bits.view(np.float32)
                for e in range(n_edges):
                    for i in range(rows):
                        for b in range(m):
                            d2[b] = 0.0
                        k = 0
                        while k + 3 <= dim:  # three coordinates per pass: a third of the d2 traffic
                            x0, x1, x2 = x[a0 + i, e, k], x[a0 + i, e, k + 1], x[a0 + i, e, k + 2]
                            for b in range(m):
                                d = x0 - yt[e, k, b]
                                acc2 = d2[b] + d * d
                                d = x1 - yt[e, k + 1, b]
                                acc2 = acc2 + d * d
                                d = x2 - yt[e, k + 2, b]
                                d2[b] = acc2 + d * d
                            k += 3
                        while k < dim:
                            xk = x[a0 + i, e, k]
                            for b in range(m):
                                d = xk - yt[e, k, b]
                                d2[b] += d * d
                            k += 1
                        for b in range(m):
                            t = max(-d2[b] * inv_sigma, f32(-87.0))  # exp(-87) ~ 1.6e-38: no subnormals
                            kk = np.floor(t * f32(1.4426950408889634) + f32(0.5))
                            r = (t - kk * f32(0.693359375)) - kk * f32(-2.12194440e-4)
                            q = f32(1.0 / 5040.0)
                            q = q * r + f32(1.0 / 720.0)
                            q = q * r + f32(1.0 / 120.0)
                            q = q * r + f32(1.0 / 24.0)
                            q = q * r + f32(1.0 / 6.0)
                            q = q * r + f32(0.5)
                            q = q * r + f32(1.0)
                            p[b] = q * r + f32(1.0)
                            bits[b] = (np.int32(kk) + np.int32(127)) << np.int32(23)
                        for b in range(m):
                            acc[i, b] += np.float64(p[b] * scale[b])
                for i in range(rows):
                    for b in range(m):
                        out[a0 + i, b] = acc[i, b]

        return edges32

    def make_series(parallel: bool) -> Any:
        @jit(parallel, fastmath=CONTRACT)
        def series(xt, center, inv_sigma, c, inv_sqrt, degree, first, out):  # pragma: no cover - compiled
            # xt (n, D, E) contiguous (the edges' numbers, edge index last), out (n, cols): term t
            # of edge e at column (t - first) E + e, for t = first..r-1. Term 0 is q = exp(-||x[a,
            # e] - center||^2 inv_sigma); scalar edges (D = 1): term t = q (c v)^t inv_sqrt[t] up to
            # ``degree``; vector edges: term 1 + d = q c v_d (degree 1). first = 1 (pooled): the
            # last column is sum_e q / sqrt(E) instead of term 0. One pass over x, every loop over
            # e (vectorised; exp by the float64 polynomial of ``edges``).
            n, dim, n_edges = xt.shape
            for a in numba.prange(n):
                q = np.zeros(n_edges, dtype=np.float64)
                p = np.empty(n_edges, dtype=np.float64)
                bits = np.empty(n_edges, dtype=np.int64)
                scale = bits.view(np.float64)
                for d in range(dim):
                    row = xt[a, d]
                    for e in range(n_edges):
                        v = row[e] - center
                        q[e] += v * v
                for e in range(n_edges):  # 2^k from its bits: a power call per edge cost 2-3x the pass
                    p[e], kk = exp_reduced(max(-q[e] * inv_sigma, -700.0))
                    bits[e] = (np.int64(kk) + 1023) << 52
                total = 0.0
                for e in range(n_edges):
                    q[e] = p[e] * scale[e]
                    total += q[e]
                if first == 0:
                    head = out[a, 0:n_edges]
                    for e in range(n_edges):
                        head[e] = q[e]
                else:
                    out[a, out.shape[1] - 1] = total / math.sqrt(n_edges)
                if dim == 1:
                    row = xt[a, 0]
                    for e in range(n_edges):
                        q[e] = q[e] * c * (row[e] - center)  # q (c v), float64
                    for t in range(1, degree + 1):
                        cur = out[a, (t - first) * n_edges : (t - first + 1) * n_edges]
                        for e in range(n_edges):
                            cur[e] = q[e] * inv_sqrt[t]
                        if t < degree:
                            for e in range(n_edges):
                                q[e] = q[e] * c * (row[e] - center) * inv_sqrt[t]
                else:
                    for d in range(dim):
                        row, cur = xt[a, d], out[a, (1 + d - first) * n_edges : (2 + d - first) * n_edges]
                        for e in range(n_edges):
                            cur[e] = q[e] * c * (row[e] - center)

        return series

    edges_parallel, edges_serial = make_edges(True), make_edges(False)

    @jit(True, fastmath=CONTRACT)
    def matched(x, y, inv_sigma, partial):  # pragma: no cover - compiled
        # x, y (R, D) contiguous: partial[c] = sum over chunk c's rows r of exp(-||x[r] - y[r]||^2
        # inv_sigma), squared distances in the input dtype, exp by the float64 polynomial of
        # ``edges`` (vectorised over a block of rows), sums in float64.
        n_rows, dim = x.shape
        chunks = partial.shape[0]
        step = (n_rows + chunks - 1) // chunks
        blk = 512
        for c in numba.prange(chunks):
            d2 = np.empty(blk, dtype=np.float64)
            bits = np.empty(blk, dtype=np.int64)
            scale = bits.view(np.float64)
            total = 0.0
            lo, hi = c * step, min(n_rows, (c + 1) * step)
            for r0 in range(lo, hi, blk):
                width = min(blk, hi - r0)
                for i in range(width):
                    s = 0.0
                    for d in range(dim):
                        t = x[r0 + i, d] - y[r0 + i, d]
                        s += t * t
                    d2[i] = max(-s * inv_sigma, -700.0)
                for i in range(width):  # 2^k from its bits, not a power call
                    d2[i], kk = exp_reduced(d2[i])
                    bits[i] = (np.int64(kk) + 1023) << 52
                for i in range(width):
                    total += d2[i] * scale[i]
            partial[c] = total

    @jit(True, fastmath=CONTRACT)
    def series_check(v, w, inv_sigma, exact, approx, sums):  # pragma: no cover - compiled
        # v, w (S, E, D) centred edges of S unit pairs: exact[s] = sum_e exp(-||v - w||^2 inv), and
        # approx[s, t - 1] = sum_e exp(-(||v||^2 + ||w||^2) inv) sum_{i <= t} (2 v.w inv)^i / i!
        # for every degree t = 1..T at once; sums[s] = (sum_e q(v) q(w), sum_e q(v), sum_e q(w))
        # with q(v) = exp(-||v||^2 inv), for the pooled maps; float64 throughout.
        n_s, n_edges, dim = v.shape
        degree = approx.shape[1]
        for s in numba.prange(n_s):
            acc = np.zeros(degree, dtype=np.float64)
            ex = qq = qv = qw = 0.0
            for e in range(n_edges):
                vv = ww = vw = dd = 0.0
                for d in range(dim):
                    a, b = np.float64(v[s, e, d]), np.float64(w[s, e, d])
                    vv += a * a
                    ww += b * b
                    vw += a * b
                    dd += (a - b) * (a - b)
                ex += math.exp(-dd * inv_sigma)
                q_v, q_w = math.exp(-vv * inv_sigma), math.exp(-ww * inv_sigma)
                base = q_v * q_w
                qq += base
                qv += q_v
                qw += q_w
                z = 2.0 * vw * inv_sigma
                poly = term = 1.0
                for t in range(degree):
                    term = term * z / (t + 1)
                    poly += term
                    acc[t] += base * poly
            exact[s] = ex
            sums[s, 0], sums[s, 1], sums[s, 2] = qq, qv, qw
            for t in range(degree):
                approx[s, t] = acc[t]

    def make_cheb(parallel: bool) -> Any:
        @jit(parallel, fastmath=True)
        def cheb_features(v, centre, inv_scale, w, acoef, out, anchor):  # pragma: no cover - compiled
            # t = clip((v[a, e] - centre[e]) * inv_scale, -1, 1); out[a, j, e] = sum_k T_k(t) w[k, j]:
            # the recurrence fused with the basis change, in blocks of up to 1024 edges so T (q x
            # 1024) stays in L2; vectorised over e. With acoef (q,) non-empty, also anchor[a] =
            # sum_e sum_k T_k(t) acoef[k], summed over e in float64. Rows in chunks of 8, one
            # scratch per chunk. Every inner loop runs over 1-D views from 0: indexing the 2-D
            # arrays at e0 + i kept LLVM from vectorising (2-4x slower, measured).
            n, n_edges = v.shape
            q, r = w.shape
            with_anchor = acoef.shape[0] > 0
            one = out.dtype.type(1.0)
            blk = min(1024, n_edges)
            rows = 8
            for chunk in numba.prange((n + rows - 1) // rows):
                cheb = np.empty((q, blk), dtype=out.dtype)
                acc = np.empty(blk, dtype=out.dtype)
                for a in range(chunk * rows, min(n, (chunk + 1) * rows)):
                    total = 0.0
                    for e0 in range(0, n_edges, blk):
                        width = min(blk, n_edges - e0)
                        va, ca = v[a, e0 : e0 + width], centre[e0 : e0 + width]
                        t, t0 = cheb[1], cheb[0]
                        for i in range(width):
                            t[i] = min(max((va[i] - ca[i]) * inv_scale, -one), one)
                            t0[i] = one
                        for k in range(2, q):
                            tk, tk1, tk2 = cheb[k], cheb[k - 1], cheb[k - 2]
                            for i in range(width):
                                tk[i] = 2 * t[i] * tk1[i] - tk2[i]
                        for j in range(r):
                            o = out[a, j, e0 : e0 + width]
                            w0 = w[0, j]
                            for i in range(width):
                                o[i] = w0
                            for k in range(1, q):
                                wkj, tk = w[k, j], cheb[k]
                                for i in range(width):
                                    o[i] += wkj * tk[i]
                        if with_anchor:
                            for i in range(width):
                                acc[i] = acoef[0]
                            for k in range(1, q):
                                ak, tk = acoef[k], cheb[k]
                                for i in range(width):
                                    acc[i] += ak * tk[i]
                            for i in range(width):
                                total += acc[i]
                    anchor[a] = total

        return cheb_features

    @jit(False)
    def add_outer(core, row, col, out):  # pragma: no cover - compiled
        # out[a, b] = core[a, b] + row[a] + col[b], summed in float64, stored in out's dtype. One
        # thread: it follows a BLAS product, whose spinning workers would hold the cores (and
        # 512 x 512 takes 0.03 ms).
        n, m = core.shape
        for a in range(n):
            ra = row[a]
            for b in range(m):
                out[a, b] = np.float64(core[a, b]) + ra + col[b]

    @jit(False)
    def sinkhorn_log(s, v, tol, max_iter, check_every, p):  # pragma: no cover - compiled
        # The loop of gamfsolve.solvers._assign.sinkhorn, compiled: rows and columns normalised in turn in
        # the log domain; every ``check_every`` steps (and at ``max_iter``) the plan ``p`` is formed
        # and its column sums tested. ``v`` (m,) is updated in place; returns the steps taken.
        # (One function with no calls to other kernels: a closure over another dispatcher would
        # change Numba's cache key in every process, so the cache would never hit.)
        n, m = s.shape
        u = np.empty(n, dtype=s.dtype)
        cmax = np.empty(m, dtype=s.dtype)
        csum = np.empty(m, dtype=s.dtype)
        it = 0
        while True:
            for i in range(n):  # u[i] = log sum_j exp(s[i, j] - v[j]), stabilised by the row maximum
                mx = s[i, 0] - v[0]
                for j in range(1, m):
                    mx = max(mx, s[i, j] - v[j])
                acc = 0.0
                for j in range(m):
                    acc += np.exp(s[i, j] - v[j] - mx)
                u[i] = mx + np.log(acc)
            if it == max_iter or (it > 0 and it % check_every == 0):
                for j in range(m):
                    csum[j] = 0.0
                for i in range(n):
                    for j in range(m):
                        p[i, j] = np.exp(s[i, j] - u[i] - v[j])
                        csum[j] += p[i, j]
                worst = 0.0
                for j in range(m):
                    worst = max(worst, abs(csum[j] - 1.0))
                if worst < tol or it == max_iter:
                    return it
            it += 1
            for j in range(m):  # v[j] = log sum_i exp(s[i, j] - u[i])
                cmax[j] = s[0, j] - u[0]
                csum[j] = 0.0
            for i in range(1, n):
                for j in range(m):
                    cmax[j] = max(cmax[j], s[i, j] - u[i])
            for i in range(n):
                for j in range(m):
                    csum[j] += np.exp(s[i, j] - u[i] - cmax[j])
            for j in range(m):
                v[j] = cmax[j] + np.log(csum[j])

    @jit(False)
    def lapjv(c, v, warm, cold, x):  # pragma: no cover - compiled
        # Minimum-cost assignment of the square c (n, n) float32 or float64 (Jonker & Volgenant 1987;
        # float64 arithmetic: v, d and the sums are float64):
        # x[i] = the column of row i; v (n,) the column duals, read (warm) and updated. Every
        # assigned row i keeps c[i, x[i]] - v[x[i]] = min_j (c[i, j] - v[j]) (row duals implicit).
        # 1. each row to its best column under v where that column is free; a warm v that leaves
        #    more than a quarter of the rows free is dropped for ``cold`` (the matrix changed too much);
        # 2. augmenting row reduction, twice (each pass at most 4 n steps);
        # 3. a shortest augmenting path (Dijkstra on reduced costs) from each row still free.
        n = c.shape[0]
        y = np.empty(n, dtype=np.int64)
        free = np.empty(n, dtype=np.int64)
        nfree = 0
        for attempt in range(2):
            nfree = 0
            for j in range(n):
                y[j] = -1
            for i in range(n):
                best, jb = np.inf, 0
                for j in range(n):
                    h = c[i, j] - v[j]
                    if h < best:
                        best, jb = h, j
                if y[jb] < 0:
                    x[i] = jb
                    y[jb] = i
                else:
                    x[i] = -1
                    free[nfree] = i
                    nfree += 1
            if not warm or attempt == 1 or 4 * nfree <= n:
                break
            for j in range(n):
                v[j] = cold[j]
        for _ in range(2):  # augmenting row reduction
            k, prv, nfree, steps = 0, nfree, 0, 0
            while k < prv and steps < 4 * n:
                steps += 1
                i = free[k]
                k += 1
                umin, usub, j1, j2 = np.inf, np.inf, 0, 0
                for j in range(n):
                    h = c[i, j] - v[j]
                    if h < usub:
                        if h >= umin:
                            usub, j2 = h, j
                        else:
                            usub, j2 = umin, j1
                            umin, j1 = h, j
                i0 = y[j1]
                if umin < usub:
                    v[j1] -= usub - umin  # j1 now ties with j2 for row i; dearer for every other row
                elif i0 >= 0:
                    j1 = j2
                    i0 = y[j2]
                if i0 >= 0:
                    x[i0] = -1
                x[i] = j1
                y[j1] = i
                if i0 >= 0:
                    if umin < usub:
                        k -= 1
                        free[k] = i0  # displaced: reduced again at once
                    else:
                        free[nfree] = i0
                        nfree += 1
            while k < prv:
                free[nfree] = free[k]
                nfree += 1
                k += 1
        d = np.empty(n, dtype=np.float64)
        pred = np.empty(n, dtype=np.int64)
        col = np.empty(n, dtype=np.int64)
        for f in range(nfree):
            fr = free[f]
            for j in range(n):
                d[j] = c[fr, j] - v[j]
                pred[j] = fr
                col[j] = j
            low = up = last = 0
            end = -1
            mn = 0.0
            while end < 0:
                if up == low:  # the columns at the next smallest distance
                    last = low
                    mn = d[col[up]]
                    up += 1
                    for k in range(up, n):
                        j = col[k]
                        h = d[j]
                        if h <= mn:
                            if h < mn:
                                up = low
                                mn = h
                            col[k] = col[up]
                            col[up] = j
                            up += 1
                    for k in range(low, up):
                        if y[col[k]] < 0:
                            end = col[k]
                            break
                    if end >= 0:
                        break
                j1 = col[low]
                low += 1
                i = y[j1]
                u1 = c[i, j1] - v[j1] - mn
                for k in range(up, n):
                    j = col[k]
                    h = c[i, j] - v[j] - u1
                    if h < d[j]:
                        d[j] = h
                        pred[j] = i
                        if h == mn:
                            if y[j] < 0:
                                end = j
                                break
                            col[k] = col[up]
                            col[up] = j
                            up += 1
            for k in range(last):  # duals of the columns scanned before the last level
                j = col[k]
                v[j] += d[j] - mn
            while True:  # augment along the path
                i = pred[end]
                y[end] = i
                j = end
                end = x[i]
                x[i] = j
                if i == fr:
                    break

    return {
        "sinkhorn": sinkhorn_log,
        ("edges", np.dtype(np.float64), True): edges_parallel,
        ("edges", np.dtype(np.float64), False): edges_serial,
        ("edges", np.dtype(np.float32), True): make_edges32(True),
        ("edges", np.dtype(np.float32), False): make_edges32(False),
        ("cheb", True): make_cheb(True),
        ("cheb", False): make_cheb(False),
        "outer": add_outer,
        ("series", True): make_series(True),
        ("series", False): make_series(False),
        "matched": matched,
        "series_check": series_check,
        "lapjv": lapjv,
    }


log = logging.getLogger("gamfsolve")
_ANNOUNCED: set[int] = set()


def announce_compile(kernel: Any, label: str) -> None:
    """Say (a log WARNING, once per kernel and process) that ``kernel`` is about to be compiled:
    the first use on a machine compiles it (seconds), later processes load it from Numba's disk
    cache. Silent when the kernel is loaded already or its cache index exists."""
    key = id(kernel)
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    if getattr(kernel, "signatures", None):
        return
    try:
        index = kernel._cache._cache_file._index_path  # Numba's on-disk cache index for this function
        cached = os.path.exists(index)
    except AttributeError:  # no disk cache (GAMFSOLVE_NUMBA_CACHE=0) or another Numba layout
        cached = False
    if not cached:
        log.warning("gamfsolve: compiling the Numba %s kernel (first use on this machine: a few seconds; "
                    "cached on disk afterwards)", label)


def available() -> bool:
    """True when Numba is installed and loads (triggers the import, not compilation)."""
    return find_spec("numba") is not None and _compiled() is not None


# Below this much work (inner-loop iterations) a kernel runs on one thread. Once gamf stopped
# BLAS threads spinning on the same cores (``_threads.py``) a parallel launch paid even for tiny
# layers: on 2 cores, 16 x 6 x 25 x 6 (work 14,400) 1.7x, 64 x 64 x 256 1.6x, 128 x 128 x 256
# 1.8x faster than serial; gamf on a protocol LeNet pair 0.51 -> 0.42 s and four LeNets 3.9 ->
# 3.2 s against the former threshold of 2^21 (set when launches were slowed by that spinning).
SERIAL_WORK = 1 << 12


def edge_affinity_numba(x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """Exact ``R[a, b] = sum_e exp(-||x[a, e] - y[b, e]||^2 / sigma)`` for NumPy float32/float64."""
    kernels = _compiled()
    if kernels is None:  # callers check available() first; this is a guard for direct use
        raise ImportError("the 'numba' kernel needs Numba: pip install numba")
    dtype = x.dtype
    work = np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)
    n, n_edges, dim = x.shape
    out = np.empty((n, y.shape[0]), dtype=work)
    inv = work.type(1.0 / sigma)
    yt = np.ascontiguousarray(np.transpose(y, (1, 2, 0)), dtype=work)  # (E, D, m): contiguous in the vector index
    kernel = kernels["edges", work, n * y.shape[0] * n_edges * dim >= SERIAL_WORK]
    announce_compile(kernel, "edge-affinity")
    kernel(np.ascontiguousarray(x, dtype=work), yt, inv, out)
    out = out if work == dtype else out.astype(dtype)
    return out


def series_numba(x: np.ndarray, sigma: float, center: float, degree: int, pooled: bool = False) -> np.ndarray:
    """The series feature map of :func:`._series.series_features` in one compiled pass, ``(n, r E)``
    (pooled: ``(n, r E + 1)``) for ``x`` ``(n, E, D)`` float32/float64: degree 1 for vector edges, up
    to any degree for scalar ones. Read as ``(n, D, E)``: no copy where ``x`` is laid out so
    (features mapped by a soft plan are). Measured 11x the array code on 512 x 512 x 9 float32
    (two cores), 1.2-2x on scalar edges."""
    kernels = _compiled()
    if kernels is None:
        raise ImportError("series_numba needs Numba: pip install numba")
    n, n_edges, dim = x.shape
    if dim > 1 and degree != 1:
        raise ValueError(f"vector edges take degree 1 here, got {degree}")
    r = 1 + (degree if dim == 1 else dim) - (1 if pooled else 0)
    out = np.empty((n, r * n_edges + (1 if pooled else 0)), dtype=x.dtype)
    inv_sqrt = np.array([1.0] + [1.0 / math.sqrt(t) for t in range(1, 2 + degree)])
    kernel = kernels["series", n * n_edges * r >= SERIAL_WORK]
    announce_compile(kernel, "series-feature")
    xt = np.ascontiguousarray(np.transpose(x, (0, 2, 1)))
    kernel(xt, float(center), 1.0 / sigma, math.sqrt(2.0 / sigma), inv_sqrt, degree, 1 if pooled else 0, out)
    return out


def cheb_features(
    v: np.ndarray,
    w: np.ndarray,
    *,
    centre: np.ndarray | None = None,
    inv_scale: float = 1.0,
    anchor_coef: np.ndarray | None = None,
    parallel: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features ``phi`` ``(n, r * E)`` of ``t = clip((v - centre) * inv_scale, -1, 1)``, ``v`` ``(n, E)``.

    ``phi[a, j * E + e] = sum_k T_k(t[a, e]) w[k, j]`` for a basis ``w`` ``(Q, r)`` (Q >= 2): the
    same numbers, in the same ``(n, r, E)`` layout, as :func:`._factorised.features_scaled` on
    ``t``, without its ``(n E, Q)`` temporary or a scaled copy of ``v``: ``n E Q (r + 1)``
    multiply-adds, vectorised over ``E``. ``centre`` ``(E,)`` defaults to 0. With ``anchor_coef``
    ``(Q,)`` (Chebyshev coefficients of a function ``g``) it also returns ``sum_e g(t[a, e])``
    ``(n,)`` in float64; else None. ``parallel=False``: one thread (next to a BLAS product, whose
    spinning workers would otherwise share the cores with Numba's: 256 x 256 took 8 ms, not 1).
    """
    kernels = _compiled()
    if kernels is None:
        raise ImportError("cheb_features needs Numba: pip install numba")
    n, n_edges = v.shape
    q, r = w.shape
    dtype = v.dtype
    out = np.empty((n, r, n_edges), dtype=dtype)
    anchor = np.empty(n, dtype=np.float64)
    centre = np.zeros(n_edges, dtype=dtype) if centre is None else np.ascontiguousarray(centre, dtype=dtype)
    coef = np.zeros(0, dtype=dtype) if anchor_coef is None else np.ascontiguousarray(anchor_coef, dtype=dtype)
    kernel = kernels["cheb", parallel and n * n_edges * q * r >= SERIAL_WORK]
    announce_compile(kernel, "Chebyshev-feature")
    kernel(np.ascontiguousarray(v), centre, dtype.type(inv_scale), np.ascontiguousarray(w, dtype=dtype), coef, out, anchor)
    return out.reshape(n, -1), (None if anchor_coef is None else anchor)


def add_outer(core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """``core + row[:, None] + col[None, :]`` summed in float64, in place in ``core`` (its dtype)."""
    kernels = _compiled()
    if kernels is None:
        raise ImportError("add_outer needs Numba: pip install numba")
    core = np.ascontiguousarray(core)
    announce_compile(kernels["outer"], "outer-sum")
    kernels["outer"](core, np.ascontiguousarray(row, dtype=np.float64), np.ascontiguousarray(col, dtype=np.float64), core)
    return core


def sinkhorn_numba(
    s: np.ndarray, v: np.ndarray, tol: float, max_iter: int, check_every: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The log-domain Sinkhorn loop of :func:`gamfsolve.solvers._assign.sinkhorn`, compiled.

    ``s`` (n, m) scaled scores, ``v`` (1, m) the starting column potential. Returns the plan,
    the final column potential (1, m) and the steps taken; the same algorithm and stopping
    rule, with Numba's ``exp``/``log`` (results agree to rounding).
    """
    kernels = _compiled()
    if kernels is None:
        raise ImportError("sinkhorn_numba needs Numba: pip install numba")
    s = np.ascontiguousarray(s)
    v = np.array(v, dtype=s.dtype).reshape(-1)
    p = np.empty_like(s)
    announce_compile(kernels["sinkhorn"], "Sinkhorn")
    it = kernels["sinkhorn"](s, v, s.dtype.type(tol), max_iter, check_every, p)
    return p, v.reshape(1, -1), int(it)


def lapjv_numba(cost: np.ndarray, v: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of the square ``cost`` (n, n) by Jonker-Volgenant, compiled:
    ``(x, v)`` with ``x[i]`` the column of row ``i`` and ``v`` (n,) the column duals. Given the
    duals of a previous, similar problem (``v``), most rows keep their best column and only the
    rest are augmented (measured on EfficientNet-B0's 2,304-wide groups between Hungarian sweeps:
    14-36 ms against SciPy's 390-630 ms); duals that leave over a quarter of the rows without
    their best column are dropped. Cold, the duals start at the column means (the same search as
    on column-centred costs; row offsets do not matter to it) and augmenting row reduction makes
    it about 2x SciPy's ``linear_sum_assignment`` on the same matrices. ``cost`` must be finite;
    a C-contiguous float32 or float64 one is read without a copy (float64 sums and duals either
    way: the same result as on its float64 copy)."""
    kernels = _compiled()
    if kernels is None:
        raise ImportError("lapjv_numba needs Numba: pip install numba")
    c = np.ascontiguousarray(cost, dtype=cost.dtype if cost.dtype == np.float32 else np.float64)
    n = c.shape[0]
    cold = c.mean(axis=0, dtype=np.float64) if n else np.zeros(0)
    warm = v is not None
    duals = np.array(v, dtype=np.float64) if warm else cold.copy()
    x = np.empty(n, dtype=np.int64)
    announce_compile(kernels["lapjv"], "linear-assignment")
    kernels["lapjv"](c, duals, warm, cold, x)
    return x, duals


def matched_sum(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """``sum_r exp(-||x[r] - y[r]||^2 / sigma)`` over the rows of ``x``, ``y`` ``(R, D)`` (float32/float64),
    in one compiled pass, summed in float64: the exact objective's term of one parameter."""
    kernels = _compiled()
    if kernels is None:
        raise ImportError("matched_sum needs Numba: pip install numba")
    work = np.dtype(np.float32) if x.dtype == np.float32 and y.dtype == np.float32 else np.dtype(np.float64)
    x, y = np.ascontiguousarray(x, dtype=work), np.ascontiguousarray(y, dtype=work)
    partial = np.zeros(max(1, min(64, x.shape[0] // 4096)), dtype=np.float64)
    announce_compile(kernels["matched"], "matched-affinity")
    kernels["matched"](x, y, 1.0 / sigma, partial)
    return float(partial.sum())


def series_check_numba(v: np.ndarray, w: np.ndarray, sigma: float, degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sums of :func:`._series.series_errors` for centred edges ``v``, ``w`` ``(S, E, D)``, compiled:
    ``exact`` ``(S,)``, ``approx`` ``(S, degree)`` (the series of every degree up to ``degree``) and
    ``sums`` ``(S, 3)``: ``sum_e q(v) q(w)``, ``sum_e q(v)``, ``sum_e q(w)``."""
    kernels = _compiled()
    if kernels is None:
        raise ImportError("series_check_numba needs Numba: pip install numba")
    exact = np.empty(v.shape[0], dtype=np.float64)
    approx = np.empty((v.shape[0], degree), dtype=np.float64)
    sums = np.empty((v.shape[0], 3), dtype=np.float64)
    announce_compile(kernels["series_check"], "series-check")
    kernels["series_check"](np.ascontiguousarray(v), np.ascontiguousarray(w), 1.0 / sigma, exact, approx, sums)
    return exact, approx, sums
