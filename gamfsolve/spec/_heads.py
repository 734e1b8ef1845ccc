"""Composed axes (:class:`~gamfsolve.Split`, attention heads) seen as several plain axes.

An axis ``Split(groups, shape)`` of a parameter is its ``shape`` sub-axes in row-major order,
so reshaping the parameter gives an equivalent parameter whose every axis has one plain
entry: a group name or ``None``. Every method then works on the expanded view unchanged: a
head is one unit of the heads group whose features are its dimensions' weights (its ``d``
dimensions are one more axis of each edge), and a within-head dimension is one unit whose
features span all heads. Results are reshaped back; the group permutations are the same in
both views.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import FusionError
from .._xp import namespace
from ._spec import AxisEntry, PermutationSpec, Split

__all__ = ["collapse", "expand", "expand_models", "expand_spec"]

Array = Any


def _expanded_entries(entries: tuple[AxisEntry, ...]) -> tuple[AxisEntry, ...]:
    out: list[AxisEntry] = []
    for entry in entries:
        out.extend(entry.groups if isinstance(entry, Split) else (entry,))
    return tuple(out)


def expand_spec(spec: PermutationSpec) -> PermutationSpec:
    """The spec with every :class:`Split` axis replaced by its sub-axes (same groups)."""
    if not spec.has_split:
        return spec
    return PermutationSpec({name: _expanded_entries(entries) for name, entries in spec.axes.items()})


def _expanded_shape(shape: tuple[int, ...], entries: tuple[AxisEntry, ...]) -> tuple[int, ...]:
    out: list[int] = []
    for length, entry in zip(shape, entries, strict=True):
        out.extend(entry.resolve(length) if isinstance(entry, Split) else (length,))
    return tuple(out)


def expand(params: Mapping[str, Array], spec: PermutationSpec) -> dict[str, Array]:
    """One model's parameters reshaped so that every :class:`Split` axis becomes its sub-axes.

    A parameter of shape ``(H*d, D)`` with axis 0 ``Split(("h", "w"), (H, -1))`` becomes
    ``(H, d, D)``. Parameters without a ``Split`` are returned as they are (not copied).
    """
    out = {}
    for name, x in params.items():
        entries = spec.axes.get(name, ())
        if any(isinstance(e, Split) for e in entries):
            if len(entries) != len(x.shape):
                raise FusionError(f"spec for {name!r} has {len(entries)} axes but the parameter has shape {x.shape}")
            try:
                shape = _expanded_shape(tuple(x.shape), entries)
            except FusionError as exc:
                raise FusionError(f"parameter {name!r}: {exc}") from None
            x = namespace(x).reshape(x, shape)
        out[name] = x
    return out


def expand_models(models: Sequence[Mapping[str, Array]], spec: PermutationSpec) -> list[dict[str, Array]]:
    """:func:`expand` for every model."""
    return [expand(m, spec) for m in models]


def collapse(params: Mapping[str, Array], spec: PermutationSpec) -> dict[str, Array]:
    """Undo :func:`expand`: merge each ``Split`` axis's sub-axes back into one axis.

    The sub-axis sizes are read from the arrays, so a model placed into a wider universe
    collapses to the universe's widths.
    """
    out = {}
    for name, x in params.items():
        entries = spec.axes.get(name, ())
        if any(isinstance(e, Split) for e in entries):
            shape, pos = [], 0
            for entry in entries:
                k = len(entry.groups) if isinstance(entry, Split) else 1
                size = 1
                for d in x.shape[pos : pos + k]:
                    size *= int(d)
                shape.append(size)
                pos += k
            x = namespace(x).reshape(x, tuple(shape))
        out[name] = x
    return out
