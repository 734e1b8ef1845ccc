"""The factorised edge affinity: a short feature map, so ``R`` is one matrix product.

For scalar edges, with ``p = (x - c) / sqrt(sigma)`` and ``q = (y - c) / sqrt(sigma)`` (the same
centre ``c`` on both sides leaves ``x - y`` unchanged),

    exp(-(p - q)^2) = exp(-p^2) exp(-q^2) sum_t (2 p q)^t / t!

is a sum of separable terms. The truncated Taylor series needs about ``2 B^2 + 6 sqrt(B^2)``
terms for ``|p|, |q| <= B`` (``B = 3`` already needs 45), because it expands about one point.
The kernel here keeps the idea, a separable sum, but uses the best short sum it can find:
interpolate ``k(p, q)`` in both arguments at ``Q`` Chebyshev points of ``[-B, B]``, giving
``k ~ T(p/B)^T C T(q/B)`` with ``T`` the Chebyshev polynomials, then keep the ``r`` leading
eigenpairs of the symmetric ``C = V L V^T``. Features ``phi(p) = T(p/B) V_r L_r^(1/2)``,

    R[a, b] ~ sum_e phi(p[a, e]) . phi(q[b, e]) = (Phi_x @ Phi_y^T)[a, b],   Phi: (n, E * r).

``r`` grows about linearly in ``B`` (6 at ``B = 0.5``, 12 at 1.5, 20 at 3, 31 at 5 for
``1e-7``) where the Taylor series grows quadratically (8, 20, 45, 92). ``Q`` and ``r`` are
chosen per ``(B, tol)`` by checking the error of the short sum on a dense grid of ``[-B, B]^2``
(``max |phi(p).phi(q) - k(p, q)| <= tol / 2`` there); the basis is cached.

Error control: per edge at most ``tol``, so ``|R~ - R| <= E * tol`` entrywise. The caller asks
for ``|R~ - R| <= rtol * max|R|``: the first pass takes ``tol = rtol / 4`` and, if the result has
``max R < E / 4`` (widely spread weights), one more pass with the tolerance the computed
``max R`` calls for. When the rank would exceed ``MAX_RANK`` there is no accurate short map and
the caller falls back to an exact kernel. The per-edge bound is a worst case (every edge at the
edge of the range); the product then leaves out the trailing terms whose actual contribution,
bounded by Cauchy-Schwarz over each unit's edges, fits in what ``rtol * max R`` leaves
(:func:`kept_terms`): at weights of 0.01 ``sqrt(sigma)`` a rank-2 map multiplies one term.

Cost: features ``2 (n + m) E Q`` flops (Chebyshev recurrence) plus ``2 (n + m) E Q r`` (basis
change); the product ``2 n m E r`` flops at matrix-multiply speed (about 100x the rate of
``exp`` on a CPU). Memory ``(n + m) E r`` numbers. Works on every array-API backend.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from ..._xp import clip, device, to_host
from . import _numba

__all__ = ["MAX_RANK", "anchor_sums", "basis", "bound_key", "features_scaled", "kept_terms", "plan_bound", "product"]

Array = Any
MAX_RANK = 64  # beyond this a short map stops paying (and the grid check gets slow)
_MAX_NODES = 160
_NODE_SCAN = 6
# Float32 products longer than this (E r) are accumulated in float64: at E r = 124 000 (fan-in 4608,
# r = 27) the float32 product alone put 1.1e-6 of max R into the result, at 12 800 (fan-in 512, r = 25) 2.5e-7.
FLOAT32_MAX_LENGTH = 32768


def bound_key(b: float) -> float:
    """Round a bound up to the grid ``2^(k/8)`` (9 % steps) so bases are shared and cached."""
    if not b > 2.0**-12:
        return 2.0**-12
    return 2.0 ** (math.ceil(math.log2(b) * 8.0 - 1e-9) / 8.0)


def tol_key(tol: float) -> float:
    """Round a tolerance down to the grid ``10^(k/4)``."""
    return 10.0 ** (math.floor(math.log10(tol) * 4.0 + 1e-9) / 4.0)


def _cheb(t: np.ndarray, q: int) -> np.ndarray:
    """``T_0 .. T_{q-1}`` at ``t`` (values in [-1, 1]) as an array ``(len(t), q)``."""
    out = np.empty((t.size, q))
    out[:, 0] = 1.0
    if q > 1:
        out[:, 1] = t
    for k in range(2, q):
        out[:, k] = 2.0 * t * out[:, k - 1] - out[:, k - 2]
    return out


def _kernel(b: float, s: np.ndarray, t: np.ndarray, centred: bool) -> np.ndarray:
    """``k(s, t) = exp(-b^2 (s - t)^2)`` on scaled points (or its centred part, see :func:`basis`)."""
    k = np.exp(-((b * (s[:, None] - t[None, :])) ** 2))
    if centred:
        k = k - np.exp(-((b * s) ** 2))[:, None] - np.exp(-((b * t) ** 2))[None, :] + 1.0
    return k


def _nodes(q: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``q`` Chebyshev points of the first kind on [-1, 1] and the ``(q, q)`` map values -> coefficients."""
    nodes = np.cos(np.pi * (np.arange(q) + 0.5) / q)
    to_coef = 2.0 / q * _cheb(nodes, q).T
    to_coef[0] /= 2.0
    return nodes, to_coef


