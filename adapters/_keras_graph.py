"""Walk a Keras 3 functional graph and label the channel axis of every tensor.

Every tensor's last axis (channels last) gets a *label*: consecutive runs, each either a
permutation group (a union-find id, viewed as ``(outer, n, inner)``) or a fixed run. A layer
with weights opens a new group for its outputs; ``Add``-like merges unite the groups of their
inputs (a residual stream); ``Concatenate`` joins runs; ``Flatten`` turns a group into blocks.
A layer this module does not understand fixes every group it reads and emits a fixed label,
so an unknown layer can make the spec more conservative, never wrong. Model outputs are fixed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gamfsolve import Blocks, Concat, FusionError
from gamfsolve.spec._spec import AxisEntry

__all__ = ["GraphInfo", "Seg", "walk", "weight_key"]

log = logging.getLogger("gamfsolve.adapters.keras")


class Seg(NamedTuple):
    """One run of a channel axis: group id (None = fixed), block factors and total length."""

    gid: int | None
    outer: int
    inner: int
    length: int


Label = tuple[Seg, ...]

_PASS = {  # weightless, channel-wise layers: the label passes through unchanged
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "ActivityRegularization",
    "Identity", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "UpSampling1D", "UpSampling2D",
    "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
}  # fmt: skip
_MERGE = {"Add", "Subtract", "Average", "Maximum", "Minimum", "Multiply"}
_OP_MERGE = {"Add", "Subtract", "Multiply", "Maximum", "Minimum"}  # keras.ops.numpy ops
_OP_UNARY = {"Relu", "Relu6", "Sigmoid", "Tanh", "Gelu", "Silu", "Elu", "Selu", "Softplus", "LeakyRelu"}
_CONV = {"Conv1D", "Conv2D", "Conv3D"}


@dataclass
class GraphInfo:
    """What the walk found: spec entries, weighted layers in graph order, flatten inputs.

    ``order`` lists every layer with weights (understood or kept fixed) in graph order.

    ``flatten[layer_name] = (spatial, channels)`` for a Dense whose input is a channels-last
    ``Flatten`` of ``(*spatial, channels)`` (the cross-framework converter reorders it).
    """

    entries: dict[tuple[str, str], tuple[AxisEntry, ...]] = field(default_factory=dict)
    order: list[Any] = field(default_factory=list)
    flatten: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)
    fixed_layers: list[str] = field(default_factory=list)


class _Groups:
    """Union-find over group ids, with a 'fixed' flag and a creating-layer name."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.names: list[str] = []

    def new(self, name: str) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(False)
        self.names.append(name)
        return len(self.parent) - 1

    def root(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo
            self.fixed[lo] = self.fixed[lo] or self.fixed[hi]

    def fix(self, label: Label) -> None:
        for seg in label:
            if seg.gid is not None:
                self.fixed[self.root(seg.gid)] = True

    def unify(self, a: Label, b: Label) -> None:
        """Make two labels describe the same order, or fix both where they cannot."""
        same = len(a) == len(b) and all(
            (x.gid is None) == (y.gid is None) and x[1:] == y[1:] for x, y in zip(a, b, strict=True)
        )
        if not same:
            self.fix(a)
            self.fix(b)
            return
        for x, y in zip(a, b, strict=True):
            if x.gid is not None and y.gid is not None:
                self.union(x.gid, y.gid)

    def entry(self, label: Label) -> AxisEntry:
        """The spec entry of a label, after all unions and fixes."""
        parts: list[str | Blocks | int] = []
        for seg in label:
            if seg.gid is None or self.fixed[self.root(seg.gid)]:
                if parts and isinstance(parts[-1], int):
                    parts[-1] += seg.length
                else:
                    parts.append(seg.length)
                continue
            name = self.names[self.root(seg.gid)]
            parts.append(name if seg.outer == seg.inner == 1 else Blocks(name, inner=seg.inner, outer=seg.outer))
        if all(isinstance(p, int) for p in parts):
            return None
        if len(parts) == 1 and not isinstance(parts[0], int):
            return parts[0]
        return Concat(*parts)


def _suffix(layer: Any, var: Any) -> str:
    """A weight's name inside its top-level layer (``"query.kernel"`` in an attention layer)."""
    parts = var.path.split("/")
    return ".".join(parts[parts.index(layer.name) + 1 :]) if layer.name in parts else var.name


def _fixed(tensor: Any) -> Label:
    n = tensor.shape[-1] if len(tensor.shape) else 1
    if n is None:
        n = 0  # unknown length: only an error if it ends up inside a Concat
    return (Seg(None, 1, 1, n),)


def _topological_nodes(outputs: Sequence[Any]) -> list[Any]:
    """Nodes reachable from ``outputs``, producers before consumers (iterative DFS)."""
    order: list[Any] = []
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = []
    for t in reversed(list(outputs)):
        op, index, _ = t._keras_history
        stack.append((op._inbound_nodes[index], False))
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for t in reversed(node.input_tensors):
            op, index, _ = t._keras_history
            parent = op._inbound_nodes[index]
            if id(parent) not in seen:
                stack.append((parent, False))
    return order


def _builtin_activation(layer: Any) -> bool:
    fn = getattr(layer, "activation", None)
    return fn is None or getattr(fn, "__module__", "").startswith("keras.")


def _scalar_args(node: Any) -> bool:
    """True if every argument of an op node is a Keras tensor or a Python number."""
    import keras

    args = keras.tree.flatten((node.arguments.args, node.arguments.kwargs))
    tensors = {id(t) for t in node.input_tensors}
    return all(id(a) in tensors or isinstance(a, (int, float)) for a in args)


class _Walker:
    def __init__(self) -> None:
        self.groups = _Groups()
        self.labels: dict[int, Label] = {}
        self.flat: dict[int, tuple[tuple[int, ...], int]] = {}
        self.layer_in: dict[int, Label] = {}
        self.layer_out: dict[int, Label] = {}
        self.info = GraphInfo()
        self.raw: dict[tuple[str, str], tuple[Label | None, ...]] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _in_label(self, layer: Any, label: Label) -> Label:
        """A layer's weights see one input order across all its calls."""
        seen = self.layer_in.setdefault(id(layer), label)
        if seen is not label:
            self.groups.unify(seen, label)
        return seen

    def _out_label(self, layer: Any, units: int) -> Label:
        if id(layer) not in self.layer_out:
            self.layer_out[id(layer)] = (Seg(self.groups.new(layer.name), 1, 1, units),)
        return self.layer_out[id(layer)]

    def _weights(self, layer: Any, axes: dict[str, tuple[Label | None, ...]]) -> bool:
        """Record entries for a layer's weights; False if it has weights we did not expect."""
        names = [w.name for w in layer.weights]
        if not set(names) <= set(axes) or len(set(names)) != len(names):
            return False
        for n in names:
            self.raw[(layer.name, n)] = axes[n]
        return True

    def _unsupported(self, node: Any, why: str) -> list[Label]:
        op = node.operation
        for t in node.input_tensors:
            self.groups.fix(self.labels[id(t)])
        self.info.fixed_layers.append(op.name)
        log.debug("layer %r (%s) is kept fixed: %s", op.name, type(op).__name__, why)
        return [_fixed(t) for t in node.output_tensors]

    # -- layer handlers --------------------------------------------------------------------
    def _dense(self, layer: Any, x: Label, node: Any) -> Label | None:
        x = self._in_label(layer, x)
        out = self._out_label(layer, layer.units)
        if not self._weights(layer, {"kernel": (x, out), "bias": (out,)}):
            return None
        info = self.flat.get(id(node.input_tensors[0]))
        if info is not None:
            self.info.flatten[layer.name] = info
        return out

    def _conv(self, layer: Any, x: Label) -> Label | None:
        if layer.data_format != "channels_last" or layer.groups != 1:
            return None
        x = self._in_label(layer, x)
        out = self._out_label(layer, layer.filters)
        spatial = (None,) * layer.rank
        return out if self._weights(layer, {"kernel": (*spatial, x, out), "bias": (out,)}) else None

    def _norm(self, layer: Any, x: Label, rank: int) -> Label | None:
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        axes = sorted(a % rank for a in axes)
        if type(layer).__name__ == "BatchNormalization":
            if axes != [rank - 1]:
                return None
            x = self._in_label(layer, x)
            keys = ("gamma", "beta", "moving_mean", "moving_variance")
            return x if self._weights(layer, {k: (x,) for k in keys}) else None
        x = self._in_label(layer, x)
        entry = tuple(x if a == rank - 1 else None for a in axes)
        return x if self._weights(layer, {"gamma": entry, "beta": entry}) else None

    def _attention(self, layer: Any, node: Any) -> Label | None:
        """``MultiHeadAttention``: kernels ``(in, heads, dim)`` and ``(heads, dim, out)``.

        One heads group for the four projections, one within-head group for query and key, one
        for value and the output projection; the inputs' groups on the kernels' input axes.
        """
        ins = node.input_tensors
        if (id(layer) in self.layer_out or len(ins) not in (2, 3) or any(len(t.shape) != 3 for t in ins)
                or getattr(layer, "_attention_axes", None) not in (None, (1,))):
            return None
        q_in, v_in = self.labels[id(ins[0])], self.labels[id(ins[1])]
        k_in = self.labels[id(ins[2])] if len(ins) == 3 else v_in
        n_heads, dk, dv = layer.num_heads, layer.key_dim, layer.value_dim or layer.key_dim
        heads, qk, vo = ((Seg(self.groups.new(f"{layer.name}.{s}"), 1, 1, n),) for s, n in
                         (("heads", n_heads), ("qk", dk), ("vo", dv)))
        out = self._out_label(layer, int(node.output_tensors[0].shape[-1]))
        axes = {"query.kernel": (q_in, heads, qk), "query.bias": (heads, qk), "key.kernel": (k_in, heads, qk),
                "key.bias": (heads, qk), "value.kernel": (v_in, heads, vo), "value.bias": (heads, vo),
                "attention_output.kernel": (heads, vo, out), "attention_output.bias": (out,)}
        names = [_suffix(layer, w) for w in layer.weights]
        if not set(names) <= set(axes):
            return None
        for n in names:
            self.raw[(layer.name, n)] = axes[n]
        return out

    def _flatten(self, layer: Any, x: Label, node: Any) -> Label | None:
        if layer.data_format != "channels_last":
            return None
        shape = tuple(node.input_tensors[0].shape[1:])
        if any(d is None for d in shape):
            return None
        spatial, channels = shape[:-1], shape[-1]
        blocks = math.prod(spatial)
        if blocks == 1:
            return x
        self.flat[id(node.output_tensors[0])] = (spatial, channels)
        if len(x) != 1:
            self.groups.fix(x)
            return (Seg(None, 1, 1, blocks * channels),)
        s = x[0]
        return (Seg(s.gid, s.outer * blocks, s.inner, s.length * blocks),)

    def _merge(self, node: Any) -> Label | None:
        ins = node.input_tensors
        if len({t.shape[-1] for t in ins}) != 1 or len(ins) < 1:
            return None
        first = self.labels[id(ins[0])]
        for t in ins[1:]:
            self.groups.unify(first, self.labels[id(t)])
        return first

    def _concat(self, node: Any, axis: int) -> Label | None:
        ins = node.input_tensors
        rank = len(ins[0].shape)
        if axis % rank != rank - 1:
            return self._merge(node)
        return tuple(seg for t in ins for seg in self.labels[id(t)])

    def _handle(self, node: Any) -> list[Label] | None:
        op = node.operation
        kind = type(op).__name__
        ins = node.input_tensors
        x = self.labels[id(ins[0])] if ins else ()
        module = type(op).__module__
        is_layer = module.startswith("keras.src.layers")
        out: Label | None = None
        if is_layer and not _builtin_activation(op):
            return None
        if is_layer and kind == "Dense" and len(ins) == 1:
            out = self._dense(op, x, node)
        elif is_layer and kind in _CONV and len(ins) == 1:
            out = self._conv(op, x)
        elif is_layer and kind in ("BatchNormalization", "LayerNormalization") and len(ins) == 1:
            out = self._norm(op, x, len(ins[0].shape))
        elif is_layer and kind == "MultiHeadAttention":
            out = self._attention(op, node)
        elif is_layer and kind == "Flatten":
            out = self._flatten(op, x, node)
        elif is_layer and kind in _PASS and len(ins) == 1:
            fmt = getattr(op, "data_format", "channels_last")
            out = x if fmt == "channels_last" else None
            if out is not None and tuple(node.output_tensors[0].shape) == tuple(ins[0].shape):
                if id(ins[0]) in self.flat:
                    self.flat[id(node.output_tensors[0])] = self.flat[id(ins[0])]
        elif is_layer and kind in _MERGE:
            out = self._merge(node)
        elif is_layer and kind == "Concatenate":
            out = self._concat(node, op.axis)
        elif module == "keras.src.ops.numpy" and kind in _OP_MERGE and _scalar_args(node):
            out = self._merge(node)
        elif module == "keras.src.ops.numpy" and kind == "Concatenate" and _scalar_args(node):
            out = self._concat(node, op.axis)
        elif module == "keras.src.ops.nn" and kind in _OP_UNARY and len(ins) == 1 and _scalar_args(node):
            out = x
        if out is None or len(node.output_tensors) != 1:
            return None
        return [out]

    def run(self, model: Any) -> GraphInfo:
        for t in model.inputs:
            self.labels[id(t)] = _fixed(t)
        for node in _topological_nodes(model.outputs):
            op = node.operation
            if not node.input_tensors:  # an InputLayer
                for t in node.output_tensors:
                    self.labels.setdefault(id(t), _fixed(t))
                continue
            if getattr(op, "weights", None) and op not in self.info.order:
                self.info.order.append(op)
            outs = self._handle(node)
            if outs is None:
                for key in [k for k in self.raw if k[0] == op.name]:
                    del self.raw[key]
                outs = self._unsupported(node, "not a supported layer or configuration")
            for t, label in zip(node.output_tensors, outs, strict=True):
                self.labels[id(t)] = label
        for t in model.outputs:
            self.groups.fix(self.labels[id(t)])
        for key, labels in self.raw.items():
            self.info.entries[key] = tuple(None if lab is None else self._resolve(lab, key) for lab in labels)
        return self.info

    def _resolve(self, label: Label, key: tuple[str, str]) -> AxisEntry:
        entry = self.groups.entry(label)
        if isinstance(entry, Concat) and any(seg.length == 0 for seg in label):
            raise FusionError(
                f"layer {key[0]!r}: weight {key[1]!r} reads a concatenation with an input of unknown "
                "channel count; give the model inputs a fixed last dimension"
            )
        return entry


def weight_key(layer: Any, var: Any) -> tuple[str, str]:
    """The key of a weight's entry in :attr:`GraphInfo.entries` (attention weights by their sublayer)."""
    return layer.name, _suffix(layer, var) if type(layer).__name__ == "MultiHeadAttention" else var.name


def walk(model: Any) -> GraphInfo:
    """Label the model's graph; see the module docstring."""
    return _Walker().run(model)
