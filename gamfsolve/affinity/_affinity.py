"""Unit affinities of one group between two models: the paper's edge kernel and a node kernel.

Edge (the paper's, Sec. 3): ``R[a, b] = sum_f sum_e exp(-||x_f[a, e] - y_f[b, e]||^2 / sigma_f)``
over the features ``f`` of the group (incoming and outgoing weights, biases, norm vectors).
Node: ``R[a, b] = exp(-d2[a, b] / mean(d2))`` with ``d2 = sum_f ||x_f[a] - y_f[b]||^2 / sigma_f``,
the squared L2 distance of whole aligned weight vectors: one matrix product per feature.

``sigma_f`` adapts to the weight scale: ``sigma_f = scale * 2 * D_f * var(w_f)``, ``scale`` times the
expected squared distance of two independent edges of ``D_f`` numbers, pooled over the models
(gamf's default ``scale`` is 30 for models of one width, 1 for different widths: see ``_gamf``).

Edge weights ``w_f`` (:func:`edge_weights`) multiply each parameter's terms. The paper sums over
all edges (``balance="edge"``, every ``w_f = 1``), so a unit's affinity is decided by whichever
neighbouring layer has most edges per unit: in a 784-256-256-10 MLP the second hidden layer's
units have 256 incoming edges and 10 outgoing, so the classifier, which says what each unit
votes for, hardly counts. ``balance="param"`` weighs every weight tensor's edges by
``1 / |E_f|``, its number of edges, so the objective is the sum over tensors of their mean
matched-edge affinity and each unit hears each of its layers equally. A vector on one group
(bias, norm scale or shift, running statistic) has one edge per unit, no more information than
one more edge of a weight: it gets ``1 / |E_f|^2``, i.e. counts ``1 / n`` of a tensor.
``balance="sqrt"`` weighs by ``1 / sqrt(|E_f|)``: each tensor's sum in units of its own noise
(a sum of z-scores), between the two; measured better than ``"param"`` on some sets of bias-free
LeNet pairs, worse on others, and behind it on MLPs, with biases most (examples/ensemble/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import OptionError
from .._xp import clip, device
from ..spec._spec import PermutationSpec
from ._features import Feature, edge_dims
from ._kernels import edge_affinity

__all__ = ["AFFINITIES", "BALANCES", "edge_weights", "group_affinity", "map_columns", "param_sigmas", "standardize"]

Array = Any
AFFINITIES = ("edge", "node")
BALANCES = ("sqrt", "param", "edge")


def param_sigmas(
    models: Sequence[Mapping[str, Array]], spec: PermutationSpec, xp: Any, *, scale: float = 1.0,
    sigma: float | Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Kernel width per parameter; a parameter that is constant in every model gets none."""
    out: dict[str, float] = {}
    for name, entries in spec.axes.items():
        if all(e is None for e in entries):
            continue
        if isinstance(sigma, Mapping) and name in sigma:
            out[name] = float(sigma[name])
        elif isinstance(sigma, (int, float)):
            out[name] = float(sigma)
        else:
            var = sum(float(xp.mean((m[name] - xp.mean(m[name])) ** 2)) for m in models) / len(models)
            if var > 0:
                out[name] = scale * 2.0 * edge_dims(tuple(models[0][name].shape), entries) * var
    for name, value in out.items():
        if not value > 0:
            raise OptionError(f"sigma for {name!r} must be positive, got {value}")
    return out


def edge_weights(
    models: Sequence[Mapping[str, Array]], spec: PermutationSpec, sigmas: Mapping[str, float], balance: str,
) -> dict[str, float]:
    """Weight of each edge of every parameter in ``sigmas`` for ``balance`` in :data:`BALANCES`
    (see the module docstring); the caller checks ``balance``."""
    out = {}
    for name in sigmas:
        shape = tuple(models[0][name].shape)
        # narrower models (shared universe) have fewer edges: the widest sets the weight
        n_edges = max(math.prod(tuple(m[name].shape)) for m in models) // edge_dims(shape, spec.axes[name])
        if balance == "edge":
            out[name] = 1.0
        elif balance == "sqrt":
            out[name] = 1.0 / math.sqrt(n_edges)
        else:
            out[name] = 1.0 / n_edges if len(shape) > 1 else 1.0 / n_edges**2
    return out


def _sqdist(x: Array, y: Array, xp: Any) -> Array:
    """``||x[a] - y[b]||^2`` for rows of ``x`` (n, F) and ``y`` (m, F), via one matrix product."""
    nx = xp.sum(x * x, axis=1)[:, None]
    ny = xp.sum(y * y, axis=1)[None, :]
    return clip(nx + ny - 2.0 * (x @ y.T), 0.0, None, xp)


def group_affinity(
    fa: Sequence[Feature], fb: Sequence[Feature], sigmas: Mapping[str, float], xp: Any, *,
    kind: str = "edge", kernel: str = "auto", weights: Mapping[str, float] | None = None,
) -> Array:
    """Raw affinity ``(n, n)`` between the units of two models for one group; ``weights``: the
    edge kind's weight per parameter (:func:`edge_weights`; 1 where absent)."""
    total = None
    for a, b in zip(fa, fb, strict=True):
        s = sigmas.get(a.name)
        if s is None:
            continue
        if kind == "edge":
            term = edge_affinity(a.x, b.x, s, kernel=kernel)
            w = 1.0 if weights is None else weights.get(a.name, 1.0)
            if w != 1.0:
                term = term * w
        else:
            n = a.x.shape[0]
            term = _sqdist(xp.reshape(a.x, (n, -1)), xp.reshape(b.x, (b.x.shape[0], -1)), xp) / s
        total = term if total is None else total + term
    if total is None:
        n = fa[0].x.shape[0]
        return xp.zeros((n, n), dtype=fa[0].x.dtype, device=device(fa[0].x))
    if kind == "node":
        mean = xp.mean(total)
        return xp.exp(-total / mean) if float(mean) > 0 else xp.ones_like(total)
    return total


def map_columns(a: Array, m: Array | None, xp: Any) -> Array:
    """``a @ M`` for a map ``M`` that is a soft plan (matrix), an index vector, or None (identity)."""
    if m is None:
        return a
    if m.ndim == 1:
        return xp.take(a, m, axis=1)
    return a @ m


def standardize(r: Array, xp: Any) -> Array:
    """Zero mean, unit standard deviation, so a temperature means the same at every scale."""
    r = r - xp.mean(r)
    sd = float(xp.sqrt(xp.mean(r * r)))
    return r / sd if sd > 0 else r