def _grid(b: float) -> np.ndarray:
    """The dense check grid on [-1, 1] for a bound ``b`` (finer for wider kernels)."""
    return np.linspace(-1.0, 1.0, 48 + int(48 * math.ceil(b)))


def _try_nodes(b: float, q: int, tol: float, grid: np.ndarray, exact: np.ndarray, centred: bool) -> np.ndarray | None:
    """The smallest-rank basis ``(q, r)`` from ``q`` Chebyshev nodes meeting ``tol / 2`` on ``grid``.

    On the grid, error <= (error of the full rank-``q`` interpolant, measured) + (sum of the
    dropped ``|lambda_k| max_g (v_k . T(g))^2``, a bound on what truncation adds).
    """
    nodes, to_coef = _nodes(q)
    vals = _kernel(b, nodes, nodes, centred)
    coef = to_coef @ vals @ to_coef.T
    lam, vec = np.linalg.eigh((coef + coef.T) / 2.0)
    order = np.argsort(-lam)
    lam, vec = lam[order], vec[:, order]
    proj = _cheb(grid, q) @ vec  # (G, q)
    interp = float(np.max(np.abs((proj * lam) @ proj.T - exact)))
    if interp > tol / 4.0:
        return None
    dropped = np.abs(lam) * np.max(proj * proj, axis=0)
    tail = np.concatenate([np.cumsum(dropped[::-1])[::-1], [0.0]])  # tail[r] = sum_{k >= r}
    ok = np.nonzero(interp + tail <= tol / 2.0)[0]
    r = max(1, int(ok[0]))
    if r > MAX_RANK or np.any(lam[:r] <= 0.0):
        return None
    return vec[:, :r] * np.sqrt(lam[:r])


def max_bound(max_rank: int) -> float:
    """Largest ``B`` worth trying for a rank budget (measured: ``r ~ 5 B + 4`` at ``1e-7``)."""
    return max(0.5, (max_rank - 2.0) / 5.0)


