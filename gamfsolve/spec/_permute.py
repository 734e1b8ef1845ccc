"""Apply permutations (index vectors) or soft plans (matrices) to parameter axes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import FusionError, FusionTypeError
from .._xp import device, namespace
from ._heads import collapse, expand, expand_spec
from ._spec import AxisEntry, PermutationSpec, Segment, segments_of

__all__ = ["apply_maps", "axis_index", "permute"]

Array = Any


def _segment_lengths(segs: tuple[Segment, ...], length: int, sizes: Mapping[str, int]) -> list[int]:
    if len(segs) == 1 and segs[0].group is None:
        return [length]
    return [s.outer if s.group is None else s.outer * sizes[s.group] * s.inner for s in segs]


def run_sizes(segs: tuple[Segment, ...], length: int, known: Mapping[str, int]) -> dict[str, int]:
    """Unit counts of the groups on one axis, inferring at most one unknown from the axis length."""
    sizes = {s.group: known[s.group] for s in segs if s.group is not None and s.group in known}
    missing = {s.group for s in segs if s.group is not None and s.group not in sizes}
    if len(missing) > 1:
        raise FusionError(f"cannot infer the sizes of groups {sorted(missing)} sharing one axis")
    if missing:
        g = missing.pop()
        fixed = sum(s.outer if s.group is None else s.outer * sizes[s.group] * s.inner for s in segs if s.group != g)
        sizes[g] = (length - fixed) // sum(s.outer * s.inner for s in segs if s.group == g)
    return sizes


def axis_index(
    entry: AxisEntry, length: int, perms: Mapping[str, Array], xp: Any, dev: Any, own: Mapping[str, int] | None = None
) -> Array | None:
    """Index vector that reorders an axis of ``length`` by ``perms``; None if the axis is fixed.

    For a run ``(outer, n, inner)`` of group ``g`` with index vector ``p`` the new position
    ``(o, u, i)`` takes the old position ``(o, p[u], i)``. ``own[g]``, when smaller than
    ``len(p)``, is the axis's own unit count (a narrower model placed into a universe of
    ``len(p)`` units): where ``p[u] >= own[g]`` the index is ``length``, the position of a zero
    slice the caller appends.
    """
    segs = segments_of(entry)
    if all(s.group is None for s in segs):
        return None
    new = {s.group: perms[s.group].shape[0] for s in segs if s.group is not None}
    old = {g: (own or {}).get(g, n) for g, n in new.items()}
    pieces = []
    offset = 0
    for seg, seg_len in zip(segs, _segment_lengths(segs, length, old), strict=True):
        if seg.group is None:
            pieces.append(xp.arange(offset, offset + seg_len, device=dev))
        else:
            p = xp.astype(perms[seg.group], xp.int64)
            n = old[seg.group]
            outer = xp.reshape(xp.arange(seg.outer, device=dev) * (n * seg.inner), (-1, 1, 1))
            middle = xp.reshape(p * seg.inner, (1, -1, 1))
            inner = xp.reshape(xp.arange(seg.inner, device=dev), (1, 1, -1))
            idx = outer + middle + inner + offset
            if new[seg.group] > n:  # universe slots this model has no unit for
                idx = xp.where(xp.reshape(p < n, (1, -1, 1)), idx, xp.asarray(length, dtype=xp.int64, device=dev))
            pieces.append(xp.reshape(idx, (-1,)))
        offset += seg_len
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces)


def _check_fit(segs: tuple[Segment, ...], length: int, plans: Mapping[str, Array]) -> dict[str, int]:
    """Unit counts of the groups on an axis; maps whose sizes do not add up to its length are refused."""
    known = {g: int(p.shape[0]) for g, p in plans.items()}
    sizes = run_sizes(segs, length, known)
    if sum(_segment_lengths(segs, length, sizes)) != length:
        raise FusionError(
            f"maps of groups {known} (units each) do not fit an axis of length {length} laid out as "
            f"{[(s.group, s.outer, s.inner) if s.group else s.outer for s in segs]}"
        )
    return sizes


def _apply_plan(x: Array, axis: int, entry: AxisEntry, plans: Mapping[str, Array], xp: Any) -> Array:
    """Contract an axis with soft plans: ``new[.., u, ..] = sum_a plan[a, u] x[.., a, ..]``.

    A 1-D map (an index vector beside plans, or for only some of the axis's groups) reorders
    its run with ``take``; runs of groups without a map are kept as they are.
    """
    segs = segments_of(entry)
    moved = xp.moveaxis(x, axis, -1)
    lead = moved.shape[:-1]
    sizes = _check_fit(segs, moved.shape[-1], plans)
    out = []
    offset = 0
    for seg, seg_len in zip(segs, _segment_lengths(segs, moved.shape[-1], sizes), strict=True):
        part = moved[..., offset : offset + seg_len]
        offset += seg_len
        if seg.group is not None and seg.group in plans:
            n, m = sizes[seg.group], plans[seg.group]
            part = xp.reshape(part, (*lead, seg.outer, n, seg.inner))
            if m.ndim == 1:
                part = xp.take(part, xp.astype(m, xp.int64), axis=len(lead) + 1)
            else:
                part = xp.moveaxis(part, -2, -1)
                shape = part.shape
                # one (rows, n) @ (n, n) product, not a stack of row-vector products
                part = xp.moveaxis(xp.reshape(xp.reshape(part, (-1, n)) @ m, shape), -1, -2)
            part = xp.reshape(part, (*lead, seg_len))
        out.append(part)
    joined = out[0] if len(out) == 1 else xp.concat(out, axis=-1)
    return xp.moveaxis(joined, -1, axis)


def apply_maps(
    x: Array, entries: tuple[AxisEntry, ...], maps: Mapping[str, Array], xp: Any, *, skip: int | None = None,
    own: Mapping[str, int] | None = None,
) -> Array:
    """Reorder every axis of ``x`` whose group has a map, except axis ``skip``.

    A map is an index vector (exact permutation, applied with ``take``) or an ``(n, n)``
    matrix (soft plan, rows = this model's units, columns = common order). An index vector
    longer than the group's own unit count ``own[g]`` places the units into a universe of its
    length; slots it fills from indices ``>= own[g]`` are zero.
    """
    dev = device(x)
    for a, entry in enumerate(entries):
        if a == skip or entry is None:
            continue
        groups = [s.group for s in segments_of(entry) if s.group is not None]
        present = {g: maps[g] for g in groups if g in maps}
        if not present:
            continue
        if own is not None and all(m.ndim == 1 for m in present.values()):  # groups without a map stay put
            present = {g: present.get(g, xp.arange(own[g], dtype=xp.int64, device=dev)) for g in groups}
        if all(m.ndim == 1 for m in present.values()) and len(present) == len(set(groups)):
            grows = own is not None and any(m.shape[0] > own.get(g, m.shape[0]) for g, m in present.items())
            idx = axis_index(entry, x.shape[a], present, xp, dev, own=own)
            if grows:  # one zero slice at the end for the empty universe slots to take
                zero = xp.zeros((*x.shape[:a], 1, *x.shape[a + 1 :]), dtype=x.dtype, device=dev)
                x = xp.concat([x, zero], axis=a)
            x = xp.take(x, idx, axis=a)
        else:
            x = _apply_plan(x, a, entry, present, xp)
    return x


def _check_permutation(group: str, p: Array, xp: Any) -> None:
    """``p`` must hold every integer of ``range(len(p))`` once (no float, repeated or negative entry)."""
    if not xp.isdtype(p.dtype, "integral"):
        raise FusionTypeError(f"perms[{group!r}] must be an integer index vector, got dtype {p.dtype}")
    n = p.shape[0]
    if n and not bool(xp.all(xp.sort(p) == xp.arange(n, dtype=p.dtype, device=device(p)))):
        raise FusionError(f"perms[{group!r}] must be a permutation of range({n}) (every index once), "
                          "got repeated, negative or out-of-range entries")


def permute(params: Mapping[str, Array], spec: PermutationSpec, perms: Mapping[str, Array]) -> dict[str, Array]:
    """Reorder one model's parameters by index vectors, one per group.

    ``perms[g]`` is an integer array ``p`` of length ``U >= n_g`` (``n_g``: the model's units of
    ``g``): position ``u`` of the output takes unit ``p[u]`` of the input, on every axis the
    spec assigns to ``g``. ``U = n_g`` is a permutation; ``U > n_g`` places a narrower model
    into a universe of ``U`` units, and the slots with ``p[u] >= n_g`` are zero (``p`` is then
    a permutation of ``range(U)``, as :func:`gamfsolve.match` returns for models of different
    widths). Groups missing from ``perms`` are left as they are. Returns a new dict; the input
    is not modified.
    """
    if not isinstance(spec, PermutationSpec):
        raise FusionTypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    if not isinstance(params, Mapping) or not isinstance(perms, Mapping):
        raise FusionTypeError("params and perms must be mappings (parameter name -> array, group -> index vector)")
    if isinstance(spec, PermutationSpec) and spec.has_split:  # Split axes permuted as plain sub-axes
        return collapse(permute(expand(params, spec), expand_spec(spec), perms), spec)
    unknown = [g for g in perms if g not in spec.groups]
    if unknown:
        raise FusionError(f"perms names groups the spec does not have: {unknown}; spec groups: {list(spec.groups)}")
    arrays = [params[name] for name in spec.axes if name in params]
    xp = namespace(*arrays, *perms.values())
    sizes = spec.group_sizes({k: tuple(v.shape) for k, v in params.items()})
    for g, p in perms.items():
        if p.ndim != 1 or p.shape[0] < sizes[g]:
            raise FusionError(
                f"perms[{g!r}] must be a 1-D index vector of length {sizes[g]} (or longer, to place the "
                f"model into a universe), got shape {tuple(p.shape)}"
            )
        _check_permutation(g, p, xp)
    out = {}
    for name, x in params.items():
        try:
            out[name] = apply_maps(x, spec.axes[name], perms, xp, own=sizes)
        except FusionError as exc:
            raise FusionError(f"parameter {name!r}: {exc}") from exc
    return out
