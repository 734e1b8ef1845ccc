"""`PermutationSpec`: which permutation group acts on which axis of which parameter.

A network's hidden units can be reordered without changing its function, provided every
parameter that touches a layer's units is reordered the same way. The spec names, for each
parameter and each of its axes, the group (a string) whose permutation acts on that axis,
or ``None`` for an axis that stays fixed (inputs, outputs, spatial kernel axes). The spec says
nothing about layouts: ``(out, in)`` and ``(in, out)`` weights are both described by naming
the right axis.

Two structured axes cover flattening and concatenation:

* ``Blocks(group, inner=h*w)``: a flattened ``C*H*W`` axis (channels first) whose channel
  index is permuted in blocks of ``h*w``; ``Blocks(group, outer=h*w)`` is the channels-last
  ``H*W*C`` order. In general the axis is viewed as ``(outer, n, inner)``.
* ``Concat(part, part, ...)``: an axis made of consecutive runs, each a group name, a
  ``Blocks`` or an ``int`` (a run of that many fixed entries).

One composed axis covers attention:

* ``Split(groups, shape)``: an axis viewed (row-major) as the sub-axes ``shape``, each
  permuted by its own group or fixed (``None``); one size may be ``-1`` (inferred from the
  axis length, so models of different head widths share a spec). A query projection's output
  axis of ``H`` heads of ``d`` dimensions is ``Split(("heads", "qk"), (H, -1))``: the heads
  move as blocks of ``d`` and, independently, the ``d`` dimensions inside every head.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, Union

from .._errors import FusionError, FusionTypeError

__all__ = ["AxisEntry", "Blocks", "Concat", "PermutationSpec", "Segment", "Split", "groups_of"]


@dataclass(frozen=True)
class Blocks:
    """An axis of size ``outer * n * inner`` whose middle index belongs to ``group``."""

    group: str
    inner: int = 1
    outer: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.group, str) or not self.group:
            raise FusionTypeError(f"Blocks.group must be a non-empty str, got {self.group!r}")
        for name in ("inner", "outer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FusionError(f"Blocks.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True, init=False)
class Concat:
    """An axis made of consecutive runs: group names, ``Blocks`` or fixed run lengths."""

    parts: tuple[str | Blocks | int, ...]

    def __init__(self, *parts: str | Blocks | int) -> None:
        if len(parts) < 1:
            raise FusionError("Concat needs at least one part")
        for part in parts:
            if isinstance(part, bool) or not isinstance(part, (str, Blocks, int)):
                raise FusionTypeError(f"Concat parts must be str, Blocks or int, got {part!r}")
            if isinstance(part, int) and part < 1:
                raise FusionError(f"a fixed Concat run must be a positive int, got {part}")
        object.__setattr__(self, "parts", tuple(parts))


@dataclass(frozen=True, init=False)
class Split:
    """An axis viewed as the sub-axes ``shape`` (row-major), sub-axis ``i`` permuted by ``groups[i]``."""

    groups: tuple[str | None, ...]
    shape: tuple[int, ...]

    def __init__(self, groups: tuple[str | None, ...], shape: tuple[int, ...]) -> None:
        groups, shape = tuple(groups), tuple(shape)
        if len(groups) < 2 or len(groups) != len(shape):
            raise FusionError(f"Split needs at least two sub-axes and one group per size, got {groups!r}, {shape!r}")
        for g in groups:
            if g is not None and (not isinstance(g, str) or not g):
                raise FusionTypeError(f"Split groups must be non-empty str or None, got {g!r}")
        named = [g for g in groups if g is not None]
        if not named or len(set(named)) != len(named):
            raise FusionError(f"Split needs at least one group and no group twice, got {groups!r}")
        for n in shape:
            if isinstance(n, bool) or not isinstance(n, int) or (n < 1 and n != -1):
                raise FusionError(f"Split sizes must be positive ints (one may be -1), got {shape!r}")
        if shape.count(-1) > 1:
            raise FusionError(f"at most one Split size may be -1, got {shape!r}")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "shape", shape)

    def resolve(self, length: int) -> tuple[int, ...]:
        """The sub-axis sizes for an axis of ``length`` entries (the ``-1`` filled in)."""
        known = math.prod(n for n in self.shape if n != -1)
        if length % known or (-1 not in self.shape and known != length):
            raise FusionError(f"an axis of length {length} cannot be split as {self.shape}")
        return tuple(length // known if n == -1 else n for n in self.shape)


AxisEntry = Union[str, Blocks, Concat, Split, None]  # noqa: UP007  (a runtime alias on Python 3.10)


class Segment(NamedTuple):
    """One run of an axis: ``length`` entries viewed as ``(outer, n, inner)`` for ``group``.

    A fixed run has ``group=None`` and ``outer=length``, ``inner=1``.
    """

    group: str | None
    outer: int
    inner: int


def segments_of(entry: AxisEntry) -> tuple[Segment, ...]:
    """Split an axis entry into its runs (a plain axis is one run); not for :class:`Split`."""
    if isinstance(entry, Split):
        raise FusionError(f"{entry!r} has no runs; a Split axis is expanded into its sub-axes first")
    if entry is None:
        return (Segment(None, 0, 1),)  # length filled in from the shape
    if isinstance(entry, str):
        return (Segment(entry, 1, 1),)
    if isinstance(entry, Blocks):
        return (Segment(entry.group, entry.outer, entry.inner),)
    out: list[Segment] = []
    for part in entry.parts:
        if isinstance(part, int):
            out.append(Segment(None, part, 1))
        else:
            out.extend(segments_of(part))
    return tuple(out)


def groups_of(entry: AxisEntry) -> tuple[str, ...]:
    """The groups acting on an axis, in order."""
    if isinstance(entry, Split):
        return tuple(g for g in entry.groups if g is not None)
    return tuple(s.group for s in segments_of(entry) if s.group is not None)


def groups_beside(spec: PermutationSpec, name: str, axis: int) -> tuple[str, ...]:
    """The groups on parameter ``name``'s axes other than ``axis``, each once: the maps that a
    unit feature of ``axis`` reads."""
    return tuple(dict.fromkeys(h for a, e in enumerate(spec.axes[name]) if a != axis for h in groups_of(e)))


def _check_entry(name: str, axis: int, entry: object) -> AxisEntry:
    if entry is None or isinstance(entry, (Blocks, Concat, Split)):
        return entry
    if isinstance(entry, str) and entry:
        return entry
    raise FusionTypeError(
        f"spec entry for {name!r} axis {axis} must be a group name (str), Blocks, Concat, Split or "
        f"None, got {entry!r}"
    )


class PermutationSpec:
    """Parameter name -> per-axis permutation group (or ``None``).

    Parameters
    ----------
    axes : mapping of str to tuple
        ``axes[name][a]`` is the group acting on axis ``a`` of parameter ``name``:
        a group name, :class:`Blocks`, :class:`Concat`, :class:`Split` (attention heads and
        their dimensions), or ``None`` for a fixed axis.
        A residual stream is one group named on every layer that reads or writes it.

    Examples
    --------
    A 2-layer MLP with PyTorch's ``(out, in)`` layout::

        spec = PermutationSpec({
            "fc1.weight": ("h", None), "fc1.bias": ("h",),
            "fc2.weight": (None, "h"), "fc2.bias": (None,),
        })
    """

    __slots__ = ("_axes", "_groups", "_users")

    def __init__(self, axes: Mapping[str, tuple[AxisEntry, ...]]) -> None:
        if not isinstance(axes, Mapping):
            raise FusionTypeError(f"axes must be a mapping of parameter name to tuple, got {type(axes).__name__}")
        checked: dict[str, tuple[AxisEntry, ...]] = {}
        users: dict[str, list[tuple[str, int]]] = {}
        for name, entries in axes.items():
            if not isinstance(name, str):
                raise FusionTypeError(f"parameter names must be str, got {name!r}")
            if not isinstance(entries, (tuple, list)):
                raise FusionTypeError(f"spec entry for {name!r} must be a tuple of axis groups, got {entries!r}")
            checked[name] = tuple(_check_entry(name, a, e) for a, e in enumerate(entries))
            for a, entry in enumerate(checked[name]):
                for group in groups_of(entry):
                    users.setdefault(group, []).append((name, a))
        for group, where in users.items():
            if len({n for n, _ in where}) < 2:
                n, a = where[0]
                raise FusionError(
                    f"group {group!r} appears only on axis {a} of {n!r}: a permutation group "
                    "needs a layer that produces it and one that consumes it (a typo?)"
                )
        self._axes = MappingProxyType(checked)
        self._groups = tuple(users)
        self._users = MappingProxyType({g: tuple(w) for g, w in users.items()})

    @property
    def axes(self) -> Mapping[str, tuple[AxisEntry, ...]]:
        """Read-only mapping of parameter name to its per-axis entries."""
        return self._axes

    @property
    def has_split(self) -> bool:
        """Whether some axis is a :class:`Split` (attention heads)."""
        return any(isinstance(e, Split) for entries in self._axes.values() for e in entries)

    @property
    def groups(self) -> tuple[str, ...]:
        """Group names in order of first appearance (the network's order for a state dict)."""
        return self._groups

    def users(self, group: str) -> tuple[tuple[str, int], ...]:
        """The ``(parameter, axis)`` pairs on which ``group`` acts."""
        try:
            return self._users[group]
        except KeyError:
            raise FusionError(f"unknown group {group!r}; the spec has {list(self._groups)}") from None

    def neighbours(self, group: str) -> tuple[str, ...]:
        """Groups that share a parameter with ``group`` (their updates interact)."""
        out: dict[str, None] = {}
        for name, _ in self.users(group):
            for entry in self._axes[name]:
                for other in groups_of(entry):
                    if other != group:
                        out[other] = None
        return tuple(out)

    def __iter__(self) -> Iterator[str]:
        return iter(self._axes)

    def __len__(self) -> int:
        return len(self._axes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PermutationSpec) and dict(self._axes) == dict(other._axes)

    def __hash__(self) -> int:
        return hash(tuple(self._axes.items()))

    def __repr__(self) -> str:
        lines = ",\n".join(f"    {k!r}: {v!r}" for k, v in self._axes.items())
        return f"PermutationSpec({{\n{lines}\n}})"

    def group_sizes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """Check the spec against parameter shapes; return each group's unit count.

        Raises :class:`FusionError` naming the parameter and axis for an unknown or missing
        parameter, an axis-count mismatch, a group used with different sizes, or an axis
        whose runs do not add up to its length.
        """
        unknown = [n for n in self._axes if n not in shapes]
        if unknown:
            raise FusionError(f"spec names parameters the model does not have: {unknown}")
        missing = [n for n in shapes if n not in self._axes]
        if missing:
            raise FusionError(
                f"spec does not cover parameters {missing}; give each one an entry "
                "(all None for a parameter that is never permuted)"
            )
        sizes: dict[str, tuple[int, str, int]] = {}
        pending: list[tuple[str, int, tuple[Segment, ...], int]] = []
        for name, entries in self._axes.items():
            shape = tuple(shapes[name])
            if len(entries) != len(shape):
                raise FusionError(
                    f"spec for {name!r} has {len(entries)} axes but the parameter has shape {shape}"
                )
            for a, entry in enumerate(entries):
                if isinstance(entry, Split):
                    try:
                        sub = entry.resolve(shape[a])
                    except FusionError as exc:
                        raise FusionError(f"{name!r} axis {a}: {exc}") from None
                    for g, n in zip(entry.groups, sub, strict=True):
                        if g is not None:
                            _record(sizes, g, n, name, a)
                    continue
                segs = segments_of(entry)
                if len(segs) == 1 and (group := segs[0].group) is not None:
                    seg = segs[0]
                    block = seg.outer * seg.inner
                    if shape[a] % block:
                        raise FusionError(
                            f"{name!r} axis {a} has length {shape[a]}, not a multiple of the "
                            f"block size {block} of group {seg.group!r}"
                        )
                    _record(sizes, group, shape[a] // block, name, a)
                elif len(segs) > 1:
                    pending.append((name, a, segs, shape[a]))
        for name, a, segs, length in pending:
            total = 0
            for seg in segs:
                if seg.group is None:
                    total += seg.outer
                elif seg.group in sizes:
                    total += seg.outer * sizes[seg.group][0] * seg.inner
                else:
                    raise FusionError(
                        f"group {seg.group!r} in the Concat of {name!r} axis {a} is not the whole "
                        "axis of any parameter, so its size cannot be inferred"
                    )
            if total != length:
                raise FusionError(f"the Concat runs of {name!r} axis {a} add up to {total}, not its length {length}")
        return {g: sizes[g][0] for g in self._groups}


def _record(sizes: dict[str, tuple[int, str, int]], group: str, n: int, name: str, axis: int) -> None:
    seen = sizes.setdefault(group, (n, name, axis))
    if seen[0] != n:
        raise FusionError(
            f"group {group!r} has {seen[0]} units on {seen[1]!r} axis {seen[2]} but {n} on "
            f"{name!r} axis {axis}"
        )