@lru_cache(maxsize=256)
def basis(b: float, tol: float, centred: bool = False) -> np.ndarray | None:
    """``W`` ``(Q, r)``, float64: ``exp(-(p - q)^2) ~ T(p/b) W W^T T(q/b)`` within ``tol`` on ``[-b, b]^2``.

    ``centred``: expand instead ``k~(p, q) = k(p, q) - k(p, 0) - k(0, q) + 1`` (``k`` with the
    lines through the centre taken out; positive semi-definite, one rank shorter than ``k``); the
    caller adds back ``k(p, 0) + k(0, q) - 1`` exactly, as sums over edges (row and column terms).
    None when no basis of rank ``<= MAX_RANK`` reaches ``tol``. Centred bases also have
    :func:`anchor_coefficients` within ``tol / 8`` from their ``Q`` nodes.
    """
    if b > max_bound(MAX_RANK) * 1.2:
        return None
    grid = _grid(b)
    exact = _kernel(b, grid, grid, centred)
    # The first q that passes can leave a rank one or two above what a few more nodes give (the
    # interpolation error then leaves less room for truncation): scan on to ``q + _NODE_SCAN`` and
    # keep the lowest rank, with the fewest nodes for it (rank sets the product's cost, q the features').
    q = max(3, math.ceil(6.0 * b) + 2)
    best: np.ndarray | None = None
    last = _MAX_NODES
    while q <= min(last, _MAX_NODES):
        w = _try_nodes(b, q, tol, grid, exact, centred)
        if w is not None and centred and anchor_coefficients(b, q, tol / 8.0) is None:
            w = None  # the anchors, summed from the same nodes' series (centred_side), need more
        if w is not None:
            if best is None:
                last = q + _NODE_SCAN
            if best is None or w.shape[1] < best.shape[1]:
                best = w
        q += 1 if best is not None or q < 24 else 2 + q // 8
    return best


@lru_cache(maxsize=256)
def anchor_coefficients(b: float, q: int, tol: float) -> np.ndarray | None:
    """Chebyshev coefficients ``(q,)`` of ``g(s) = 1 - exp(-b^2 s^2)`` on ``[-1, 1]`` within ``tol``, or None.

    Interpolation at the ``q`` Chebyshev points of a :func:`basis` of ``q`` terms, checked on a
    dense grid. ``g`` is the centred expansion's anchor ``k(p, 0) = 1 - g``, a restriction of the
    kernel the basis already resolves, so the same ``q`` is enough (None otherwise: the caller
    then sums the anchors exactly).
    """
    nodes, to_coef = _nodes(q)
    coef = to_coef @ -np.expm1(-((b * nodes) ** 2))
    grid = _grid(b)
    err = float(np.max(np.abs(_cheb(grid, q) @ coef + np.expm1(-((b * grid) ** 2)))))
    return coef if err <= tol else None


def anchor_sums(v: Array, sigma: float, xp: Any) -> Array:
    """``sum_e exp(-v[a, e]^2 / sigma)`` ``(n,)`` in float64, for centred values ``v`` ``(n, E)``: ``n E`` exp."""
    v64 = xp.astype(v, xp.float64)
    return xp.sum(xp.exp(-(v64 * v64) / sigma), axis=1)


def plan_bound(x: Array, y: Array, sigma: float, xp: Any) -> tuple[Array, float]:
    """Per-edge centre ``c`` ``(E,)`` (mid-range over both inputs) and ``B = max |p|, |q|``."""
    hi = xp.maximum(xp.max(x, axis=0), xp.max(y, axis=0))
    lo = xp.minimum(xp.min(x, axis=0), xp.min(y, axis=0))
    centre = (hi + lo) / 2.0
    half = float(xp.max(hi - lo)) / 2.0
    return centre, half / math.sqrt(sigma)


