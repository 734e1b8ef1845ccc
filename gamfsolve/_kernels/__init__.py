"""Edge-affinity kernels behind one small interface.

``edge_affinity(x, y, sigma)`` with ``x`` of shape ``(n, E, D)`` and ``y`` of shape
``(m, E, D)`` returns the ``(n, m)`` matrix
``R[a, b] = sum_e exp(-||x[a, e, :] - y[b, e, :]||^2 / sigma)``: the paper's Gaussian edge
affinity summed over the ``E`` edges that units ``a`` and ``b`` share (``D`` = 1 for a scalar
weight, ``k*k`` for a convolution kernel slice).
"""

from __future__ import annotations

from typing import Any

from ._reference import edge_affinity_reference

__all__ = ["edge_affinity"]

Array = Any


def edge_affinity(x: Array, y: Array, sigma: float, *, kernel: str = "auto") -> Array:
    """Gaussian edge affinity ``(n, m)`` between the units of ``x`` ``(n, E, D)`` and ``y`` ``(m, E, D)``."""
    return edge_affinity_reference(x, y, sigma)
