"""Common CNN ops that leave the channel units in place: spatial padding, stochastic depth, and
parameters reshaped to broadcast against a feature map (per-channel layer scales).

A *parameter view* is a node that holds a parameter's values with only size-1 axes added or
removed (``gamma.reshape(1, -1, 1, 1)``, ``weight[:, None, None]``, ``w.unsqueeze(-1)``, a dtype
cast): :func:`param_view` records which parameter axis each of its axes reads, so that a
broadcasting op can put that parameter axis into the group of the tensor it scales or shifts.
"""

from __future__ import annotations

from typing import Any

from ._torch_graph import Engine, View
from ._torch_ops import _register, unknown

__all__ = ["View", "param_view"]

_VIEW_KINDS = frozenset(
    "view reshape _unsafe_view unsqueeze squeeze expand_dims getitem slice contiguous clone detach to type "
    "float double half bfloat16 alias lift_fresh_copy".split()
)


@_register("pad", "constant_pad_nd")
def pad(eng: Engine, call: Any) -> Any:
    """``F.pad``: a pad list of length ``2k`` pads the last ``k`` axes; units elsewhere pass through."""
    x, widths = call.get(0, "input"), call.get(1, "pad")
    info = call.chan(x)
    if info is None:
        return None
    if not isinstance(widths, (list, tuple)) or any(not isinstance(w, int) for w in widths):
        return unknown(eng, call)
    ndim = len(call.shape(x))
    if info.axis >= ndim - len(widths) // 2 and any(widths[2 * (ndim - 1 - info.axis) : 2 * (ndim - info.axis)]):
        eng.fix(info, f"{call.where} pads the axis that carries the units")
        return None
    return info


@_register("stochastic_depth", "drop_path")
def stochastic_depth(eng: Engine, call: Any) -> Any:
    """Identity in eval mode; in training, one random factor per sample or per batch: units pass through."""
    x = call.get(0, "input")
    if any(y is not x and (call.chan(y) is not None or call.param(y) is not None) for y in call.all_args()):
        return unknown(eng, call)
    return call.chan(x)


def param_view(call: Any) -> View | None:
    """The view the node of ``call`` makes of a parameter, or None if it is not one.

    Only ops that keep the parameter's values in order are views: the non-singleton sizes of
    the output must equal those of the input, in order (no reversal, no gather, no transpose).
    """
    if call.kind not in _VIEW_KINDS or not call.args or not isinstance(call.out_shape, tuple):
        return None
    x = call.args[0]
    source = call.view(x) if call.chan(x) is None else None
    if source is None or not _keeps_order(call):
        return None
    if not all(isinstance(d, int) for d in call.out_shape):
        return None
    name, axes = source
    shape = call.shape(x)
    kept = [a for a, d in zip(axes, shape, strict=True) if d != 1]
    if [d for d in shape if d != 1] != [d for d in call.out_shape if d != 1]:
        return None
    it = iter(kept)
    return name, tuple(None if d == 1 else next(it) for d in call.out_shape)


def _keeps_order(call: Any) -> bool:
    """Indexing only by ``None``, ``...``, full slices and integers; slicing only with step 1 from 0."""
    if call.kind == "getitem":
        index = call.args[1] if isinstance(call.args[1], tuple) else (call.args[1],)
        return all(i is None or i is Ellipsis or isinstance(i, int) or i == slice(None) for i in index)
    if call.kind == "slice":
        return call.get(2, "start", None) in (None, 0) and call.get(4, "step", 1) == 1
    return all(not call.is_tensor(y) for y in call.args[1:])



@_register("assert_tensor_metadata", "assert_scalar", "assert_async")
def assertion(eng: Engine, call: Any) -> None:
    """Export's runtime checks (dtype, device, shape) read no values: nothing to fix."""
    return None