def features_scaled(t: Array, w: np.ndarray, xp: Any, *, block: int = 1 << 22) -> Array:
    """``phi`` ``(n, r * E)`` for scaled values ``t`` ``(n, E)`` in ``[-1, 1]`` and a basis ``w`` ``(Q, r)``.

    ``phi = [T_0(t), ..., T_{Q-1}(t)] @ w``: the Chebyshev recurrence, then one matrix product,
    in row blocks of at most ``block`` numbers of ``T``.
    """
    n, n_edges = t.shape
    q, r = w.shape
    if q >= 2 and isinstance(t, np.ndarray) and _numba.available():
        return _numba.cheb_features(t, w)[0]
    wx = xp.asarray(w, dtype=t.dtype, device=device(t))
    rows = max(1, block // max(1, n_edges * q))
    parts = []
    for start in range(0, n, rows):
        flat = xp.reshape(t[start : min(start + rows, n), ...], (-1,))
        cheb = [xp.ones_like(flat), flat]
        two_t = 2.0 * flat
        for _ in range(2, q):
            cheb.append(two_t * cheb[-1] - cheb[-2])
        parts.append(xp.stack(cheb[:q], axis=1) @ wx)
    phi = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
    # (n E, r) -> (n, r, E): the layout of the Numba kernel, so both give identical features.
    return xp.reshape(xp.permute_dims(xp.reshape(phi, (n, n_edges, r)), (0, 2, 1)), (n, r * n_edges))


def centred_side(
    x: Array, centre: Array, b: float, scale: float, w: np.ndarray, sigma: float, tol: float, xp: Any
) -> tuple[Array, Array]:
    """Features of the centred kernel and anchor sums for one side: ``(phi (n, r E), F (n,) float64)``.

    ``x`` ``(n, E)`` raw values, ``centre`` ``(E,)``, ``b`` the basis' bound key, ``scale = b
    sqrt(sigma)``; ``F[a] = sum_e exp(-(x[a, e] - c_e)^2 / sigma)``. NumPy with Numba: one fused
    pass on one thread (features, and the anchors from their Chebyshev series, each term within
    ``tol / 8``; one thread because the product that follows keeps BLAS workers spinning);
    otherwise :func:`features_scaled` and the exact :func:`anchor_sums`.
    """
    n_edges = x.shape[1]
    if isinstance(x, np.ndarray) and w.shape[0] >= 2 and _numba.available():
        coef = anchor_coefficients(b, w.shape[0], tol_key(tol) / 8.0)  # the check basis() made: a cache hit
        if coef is not None:
            phi, g = _numba.cheb_features(x, w, centre=centre, inv_scale=1.0 / scale, anchor_coef=coef, parallel=False)
            assert g is not None  # returned whenever anchor_coef is given
            return phi, float(n_edges) - g
    v = x - centre
    return features_scaled(clip(v / scale, -1.0, 1.0, xp), w, xp), anchor_sums(v, sigma, xp)


def _term_norms(a: Array, terms: int, xp: Any) -> np.ndarray:
    """``max_i ||a[i, t, :]||_2`` for each term ``t`` of a term-major ``(n, terms * E)`` array, on the host.

    One transfer for all terms (a GPU pays a synchronisation per transfer); NumPy without a temporary.
    """
    n = a.shape[0]
    blocks = xp.reshape(a, (n, terms, a.shape[1] // terms))
    if isinstance(a, np.ndarray):
        sq = np.einsum("ite,ite->it", blocks, blocks)
    else:
        sq = xp.sum(blocks * blocks, axis=2)
    return np.sqrt(to_host(xp.max(sq, axis=0)).astype(np.float64))


def kept_terms(dx: Array, dy: Array, terms: int, floor: float, rtol: float, committed: float, xp: Any) -> tuple[int, float]:
    """How many leading terms of ``dx dy^T`` must be multiplied, and the bound on what the rest add.

    ``dx`` ``(n, terms * E)``, ``dy`` ``(m, terms * E)``, term-major. Term ``t`` adds
    ``sum_e dx[a, t, e] dy[b, t, e]``, at most ``B_t = max_a ||dx[a, t]|| max_b ||dy[b, t]||`` by
    Cauchy-Schwarz, to every entry. The result without the product is ``floor`` at its largest
    (``max_a row + max_b col``), so its largest entry with the kept terms is at least
    ``floor - sum_kept B_t``; trailing terms are left out while the error so far (``committed``,
    plus their ``B_t``) stays within ``rtol`` times that (less the error). The basis orders terms by
    eigenvalue, and on weights that fill their range unevenly (most do: bell-shaped, the extremes
    rare) the last terms are far smaller than the per-edge worst case that sized the basis.
    Cost: ``(n + m) E`` per term.
    """
    bounds = (_term_norms(dx, terms, xp) * _term_norms(dy, terms, xp) * (1.0 + 1e-3)).tolist()  # float32 sums
    kept, spent = terms, 0.0
    while kept > 0:
        err = committed + spent + bounds[kept - 1]
        if err > rtol * (floor - sum(bounds[: kept - 1]) - err):
            break
        spent += bounds[kept - 1]
        kept -= 1
    return kept, spent


def product(px: Array, py: Array, xp: Any, *, row: Array | None = None, col: Array | None = None,
            shift: float = 0.0, overwrite: bool = False, terms: int = 1, rtol: float = 0.0,
            committed: float = 0.0) -> tuple[Array, float]:
    """``(px @ py^T (+ row[:, None] + col[None, :] + shift), dropped)`` with the mean feature split off.

    ``row`` ``(n,)`` and ``col`` ``(m,)`` are float64 (the centred expansion's exact terms).
    ``px py^T = mu.mu + dx.mu + mu.dy + dx dy^T`` (``d = p - mu``, ``mu`` the mean feature of both
    sides): when the weights are small against ``sqrt(sigma)`` every unit has nearly the same
    features, and a float32 product of length ``E r`` would lose ``~sqrt(E r) eps`` of the large
    common part to rounding; here that part is summed in float64 and only the small ``dx dy^T``
    is rounded in float32; beyond ``FLOAT32_MAX_LENGTH`` even that is summed in float64 (its
    rounding grows with the length). ``terms``/``rtol``/``committed``: the features are ``terms``
    blocks (term-major); with ``rtol > 0`` the trailing blocks of ``dx dy^T`` that an entrywise
    error of ``rtol`` times the result's maximum can afford, on top of ``committed``, are left out
    (:func:`kept_terms`; their mean parts stay); ``dropped`` bounds what they would have added to
    any entry (0.0 when none is left out). Float64 inputs with ``rtol = 0`` skip the split.
    ``overwrite``: ``px`` and ``py`` may be used as scratch (NumPy). Cost: one ``2 n m E r'``
    product (``r' <= r`` the terms kept) plus ``O((n + m) E r + n m)``; on NumPy with Numba no
    temporaries beyond the ``(n, m)`` result.
    """
    outer = isinstance(px, np.ndarray) and _numba.available()  # the float64 epilogue in place, compiled
    if px.dtype == xp.float64 and not rtol > 0.0:
        full = px @ xp.permute_dims(py, (1, 0))
        if row is None or col is None:
            return full, 0.0
        full = _numba.add_outer(full, row, col + shift) if outer else full + (row[:, None] + (col + shift)[None, :])
        return full, 0.0
    mu = (xp.sum(px, axis=0) + xp.sum(py, axis=0)) / float(px.shape[0] + py.shape[0])
    long = px.shape[1] > FLOAT32_MAX_LENGTH and px.dtype != xp.float64
    if overwrite and outer and not long:
        px -= mu
        py -= mu
        dx, dy = px, py
    else:
        dx, dy = px - mu, py - mu
    if long:  # long float32 sums lose ~1e-6 (measured): accumulate in float64
        dx, dy, mu = xp.astype(dx, xp.float64), xp.astype(dy, xp.float64), xp.astype(mu, xp.float64)
    mu64 = xp.astype(mu, xp.float64)
    r_vec = xp.astype(dx @ mu, xp.float64) + xp.sum(mu64 * mu64)  # (n,), small terms: float32 is enough
    c_vec = xp.astype(dy @ mu, xp.float64)
    if row is not None and col is not None:
        r_vec, c_vec = r_vec + row, c_vec + (col + shift)
    kept, dropped = terms, 0.0
    if rtol > 0.0:
        floor = float(xp.max(r_vec)) + float(xp.max(c_vec))
        kept, dropped = kept_terms(dx, dy, terms, floor, rtol, committed, xp)
    width = (dx.shape[1] // terms) * kept
    if width == dx.shape[1]:
        core = dx @ xp.permute_dims(dy, (1, 0))
    elif width > 0:
        core = dx[:, :width] @ xp.permute_dims(dy[:, :width], (1, 0))
    else:
        core = xp.zeros((dx.shape[0], dy.shape[0]), dtype=dx.dtype, device=device(dx))
    if outer:
        return xp.astype(_numba.add_outer(core, r_vec, c_vec), px.dtype, copy=False), dropped
    full = xp.astype(core, xp.float64) + r_vec[:, None] + c_vec[None, :]
    return xp.astype(full, px.dtype), dropped
