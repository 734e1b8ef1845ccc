"""Attention in a traced graph: heads, within-head dimensions, grouped-query heads, CLS tokens.

A projection's output units ``H * d`` are split by a ``view`` into heads and dimensions; from
there a tensor carries two unit axes, a :class:`HeadChan`: the heads (one variable, ``H``
units) and the dimensions inside every head (another, ``d`` units, the same order in each
head). The projection's variable is *refined* into the composed layout (a run whose ``inner``
block of ``d`` entries has its own ``sub`` layout), which becomes a :class:`~gamfsolve.Split`
entry of the spec. ``q @ k^T`` (or ``scaled_dot_product_attention``) unites the heads of
queries, keys and values and the dimensions of queries and keys; the values' dimensions go on
to the output projection when the heads are merged back. Anything that mixes the dimensions
(rotary position embeddings multiply them by position-dependent factors and swap halves)
fixes them, and the heads still move. Grouped-query attention expands each key/value head to
``H / n_kv`` query heads; the query heads' variable is refined into ``n_kv`` blocks so that a
key/value head and its query heads move together.

Ops that see a two-axis tensor run the ordinary handler once per axis (``_torch_heads``); an
op that is not understood fixes both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import fx, nn

from ._torch_graph import Chan, Engine, Seg, fixed_run
from ._torch_heads import (
    HeadChan,
    join,
    per_axis,
    refinable,
    resolve,
    resolved,
    structured,
    substitute,
    unify_heads,
    with_views,
)
from ._torch_ops import _UNARY, HANDLERS, unknown
from ._torch_shape_ops import _reshape

__all__ = ["attention_handler", "opaque_attention"]

Handler = Callable[[Engine, Any], Any]


# -- handlers ---------------------------------------------------------------------------------
def _none(eng: Engine, call: Any) -> None:
    """A no-op check (``_assert_tensor_metadata``): no output, nothing fixed."""
    return None


def addmm(eng: Engine, call: Any) -> Any:
    """``bias + x @ W`` with ``W`` of shape ``(in, out)`` (Hugging Face's ``Conv1D``)."""
    b, x, w = call.param(call.get(0, "self")), call.get(1, "mat1"), call.param(call.get(2, "mat2"))
    if w is None or b is None or len(eng.param_shape(w)) != 2:
        return unknown(eng, call)
    info = resolved(eng, call.chan(x))
    if isinstance(info, Chan) and not isinstance(info, HeadChan) and info.axis == 1:
        eng.assign(w, 0, info.segs)
    else:
        eng.fix(info, f"{call.where} reads a tensor whose units are not on its last axis")
        eng.assign(w, 0, fixed_run(eng.param_shape(w)[0]))
    out = eng.param_var(w, 1, call.label(w))
    eng.assign(b, 0, out)
    return Chan(1, out)


def expand(eng: Engine, call: Any) -> Any:
    """Broadcasting to a larger shape keeps every axis of length > 1 where it is."""
    info = resolved(eng, call.chan(call.get(0, "self")))
    shift = len(call.out_shape) - len(call.shape(call.get(0, "self")))
    if isinstance(info, HeadChan):
        return HeadChan(info.axis + shift, info.segs, info.dims_axis + shift, info.dims)
    return None if info is None else info.moved(info.axis + shift)


def _factors(shape: tuple[int, ...], axis: int, out: tuple[int, ...]) -> tuple[int, int] | None:
    """Output axes ``(first, last)`` that split input ``axis`` exactly (at least two of them)."""
    prefix, length = math.prod(shape[:axis]), shape[axis]
    first = next((j for j in range(len(out) + 1) if math.prod(out[:j]) == prefix), None)
    if first is None:
        return None
    for last in range(first + 1, len(out)):
        size = math.prod(out[first : last + 1])
        if size == length and out[last] > 1 and out[last - 1] > 1:
            return first, last
        if size > length:
            return None
    return None


_LAYOUT_ONLY = {"unsqueeze", "transpose", "squeeze", "contiguous", "permute", "clone", "alias", "to"}


def _selected_later(node: fx.Node | None) -> bool:
    """Whether a view's result is later cut into pieces by ``select`` / ``unbind`` (q, k, v slots)."""
    frontier, seen = [node] if node is not None else [], 0
    while frontier and seen < 32:
        seen += 1
        current = frontier.pop()
        for user in current.users:
            schema = getattr(user.target, "_schema", None)
            kind = schema.name.split("::")[-1] if schema is not None else ""
            if kind in ("select", "unbind"):
                return True
            if kind in _LAYOUT_ONLY:
                frontier.append(user)
    return False


def _regroup(seg: Seg, axis: int, shape: tuple[int, ...], out: tuple[int, ...]) -> Chan | None:
    """Where one run ``(outer, n, inner)`` of ``axis`` lands after a reshape (None: its units are split)."""
    virtual = (*shape[:axis], seg.outer, seg.n, seg.inner, *shape[axis + 1 :])
    moved = _reshape(Chan(axis + 1, (Seg(seg.var, 1, seg.n, 1),)), virtual, out)
    if moved is None or len(moved.segs) != 1:
        return None
    new = moved.segs[0]
    if seg.sub is None:
        return moved
    if new.inner % seg.inner:
        return None
    k = new.inner // seg.inner  # trailing axes merged after each unit's block
    sub = seg.sub
    return Chan(moved.axis, (Seg(new.var, new.outer, new.n, new.inner, Seg(sub.var, sub.outer, sub.n, sub.inner * k)),))


def _split_heads(eng: Engine, call: Any, info: Chan) -> Any:
    """A view that splits a unit axis ``H*d`` into heads and dimensions (maybe merged with batch axes).

    ``(..., H*d) -> (..., H, d)``, ``(..., 3*H*d) -> (..., 3, H, d)`` (a fused projection: one
    heads and one dimension order for the three) and ``(T, B, H*d) -> (T, B*H, d)``. A two-way
    split whose leading piece is later selected (``(..., 3*E) -> (..., 3, E)``, then q, k, v) is a
    fused projection instead: the three pieces share one variable of ``E`` units.
    """
    shape, out = tuple(call.shape(call.get(0, "input"))), tuple(call.out_shape)
    if len(info.segs) != 1:
        return None
    seg = resolve(eng, info.segs[0])
    length = shape[info.axis]
    span = _factors(shape, info.axis, out)
    if span is not None and span[1] - span[0] == 1 and _selected_later(call.node):
        return _split_slots(eng, info, seg, out[span[0]], span[1])
    if span is not None:
        outer, n_heads, d = math.prod(out[span[0] : span[1] - 1]), out[span[1] - 1], out[span[1]]
    else:
        trail = math.prod(shape[info.axis + 1 :])
        j = next((j for j in range(len(out) - 1, -1, -1) if math.prod(out[j + 1 :]) == trail), None)
        if j is None or length % out[j] or out[j] in (1, length):
            return None
        outer, n_heads, d = 1, length // out[j], out[j]
    virtual = (*shape[: info.axis], outer, n_heads, d, *shape[info.axis + 1 :])
    heads = _reshape(Chan(info.axis + 1, (Seg(None, 1, n_heads, 1),)), virtual, out)
    dims = _reshape(Chan(info.axis + 2, (Seg(None, 1, d, 1),)), virtual, out)
    if heads is None or dims is None or heads.axis == dims.axis:
        return None
    if seg.shape()[:3] == (outer, n_heads, d):
        heads_var, sub = seg.var, seg.sub if seg.sub is not None else Seg(None, 1, d, 1)
    elif seg.sub is None and seg.shape() == (1, length, 1) and refinable(eng, seg.var):
        module, projection = _names(call)
        heads_var, sub = eng.new_var(n_heads, f"{module}.heads"), Seg(eng.new_var(d, f"{projection}.dims"), 1, d, 1)
        eng.refine(seg.var, Seg(heads_var, outer, n_heads, d, sub), substitute)  # type: ignore[arg-type]
    else:
        return None
    return HeadChan(heads.axis, tuple(Seg(heads_var, s.outer, s.n, s.inner) for s in heads.segs),
                    dims.axis, tuple(Seg(sub.var, s.outer * sub.outer, sub.n, s.inner * sub.inner) for s in dims.segs))


def _names(call: Any) -> tuple[str, str]:
    """Group labels: the attention module's path and the projection that feeds the view."""
    stack = call.node.meta.get("nn_module_stack") if call.node is not None else None
    module = str(list(stack.values())[-1][0]) if stack else "attention"
    source = call.get(0, "input")
    weight = None
    if isinstance(source, fx.Node) and source.op == "call_function" and len(source.args) > 2:
        for arg in source.args[:3]:
            name = call.param(arg)
            if name is not None and name.endswith("weight"):
                weight = name
    return module, call.label(weight) if weight is not None else module


def _split_slots(eng: Engine, info: Chan, seg: Seg, slots: int, axis: int) -> Any:
    """``(..., k*E) -> (..., k, E)``: the ``k`` slots share one variable of ``E`` units."""
    if seg.sub is not None or seg.shape() != (1, seg.n, 1) or not refinable(eng, seg.var):
        return None
    new = Seg(eng.new_var(seg.n // slots, "qkv"), slots, seg.n // slots, 1)
    eng.refine(seg.var, new, substitute)  # type: ignore[arg-type]
    return Chan(axis, (Seg(new.var, 1, new.n, 1),))


def reshape(eng: Engine, call: Any) -> Any:
    """Split into heads, merge heads back, or an ordinary reshape."""
    x = call.get(0, "input")
    info = resolved(eng, call.chan(x))
    shape, out = tuple(call.shape(x)), tuple(call.out_shape)
    if isinstance(info, HeadChan) and len(info.segs) == 1 and len(info.dims) == 1:
        heads = _regroup(info.segs[0], info.axis, shape, out)
        dims = _regroup(info.dims[0], info.dims_axis, shape, out)
        if heads is not None and dims is not None:
            joined = join(heads, dims)
            if joined is not None:
                return joined
    if isinstance(info, Chan) and not isinstance(info, HeadChan):
        if len(info.segs) == 1:
            moved = _regroup(resolve(eng, info.segs[0]), info.axis, shape, out)
            if moved is not None:
                return moved
        elif not structured(info):
            moved = _reshape(info, shape, out)
            if moved is not None:
                return moved
        split = _split_heads(eng, call, info)
        if split is not None:
            return split
        return HANDLERS["reshape"](eng, call)
    return per_axis(HANDLERS["reshape"])(eng, call)


def split(eng: Engine, call: Any) -> Any:
    """Equal pieces of a unit axis (a fused query/key/value projection) share one variable."""
    x = call.get(0, "input")
    info = resolved(eng, call.chan(x))
    shape = call.shape(x)
    dim = call.get(2, "dim", 0)
    dim = dim + len(shape) if dim < 0 else dim
    outs = call.out_shape if isinstance(call.out_shape, tuple) and call.out_shape and isinstance(
        call.out_shape[0], tuple) else None
    if (isinstance(info, Chan) and not structured(info) and outs and dim == info.axis and len(info.segs) == 1
            and len({o[dim] for o in outs}) == 1 and info.segs[0].shape() == (1, shape[dim], 1)
            and refinable(eng, info.segs[0].var)):
        piece = outs[0][dim]
        new = Seg(eng.new_var(piece, "qkv"), len(outs), piece, 1)
        eng.refine(info.segs[0].var, new, substitute)  # type: ignore[arg-type]
        return tuple(Chan(dim, (Seg(new.var, 1, piece, 1),)) for _ in outs)
    return per_axis(HANDLERS["split"])(eng, call)


def _tracked(info: Any) -> list[tuple[int, tuple[Seg, ...]]]:
    if isinstance(info, HeadChan):
        return [(info.axis, info.segs), (info.dims_axis, info.dims)]
    return [(info.axis, info.segs)] if isinstance(info, Chan) else []


def _matmul_out(eng: Engine, call: Any, a: Any, b: Any, sa: tuple, sb: tuple, ndim: int) -> Any:
    """Batch axes of the two operands are united, the contracted pair too; rows and columns pass."""
    reason = f"{call.where} multiplies tensors whose unit axes do not line up"
    contract: list[tuple[Seg, ...]] = []
    kept: dict[int, list[tuple[Seg, ...]]] = {}
    batch: dict[int, list[tuple[tuple[Seg, ...], tuple]]] = {}
    for info, shape, c_ax, keep, out_keep, other in ((a, sa, len(sa) - 1, len(sa) - 2, ndim - 2, sb),
                                                     (b, sb, len(sb) - 2, len(sb) - 1, ndim - 1, sa)):
        for axis, segs in _tracked(info):
            if axis == c_ax:
                contract.append(segs)
            elif axis == keep:
                kept.setdefault(out_keep, []).append(segs)
            else:
                batch.setdefault(axis + ndim - len(shape), []).append((segs, other))
    if len(contract) == 2:
        eng.unify(contract[0], contract[1], reason)
    elif contract:
        eng.fix(Chan(0, contract[0]), reason)
    out: list[tuple[int, tuple[Seg, ...]]] = [(ax, segs[0]) for ax, segs in kept.items()]
    for axis, entries in batch.items():
        if len(entries) == 2:
            out.append((axis, unify_heads(eng, entries[0][0], entries[1][0], reason)))
            continue
        segs, other = entries[0]
        pos = axis - (ndim - len(other))
        if pos < 0 or other[pos] == 1:  # the other operand broadcasts along the heads
            out.append((axis, segs))
        else:
            eng.fix(Chan(0, segs), reason)
    out.sort(key=lambda item: item[0])
    if len(out) == 1:
        return Chan(*out[0])
    if len(out) == 2:
        return HeadChan(out[0][0], out[0][1], out[1][0], out[1][1])
    eng.fix([Chan(0, s) for _, s in out], reason)
    return None


def matmul(eng: Engine, call: Any) -> Any:
    """``matmul`` / ``bmm`` of activations (attention scores and their product with values)."""
    x, y = call.get(0, "self"), call.get(1, "other", call.get(1, "mat2"))
    a, b = resolved(eng, call.chan(x)), resolved(eng, call.chan(y))
    if a is None and b is None:
        for t in (x, y):
            eng.assign_fixed(call.param(t))
        return None
    if call.param(x) is not None or call.param(y) is not None or len(call.shape(x)) < 2 or len(call.shape(y)) < 2:
        return unknown(eng, call)
    return _matmul_out(eng, call, a, b, tuple(call.shape(x)), tuple(call.shape(y)), len(call.out_shape))


def sdpa(eng: Engine, call: Any) -> Any:
    """``scaled_dot_product_attention(q, k, v)``: heads of all three united, q/k dimensions united."""
    q, k, v = (resolved(eng, call.chan(call.get(i, n))) for i, n in enumerate(("query", "key", "value")))
    mask = call.get(3, "attn_mask")
    reason = f"{call.where} attends over tensors whose heads do not line up"
    ndim = len(call.out_shape)
    infos = (q, k, v)
    if call.chan(mask) is not None or call.get(7, "enable_gqa", False) or any(
            not isinstance(i, Chan) or i.axis != ndim - 3 for i in infos):
        for i in (*infos, call.chan(mask)):
            eng.fix(i, reason)
        return None
    heads = unify_heads(eng, unify_heads(eng, q.segs, k.segs, reason), v.segs, reason)
    if isinstance(q, HeadChan) and isinstance(k, HeadChan) and q.dims_axis == k.dims_axis == ndim - 1:
        eng.unify(q.dims, k.dims, reason)
    else:
        for i in (q, k):
            if isinstance(i, HeadChan):
                eng.fix(i.dim_chan(), reason)
    if isinstance(v, HeadChan) and v.dims_axis == ndim - 1:
        return HeadChan(ndim - 3, heads, ndim - 1, v.dims)
    return Chan(ndim - 3, heads)


_TRACE_BACK = {"expand", "unsqueeze", "view", "reshape", "clone", "to", "contiguous", "alias", "repeat"}


def _param_source(call: Any, node: Any) -> str | None:
    """The parameter a chain of views and broadcasts starts from (a CLS token)."""
    for _ in range(8):
        name = call.param(node)
        if name is not None:
            return name
        if not isinstance(node, fx.Node) or node.op != "call_function" or not node.args:
            return None
        kind = getattr(node.target, "_schema", None)
        if kind is None or kind.name.split("::")[-1] not in _TRACE_BACK:
            return None
        node = node.args[0]
    return None


def cat(eng: Engine, call: Any) -> Any:
    """A learned token (CLS) joined to the sequence: its hidden axis follows the sequence's."""
    tensors = list(call.get(0, "tensors"))
    infos = [resolved(eng, call.chan(t)) for t in tensors]
    carried = [i for i in infos if isinstance(i, Chan)]
    if carried and not any(structured(i) for i in carried) and any(i is None for i in infos):
        first, ndim = carried[0], len(call.out_shape)
        views = {}
        for t, i in zip(tensors, infos, strict=True):
            name = _param_source(call, t) if i is None else None
            if i is None and name is not None:
                pshape, pa = eng.param_shape(name), first.axis - ndim
                if len(pshape) >= -pa and pshape[pa] == call.shape(t)[first.axis] == call.out_shape[first.axis]:
                    eng.assign(name, len(pshape) + pa, first.segs)
                    eng.assign_fixed(name, except_axis=len(pshape) + pa)
                    views[t] = first
        if views:
            return with_views(call, views, HANDLERS["cat"], eng)
    return per_axis(HANDLERS["cat"])(eng, call)


ALWAYS: dict[str, Handler] = {
    "assert_tensor_metadata": _none, "addmm": addmm, "scaled_dot_product_attention": sdpa,
    "matmul": matmul, "bmm": matmul, "expand": expand, "view": reshape, "reshape": reshape,
    "_unsafe_view": reshape, "unflatten": reshape, "split": split, "cat": cat, "concat": cat,
}
TWO_AXES: dict[str, Handler] = {
    **{k: per_axis(HANDLERS[k]) for k in _UNARY if k in HANDLERS},
    **{k: per_axis(HANDLERS[k]) for k in ("add", "sub", "mul", "div", "true_divide", "rsub", "neg",
                                          "transpose", "permute", "swapaxes", "t", "slice", "select",
                                          "narrow", "getitem", "unsqueeze", "squeeze", "flatten",
                                          "unflatten", "chunk", "unbind", "split_with_sizes",
                                          "tensor_split", "mean", "sum", "native_dropout")
       if k in HANDLERS},
    "linear": HANDLERS["linear"],
}


def attention_handler(call: Any) -> Handler | None:
    """The handler for ``call`` when attention needs one, else None (the ordinary table)."""
    if call.kind in ALWAYS:
        return ALWAYS[call.kind]
    if any(structured(call.chan(x)) for x in call.all_args()):
        return TWO_AXES.get(call.kind, unknown)
    return None


def opaque_attention(gm: fx.GraphModule) -> bool:
    """Whether torch.fx left an attention module as one opaque call (export traces into it)."""
    kinds = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
             nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer)
    return any(n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), kinds) for n in gm.graph.nodes)
