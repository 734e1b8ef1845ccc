"""Tensors with two unit axes (attention heads and their dimensions) in the channel propagation.

A projection's output variable is *refined* into heads of ``d`` dimensions (a run whose
``inner`` block has its own ``sub`` layout) when a view splits it; from there a tensor carries a
:class:`HeadChan`. :func:`per_axis` runs an ordinary one-axis handler once on the heads and once
on the dimensions (through temporary one-axis views) and joins the results; heads and
dimensions that land in one axis again are merged into a run with a ``sub`` layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import fx

from ._torch_graph import Chan, Engine, Seg, fixed_run

__all__ = ["HeadChan", "join", "per_axis", "refinable", "resolve", "resolved", "structured", "substitute", "with_views",
           "unify_heads"]

Handler = Callable[[Engine, Any], Any]


@dataclass(frozen=True)
class HeadChan(Chan):
    """A tensor with two unit axes: heads (``axis``, ``segs``) and dimensions (``dims_axis``, ``dims``)."""

    dims_axis: int = -1
    dims: tuple[Seg, ...] = ()

    def vars(self) -> list[int]:
        return super().vars() + [v for s in self.dims for v in s.vars()]

    def heads(self) -> Chan:
        return Chan(self.axis, self.segs)

    def dim_chan(self) -> Chan:
        return Chan(self.dims_axis, self.dims)


def structured(info: Any) -> bool:
    """Whether a tensor carries heads (two unit axes, or a run with a ``sub`` layout)."""
    return isinstance(info, HeadChan) or (isinstance(info, Chan) and any(s.sub is not None for s in info.segs))


# -- refinement -------------------------------------------------------------------------------
def substitute(seg: Seg, var: int, layout: Seg) -> Seg | None:
    """``seg`` with variable ``var`` replaced by the finer ``layout`` (None: not expressible)."""
    if seg.var == var:
        sub: Seg | None
        if layout.sub is None:
            sub = None if seg.sub is None else Seg(seg.sub.var, layout.inner * seg.sub.outer, seg.sub.n,
                                                   seg.sub.inner, seg.sub.sub)
        elif seg.sub is None and seg.inner == 1:
            sub = layout.sub
        else:
            return None
        return Seg(layout.var, seg.outer * layout.outer, layout.n, layout.inner * seg.inner, sub)
    if seg.sub is not None and var in seg.sub.vars():
        inner = substitute(seg.sub, var, layout)
        return None if inner is None else Seg(seg.var, seg.outer, seg.n, seg.inner, inner)
    return seg


def resolve(eng: Engine, seg: Seg) -> Seg:
    """Follow refinements made after ``seg`` was recorded."""
    for _ in range(64):
        var = next((v for v in seg.vars() if v in eng.refined), None)
        if var is None:
            return seg
        new = substitute(seg, var, eng.refined[var])
        if new is None:
            return seg
        seg = new
    return seg


def refinable(eng: Engine, var: int | None) -> bool:
    """Whether ``var`` may still be replaced by a finer layout (alone in its class, not fixed)."""
    return var is not None and var not in eng.refined and not eng.is_fixed(var) and eng.class_size(var) == 1


def resolved(eng: Engine, info: Any) -> Any:
    """``info`` with every run brought up to date (:func:`resolve`)."""
    if isinstance(info, HeadChan):
        return HeadChan(info.axis, tuple(resolve(eng, s) for s in info.segs), info.dims_axis,
                        tuple(resolve(eng, s) for s in info.dims))
    if isinstance(info, Chan):
        return Chan(info.axis, tuple(resolve(eng, s) for s in info.segs))
    return info


def unify_heads(eng: Engine, a: tuple[Seg, ...], b: tuple[Seg, ...], reason: str) -> tuple[Seg, ...]:
    """Unite two head layouts; a plain one is refined into blocks to match a grouped one."""
    a = tuple(resolve(eng, s) for s in a)
    b = tuple(resolve(eng, s) for s in b)
    if len(a) == 1 and len(b) == 1 and a[0].shape() != b[0].shape() and a[0].length == b[0].length:
        for x, y in ((a[0], b[0]), (b[0], a[0])):
            if x.shape() == (1, x.length, 1) and y.sub is None and refinable(eng, x.var):
                new = Seg(eng.new_var(y.n, "heads"), y.outer, y.n, y.inner)
                eng.refine(x.var, new, substitute)  # type: ignore[arg-type]
                eng.unify((new,), (y,), reason)
                return (y,)
    eng.unify(a, b, reason)
    return a if len(a) == 1 and len(b) == 1 and a[0].shape() == b[0].shape() else b


# -- running an ordinary handler on one axis at a time ----------------------------------------
def with_views(call: Any, views: dict[fx.Node, Any], handler: Handler, eng: Engine) -> Any:
    """Run ``handler`` while the arguments in ``views`` are seen with other channel infos."""
    env = call.env
    saved = {n: env.info.get(n) for n in views}
    env.info.update(views)
    try:
        return handler(eng, call)
    finally:
        for n, v in saved.items():
            env.info[n] = v


def _nodes(call: Any) -> list[fx.Node]:
    return [x for x in call.all_args() if isinstance(x, fx.Node)]


def join(heads: Any, dims: Any) -> Any:
    """One result from a handler's heads and dimensions results (tuples element by element)."""
    if isinstance(heads, tuple) or isinstance(dims, tuple):
        hs = heads if isinstance(heads, tuple) else (heads,) * len(dims)
        ds = dims if isinstance(dims, tuple) else (dims,) * len(hs)
        return tuple(join(h, d) for h, d in zip(hs, ds, strict=True))
    if isinstance(heads, Chan) and isinstance(dims, Chan):
        if heads.axis == dims.axis:
            return _merge(heads, dims)
        return HeadChan(heads.axis, heads.segs, dims.axis, _one_run(dims.segs))
    return heads if isinstance(heads, Chan) else dims


