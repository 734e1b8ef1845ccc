"""Keras models as named NumPy arrays and back, and the model checks every Keras entry point shares.

Parameters are named ``"<layer name>.<weight name>"`` and keep Keras' layouts (see
:mod:`gamfsolve.adapters.keras`). Used by the adapter and by the activation-statistics repairs
(BatchNorm reset and REPAIR).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from gamfsolve import FusionError, FusionTypeError

from ._keras_graph import GraphInfo, walk

__all__ = ["from_arrays", "graph_info", "to_arrays"]


def _require_torch_backend() -> None:
    backend = keras.backend.backend()
    if backend != "torch":
        raise FusionError(
            f"gamfsolve.adapters.keras needs Keras on the torch backend, but the active backend is "
            f"{backend!r}; set the environment variable KERAS_BACKEND=torch before keras is first imported"
        )


def _check_model(model: Any, what: str = "model") -> None:
    _require_torch_backend()
    if not isinstance(model, keras.Model):
        raise FusionTypeError(f"{what} must be a keras.Model, got {type(model).__name__}")
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise FusionError(
            f"{what} {model.name!r} has no symbolic graph: use a Sequential model with an Input, or a "
            "functional model (subclassed models cannot be walked)"
        )


def _named_variables(model: Any) -> list[tuple[str, Any, Any]]:
    """``(name, variable, top-level layer)`` for every float weight, in layer order."""
    out: list[tuple[str, Any, Any]] = []
    seen: set[int] = set()
    for layer in model.layers:
        for var in layer.weights:
            if id(var) in seen or not str(var.dtype).startswith(("float", "bfloat")):
                continue
            seen.add(id(var))
            parts = var.path.split("/")
            tail = parts[parts.index(layer.name) + 1 :] if layer.name in parts else [var.name]
            out.append((f"{layer.name}.{'.'.join(tail)}", var, layer))
    names = [n for n, _, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FusionError(f"model {model.name!r} has several weights named {dup}; give its layers unique names")
    return out


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (bfloat16, which NumPy lacks, as float32)
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    return np.asarray(x)


def to_arrays(model: Any) -> dict[str, np.ndarray]:
    """The model's float weights as NumPy copies, ``{"dense_1.kernel": (in, out) array, ...}``."""
    _check_model(model)
    return {name: np.array(_to_numpy(var.value)) for name, var, _ in _named_variables(model)}


def from_arrays(model: Any, arrays: Mapping[str, Any]) -> Any:
    """A new model with ``model``'s architecture and the weights in ``arrays``.

    ``arrays`` must name every float weight of :func:`to_arrays` (NumPy or torch arrays of the
    same shapes); other state is copied from ``model``. The input model is not modified and
    the clone is not compiled.
    """
    _check_model(model)
    if not isinstance(arrays, Mapping):
        raise FusionTypeError(f"arrays must be a mapping of weight name to array, got {type(arrays).__name__}")
    source = _named_variables(model)
    names = [n for n, _, _ in source]
    unknown = sorted(set(arrays) - set(names))
    missing = [n for n in names if n not in arrays]
    if unknown or missing:
        raise FusionError(f"arrays do not match model {model.name!r}: unknown names {unknown}, missing names {missing}")
    try:
        clone = keras.models.clone_model(model)
    except (TypeError, ValueError) as exc:
        raise FusionError(
            f"cannot clone model {model.name!r} ({exc}); register custom layers and functions with "
            "keras.saving.register_keras_serializable"
        ) from exc
    for src, dst in zip(model.weights, clone.weights, strict=True):
        dst.assign(src.value)
    for (name, _, layer), (_, var, _) in zip(source, _named_variables(clone), strict=True):
        value = _real_array(name, arrays[name])
        if tuple(value.shape) != tuple(var.shape):
            raise FusionError(
                f"layer {layer.name!r}: array {name!r} has shape {tuple(value.shape)}, expected {tuple(var.shape)}"
            )
        var.assign(value.astype(str(var.dtype), copy=False))
    return clone


def _real_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a NumPy array of finite real numbers, or a FusionError naming ``name``."""
    try:
        out = _to_numpy(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise FusionTypeError(f"array {name!r} is not numeric: {exc}") from exc
    if not (np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer) or out.dtype == bool):
        raise FusionTypeError(f"array {name!r} has dtype {out.dtype}; expected real numbers")
    if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
        raise FusionError(f"array {name!r} contains NaN or Inf")
    return out


def graph_info(model: Any) -> GraphInfo:
    """The labelled layer graph (spec entries, weighted layers in graph order, flatten inputs)."""
    _check_model(model)
    return walk(model)
