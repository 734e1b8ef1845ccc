"""The exact edge affinity as one fused CUDA kernel (compiled by CuPy), for arrays on a GPU.

The array-code kernels (``"matmul"``, ``"reference"``) stream ``(block, n, m)`` temporaries
through GPU memory several times per edge block, and are bound by that traffic and by the
launch of each array operation. This kernel computes

    R[a, b] = sum_e exp(-||x[a, e, :] - y[b, e, :]||^2 / sigma)

in one launch: each thread block owns a 16 x 16 tile of ``R`` and walks the edges in shared
memory tiles (both sides' ``16 x TE*D`` numbers); each thread keeps its running sum in float64
(float32 input: differences, squares and ``expf`` in float32, like the Numba kernel). Reads
``(n + m) E D`` numbers from memory once per tile row/column, writes ``n m``; ``n m E`` ``exp``.

Inputs: CuPy arrays, or torch CUDA tensors (shared with CuPy through DLPack, no copy); the
result has the input's library, dtype and device. CuPy is optional: :func:`available` says
whether a CUDA device is usable through it. ``D`` up to ``MAX_D`` (wider edges fall back to
``"matmul"`` in the dispatcher). The first call per dtype compiles (NVRTC, about a second,
cached on disk by CuPy).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..._xp import library

__all__ = ["MAX_D", "available", "edge_affinity_cuda", "supports"]

Array = Any
TILE = 16  # a TILE x TILE block of output per thread block
TILE_NUMBERS = 128  # numbers per row of a shared-memory edge tile (TE edges of D numbers, TE * D <= this)
MAX_D = TILE_NUMBERS

_SOURCE = r"""
extern "C" __global__ void edge_affinity_{name}(
    const {T}* __restrict__ x, const {T}* __restrict__ y, {T}* __restrict__ out,
    const int n, const int m, const int n_edges, const int dim, const int te, const {T} neg_inv_sigma)
{{
    extern __shared__ unsigned char smem[];
    const int width = te * dim;          // numbers per tile row
    const int stride = width + 1;        // padded: threads of a warp read different banks
    {T}* xs = reinterpret_cast<{T}*>(smem);
    {T}* ys = xs + {TILE} * stride;
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int a = blockIdx.y * {TILE} + ty;           // output row of this thread
    const int b = blockIdx.x * {TILE} + tx;           // output column of this thread
    const int ya = blockIdx.x * {TILE} + ty;          // the y row this thread helps load
    const long long row_len = (long long)n_edges * dim;
    double acc = 0.0;
    for (int e0 = 0; e0 < n_edges; e0 += te) {{
        const int edges = min(te, n_edges - e0);
        const int len = edges * dim;
        const long long off = (long long)e0 * dim;
        for (int k = tx; k < len; k += {TILE}) {{
            xs[ty * stride + k] = (a < n) ? x[a * row_len + off + k] : ({T})0;
            ys[ty * stride + k] = (ya < m) ? y[ya * row_len + off + k] : ({T})0;
        }}
        __syncthreads();
        if (a < n && b < m) {{
            const {T}* xr = xs + ty * stride;
            const {T}* yr = ys + tx * stride;
            for (int j = 0; j < edges; ++j) {{
                {T} d2 = ({T})0;
                for (int k = 0; k < dim; ++k) {{
                    const {T} d = xr[j * dim + k] - yr[j * dim + k];
                    d2 += d * d;
                }}
                acc += (double){EXP}(d2 * neg_inv_sigma);
            }}
        }}
        __syncthreads();
    }}
    if (a < n && b < m) out[(long long)a * m + b] = ({T})acc;
}}
"""


@lru_cache(maxsize=1)
def available() -> bool:
    """True when CuPy imports and sees a CUDA device."""
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


@lru_cache(maxsize=2)
def _kernel(dtype_name: str) -> Any:
    import cupy

    t, exp = ("float", "expf") if dtype_name == "float32" else ("double", "exp")
    src = _SOURCE.format(name=dtype_name, T=t, EXP=exp, TILE=TILE)
    return cupy.RawKernel(src, f"edge_affinity_{dtype_name}")


def supports(x: Array) -> bool:
    """Whether ``x`` can go through this kernel: a CuPy array, or a torch CUDA tensor, float32/64."""
    lib = library(x)
    if lib == "cupy":
        ok = True
    elif lib == "torch":
        ok = x.device.type == "cuda"
    else:
        return False
    return ok and str(x.dtype).rsplit(".", 1)[-1] in ("float32", "float64") and available()


def edge_affinity_cuda(x: Array, y: Array, sigma: float) -> Array:
    """Exact ``R`` ``(n, m)`` for ``x`` ``(n, E, D)``, ``y`` ``(m, E, D)`` on one CUDA device.

    Same library, dtype and device out as in; ``D <= MAX_D``; ``E >= 1``.
    """
    import cupy

    torch_in = library(x) == "torch"
    xc, yc = (cupy.from_dlpack(x.detach()), cupy.from_dlpack(y.detach())) if torch_in else (x, y)
    n, n_edges, dim = xc.shape
    m = yc.shape[0]
    if dim > MAX_D:
        raise ValueError(f"edge_affinity_cuda: edges of at most {MAX_D} numbers, got D = {dim}")
    dtype = xc.dtype
    with cupy.cuda.Device(xc.device.id):
        xc, yc = cupy.ascontiguousarray(xc), cupy.ascontiguousarray(yc)
        out = cupy.empty((n, m), dtype=dtype)
        if n and m:
            te = max(1, min(n_edges, TILE_NUMBERS // dim))
            shared = 2 * TILE * (te * dim + 1) * dtype.itemsize
            grid = ((m + TILE - 1) // TILE, (n + TILE - 1) // TILE)
            args = (xc, yc, out, *(np.int32(v) for v in (n, m, n_edges, dim, te)), dtype.type(-1.0 / sigma))
            _kernel(dtype.name)(grid, (TILE, TILE), args, shared_mem=shared)
    if torch_in:
        import torch

        return torch.from_dlpack(out)
    return out
