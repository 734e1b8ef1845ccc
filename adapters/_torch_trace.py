"""Trace a module (torch.fx, else torch.export) and run the channel-group propagation.

Both front ends turn every graph node into a :class:`Call` (a canonical op name plus its
arguments) so that one table of handlers (``_torch_ops``, ``_torch_shape_ops``) serves
``call_module`` nodes, ``torch.nn.functional`` calls and ATen ops alike.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx, nn

from gamfsolve import FusionError, PermutationSpec

from . import _torch_shape_ops  # noqa: F401  (registers the shape handlers)
from ._torch_attention import attention_handler
from ._torch_cnn_ops import param_view
from ._torch_coverage import mark_outputs, warn_coverage
from ._torch_graph import Engine, View
from ._torch_ops import HANDLERS, unknown

__all__ = ["derive_spec", "trace_fx", "trace_export"]

logger = logging.getLogger("gamfsolve.adapters.torch")

_OPERATORS = {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "div", "truediv": "div",
              "floordiv": "floor_divide", "ifloordiv": "floor_divide"}
_NO_DATA = {"size", "dim", "numel", "nelement", "sym_size", "sym_numel", "sym_stride", "stride"}
_ATTRS_NO_DATA = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad"}


class ParamRef:
    """A module's parameter passed to a handler as if it were a graph argument."""

    def __init__(self, name: str) -> None:
        self.name = name


