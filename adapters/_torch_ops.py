"""How each operation moves, creates, joins or fixes channel groups.

A handler receives the :class:`~adapters._torch_graph.Engine` and a ``Call`` (see
``_torch_trace``) and returns the output's channel info (a ``Chan``, ``None``, or a tuple for
ops with several outputs). Anything not listed here goes to :func:`unknown`, which fixes every
group it touches: never a silently wrong spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._torch_graph import Chan, Engine, fixed_run

__all__ = ["HANDLERS", "unknown"]

Handler = Callable[[Engine, Any], Any]
HANDLERS: dict[str, Handler] = {}


def _register(*names: str) -> Callable[[Handler], Handler]:
    def wrap(func: Handler) -> Handler:
        for name in names:
            HANDLERS[name] = func
        return func

    return wrap


def unknown(eng: Engine, call: Any) -> None:
    """Fix every group reaching this op and every parameter it reads."""
    reason = f"{call.where} cannot be permuted safely: its groups are fixed"
    for x in call.all_args():
        eng.fix(call.chan(x), reason)
        view = call.view(x)
        eng.assign_fixed(view[0] if view is not None else None)
    for name in call.module_params():
        eng.assign_fixed(name)
    return None


def _norm_axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


# -- elementwise ------------------------------------------------------------------------------
_UNARY = (
    "relu relu6 gelu silu sigmoid tanh elu leaky_relu hardtanh hardswish hardsigmoid softplus mish "
    "selu celu glu_no dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout "
    "feature_dropout neg abs exp log log1p sqrt rsqrt square reciprocal clamp clamp_min clamp_max clip "
    "contiguous clone detach softmax log_softmax to type float double half bfloat16 identity sign "
    "sin cos erf threshold logsigmoid softsign tanhshrink hardshrink softshrink silu_ lift_fresh_copy "
    "alias"
).split()


@_register(*_UNARY)
def unary(eng: Engine, call: Any) -> Any:
    """Elementwise (or equivariant along every axis, like softmax): the layout is unchanged."""
    x = call.get(0, "input")
    for extra in call.all_args():
        if extra is x:
            continue
        if call.chan(extra) is not None or call.param(extra) is not None:
            return unknown(eng, call)  # a tensor-valued extra argument (clamp bounds, ...)
    return call.chan(x)


@_register("native_dropout")
def native_dropout(eng: Engine, call: Any) -> Any:
    info = call.chan(call.get(0, "input"))
    return (info, info)


@_register("add", "sub", "mul", "div", "true_divide", "rsub", "maximum", "minimum", "pow", "floor_divide")
def binary(eng: Engine, call: Any) -> Any:
    """Broadcasting elementwise op: tensors carrying groups are united (a residual add)."""
    operands = [x for x in call.all_args() if call.is_tensor(x)]
    out_shape = call.out_shape
    if out_shape is None:
        return unknown(eng, call)
    ndim = len(out_shape)
    chans = [(x, call.chan(x)) for x in operands]
    carried = [c for _, c in chans if c is not None]
    if not carried:
        for x in operands:  # parameters broadcast against fixed tensors stay fixed
            eng.assign_fixed(_viewed(call, x, 0)[0])
        return None
    rel = [c.axis - len(call.shape(x)) for x, c in chans if c is not None]
    out = Chan(ndim + rel[0], carried[0].segs)
    if any(r != rel[0] for r in rel):
        return unknown(eng, call)
    for c in carried[1:]:
        eng.unify(out.segs, c.segs, f"{call.where} joins tensors with different layouts")
    length = out_shape[out.axis]
    for x, c in chans:
        if c is not None:
            continue
        shape = call.shape(x)
        pa = len(shape) - ndim + out.axis
        name, axis = _viewed(call, x, pa)
        if pa < 0 or shape[pa] == 1:
            eng.assign_fixed(name)
        elif shape[pa] == length and eng.has_param(name) and axis is not None:  # not an integer buffer
            eng.assign(name, axis, out.segs)  # a learned bias / scale / positional embedding
            eng.assign_fixed(name, except_axis=axis)
        else:
            eng.fix(out, f"{call.where} adds a fixed tensor to a permuted one")
            return None
    return out


def _viewed(call: Any, x: Any, axis: int) -> tuple[str | None, int | None]:
    """The parameter ``x`` holds (directly or reshaped) and its axis read by ``x``'s axis ``axis``."""
    view = call.view(x)
    if view is None:
        return None, None
    return view[0], (view[1][axis] if 0 <= axis < len(view[1]) else None)


# -- layers -----------------------------------------------------------------------------------
@_register("linear")
def linear(eng: Engine, call: Any) -> Any:
    x, w, b = call.get(0, "input"), call.param(call.get(1, "weight")), call.param(call.get(2, "bias"))
    if w is None or len(eng.param_shape(w)) != 2:
        return unknown(eng, call)
    info, ndim = call.chan(x), len(call.shape(x))
    if info is not None and info.axis == ndim - 1:
        eng.assign(w, 1, info.segs)
    else:
        eng.fix(info, f"{call.where} reads a tensor whose units are not on its last axis")
        eng.assign(w, 1, fixed_run(eng.param_shape(w)[1]))
    out = eng.param_var(w, 0, call.label(w))
    eng.assign(b, 0, out)
    return Chan(len(call.out_shape) - 1, out)


