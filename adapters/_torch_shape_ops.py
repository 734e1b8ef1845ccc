"""Shape-changing operations: pooling, reductions, reshapes, transposes, indexing, cat."""

from __future__ import annotations

import math
from typing import Any

from ._torch_graph import Chan, Engine, Seg, fixed_run
from ._torch_ops import _norm_axis, _register, unknown

__all__: list[str] = []

_POOLS = {
    f"{kind}{d}d": d
    for d in (1, 2, 3)
    for kind in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "lp_pool",
                 "max_pool_with_indices", "adaptive_max_pool_with_indices", "upsample_nearest",
                 "upsample_bilinear", "upsample_linear", "reflection_pad", "replication_pad")
}


def _pool(eng: Engine, call: Any) -> Any:
    """Pools act on the trailing spatial dims: the channel axis passes if it is not among them."""
    x = call.get(0, "input")
    info, ndim = call.chan(x), len(call.shape(x))
    if info is None:
        return None
    if info.axis >= ndim - _POOLS[call.kind]:
        eng.fix(info, f"{call.where} pools over the axis that carries the units")
        return None
    if isinstance(call.out_shape, tuple) and call.out_shape and isinstance(call.out_shape[0], tuple):
        return (info, info)  # (values, indices): both equivariant along the channel axis
    return info


for _name in _POOLS:
    _register(_name)(_pool)


@_register("mean", "sum", "amax", "amin", "var", "std", "logsumexp", "norm", "nansum", "nanmean")
def reduction(eng: Engine, call: Any) -> Any:
    """Sum-like reductions are invariant under permuting the reduced axis."""
    x = call.get(0, "input")
    info, ndim = call.chan(x), len(call.shape(x))
    dims = call.get(1, "dim", None)
    if call.kind == "norm":
        dims = call.get(2, "dim", None)
    if info is None:
        return None
    if dims is None or dims == []:
        return None  # full reduction: invariant
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [_norm_axis(d, ndim) for d in dims]
    if info.axis in dims:
        return None  # reduced over the units: invariant, nothing permuted downstream
    out_ndim = len(call.out_shape)
    if out_ndim == ndim:
        return info
    return info.moved(info.axis - sum(d < info.axis for d in dims))


@_register("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "_unsafe_view",
           "view_as", "reshape_as", "expand_dims", "ravel")
def reshape(eng: Engine, call: Any) -> Any:
    """A reshape keeps the units if their axis is merged with neighbours (never split)."""
    x = call.get(0, "input")
    info = call.chan(x)
    if info is None:
        return None
    out = _reshape(info, tuple(call.shape(x)), tuple(call.out_shape))
    if out is None:
        eng.fix(info, f"{call.where} splits the axis that carries the units")
    return out