def _one_run(segs: tuple[Seg, ...]) -> tuple[Seg, ...]:
    if len(segs) > 1 and all(s.var is None for s in segs):
        return fixed_run(sum(s.length for s in segs))
    return segs


def _merge(heads: Chan, dims: Chan) -> Chan | None:
    """Heads and dimensions merged into one axis: a run with a ``sub`` layout."""
    if len(heads.segs) != 1 or len(dims.segs) != 1:
        return None
    h, e = heads.segs[0], dims.segs[0]
    block = h.outer * h.n
    if h.length != e.length or e.outer % block or h.inner != (e.outer // block) * e.n * e.inner or e.sub is not None:
        return None
    return Chan(heads.axis, (Seg(h.var, h.outer, h.n, h.inner, Seg(e.var, e.outer // block, e.n, e.inner)),))


def per_axis(handler: Handler) -> Handler:
    """Run ``handler`` on the heads, then on the dimensions, of every two-axis argument."""

    def run(eng: Engine, call: Any) -> Any:
        nodes = _nodes(call)
        infos = {n: resolved(eng, call.env.info.get(n)) for n in nodes}
        heads = {n: (i.heads() if isinstance(i, HeadChan) else i) for n, i in infos.items()}
        dims = {n: (i.dim_chan() if isinstance(i, HeadChan) else i) for n, i in infos.items()}
        if any(isinstance(i, HeadChan) for i in infos.values()) and not all(
                isinstance(i, HeadChan) or call.chan(n) is None for n, i in infos.items()):
            for i in infos.values():  # a one-axis tensor: its other axes are in a fixed order
                if isinstance(i, HeadChan):
                    eng.fix(i.dim_chan(), f"{call.where} joins heads with a tensor in a fixed order")
            return with_views(call, heads, handler, eng)
        out_heads = with_views(call, heads, handler, eng)
        if not any(isinstance(i, HeadChan) for i in infos.values()):
            return out_heads
        out_dims = with_views(call, dims, handler, eng)
        joined = join(out_heads, out_dims)
        if joined is None:
            eng.fix(list(infos.values()), f"{call.where} mixes heads and dimensions")
        return joined

    return run
