"""Edge-affinity kernels behind one small interface.

``edge_affinity(x, y, sigma)`` with ``x`` of shape ``(n, E, D)`` and ``y`` of shape
``(m, E, D)`` returns the ``(n, m)`` matrix

    R[a, b] = sum_e exp(-||x[a, e, :] - y[b, e, :]||^2 / sigma)

the paper's Gaussian edge affinity summed over the ``E`` edges that units ``a`` and ``b``
share (``D = 1`` for a scalar weight, ``k*k`` for a convolution kernel slice). The result has
the input's array library, dtype and device.

Accuracy: every kernel returns ``R~`` with ``max |R~ - R| <= rtol * max |R|`` (default
``rtol = 1e-6``) up to the rounding of the input dtype (float32: a few ``1e-7``).

Kernels and what they cost (``n x m`` output, ``E`` edges of ``D`` numbers):

``"reference"``
    Plain array-API code, blocked over rows: ``n m E`` exp plus ``3 n m E D`` element
    operations with ``(64, m, E, D)`` temporaries. The correctness oracle.
``"numba"``
    Compiled loops, parallel over output rows (NumPy input only; Numba optional): ``n m E``
    ``exp`` by a polynomial that vectorises (no SVML needed), about 0.7 CPU cycle per
    ``(a, b, e)`` in float32.
``"cuda"``
    One fused CUDA kernel compiled by CuPy (:mod:`._cuda`): CuPy arrays or torch CUDA tensors
    (through DLPack), ``D <= 128``. ``n m E`` ``expf``/``exp`` and ``3 n m E D`` flops in
    registers and shared memory, float64 sums; no temporaries. The exact kernel on GPUs when
    CuPy is installed.
``"matmul"``
    Squared distances as ``||x||^2 + ||y||^2 - 2 x.y`` per edge, batched as one
    ``(E, n, D) @ (E, D, m)`` product, then vectorised ``exp``: ``2 n m E D`` flops plus
    ``n m E`` exp; any backend (the exact kernel on GPUs without CuPy). The floor for ``D > 1``
    on the host.
``"factorised"``
    ``D = 1`` only: a short separable expansion of the Gaussian with the lines through the
    centre taken out (Chebyshev interpolation, compressed to ``r`` eigen-features; see
    :mod:`._factorised`), so ``R = F_x 1^T + 1 F_y^T - E + Phi_x @ Phi_y^T`` with exact anchor
    sums ``F`` (``(n + m) E`` exp) and ``Phi`` of shape ``(n, E r)``: ``2 n m E r`` flops at
    matrix-product speed.
    ``r`` depends on the spread of the weights in units of ``sqrt(sigma)``
    (``B = max half-range / sqrt(sigma)``): about 5 at ``B = 0.5``, 10 at 1.5, 18 at 3, 29 at
    5. Where no short map meets ``rtol`` (``r > 64``) or ``D > 1``, it computes exactly
    instead (Numba for NumPy input, ``"cuda"`` on a GPU with CuPy, else ``"matmul"``).
``"auto"``
    ``"factorised"`` when ``D = 1`` and the short map is expected to beat the exact kernel
    that would answer instead, otherwise that exact kernel. Against exact Numba (NumPy input)
    the map pays only for ``r <= AUTO_MAX_RANK_NUMBA`` on layers at least ``AUTO_MIN_SIDE_NUMBA``
    wide: the vectorised Numba kernel costs about 0.7 CPU cycle per ``(a, b, e)`` and a float32
    matrix product about ``r / 24``, plus the features (measured crossover, BLAS on one thread as
    inside a solve, ``r ~ 6-7`` at 512 x 512 x 512, ``r ~ 5-6`` at 256, ``r ~ 3-4`` at 128).
    Against ``"matmul"`` on the host (torch CPU, array-api-strict) it pays up to ``r =
    AUTO_MAX_RANK``; on a GPU, where ``"matmul"`` is cheap, up to ``AUTO_MAX_RANK_GPU``; against
    the fused ``"cuda"`` kernel up to ``AUTO_MAX_RANK_CUDA``.

``edge_features(x, sigma, bound=...)`` exposes the factorised kernel's feature map, so that
sums over many models move inside one product (see its docstring for the contract).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..._errors import FusionError, OptionError
from ..._xp import clip, is_floating, namespace, on_accelerator
from . import _cuda, _factorised, _numba
from ._matmul import edge_affinity_matmul
from ._reference import edge_affinity_reference

__all__ = [
    "AUTO_MAX_RANK",
    "AUTO_MAX_RANK_CUDA",
    "AUTO_MAX_RANK_GPU",
    "AUTO_MAX_RANK_NUMBA",
    "KERNELS",
    "edge_affinity",
    "edge_features",
    "factorised_rank",
]

Array = Any
KERNELS = ("auto", "reference", "numba", "cuda", "factorised", "matmul")
# Against the exact "matmul" kernel (torch, array-api-strict, CuPy): torch CPU, 512 x 512 x 512 float32,
# matmul 1.5-2.3 s against the factorised kernel's 0.06-0.24 s at ranks 6-28, so a long map still pays.
# edge_features uses this limit too (the many-model sums; see its docstring).
AUTO_MAX_RANK = 40
# On a GPU without CuPy (torch CUDA, measured on an NVIDIA H100) the exact kernel is "matmul", launch-bound and
# cheap, so the map pays only while short: 512 x 512, fan-in 512 / 4608, factorised vs matmul, float32:
# r = 2 1.1-13x, 5 1.4-5.9x, 9-10 1.2-3.9x, 25-27 0.5-1.0x (float64 alike). Crossover about r = 15.
AUTO_MAX_RANK_GPU = 12
# Against the fused CUDA kernel: the map's dozens of launches cost more than the one fused launch at
# every size measured (BENCHMARKS.md, "GPU: NVIDIA H100"), so auto takes the fused kernel.
AUTO_MAX_RANK_CUDA = 0
# Against the vectorised exact Numba kernel (NumPy; FMA-contracted), float32, whole calls
# on both cores, factorised / Numba speed-up with BLAS on one thread (as inside gamf's solve) | on two,
# with the features pass in Numba and trailing terms left out:
# 512 x 512 x 512: r = 3 1.9x | 2.6x, 4 1.8x | 2.7x, 5 1.3x | 1.9x, 6 1.2x | 1.7x, 7 0.87x | 1.3x, 9 0.71x | 1.05x;
# 256^3: r = 3 2.2x | 2.9x, 4 1.4x | 2.0x, 7 0.72x | 0.98x; 128^3: r = 3 1.2x | 1.4x, 4 0.91x | 1.06x.
AUTO_MAX_RANK_NUMBA = 5
AUTO_MIN_SIDE_NUMBA = 256


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise OptionError(f"unknown kernel {kernel!r}; choose one of {list(KERNELS)}")
    return kernel


def _check_pair(x: Array, y: Array, sigma: float) -> Any:
    xp = namespace(x, y)
    if x.ndim != 3 or y.ndim != 3 or x.shape[1:] != y.shape[1:]:
        raise FusionError(f"edge_affinity needs x (n, E, D) and y (m, E, D), got {x.shape} and {y.shape}")
    if not (is_floating(xp, x) and x.dtype == y.dtype):
        raise FusionError(f"edge_affinity needs one real floating dtype, got {x.dtype} and {y.dtype}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise FusionError(f"sigma must be a positive finite number, got {sigma}")
    return xp


def _fused_cuda(x: Array) -> bool:
    """Whether the fused CUDA kernel takes this input (on a GPU through CuPy, edges of <= 128 numbers)."""
    return x.shape[2] <= _cuda.MAX_D and _cuda.supports(x)


def _exact(x: Array, y: Array, sigma: float, xp: Any, rtol: float) -> tuple[Array, str]:
    """The fastest exact kernel for the input: Numba for NumPy, the fused kernel on a GPU, else ``matmul``."""
    if isinstance(x, np.ndarray) and _numba.available():
        return _numba.edge_affinity_numba(x, y, sigma), "numba"
    if _fused_cuda(x):
        return _cuda.edge_affinity_cuda(x, y, sigma), "cuda"
    return edge_affinity_matmul(x, y, sigma, xp, rtol=rtol), "matmul"


def _factorised_affinity(x: Array, y: Array, sigma: float, xp: Any, rtol: float, max_rank: int) -> Array | None:
    """The centred short map meeting ``rtol * max R`` (a posteriori check), or None (no short map).

    ``R = F_x 1^T + 1 F_y^T - E + Phi~_x Phi~_y^T`` with ``F_x[a] = sum_e k(x[a, e], c_e)`` (exact,
    ``n E`` exp; on NumPy with Numba from its Chebyshev series in the features' pass, within a
    quarter of the per-edge budget) and ``Phi~`` the features of the centred kernel
    (:func:`._factorised.basis`).
    """
    n_edges = x.shape[1]
    x2, y2 = x[:, :, 0], y[:, :, 0]
    centre, bound = _factorised.plan_bound(x2, y2, sigma, xp)
    if bound > _factorised.max_bound(max_rank):
        return None  # the rank would exceed the budget: skip building a basis
    key = _factorised.bound_key(bound)
    scale = key * math.sqrt(sigma)
    tol = rtol / 4.0
    for _ in range(2):
        w = _factorised.basis(key, _factorised.tol_key(tol), centred=True)
        if w is None or w.shape[1] > max_rank:
            return None
        px, row = _factorised.centred_side(x2, centre, key, scale, w, sigma, tol, xp)
        py, col = _factorised.centred_side(y2, centre, key, scale, w, sigma, tol, xp)
        # Per edge the error is <= tol (basis tol / 2, anchors tol / 8), so entrywise <= E * tol; the
        # product may leave out trailing terms (adding ``dropped``) within rtol of its max R.
        r, dropped = _factorised.product(px, py, xp, row=row, col=col, shift=-float(n_edges), overwrite=True,
                                         terms=int(w.shape[1]), rtol=rtol, committed=n_edges * tol)
        # Enough if err <= rtol * max R, with max R >= max R~ - err.
        err = n_edges * tol + dropped
        allowed = rtol * (float(xp.max(r)) - err)
        if err <= allowed:
            return r
        tol = allowed / n_edges / 2.0
        if not tol > 1e-13:
            return None
    return None


def _auto_limit(x: Array, y: Array) -> int:
    """The largest rank at which ``"auto"`` takes the short map (0: never) for this input."""
    if isinstance(x, np.ndarray) and _numba.available():
        return AUTO_MAX_RANK_NUMBA if min(x.shape[0], y.shape[0]) >= AUTO_MIN_SIDE_NUMBA else 0
    if not on_accelerator(x):
        return AUTO_MAX_RANK
    return AUTO_MAX_RANK_CUDA if _fused_cuda(x) else AUTO_MAX_RANK_GPU


def factorised_rank(x: Array, y: Array, sigma: float, *, rtol: float = 1e-6) -> int | None:
    """Rank ``r`` of the first factorised pass for this input (None: ``D > 1`` or no map within 64).

    For reports and benchmarks; costs two reductions over the inputs (bases are cached).
    """
    xp = _check_pair(x, y, sigma)
    if x.shape[2] != 1 or x.shape[0] == 0 or y.shape[0] == 0 or x.shape[1] == 0:
        return None
    _, bound = _factorised.plan_bound(x[:, :, 0], y[:, :, 0], sigma, xp)
    if bound > _factorised.max_bound(_factorised.MAX_RANK):
        return None
    w = _factorised.basis(_factorised.bound_key(bound), _factorised.tol_key(rtol / 4.0), centred=True)
    return None if w is None else int(w.shape[1])


def _dispatch(x: Array, y: Array, sigma: float, kernel: str, rtol: float) -> tuple[Array, str]:
    """``(R, name of the kernel that computed it)``; the benchmark reads the name."""
    xp = _check_pair(x, y, sigma)
    kernel = _check_kernel(kernel)
    if not rtol > 0:
        raise FusionError(f"rtol must be positive, got {rtol}")
    n, n_edges, dim = x.shape
    if n == 0 or y.shape[0] == 0 or n_edges == 0 or kernel == "reference":
        return edge_affinity_reference(x, y, sigma), "reference"
    if kernel == "numba":
        if not isinstance(x, np.ndarray):
            raise FusionError(f"kernel 'numba' needs NumPy arrays, got {type(x).__module__}.{type(x).__name__}")
        if not _numba.available():
            raise FusionError("kernel 'numba' needs Numba, which is not installed: pip install numba")
        return _numba.edge_affinity_numba(x, y, sigma), "numba"
    if kernel == "cuda":
        if not _cuda.supports(x):
            raise FusionError(
                "kernel 'cuda' needs CuPy arrays or torch CUDA tensors (float32/float64) and CuPy with a CUDA "
                f"device, got {type(x).__module__}.{type(x).__name__}"
            )
        if dim > _cuda.MAX_D:  # wider edges than its shared-memory tile: the batched products instead
            return edge_affinity_matmul(x, y, sigma, xp, rtol=rtol), "matmul"
        return _cuda.edge_affinity_cuda(x, y, sigma), "cuda"
    if kernel == "matmul":
        return edge_affinity_matmul(x, y, sigma, xp, rtol=rtol), "matmul"
    if dim == 1:
        limit = _factorised.MAX_RANK if kernel == "factorised" else _auto_limit(x, y)
        r = _factorised_affinity(x, y, sigma, xp, rtol, limit) if limit > 0 else None
        if r is not None:
            return r, "factorised"
    return _exact(x, y, sigma, xp, rtol)


def edge_affinity(x: Array, y: Array, sigma: float, *, kernel: str = "auto", rtol: float = 1e-6) -> Array:
    """Gaussian edge affinity between the units of two models.

    ``R[a, b] = sum_e exp(-||x[a, e, :] - y[b, e, :]||^2 / sigma)``.

    Parameters
    ----------
    x : array, shape (n, E, D)
        Model 1's edges: unit ``a``'s ``E`` edges of ``D`` numbers each.
    y : array, shape (m, E, D)
        Model 2's edges; same library, device and floating dtype as ``x``.
    sigma : float
        Kernel width, positive.
    kernel : {"auto", "reference", "numba", "factorised", "matmul"}
        See the module docstring; an unknown name raises :class:`FusionError`.
    rtol : float
        Accuracy target, ``max |R~ - R| <= rtol * max |R|`` (plus dtype rounding).

    Returns
    -------
    array, shape (n, m)
        Same library, dtype and device as ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((3, 5, 1)); edge_affinity(x, x, 1.0)[0, 0]
    np.float64(5.0)
    """
    return _dispatch(x, y, sigma, kernel, rtol)[0]


def edge_features(
    x: Array,
    sigma: float,
    *,
    kernel: str = "auto",
    bound: float | None = None,
    center: Any = None,
    rtol: float = 1e-6,
) -> Array | None:
    """Feature map ``Phi`` ``(n, E r)`` with ``edge_affinity(x, y) ~ Phi(x) @ Phi(y)^T``, or None.

    Contract: let ``c`` be ``center`` (a scalar or an array broadcastable to ``(E,)``; default 0)
    and ``bound`` a number with ``|v - c| <= bound`` for every value ``v`` of every model whose
    features will be multiplied together (pass the largest over all of them; default: the
    largest for ``x`` alone, so the contract then covers only ``y`` within that range). Every
    model must be featurised with the same ``sigma``, ``center``, ``bound`` and ``rtol``. Then,
    entrywise, ``|Phi(x) @ Phi(y)^T - A(x, y)| <= rtol * E`` (``E`` = the largest possible
    affinity, that of identical units) plus the rounding of the dtype; a sum over models such
    as ``sum_k A(X, X_k) @ U_k`` with doubly stochastic ``U_k`` inherits
    ``(N - 1) rtol E``. ``r`` depends only on ``bound / sqrt(sigma)`` and ``rtol``.

    Returns None (the caller then computes pairwise with :func:`edge_affinity`) when ``D > 1``,
    when ``kernel`` names an exact kernel, or when no map of rank ``<= AUTO_MAX_RANK``
    (``"auto"``) or 64 (``"factorised"``) is accurate enough.

    Cost: ``2 n E Q (1 + r)`` flops to build (``Q <= 2.5 r`` Chebyshev terms); a product of
    two feature matrices costs ``2 n m E r`` flops.
    """
    xp = namespace(x)
    kernel = _check_kernel(kernel)
    if x.ndim != 3 or not is_floating(xp, x):
        raise FusionError(f"edge_features needs a real floating x (n, E, D), got {x.dtype} {x.shape}")
    if not (math.isfinite(sigma) and sigma > 0) or not rtol > 0:
        raise FusionError(f"sigma and rtol must be positive, got sigma={sigma}, rtol={rtol}")
    if x.shape[2] != 1 or kernel not in ("auto", "factorised") or x.shape[1] == 0:
        return None
    v = x[:, :, 0] - (0.0 if center is None else center)
    actual = float(xp.max(xp.abs(v))) if v.shape[0] else 0.0
    if bound is None:
        bound = actual
    elif actual > bound * (1.0 + 1e-6) + 4.0 * float(xp.finfo(x.dtype).eps) * (bound + float(xp.max(xp.abs(x)))):
        # (slack: values within the bound before rounding to the input dtype may land just past it)
        raise FusionError(f"edge_features: values reach {actual:.6g} from the centre, beyond bound={bound:.6g}")
    key = _factorised.bound_key(bound / math.sqrt(sigma))
    limit = _factorised.MAX_RANK if kernel == "factorised" else AUTO_MAX_RANK
    w = _factorised.basis(key, _factorised.tol_key(rtol)) if key <= _factorised.max_bound(limit) * 1.2 else None
    if w is None or w.shape[1] > limit:
        return None
    t = clip(v / (key * math.sqrt(sigma)), -1.0, 1.0, xp)
    return _factorised.features_scaled(t, w, xp)
