"""Do several modules or exported programs compute the same function (up to weights and widths)?

Same parameter names are not enough: ``Sequential(Linear, ReLU, Linear)`` and
``Sequential(Linear, Tanh, Linear)`` share them. Two modules are compared by their submodules'
types (and, for modules without parameters, their settings, e.g. a LeakyReLU's slope) and, when
``torch.fx`` can trace them, by the operations of their graphs; exported programs by the
operators of their graphs. Widths may differ; nothing else may.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import fx, nn

from gamfsolve import FusionError

__all__ = ["check_same_function", "module_ops", "program_ops"]

_IGNORED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


def _settings(module: nn.Module) -> str:
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        return ""  # shapes (widths) may differ; the weights are what is fused
    if isinstance(module, _IGNORED):
        return ""
    return re.sub(r",?\s*inplace=(True|False)", "", module.extra_repr()).strip(", ")


def _target(node: fx.Node) -> str:
    if node.op in ("call_function", "call_method"):
        return f"{node.op}:{getattr(node.target, '__name__', str(node.target))}"
    return f"{node.op}:{node.target}" if node.op == "call_module" else node.op


def module_ops(module: nn.Module) -> list[str]:
    """Submodule types and settings, then the fx graph's operations when it can be traced."""
    out = [f"{name}:{type(m).__module__}.{type(m).__qualname__}({_settings(m)})" for name, m in module.named_modules()]
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # fx cannot trace every module; the submodule list still tells most apart
        return out
    return out + [_target(n) for n in graph.nodes]


def program_ops(program: torch.export.ExportedProgram) -> list[str]:
    """The operators an exported program calls, in graph order."""
    ops = [_target(n) for n in program.graph_module.graph.nodes if n.op == "call_function"]
    return [op for op in ops if not op.startswith(("call_function:sym_", "call_function:_assert"))]


def check_same_function(ops: Sequence[list[str]], names: Sequence[str]) -> None:
    """Raise :class:`~gamfsolve.FusionError` naming the first operation where ``ops[k]`` differs from ``ops[0]``."""
    first = ops[0]
    for k, other in enumerate(ops[1:], start=1):
        if other == first:
            continue
        at = next((i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b), min(len(first), len(other)))
        a = first[at] if at < len(first) else "(end)"
        b = other[at] if at < len(other) else "(end)"
        raise FusionError(
            f"{names[k]} computes a different function from {names[0]}: operation {at} is {b!r} there but {a!r} "
            "in the other (same parameters, different layers or activations); only models of one architecture fuse"
        )

