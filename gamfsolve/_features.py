"""Unit features: every parameter slice that belongs to one unit of a group.

All matching methods compare units through the weights attached to them. For group ``g``,
each ``(parameter, axis)`` pair on which ``g`` acts gives a tensor of shape ``(n, E, D)``:
``n`` units, ``E`` edges per unit, ``D`` numbers per edge. Edges are indexed by the other
axes after they have been put in the common order (by the current permutations or soft
plans of their groups). For parameters with three or more axes (convolutions) the fixed
axes form each edge's vector (a ``k x k`` kernel slice); otherwise every scalar is an edge.
A bias or normalisation vector gives ``E = D = 1``: a node attribute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from ._permute import _segment_lengths, apply_maps, run_sizes
from ._spec import PermutationSpec, segments_of

__all__ = ["Feature", "color_groups", "edge_dims", "unit_features"]

Array = Any


class Feature(NamedTuple):
    """One ``(parameter, axis)`` contribution to a group's unit features."""

    name: str
    axis: int
    x: Array  # (n, E, D)


def edge_dims(shape: tuple[int, ...], entries: tuple[Any, ...]) -> int:
    """``D``: numbers per edge, the product of the fixed axes of a parameter with >= 3 axes."""
    if len(shape) < 3:
        return 1
    return math.prod(s for s, e in zip(shape, entries, strict=True) if e is None)


def _unit_slice(x: Array, axis: int, entry: Any, group: str, sizes: Mapping[str, int], xp: Any) -> Array:
    """Move ``group``'s units of ``axis`` to the front: ``(n, outer, inner, *other axes)``."""
    moved = xp.moveaxis(x, axis, 0)
    segs = segments_of(entry)
    n = sizes[group]
    lengths = _segment_lengths(segs, moved.shape[0], run_sizes(segs, moved.shape[0], sizes))
    offset = 0
    for seg, length in zip(segs, lengths, strict=True):
        if seg.group == group:
            part = xp.reshape(moved[offset : offset + length, ...], (seg.outer, n, seg.inner, *moved.shape[1:]))
            return xp.moveaxis(part, 1, 0)
        offset += length
    raise AssertionError(f"group {group!r} not on this axis")  # the spec guarantees it is


def unit_features(
    params: Mapping[str, Array],
    spec: PermutationSpec,
    group: str,
    sizes: Mapping[str, int],
    maps: Mapping[str, Array],
    xp: Any,
    *,
    only: set[str] | None = None,
) -> list[Feature]:
    """Features ``(n, E, D)`` of ``group``'s units, other axes mapped by ``maps``.

    ``maps[h]`` is an index vector or an ``(n_h, n_h)`` soft plan (see ``apply_maps``).
    ``sizes`` holds the unit count of every group; ``only``, if given, restricts to those
    parameter names.
    """
    n = sizes[group]
    out = []
    for name, axis in spec.users(group):
        if only is not None and name not in only:
            continue
        entries = spec.axes[name]
        x = apply_maps(params[name], entries, maps, xp, skip=axis)
        d = edge_dims(tuple(x.shape), entries)
        units = _unit_slice(x, axis, entries[axis], group, sizes, xp)
        # units: (n, outer, inner, *rest); rest = other axes in order; fixed ones go last when D > 1
        rest = [a for a in range(x.ndim) if a != axis]
        if d > 1:
            edge_axes = [3 + i for i, a in enumerate(rest) if entries[a] is not None]
            vec_axes = [3 + i for i, a in enumerate(rest) if entries[a] is None]
            units = xp.permute_dims(units, (0, 1, 2, *edge_axes, *vec_axes))
        out.append(Feature(name, axis, xp.reshape(units, (n, -1, d))))
    return out


def color_groups(spec: PermutationSpec) -> list[list[str]]:
    """Greedy colouring: groups of one colour share no parameter, so they can be updated together."""
    colors: dict[str, int] = {}
    for g in spec.groups:
        taken = {colors[h] for h in spec.neighbours(g) if h in colors}
        colors[g] = next(c for c in range(len(spec.groups) + 1) if c not in taken)
    out: list[list[str]] = [[] for _ in range(max(colors.values(), default=-1) + 1)]
    for g, c in colors.items():
        out[c].append(g)
    return out