def _reshape(info: Chan, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Chan | None:
    """The new layout when the channel axis ends up inside one output axis.

    The input flat index is ``p*C*S + c*S + s``; output axis ``b`` with trailing product ``T``
    and length ``L`` reads ``(f // T) % L``, which is ``(o, c, i)`` with ``i < S/T`` exactly when
    ``T`` divides ``S`` and ``C*S`` divides ``L*T``.
    """
    c = shape[info.axis]
    s = math.prod(shape[info.axis + 1 :])
    for b, length in enumerate(out_shape):
        t = math.prod(out_shape[b + 1 :])
        if t <= s and s % t == 0 and (length * t) % (c * s) == 0 and length * t >= c * s:
            outer, inner = length * t // (c * s), s // t
            if outer > 1 and len(info.segs) > 1:
                return None
            segs = tuple(Seg(g.var, g.outer * outer, g.n, g.inner * inner) for g in info.segs)
            return Chan(b, segs)
    return None


@_register("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "t", "numpy_T")
def transpose(eng: Engine, call: Any) -> Any:
    x = call.get(0, "input")
    info, ndim = call.chan(x), len(call.shape(x))
    if info is None:
        return None
    order = list(range(ndim))
    if call.kind == "permute":
        dims = call.args[1:] if len(call.args) > 1 and isinstance(call.args[1], int) else call.get(1, "dims")
        order = [_norm_axis(d, ndim) for d in dims]
    elif call.kind == "t":
        order = order[::-1]
    elif call.kind in ("movedim", "moveaxis"):
        src, dst = call.get(1, "source"), call.get(2, "destination")
        if not isinstance(src, int) or not isinstance(dst, int):
            return unknown(eng, call)
        order.remove(_norm_axis(src, ndim))
        order.insert(_norm_axis(dst, ndim), _norm_axis(src, ndim))
    else:
        d0, d1 = _norm_axis(call.get(1, "dim0"), ndim), _norm_axis(call.get(2, "dim1"), ndim)
        order[d0], order[d1] = order[d1], order[d0]
    return info.moved(order.index(info.axis))


@_register("getitem")
def getitem(eng: Engine, call: Any) -> Any:
    x, index = call.args[0], call.args[1]
    info = call.chan(x)
    if not call.is_tensor(x):
        if isinstance(info, tuple) and isinstance(index, int):
            return info[index]
        return None
    if info is None:
        return None
    index = index if isinstance(index, tuple) else (index,)
    if any(call.is_tensor(i) or isinstance(i, (list, bool)) for i in index):
        return unknown(eng, call)
    ndim = len(call.shape(x))
    explicit = sum(1 for i in index if i is not None and i is not Ellipsis)
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (ndim - explicit) + index[k + 1 :]
    out_axis, in_axis = 0, 0
    for item in index:
        if item is None:
            out_axis += 1
            continue
        if in_axis == info.axis:
            if item == slice(None):
                return info.moved(out_axis)
            eng.fix(info, f"{call.where} selects part of the axis that carries the units")
            return None
        in_axis += 1
        out_axis += 0 if isinstance(item, int) else 1
    return info.moved(out_axis + info.axis - in_axis)


@_register("slice", "select", "narrow")
def slice_(eng: Engine, call: Any) -> Any:
    x = call.get(0, "input")
    info, shape = call.chan(x), call.shape(x)
    if info is None:
        return None
    dim = _norm_axis(call.get(1, "dim", 0), len(shape))
    if dim == info.axis:
        if call.kind == "slice" and tuple(call.out_shape) == tuple(shape) and call.get(4, "step", 1) == 1:
            return info
        eng.fix(info, f"{call.where} selects part of the axis that carries the units")
        return None
    if call.kind == "select":
        return info.moved(info.axis - (dim < info.axis))
    return info


@_register("cat", "concat", "concatenate", "stack")
def cat(eng: Engine, call: Any) -> Any:
    tensors = list(call.get(0, "tensors"))
    infos = [call.chan(t) for t in tensors]
    if all(i is None for i in infos):
        for t in tensors:
            eng.assign_fixed(call.param(t))
        return None
    ndim = len(call.shape(tensors[0]))
    dim = _norm_axis(call.get(1, "dim", 0), ndim + (call.kind == "stack"))
    where = f"{call.where} joins tensors with different layouts"
    if call.kind != "stack" and all(i is None or i.axis == dim for i in infos):
        segs: list[Seg] = []
        for t, i in zip(tensors, infos, strict=True):
            segs.extend(i.segs if i is not None else fixed_run(call.shape(t)[dim]))
        return Chan(dim, tuple(segs))
    axes = {i.axis for i in infos if i is not None}
    if None in infos or len(axes) != 1:
        for i in infos:
            eng.fix(i, where)
        return None
    first = infos[0]
    for i in infos[1:]:
        eng.unify(first.segs, i.segs, where)
    if call.kind == "stack" and dim <= first.axis:
        return first.moved(first.axis + 1)
    return first


@_register("chunk", "split", "split_with_sizes", "unbind", "tensor_split")
def split(eng: Engine, call: Any) -> Any:
    x = call.get(0, "input")
    info, shape = call.chan(x), call.shape(x)
    n_out = len(call.out_shape) if isinstance(call.out_shape, tuple) and call.out_shape and isinstance(
        call.out_shape[0], tuple) else 1
    dim_pos = 1 if call.kind == "unbind" else 2
    dim = _norm_axis(call.get(dim_pos, "dim", 0), len(shape))
    if info is None:
        return (None,) * n_out
    if dim == info.axis:
        eng.fix(info, f"{call.where} splits the axis that carries the units")
        return (None,) * n_out
    if call.kind == "unbind":
        return (info.moved(info.axis - (dim < info.axis)),) * n_out
    return (info,) * n_out
