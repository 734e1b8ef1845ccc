"""Channel-group bookkeeping for deriving a :class:`~gamfsolve.PermutationSpec` from a graph.

Every tensor flowing through a traced network is described by a :class:`Chan`: the one axis
that carries permutable units (``axis``) and how that axis is laid out (``segs``, consecutive
runs, each ``(outer, n, inner)`` for a unit variable, or a fixed run). A tensor with no
permutable axis (model inputs, indices, anything an unknown op produced) is ``None``.

Unit variables live in a union-find: ops that require two tensors to share an order (a
residual add, a norm layer, a parameter used twice) unite their variables, and whatever cannot
be permuted safely (model outputs, unknown ops) is united with the special ``FIXED`` class.
Each parameter axis records the runs it must follow; at the end every class becomes one group
of the spec, or ``None`` if it is fixed or used by a single parameter only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gamfsolve import Blocks, Concat, PermutationSpec, Split
from gamfsolve.spec._spec import AxisEntry

__all__ = ["FIXED", "Chan", "Engine", "Seg", "View"]

FIXED = 0
View = tuple[str, tuple[int | None, ...]]  # a parameter and the parameter axis of each tensor axis (None: size 1)


@dataclass(frozen=True)
class Seg:
    """A run of an axis: ``outer * n * inner`` entries; ``var`` None for a fixed run."""

    var: int | None
    outer: int
    n: int
    inner: int
    sub: Seg | None = None  # the layout of each unit's ``inner`` block (dimensions of a head)

    @property
    def length(self) -> int:
        return self.outer * self.n * self.inner

    def shape(self) -> tuple[int, ...]:
        return (self.outer, self.n, self.inner) + (self.sub.shape() if self.sub is not None else ())

    def vars(self) -> list[int]:
        """Its unit variable and those of its ``sub`` layout."""
        own = [] if self.var is None else [self.var]
        return own + (self.sub.vars() if self.sub is not None else [])


def fixed_run(length: int) -> tuple[Seg, ...]:
    """One fixed run of ``length`` entries."""
    return (Seg(None, 1, length, 1),)


@dataclass(frozen=True)
class Chan:
    """The permutable axis of a tensor and the layout of its runs."""

    axis: int
    segs: tuple[Seg, ...]

    def moved(self, axis: int) -> Chan:
        return Chan(axis, self.segs)

    def vars(self) -> list[int]:
        """Every unit variable the tensor carries."""
        return [v for seg in self.segs for v in seg.vars()]


class Engine:
    """Union-find over unit variables plus what each parameter axis must follow."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], aliases: Mapping[str, str]) -> None:
        self.shapes = dict(shapes)
        self.aliases = dict(aliases)  # tied parameter name -> canonical name
        self._parent: list[int] = [FIXED]
        self._size: list[int] = [0]
        self._label: list[str] = ["<fixed>"]
        self._param_axes: dict[tuple[str, int], tuple[Seg, ...]] = {}
        self.notes: list[str] = []  # why groups were fixed, for logging and strict mode
        self.refined: dict[int, Seg] = {}  # a variable replaced by a finer layout (heads)
        self.layer_outputs: list[tuple[str, int]] = []  # parameter axes that hold a layer's units
        self.output_vars: set[int] = set()  # variables that reach the model's outputs

    # -- union-find ---------------------------------------------------------------------
    def new_var(self, n: int, label: str) -> int:
        self._parent.append(len(self._parent))
        self._size.append(n)
        self._label.append(label)
        return len(self._parent) - 1

    def find(self, v: int) -> int:
        root = v
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[v] != root:
            self._parent[v], v = root, self._parent[v]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if FIXED not in (ra, rb) and self._size[ra] != self._size[rb]:
            self._parent[ra] = FIXED
            self._parent[rb] = FIXED
            return
        lo, hi = (ra, rb) if ra < rb else (rb, ra)  # FIXED (0) always wins; else the older var
        self._parent[hi] = lo

    def is_fixed(self, v: int) -> bool:
        return self.find(v) == FIXED

    # -- runs -------------------------------------------------------------------------------
    def fix(self, info: object, reason: str | None = None) -> None:
        """Fix every variable in ``info`` (a Chan, a tuple of them, or None)."""
        touched = False
        for chan in _chans(info):
            for var in chan.vars():
                touched = touched or not self.is_fixed(var)
                self.union(var, FIXED)
        if reason and touched:
            self.notes.append(reason)

    def unify(self, a: tuple[Seg, ...], b: tuple[Seg, ...], reason: str = "") -> bool:
        """Make two layouts of the same axis share their units; fix both if they cannot."""
        if [s.shape() for s in a] != [s.shape() for s in b] and not _both_fixed(a, b):
            self.fix(Chan(0, a), reason or None)
            self.fix(Chan(0, b), reason or None)
            return False
        for first, second in zip(a, b, strict=False):
            sa: Seg | None = first
            sb: Seg | None = second
            while sa is not None and sb is not None:  # a run and the runs of its sub layout
                if sa.var is not None and sb.var is not None:
                    self.union(sa.var, sb.var)
                elif sa.var is not None or sb.var is not None:
                    self.union(sa.var if sa.var is not None else sb.var, FIXED)  # type: ignore[arg-type]
                sa, sb = sa.sub, sb.sub
        return True

    # -- parameters -------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def has_param(self, name: str | None) -> bool:
        return name is not None and self.canonical(name) in self.shapes

    def param_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[self.canonical(name)]

    def assign(self, name: str | None, axis: int, segs: tuple[Seg, ...]) -> None:
        """Parameter ``name`` axis ``axis`` follows ``segs`` (united with earlier uses)."""
        if name is None or not self.has_param(name):
            return
        key = (self.canonical(name), axis)
        seen = self._param_axes.get(key)
        if seen is None:
            self._param_axes[key] = segs
        else:
            self.unify(seen, segs, f"parameter {name!r} is used with two layouts")

    def assign_fixed(self, name: str | None, *, except_axis: int | None = None) -> None:
        """Every axis of parameter ``name`` (but ``except_axis``) stays fixed."""
        if name is None or not self.has_param(name):
            return
        for axis, length in enumerate(self.param_shape(name)):
            if axis != except_axis:
                self.assign(name, axis, fixed_run(length))

    def param_var(self, name: str, axis: int, label: str) -> tuple[Seg, ...]:
        """The unit runs of ``name`` axis ``axis``, opening a new variable on first use."""
        key = (self.canonical(name), axis)
        if key not in self._param_axes:
            n = self.param_shape(name)[axis]
            self._param_axes[key] = (Seg(self.new_var(n, label), 1, n, 1),)
            self.layer_outputs.append(key)
        return self._param_axes[key]

    def param_layout(self, name: str, axis: int) -> tuple[Seg, ...] | None:
        """The runs recorded for ``name`` axis ``axis`` (None if none yet)."""
        return self._param_axes.get((self.canonical(name), axis))

    def class_count(self) -> int:
        """How many variables exist (the fixed class included)."""
        return len(self._parent)

    def class_size(self, var: int) -> int:
        """How many variables share ``var``'s class."""
        root = self.find(var)
        return sum(1 for v in range(1, len(self._parent)) if self.find(v) == root)

    def refine(self, var: int, layout: Seg, substitute: object) -> None:
        """Replace ``var`` by the finer ``layout`` on every parameter axis that follows it.

        ``substitute(seg, var, layout)`` returns the rewritten run (``None``: not expressible,
        the run is fixed).
        """
        self.refined[var] = layout
        for key, segs in self._param_axes.items():
            if any(var in s.vars() for s in segs):
                new = [substitute(s, var, layout) for s in segs]  # type: ignore[operator]
                if len(segs) > 1 or any(x is None for x in new):
                    self.fix(Chan(0, segs), f"parameter {key[0]!r} axis {key[1]} mixes heads with other runs")
                else:
                    self._param_axes[key] = tuple(new)

    # -- the spec ---------------------------------------------------------------------------
    def spec(self, names: list[str]) -> PermutationSpec:
        """The spec over ``names``; classes with fewer than two parameters become fixed."""
        group_of = self._group_names()
        users: dict[str, set[str]] = {}
        raw: dict[str, list[list[tuple[str | None, Seg]]]] = {}
        for name in names:
            canon = self.canonical(name)
            axes = []
            for axis, length in enumerate(self.shapes[canon]):
                segs = self._param_axes.get((canon, axis), fixed_run(length))
                runs = [(None if s.var is None else group_of.get(self.find(s.var)), s) for s in segs]
                for var in (v for s in segs for v in s.vars()):
                    if (g := group_of.get(self.find(var))) is not None:
                        users.setdefault(g, set()).add(name)
                axes.append(runs)
            raw[name] = axes
        lonely = {g for g, who in users.items() if len(who) < 2}

        def group(var: int | None) -> str | None:
            g = None if var is None else group_of.get(self.find(var))
            return None if g in lonely else g

        return PermutationSpec(
            {name: tuple(split_entry(runs[0][1], group) if len(runs) == 1 and runs[0][1].sub is not None
                         else _entry(runs, lonely) for runs in axes) for name, axes in raw.items()}
        )

    def _group_names(self) -> dict[int, str]:
        out: dict[int, str] = {}
        taken: set[str] = set()
        for v in range(1, len(self._parent)):
            root = self.find(v)
            if root == FIXED or root in out:
                continue
            base = self._label[root]
            name, k = base, 1
            while name in taken:
                k += 1
                name = f"{base}#{k}"
            taken.add(name)
            out[root] = name
        return out