class Call:
    """One node seen through a handler's eyes."""

    def __init__(self, kind: str, args: tuple, kwargs: Mapping[str, Any], where: str, env: Env,
                 out_shape: Any, module_params: tuple[str, ...] = ()) -> None:
        self.kind, self.args, self.kwargs, self.where = kind, args, dict(kwargs), where
        self.env, self.out_shape, self._module_params = env, out_shape, module_params
        self.node: fx.Node | None = None  # the graph node (set by the propagation)

    def get(self, pos: int | None, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        if pos is not None and pos < len(self.args):
            return self.args[pos]
        return default

    def all_args(self) -> list[Any]:
        """Every argument once (bound keyword copies of positional ones are dropped)."""
        out: dict[int, Any] = {}
        for x in (*self.args, *self.kwargs.values()):
            for y in x if isinstance(x, (list, tuple)) else (x,):
                out.setdefault(id(y), y)
        return list(out.values())

    def chan(self, x: Any) -> Any:
        return self.env.info.get(x) if isinstance(x, fx.Node) else None

    def param(self, x: Any) -> str | None:
        if isinstance(x, ParamRef):
            return x.name
        if not isinstance(x, fx.Node):
            return None
        view = self.env.views.get(x)  # a cast or copy of a parameter is that parameter
        eng = self.env.engine
        if view is not None and eng.has_param(view[0]) and view[1] == tuple(range(len(eng.param_shape(view[0])))):
            return view[0]
        return self.env.param_of.get(x)

    def view(self, x: Any) -> View | None:
        """The parameter ``x`` holds, itself or reshaped (see ``_torch_cnn_ops.param_view``), with its axis map."""
        name = self.param(x)
        if name is not None:
            return name, tuple(range(len(self.shape(x))))
        return self.env.views.get(x) if isinstance(x, fx.Node) else None

    def is_tensor(self, x: Any) -> bool:
        if isinstance(x, ParamRef):
            return True
        shape = self.env.shapes.get(x) if isinstance(x, fx.Node) else None
        return shape is not None and all(isinstance(d, int) for d in shape)

    def shape(self, x: Any) -> tuple[int, ...]:
        if isinstance(x, ParamRef):
            return self.env.engine.param_shape(x.name)
        return self.env.shapes[x]

    def label(self, weight: str) -> str:
        return weight.rsplit(".", 1)[0] if "." in weight else weight

    def module_params(self) -> tuple[str, ...]:
        return self._module_params


class Env:
    """What the propagation knows about every node."""

    def __init__(self, engine: Engine, shapes: dict[fx.Node, Any], param_of: dict[fx.Node, str]) -> None:
        self.engine, self.shapes, self.param_of = engine, shapes, param_of
        self.info: dict[fx.Node, Any] = {}
        self.views: dict[fx.Node, View] = {}  # nodes that hold a parameter with size-1 axes added or removed


def _dim(d: Any) -> int:
    """A dimension's size; a symbolic one by its example value (``int()`` would make it static)."""
    if isinstance(d, torch.SymInt):
        hint = getattr(d.node, "hint", None)
        return int(hint) if hint is not None else 1
    return int(d)


def _shape(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(_dim(d) for d in value.shape)
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (tuple, list)):
        return tuple(_dim(d) for d in value.shape)  # fx TensorMetadata
    if isinstance(value, (tuple, list)):
        return tuple(_shape(v) for v in value)
    return None


def _op_name(target: Any) -> str:
    if isinstance(target, str):
        name = target
    elif isinstance(target, torch._ops.OpOverload):
        name = target._schema.name.split("::")[-1]
    else:
        name = getattr(target, "__name__", repr(target))
    name = _OPERATORS.get(name, name)
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return name.lstrip("_") if name not in ("_unsafe_view",) else name


def _bind(target: Any, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Name every argument when the target's signature is known (ATen schema or Python)."""
    names: list[str] = []
    if isinstance(target, torch._ops.OpOverload):
        names = [a.name for a in target._schema.arguments]
    elif callable(target):
        try:
            params = inspect.signature(target).parameters.values()
            if not any(p.kind is p.VAR_POSITIONAL for p in params):
                names = [p.name for p in params]
        except (TypeError, ValueError):
            names = []
    out = dict(zip(names, args, strict=False))
    out.update(kwargs)
    return out


_MODULE_KINDS: list[tuple[type, str]] = [
    (nn.Linear, "linear"), (nn.Conv1d, "conv1d"), (nn.Conv2d, "conv2d"), (nn.Conv3d, "conv3d"),
    (nn.ConvTranspose1d, "conv_transpose1d"), (nn.ConvTranspose2d, "conv_transpose2d"),
    (nn.ConvTranspose3d, "conv_transpose3d"), (nn.modules.batchnorm._BatchNorm, "batch_norm"),
    (nn.modules.instancenorm._InstanceNorm, "instance_norm"), (nn.LayerNorm, "layer_norm"),
    (nn.RMSNorm, "rms_norm"), (nn.GroupNorm, "group_norm"), (nn.Embedding, "embedding"),
    (nn.PReLU, "prelu"), (nn.Flatten, "flatten"), (nn.Unflatten, "unflatten"),
    (nn.Softmax, "softmax"), (nn.LogSoftmax, "log_softmax"),
    (nn.modules.dropout._DropoutNd, "dropout"), (nn.Identity, "identity"),
]
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Mish, nn.SELU, nn.CELU,
                nn.LogSigmoid, nn.Softsign, nn.Tanhshrink)
_POOL_MODULES = {nn.MaxPool1d: "max_pool1d", nn.MaxPool2d: "max_pool2d", nn.MaxPool3d: "max_pool3d",
                 nn.AvgPool1d: "avg_pool1d", nn.AvgPool2d: "avg_pool2d", nn.AvgPool3d: "avg_pool3d",
                 nn.AdaptiveAvgPool1d: "adaptive_avg_pool1d", nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d",
                 nn.AdaptiveAvgPool3d: "adaptive_avg_pool3d", nn.AdaptiveMaxPool1d: "adaptive_max_pool1d",
                 nn.AdaptiveMaxPool2d: "adaptive_max_pool2d", nn.AdaptiveMaxPool3d: "adaptive_max_pool3d"}


def _module_call(node: fx.Node, mod: nn.Module, env: Env) -> Call:
    target = str(node.target)
    own = tuple(f"{target}.{k}" for k, v in (*mod._parameters.items(), *mod._buffers.items()) if v is not None)
    refs = {k: (ParamRef(f"{target}.{k}") if v is not None else None)
            for k, v in (*mod._parameters.items(), *mod._buffers.items())}
    where = f"module {target!r} ({type(mod).__name__})"
    kind = "unknown"
    if isinstance(mod, _ACTIVATIONS):
        kind = "identity"
    elif type(mod) in _POOL_MODULES:
        kind = _POOL_MODULES[type(mod)]
    else:
        kind = next((k for cls, k in _MODULE_KINDS if isinstance(mod, cls)), "unknown")
    kwargs: dict[str, Any] = dict(refs)
    if kind.startswith("conv"):
        kwargs["groups"] = mod.groups
    elif kind == "layer_norm" or kind == "rms_norm":
        kwargs["normalized_shape"] = tuple(mod.normalized_shape)  # type: ignore[arg-type]
    elif kind == "group_norm":
        kwargs["num_groups"] = mod.num_groups
    args = tuple(node.args)
    if kind == "embedding":
        kwargs["input"] = args[0]
    return Call(kind, args, kwargs, where, env, env.shapes.get(node), own)


def _function_call(node: fx.Node, env: Env) -> Call:
    kind = _op_name(node.target)
    args, kwargs = tuple(node.args), dict(node.kwargs)
    if node.op == "call_function":
        kwargs = _bind(node.target, args, kwargs)
    stack = node.meta.get("nn_module_stack")
    inside = f" in module {list(stack.values())[-1][0]!r}" if stack else ""
    where = f"{node.op.replace('call_', '')} {kind!r} (node {node.name!r}{inside})"
    if kind == "getattr" and args[1] == "T":
        kind = "t"
    return Call(kind, args, kwargs, where, env, env.shapes.get(node))


def _run(graph: fx.Graph, env: Env, modules: Mapping[str, nn.Module]) -> None:
    eng = env.engine
    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "output":
            outputs = [env.info.get(x) for x in _flat(node.args)]
            mark_outputs(eng, outputs)
            eng.fix(outputs)  # outputs keep their order
            continue
        if node.op == "call_module":
            call = _module_call(node, modules[str(node.target)], env)
        else:
            call = _function_call(node, env)
        call.node = node
        if call.kind in _NO_DATA or (call.kind == "getattr" and call.args[1] in _ATTRS_NO_DATA):
            continue
        env.info[node] = (attention_handler(call) or HANDLERS.get(call.kind, unknown))(eng, call)
        view = param_view(call)
        if view is not None:
            env.views[node] = view


def _flat(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in _flat(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _flat(item)]
    return [x]


def trace_fx(module: nn.Module, inputs: tuple) -> tuple[fx.GraphModule, dict[fx.Node, Any]]:
    """Symbolic trace plus concrete shapes of every node (the module runs once, in eval mode)."""
    gm = fx.symbolic_trace(module)
    shapes: dict[fx.Node, Any] = {}
    interp = fx.Interpreter(gm)
    original_run_node = interp.run_node

    def run_node(node: fx.Node) -> Any:
        value = original_run_node(node)
        shapes[node] = _shape(value)
        return value

    interp.run_node = run_node  # type: ignore[method-assign,assignment]
    with torch.no_grad():
        interp.run(*inputs)
    return gm, shapes


def trace_export(module: nn.Module, inputs: tuple) -> torch.export.ExportedProgram:
    return torch.export.export(module, inputs, strict=False)


def derive_spec(
    source: fx.GraphModule | torch.export.ExportedProgram,
    shapes: dict[fx.Node, Any] | None,
    param_shapes: Mapping[str, tuple[int, ...]],
    aliases: Mapping[str, str],
    *,
    strict: bool,
    on_note: Callable[[str], None] | None = None,
) -> PermutationSpec:
    """Propagate channel groups through a traced graph; see the module docstring."""
    engine = Engine(param_shapes, aliases)
    if isinstance(source, torch.export.ExportedProgram):
        sig = source.graph_signature
        named = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        graph = source.graph_module.graph
        param_of = {n: named[n.name] for n in graph.nodes if n.op == "placeholder" and n.name in named}
        shapes = {n: _shape(n.meta.get("val")) for n in graph.nodes}
        modules: Mapping[str, nn.Module] = {}
    else:
        graph = source.graph
        param_of = {n: str(n.target) for n in graph.nodes if n.op == "get_attr"}
        modules = dict(source.named_modules())
    env = Env(engine, dict(shapes or {}), param_of)
    _run(graph, env, modules)
    notes = list(dict.fromkeys(engine.notes))
    for note in notes:
        (on_note or logger.info)(note)
    if strict and notes:
        raise FusionError("strict=True and some units cannot be permuted safely:\n  " + "\n  ".join(notes))
    spec = engine.spec(list(param_shapes))
    warn_coverage(engine, spec, notes)
    return spec