@_register("embedding")
def embedding(eng: Engine, call: Any) -> Any:
    w = call.param(call.get(None, "weight"))
    if w is None:
        return unknown(eng, call)
    eng.assign(w, 0, fixed_run(eng.param_shape(w)[0]))
    return Chan(len(call.out_shape) - 1, eng.param_var(w, 1, call.label(w)))


@_register("conv1d", "conv2d", "conv3d", "convolution_no")
def conv(eng: Engine, call: Any) -> Any:
    x, w, b = call.get(0, "input"), call.param(call.get(1, "weight")), call.param(call.get(2, "bias"))
    groups = call.get(6, "groups", 1)
    if w is None:
        return unknown(eng, call)
    wshape = eng.param_shape(w)
    axis = len(call.out_shape) - (len(wshape) - 2) - 1
    info = call.chan(x)
    if info is not None and info.axis != axis:
        eng.fix(info, f"{call.where} reads a tensor whose units are not on its channel axis")
        info = None
    if groups == 1:
        eng.assign(w, 1, info.segs if info is not None else fixed_run(wshape[1]))
        out = eng.param_var(w, 0, call.label(w))
    elif wshape[1] == 1 and groups == wshape[0] and info is not None and info.segs[0].length == groups:
        out = info.segs  # depthwise: output channel c reads input channel c only
        eng.assign(w, 0, out)
        eng.assign(w, 1, fixed_run(1))
    else:
        eng.fix(info, f"{call.where} is a grouped convolution ({groups} groups): its channels are fixed")
        eng.assign_fixed(w)
        eng.assign_fixed(b)
        return None
    for k in range(2, len(wshape)):
        eng.assign(w, k, fixed_run(wshape[k]))
    eng.assign(b, 0, out)
    return Chan(axis, out)


@_register("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv_transpose(eng: Engine, call: Any) -> Any:
    x, w, b = call.get(0, "input"), call.param(call.get(1, "weight")), call.param(call.get(2, "bias"))
    if w is None or call.get(6, "groups", 1) != 1:
        return unknown(eng, call)
    wshape = eng.param_shape(w)
    axis = len(call.out_shape) - (len(wshape) - 2) - 1
    info = call.chan(x)
    if info is not None and info.axis == axis:
        eng.assign(w, 0, info.segs)
    else:
        eng.fix(info, f"{call.where} reads a tensor whose units are not on its channel axis")
        eng.assign(w, 0, fixed_run(wshape[0]))
    out = eng.param_var(w, 1, call.label(w))
    for k in range(2, len(wshape)):
        eng.assign(w, k, fixed_run(wshape[k]))
    eng.assign(b, 0, out)
    return Chan(axis, out)


@_register("batch_norm", "instance_norm")
def batch_norm(eng: Engine, call: Any) -> Any:
    """Per-channel statistics and affine vectors on axis 1 join the channel group."""
    x = call.get(0, "input")
    names = [call.param(call.get(None, k)) for k in ("weight", "bias", "running_mean", "running_var")]
    info = call.chan(x)
    if info is None or info.axis != 1:
        eng.fix(info, f"{call.where} normalises an axis that does not carry the units")
        for name in names:
            eng.assign_fixed(name)
        return None
    for name in names:
        eng.assign(name, 0, info.segs)
    return info


@_register("layer_norm", "rms_norm")
def layer_norm(eng: Engine, call: Any) -> Any:
    """Normalising over the trailing dims is equivariant to permuting units inside them."""
    x, shape = call.get(0, "input"), call.get(1, "normalized_shape")
    k = len(shape) if isinstance(shape, (list, tuple)) else 1
    names = [call.param(call.get(None, key)) for key in ("weight", "bias")]
    info, ndim = call.chan(x), len(call.shape(x))
    for name in names:
        if info is not None and info.axis >= ndim - k:
            eng.assign(name, info.axis - (ndim - k), info.segs)
            eng.assign_fixed(name, except_axis=info.axis - (ndim - k))
        else:
            eng.assign_fixed(name)
    return info


@_register("group_norm")
def group_norm(eng: Engine, call: Any) -> Any:
    """One group or one channel per group is equivariant; otherwise permuting would mix groups."""
    x, n_groups = call.get(0, "input"), call.get(1, "num_groups")
    names = [call.param(call.get(None, key)) for key in ("weight", "bias")]
    info, shape = call.chan(x), call.shape(x)
    if info is not None and info.axis == 1 and n_groups in (1, shape[1]):
        for name in names:
            eng.assign(name, 0, info.segs)
        return info
    eng.fix(info, f"{call.where} has {n_groups} groups of channels: its channels are fixed")
    for name in names:
        eng.assign_fixed(name)
    return None


@_register("prelu")
def prelu(eng: Engine, call: Any) -> Any:
    x, w = call.get(0, "input"), call.param(call.get(1, "weight"))
    info = call.chan(x)
    if w is not None and eng.param_shape(w)[0] > 1:
        if info is None or info.axis != 1:
            eng.fix(info, f"{call.where} has per-channel slopes on an axis without units")
            eng.assign_fixed(w)
            return None
        eng.assign(w, 0, info.segs)
    else:
        eng.assign_fixed(w)
    return info
