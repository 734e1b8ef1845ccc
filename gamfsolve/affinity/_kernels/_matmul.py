"""The exact edge affinity with squared distances from matrix products (any array-API backend).

Per edge ``e``: ``||x_ae - y_be||^2 = ||x_ae||^2 + ||y_be||^2 - 2 x_ae . y_be``, batched over
edges as one ``matmul`` of ``(E, n, D) @ (E, D, m)``, then ``exp`` and a sum over ``e``. The
inputs are first centred per edge (the mean of both sides), so the cancellation in the
expansion costs about ``eps * max ||x - c||^2 / sigma`` (relative) instead of ``eps * ||x||^2 /
sigma``; a caller that needs more asks for float64 (the ``auto`` kernel does).

Cost: ``2 n m E D`` flops in the batched product, ``n m E`` calls of ``exp`` (vectorised by
NumPy, PyTorch and CUDA), and ``4 n m E`` element operations; memory one block of ``(e_b, n,
m)`` numbers at a time (``block`` numbers, default 4 Mi on the host, 32 Mi on an accelerator,
where every array operation is a kernel launch and larger blocks mean fewer of them). For ``D = 1`` it is the reference with
less memory traffic; for conv edges (``D = k*k``) it replaces ``3 D`` element operations per
kernel value by matrix-product flops, leaving ``exp`` as the cost floor.
"""

from __future__ import annotations

from typing import Any

from ..._xp import clip, on_accelerator

__all__ = ["edge_affinity_matmul"]

Array = Any


def _centred(x: Array, y: Array, xp: Any) -> tuple[Array, Array, Array, Array]:
    """Edges centred per edge ``(E, n, D)``, ``(E, D, m)`` and their squared norms."""
    centre = (xp.sum(x, axis=0) + xp.sum(y, axis=0)) / float(x.shape[0] + y.shape[0])  # (E, D)
    xe = xp.permute_dims(x - centre, (1, 0, 2))
    ye = xp.permute_dims(y - centre, (1, 2, 0))
    return xe, ye, xp.sum(xe * xe, axis=2)[:, :, None], xp.sum(ye * ye, axis=1)[:, None, :]


def edge_affinity_matmul(
    x: Array, y: Array, sigma: float, xp: Any, *, rtol: float = 1e-6, block: int | None = None
) -> Array:
    """Exact ``R[a, b] = sum_e exp(-||x[a, e] - y[b, e]||^2 / sigma)`` via batched products.

    The squared distances are formed in float64 when the input dtype would lose more than
    ``rtol / 4`` to cancellation (``eps * 2 max ||x - c||^2 / sigma``); ``exp`` and the result
    stay in the input dtype.
    """
    n, n_edges, _ = x.shape
    m = y.shape[0]
    dtype = x.dtype
    xe, ye, nx, ny = _centred(x, y, xp)
    loss = xp.finfo(dtype).eps * 2.0 * float(xp.maximum(xp.max(nx), xp.max(ny))) / sigma
    if loss > rtol / 4 and dtype != xp.float64:  # centre and expand in float64 instead
        xe, ye, nx, ny = _centred(xp.astype(x, xp.float64), xp.astype(y, xp.float64), xp)
    if block is None:
        block = 1 << 25 if on_accelerator(x) else 1 << 22
    step = max(1, block // max(1, n * m))
    inv = -1.0 / sigma
    out = None
    for s in range(0, n_edges, step):
        sl = (slice(s, min(s + step, n_edges)), ...)
        d2 = xp.astype(nx[sl] + ny[sl] - 2.0 * xp.matmul(xe[sl], ye[sl]), dtype, copy=False)
        # float64 partial sums: E float32 terms summed in float32 would lose ~sqrt(E) eps.
        term = xp.sum(xp.exp(clip(d2, 0.0, None, xp) * inv), axis=0, dtype=xp.float64)
        out = term if out is None else out + term
    return xp.astype(out, dtype, copy=False)
