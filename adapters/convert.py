"""Move weights between Keras and PyTorch models of one architecture, and fuse across them.

The layers are paired, not listed by hand: the Keras layers with weights in graph order
(``gamfsolve.adapters.keras.graph_info``) against the PyTorch modules with parameters in
registration order (or in call order, when ``example_inputs`` are given), each pair checked
for kind (Dense/Linear, ConvND/ConvNd, BatchNormalization/BatchNormNd,
LayerNormalization/LayerNorm), shapes and epsilon. Layouts:

* Dense ``kernel (in, out)`` = Linear ``weight.T``; after a Flatten of ``(*spatial, C)`` the
  Keras input axis is ordered ``(*spatial, C)`` and the PyTorch one ``(C, *spatial)``.
* ConvND ``kernel (*k, in, out)`` = ConvNd ``weight (out, in, *k)`` with axes moved.
* BatchNormalization ``gamma, beta, moving_mean, moving_variance`` = BatchNorm ``weight, bias,
  running_mean, running_var``; LayerNormalization ``gamma, beta`` = LayerNorm ``weight, bias``.

Examples
--------
>>> from gamfsolve.adapters import convert                     # doctest: +SKIP
>>> fused = convert.fuse_cross([keras_mlp, torch_mlp], like=torch_mlp, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import torch
from torch import nn

import gamfsolve
from gamfsolve import FusionError, FusionTypeError
from gamfsolve._api import check_options
from gamfsolve.spec._validate import check_models

from . import keras as gk

__all__ = ["fuse_cross", "keras_to_torch", "layer_pairs", "torch_to_keras", "torch_to_keras_arrays"]

_KERAS_KIND = {
    "Dense": "dense", "Conv1D": "conv1d", "Conv2D": "conv2d", "Conv3D": "conv3d",
    "BatchNormalization": "batch_norm", "LayerNormalization": "layer_norm",
}  # fmt: skip
_TORCH_KIND: dict[type, str] = {
    nn.Linear: "dense", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d",
    nn.BatchNorm1d: "batch_norm", nn.BatchNorm2d: "batch_norm", nn.BatchNorm3d: "batch_norm",
    nn.LayerNorm: "layer_norm",
}  # fmt: skip
# Keras weight name -> PyTorch state name, per kind
_NAMES = {
    "dense": {"kernel": "weight", "bias": "bias"},
    "conv": {"kernel": "weight", "bias": "bias"},
    "batch_norm": {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"},
    "layer_norm": {"gamma": "weight", "beta": "bias"},
}


@dataclass(frozen=True)
class LayerPair:
    """One Keras layer and its PyTorch counterpart."""

    kind: str
    keras_layer: Any
    torch_name: str
    torch_module: nn.Module
    flatten: tuple[tuple[int, ...], int] | None  # Dense input: Flatten of (*spatial, channels)

    def where(self) -> str:
        return f"Keras layer {self.keras_layer.name!r} / PyTorch module {self.torch_name!r}"


def _torch_layers(module: nn.Module, example_inputs: Any) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters, in call order (with example inputs) or registration order."""
    owners = [(n, m) for n, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if example_inputs is None:
        return owners
    called: list[tuple[str, nn.Module]] = []
    ids = {id(m): n for n, m in owners}

    def hook(mod: nn.Module, *_: Any) -> None:
        if id(mod) in ids and all(mod is not m for _, m in called):
            called.append((ids[id(mod)], mod))

    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise FusionTypeError("example_inputs must be a tensor or a tuple of tensors")
    handles = [m.register_forward_pre_hook(hook) for _, m in owners]
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
        with torch.no_grad():
            module(*inputs)
    except Exception as exc:  # whatever the module raises on inputs it cannot take
        got = ", ".join(f"shape {tuple(t.shape)} {t.dtype}" for t in inputs)
        raise FusionError(f"{type(module).__name__} cannot run on example_inputs ({got}): {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    return called + [(n, m) for n, m in owners if all(m is not c for _, c in called)]


def layer_pairs(keras_model: Any, torch_module: nn.Module, *, example_inputs: Any = None) -> list[LayerPair]:
    """Pair the weighted layers of the two models; FusionError naming the first mismatch."""
    if not isinstance(torch_module, nn.Module):
        raise FusionTypeError(f"expected a torch.nn.Module, got {type(torch_module).__name__}")
    info = gk.graph_info(keras_model)
    k_layers, t_layers = info.order, _torch_layers(torch_module, example_inputs)
    pairs = []
    for i, (layer, (name, mod)) in enumerate(zip(k_layers, t_layers, strict=False)):
        k_kind = _KERAS_KIND.get(type(layer).__name__)
        t_kind = _TORCH_KIND.get(type(mod))
        if k_kind is None or t_kind is None or k_kind != t_kind:
            raise FusionError(
                f"layer {i}: Keras {type(layer).__name__} {layer.name!r} and PyTorch {type(mod).__name__} "
                f"{name!r} do not correspond (supported pairs: Dense/Linear, ConvND/ConvNd, "
                "BatchNormalization/BatchNormNd, LayerNormalization/LayerNorm)"
            )
        pairs.append(LayerPair(k_kind, layer, name, mod, info.flatten.get(layer.name)))
    if len(k_layers) != len(t_layers):
        raise FusionError(
            f"the Keras model has {len(k_layers)} layers with weights, the PyTorch module {len(t_layers)}: "
            f"{[layer.name for layer in k_layers]} vs {[n for n, _ in t_layers]}"
        )
    for pair in pairs:
        _check_config(pair)
        state = pair.torch_module.state_dict()
        for k_name, t_name in _keys(pair):
            var = next(w for w in pair.keras_layer.weights if w.name == k_name)
            moved = _to_torch_layout(pair, k_name, np.empty(tuple(var.shape), np.float32))
            _shape_check(pair, k_name, moved.shape, tuple(state[t_name].shape))
    return pairs


def _check_config(pair: LayerPair) -> None:
    layer, mod = pair.keras_layer, pair.torch_module
    if pair.kind in ("batch_norm", "layer_norm"):
        eps = getattr(mod, "eps", None)
        if eps is None or not np.isclose(layer.epsilon, eps, rtol=1e-6, atol=0):
            raise FusionError(
                f"{pair.where()}: epsilon {layer.epsilon} vs eps {eps}; set them equal (Keras' default is 1e-3, "
                "PyTorch's 1e-5)"
            )
    if pair.kind == "layer_norm" and getattr(layer, "rms_scaling", False):
        raise FusionError(f"{pair.where()}: rms_scaling=True has no nn.LayerNorm counterpart")
    if pair.kind == "batch_norm" and mod.running_mean is None:
        raise FusionError(f"{pair.where()}: track_running_stats=False has no Keras counterpart")


def _base(kind: str) -> str:
    return "conv" if kind.startswith("conv") else kind


def _to_torch_layout(pair: LayerPair, key: str, x: np.ndarray) -> np.ndarray:
    if key != "kernel":
        return x
    if pair.kind == "dense":
        if pair.flatten is not None:
            spatial, c = pair.flatten
            x = np.moveaxis(x.reshape(*spatial, c, x.shape[-1]), -2, 0).reshape(-1, x.shape[-1])
        return x.T
    n = x.ndim - 2
    return x.transpose(n + 1, n, *range(n))


def _to_keras_layout(pair: LayerPair, key: str, x: np.ndarray) -> np.ndarray:
    if key != "kernel":
        return x
    if pair.kind == "dense":
        x = x.T
        if pair.flatten is not None:
            spatial, c = pair.flatten
            x = np.moveaxis(x.reshape(c, *spatial, x.shape[-1]), 0, -2).reshape(-1, x.shape[-1])
        return x
    n = x.ndim - 2
    return x.transpose(*range(2, n + 2), 1, 0)


def _keys(pair: LayerPair) -> list[tuple[str, str]]:
    """(Keras weight name, PyTorch state name) pairs present in both layers."""
    state = pair.torch_module.state_dict()
    k_names = {w.name for w in pair.keras_layer.weights}
    out = []
    for k_name, t_name in _NAMES[_base(pair.kind)].items():
        if (k_name in k_names) != (t_name in state and state[t_name] is not None):
            raise FusionError(f"{pair.where()}: {k_name!r} / {t_name!r} exists on one side only (bias or affine)")
        if k_name in k_names:
            out.append((k_name, t_name))
    return out


def _shape_check(pair: LayerPair, name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(got) != tuple(want):
        raise FusionError(f"{pair.where()}: {name} converts to shape {tuple(got)}, expected {tuple(want)}")


def torch_to_keras_arrays(torch_module: nn.Module, keras_model: Any, *, example_inputs: Any = None) -> dict:
    """The PyTorch weights as Keras-named, Keras-layout NumPy arrays for ``keras_model``."""
    names = {(layer.name, var.name): n for n, var, layer in gk._named_variables(keras_model)}
    shapes = {n: tuple(var.shape) for n, var, _ in gk._named_variables(keras_model)}
    out = {}
    for pair in layer_pairs(keras_model, torch_module, example_inputs=example_inputs):
        state = pair.torch_module.state_dict()
        for k_name, t_name in _keys(pair):
            name = names[(pair.keras_layer.name, k_name)]
            x = _to_keras_layout(pair, k_name, state[t_name].detach().cpu().numpy())
            _shape_check(pair, t_name, x.shape, shapes[name])
            out[name] = np.ascontiguousarray(x, dtype=np.float32)
    missing = [n for n in shapes if n not in out]
    if missing:
        raise FusionError(f"no PyTorch counterpart for Keras weights {missing}")
    return out


def _torch_from_keras_arrays(arrays: dict, keras_model: Any, torch_module: nn.Module, example_inputs: Any) -> Any:
    if not isinstance(torch_module, nn.Module):
        raise FusionTypeError(f"expected a torch.nn.Module, got {type(torch_module).__name__}")
    names = {(layer.name, var.name): n for n, var, layer in gk._named_variables(keras_model)}
    new = copy.deepcopy(torch_module)
    owners = dict(new.named_modules())
    for pair in layer_pairs(keras_model, torch_module, example_inputs=example_inputs):
        target = owners[pair.torch_name]
        for k_name, t_name in _keys(pair):
            x = _to_torch_layout(pair, k_name, gk._to_numpy(arrays[names[(pair.keras_layer.name, k_name)]]))
            tensor = getattr(target, t_name)
            _shape_check(pair, k_name, x.shape, tensor.shape)
            with torch.no_grad():
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(x)).to(tensor.dtype))
    return new


def keras_to_torch(keras_model: Any, torch_module: nn.Module, *, example_inputs: Any = None) -> nn.Module:
    """A copy of ``torch_module`` holding ``keras_model``'s weights (inputs not modified)."""
    return _torch_from_keras_arrays(gk.to_arrays(keras_model), keras_model, torch_module, example_inputs)


def torch_to_keras(torch_module: nn.Module, keras_model: Any, *, example_inputs: Any = None) -> Any:
    """A clone of ``keras_model`` holding ``torch_module``'s weights (inputs not modified)."""
    return gk.from_arrays(keras_model, torch_to_keras_arrays(torch_module, keras_model, example_inputs=example_inputs))


def fuse_cross(
    models: Sequence[Any],
    *,
    like: Any,
    example_inputs: Any = None,
    method: str = "gamf",
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    **options: Any,
) -> Any:
    """Fuse Keras and PyTorch models of one architecture; return a model like ``like``.

    Every model is brought into Keras names and layouts (the first Keras model among ``like``
    and ``models`` is the template whose graph gives the spec), fused with
    :func:`gamfsolve.fuse`, and written into a copy of ``like`` (a ``keras.Model`` or a
    ``torch.nn.Module``). ``example_inputs`` (PyTorch tensors) make the PyTorch layer order
    the call order instead of the registration order.
    """
    if isinstance(models, (keras.Model, nn.Module, str)) or not isinstance(models, Sequence):
        raise FusionTypeError(f"models must be a list of models, got {type(models).__name__}")
    models = list(models)
    if len(models) < 2:
        raise FusionError(f"fuse_cross needs at least two models, got {len(models)}")
    check_options(method, options, seed)  # before any work
    for k, m in enumerate([*models, like]):
        if not isinstance(m, (keras.Model, nn.Module)):
            what = "like" if k == len(models) else f"models[{k}]"
            raise FusionTypeError(f"{what} must be a keras.Model or a torch.nn.Module, got {type(m).__name__}")
    template = next((m for m in [like, *models] if isinstance(m, keras.Model)), None)
    if template is None:
        raise FusionError("fuse_cross needs a Keras model among like/models; for PyTorch only use adapters.torch")
    arrays = []
    for k, m in enumerate(models):
        if isinstance(m, keras.Model):
            arrays.append(gk._aligned(template, m, k))
        else:
            arrays.append(torch_to_keras_arrays(m, template, example_inputs=example_inputs))
    spec = gk.spec_from_model(template)
    check_models(arrays, spec)  # shapes first, then the Keras layers' functions
    gk.check_same_function([m for m in [template, *models] if isinstance(m, keras.Model)])
    fused = gamfsolve.fuse(arrays, spec, method=method, weights=weights, seed=seed, **options)
    if isinstance(like, keras.Model):
        return gk.from_arrays(like, fused)  # like is the template
    return _torch_from_keras_arrays(fused, template, like, example_inputs)
