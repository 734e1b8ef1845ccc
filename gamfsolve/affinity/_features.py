"""Unit features: every parameter slice that belongs to one unit of a group.

All matching methods compare units through the weights attached to them. For group ``g``,
each ``(parameter, axis)`` pair on which ``g`` acts gives a tensor of shape ``(n, E, D)``:
``n`` units, ``E`` edges per unit, ``D`` numbers per edge. Edges are indexed by the other
axes after they have been put in the common order (by the current permutations or soft
plans of their groups). For parameters with three or more axes (convolutions) the fixed
axes form each edge's vector (a ``k x k`` kernel slice); otherwise every scalar is an edge.
An axis that is one ``Blocks`` run (a flattened ``C x H x W`` feature map read by a dense
layer) is split into ``(outer, C, inner)``: the ``outer * inner`` positions of a channel join
the edge's vector, so a channel's edge to a dense unit is its ``H x W`` map of weights, as a
convolution's edge is its kernel slice (and a channels-first and a channels-last flatten give
the same edges). A bias or normalisation vector gives ``E = D = 1``: a node attribute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..spec._permute import _segment_lengths, apply_maps, run_sizes
from ..spec._spec import Blocks, PermutationSpec, segments_of

__all__ = ["Feature", "color_groups", "edge_dims", "edge_rows", "unit_features"]

Array = Any


class Feature(NamedTuple):
    """One ``(parameter, axis)`` contribution to a group's unit features."""

    name: str
    axis: int
    x: Array  # (n, E, D)


def edge_dims(shape: tuple[int, ...], entries: tuple[Any, ...]) -> int:
    """``D``: numbers per edge: the fixed axes of a parameter with >= 3 axes, times the
    ``outer * inner`` positions of every axis that is one ``Blocks`` run."""
    return math.prod(s for sizes, roles in edge_layout(shape, entries) for s, r in zip(sizes, roles, strict=True) if r == "v")


def edge_layout(shape: tuple[int, ...], entries: tuple[Any, ...]) -> list[tuple[list[int], list[str]]]:
    """Per axis: its sizes (a ``Blocks`` axis split into ``(outer, n, inner)``) and their roles,
    ``"e"`` (indexes edges) or ``"v"`` (indexes numbers within an edge's vector)."""
    out = []
    for size, entry in zip(shape, entries, strict=True):
        if isinstance(entry, Blocks):
            out.append(([entry.outer, size // (entry.outer * entry.inner), entry.inner], ["v", "e", "v"]))
        else:
            out.append(([size], ["v" if entry is None and len(shape) >= 3 else "e"]))
    return out


def _edges_last(x: Array, sizes: list[int], roles: list[str], lead: int, xp: Any) -> Array:
    """``x`` as ``(*x.shape[:lead], |E|, D)``: its other axes split into ``sizes``, edge axes first."""
    head = tuple(x.shape[:lead])
    x = xp.reshape(x, (*head, *sizes))
    order = [lead + i for i, r in enumerate(roles) if r == "e"] + [lead + i for i, r in enumerate(roles) if r == "v"]
    x = xp.permute_dims(x, (*range(lead), *order))
    return xp.reshape(x, (*head, -1, math.prod(s for s, r in zip(sizes, roles, strict=True) if r == "v")))


def edge_rows(x: Array, entries: tuple[Any, ...], xp: Any) -> Array:
    """All edges of one parameter as rows ``(|E|, D)``."""
    layout = edge_layout(tuple(x.shape), entries)
    return _edges_last(x, [s for sz, _ in layout for s in sz], [r for _, rl in layout for r in rl], 0, xp)


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
    out = []
    for name, axis in spec.users(group):
        if only is not None and name not in only:
            continue
        entries = spec.axes[name]
        x = apply_maps(params[name], entries, maps, xp, skip=axis)
        units = _unit_slice(x, axis, entries[axis], group, sizes, xp)
        # units: (n, outer, inner, *rest), rest = the other axes in order, laid out as in the
        # whole parameter's edges; the unit's own (outer, inner) positions join the vector when
        # its axis is one Blocks run
        own = "v" if isinstance(entries[axis], Blocks) else "e"
        dims, roles = list(units.shape[1:3]), [own, own]
        for a, (sz, rl) in enumerate(edge_layout(tuple(x.shape), entries)):
            if a != axis:
                dims += sz
                roles += rl
        out.append(Feature(name, axis, _edges_last(units, dims, roles, 1, xp)))
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