def split_entry(seg: Seg, group: Callable[[int | None], str | None]) -> AxisEntry:
    """A run with a ``sub`` layout (heads of ``d`` dimensions) as a :class:`Split` entry."""
    sub = seg.sub
    assert sub is not None
    parts: list[tuple[str | None, int]] = [(None, seg.outer), (group(seg.var), seg.n), (None, sub.outer),
                                           (group(sub.var), sub.n), (None, sub.inner)]
    parts = [p for p in parts if p[0] is not None or p[1] > 1]
    if all(g is None for g, _ in parts):
        return None
    if len(parts) == 1:
        return parts[0][0]
    shape = [n for _, n in parts]
    if parts[-1][0] is not None and parts[-1][0] == group(sub.var):
        shape[-1] = -1  # the head width: models of different widths share the spec
    return Split(tuple(g for g, _ in parts), tuple(shape))


def _both_fixed(a: tuple[Seg, ...], b: tuple[Seg, ...]) -> bool:
    return all(s.var is None for s in a) and all(s.var is None for s in b)


def _chans(info: object) -> list[Chan]:
    if isinstance(info, Chan):
        return [info]
    if isinstance(info, (tuple, list)):
        return [c for item in info for c in _chans(item)]
    return []


def _entry(runs: list[tuple[str | None, Seg]], lonely: set[str]) -> AxisEntry:
    parts: list[str | Blocks | int] = []
    for group, seg in runs:
        if group is None or group in lonely:
            if parts and isinstance(parts[-1], int):
                parts[-1] += seg.length
            else:
                parts.append(seg.length)
        elif seg.outer == 1 and seg.inner == 1:
            parts.append(group)
        else:
            parts.append(Blocks(group, inner=seg.inner, outer=seg.outer))
    if all(isinstance(p, int) for p in parts):
        return None
    first = parts[0]
    return first if len(parts) == 1 and not isinstance(first, int) else Concat(*parts)
