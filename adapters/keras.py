"""Keras 3 adapter: named arrays, a derived :class:`~gamfsolve.PermutationSpec`, fused models.

Works on Sequential and functional Keras 3 models on the **torch** backend (set
``KERAS_BACKEND=torch`` before keras is first imported). Parameters are named
``"<layer name>.<weight name>"`` (``"dense_1.kernel"``, ``"batch_normalization.moving_mean"``)
and keep Keras' layouts: Dense ``(in, out)``, ConvND ``(*kernel, in, out)``, Flatten of
``(H, W, C)`` channels last (``Blocks(group, outer=H*W)``).

The spec is derived from the layer graph (see ``_keras_graph``): Dense, Conv1D/2D/3D,
BatchNormalization and LayerNormalization open or follow permutation groups; Add-like merges
share one group (a residual stream); Concatenate, Flatten, pooling, padding, dropout and
activations are understood; any other layer keeps its inputs and outputs fixed. Every
derived spec is checked by :func:`check_spec` unless ``check=False``.

Examples
--------
>>> from gamfsolve.adapters import keras as gk            # doctest: +SKIP
>>> fused = gk.fuse_models([model_a, model_b], method="gamf", seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

import gamfsolve
from gamfsolve import FusionError, FusionTypeError, PermutationSpec
from gamfsolve._api import check_options
from gamfsolve.spec._validate import check_models, check_weights, widest

from ._keras_graph import weight_key
from ._keras_io import _check_model, _named_variables, _require_torch_backend, _to_numpy, from_arrays, graph_info, to_arrays
from ._keras_repair import repair, reset_bn_stats

__all__ = [
    "align_models",
    "check_same_function",
    "check_spec",
    "from_arrays",
    "fuse_models",
    "graph_info",
    "load_model",
    "repair",
    "reset_bn_stats",
    "save_model",
    "spec_from_model",
    "to_arrays",
]


def _check_atol(atol: Any) -> None:
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < float("inf"):
        raise FusionError(f"atol must be a finite number >= 0, got {atol!r}")


def spec_from_model(model: Any, *, check: bool = True, atol: float = 1e-5) -> PermutationSpec:
    """Derive the permutation spec of a Sequential or functional model from its layer graph.

    Group names are the names of the layers that open them (``"dense"``, ``"conv2d_1"``); a
    residual stream is named after its first layer. With ``check=True`` the spec is verified
    by :func:`check_spec`.
    """
    _check_atol(atol)
    info = graph_info(model)
    axes = {}
    for name, var, layer in _named_variables(model):
        key = weight_key(layer, var)
        axes[name] = info.entries[key] if key in info.entries else (None,) * len(var.shape)
    spec = PermutationSpec(axes)
    if check:
        check_spec(model, spec, atol=atol)
    return spec


def _example_inputs(model: Any, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for t in model.inputs:
        shape = tuple(3 if i == 0 else (8 if d is None else d) for i, d in enumerate(t.shape))
        if "int" in str(t.dtype):
            out.append(np.zeros(shape, dtype=str(t.dtype)))
        else:
            out.append(rng.standard_normal(shape).astype(str(t.dtype)))
    return out


def _outputs(model: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    y = model(xs if len(xs) > 1 else xs[0], training=False)
    return [_to_numpy(t).astype(np.float64) for t in keras.tree.flatten(y)]


def _max_change(model: Any, arrays: dict, spec: PermutationSpec, perms: dict, xs: list, ref: list) -> float:
    moved = from_arrays(model, gamfsolve.permute(arrays, spec, perms))
    return max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(_outputs(moved, xs), ref, strict=True))


def _perturbed(arrays: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights plus noise, so zero biases or unit norm scales cannot hide a wrong entry."""
    out = {}
    for name, w in arrays.items():
        scale = 0.2 * max(float(np.std(w)), 0.1)
        v = w + scale * rng.standard_normal(w.shape)
        out[name] = (np.abs(v) + 0.1 if name.endswith("moving_variance") else v).astype(w.dtype)
    return out


def _random_cycle(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation that moves every unit (one n-cycle), so no entry goes untested."""
    order = rng.permutation(n)
    p = np.empty(n, dtype=np.int64)
    p[order] = np.roll(order, 1)
    return p


def check_spec(model: Any, spec: PermutationSpec, *, atol: float = 1e-5, seed: int = 0, perturb: bool = True) -> None:
    """Check that permuting every group at random leaves the model's outputs unchanged.

    Random inputs go through the model and through a copy whose weights are permuted by random
    permutations of all groups (``training=False``); the outputs must agree within
    ``atol * max(1, max|output|)``. With ``perturb=True`` both use the model's weights plus
    noise (a fresh model's zero biases would hide a wrong bias entry). On failure each group
    is tried alone, and the :class:`FusionError` names the groups that change the outputs.
    """
    _check_model(model)
    if not isinstance(spec, PermutationSpec):
        raise FusionTypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    _check_atol(atol)
    rng = np.random.default_rng(seed)
    arrays = to_arrays(model)
    sizes = spec.group_sizes({k: v.shape for k, v in arrays.items()})
    if not sizes:
        return
    if perturb:
        arrays = _perturbed(arrays, rng)
        model = from_arrays(model, arrays)
    xs = _example_inputs(model, rng)
    ref = _outputs(model, xs)
    tol = atol * max(1.0, max(float(np.max(np.abs(r), initial=0.0)) for r in ref))
    perms = {g: _random_cycle(n, rng) for g, n in sizes.items()}
    err = _max_change(model, arrays, spec, perms, xs, ref)
    if err <= tol:
        return
    identity = {g: np.arange(n) for g, n in sizes.items()}
    bad = [g for g in sizes if _max_change(model, arrays, spec, {**identity, g: perms[g]}, xs, ref) > tol]
    where = {g: sorted({n.rsplit(".", 1)[0] for n, _ in spec.users(g)}) for g in bad}
    raise FusionError(
        f"the spec does not preserve model {model.name!r}: a random permutation changes its outputs by "
        f"{err:.3g} (tolerance {tol:.3g}); groups that break it alone, with their layers: {where or 'none alone'}"
    )


def _aligned(template: Any, model: Any, k: int) -> dict[str, np.ndarray]:
    """``model``'s arrays under ``template``'s names, after checking the architectures match."""
    _check_model(model, f"models[{k}]")
    a, b = _named_variables(template), _named_variables(model)
    if len(a) != len(b):
        raise FusionError(f"models[{k}] has {len(b)} weights, models[0] has {len(a)}: not the same architecture")
    out = {}
    for (name, var, layer), (other, ovar, olayer) in zip(a, b, strict=True):
        # shapes may differ along permuted axes (widths): the core checks the rest
        if type(layer) is not type(olayer) or len(var.shape) != len(ovar.shape):
            raise FusionError(
                f"models[{k}] weight {other!r} ({type(olayer).__name__}, shape {tuple(ovar.shape)}) does not "
                f"match models[0] weight {name!r} ({type(layer).__name__}, shape {tuple(var.shape)})"
            )
        out[name] = np.array(_to_numpy(ovar.value))
    return out


def fuse_models(
    models: Sequence[Any],
    *,
    method: str = "gamf",
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    template: Any | None = None,
    **options: Any,
) -> Any:
    """Fuse Keras models of one architecture into one model (see :func:`gamfsolve.fuse`).

    The spec is derived from ``models[0]`` (and checked); weights are matched by position, so
    layer names may differ between the models. Returns a new, uncompiled model shaped like
    ``models[0]``. BatchNormalization statistics are averaged like the other weights. Models of
    different widths fuse into the widest: the result is shaped like the input that is widest
    in every group, or like ``template``.
    """
    if isinstance(models, (keras.Model, str, bytes)) or not isinstance(models, Sequence):
        raise FusionTypeError(f"models must be a list of keras.Model, got {type(models).__name__}")
    models = list(models)
    if len(models) < 2:
        raise FusionError(f"fuse_models needs at least two models, got {len(models)}")
    check_options(method, options, seed)  # before any work
    if weights is not None:
        check_weights(weights, len(models))
    for k, m in enumerate(models):
        _check_model(m, f"models[{k}]")
    spec = spec_from_model(models[0])
    arrays = [_aligned(models[0], m, k) for k, m in enumerate(models)]
    check_models(arrays, spec)  # shapes first, then the layers' functions
    check_same_function(models)
    fused = gamfsolve.fuse(arrays, spec, method=method, weights=weights, seed=seed, **options)
    target = _widest(models, arrays, spec, template)
    if target is not models[0]:  # weights correspond by position; names may differ
        names = [n for n, _, _ in _named_variables(target)]
        if len(names) != len(fused):
            raise FusionError(f"template has {len(names)} weights, the models have {len(fused)}")
        fused = dict(zip(names, fused.values(), strict=True))
    return from_arrays(target, fused)


#: layer settings that change the function a layer computes (widths such as ``units`` may differ)
_FUNCTION_KEYS = (
    "activation", "kernel_size", "strides", "padding", "dilation_rate", "pool_size", "data_format", "axis",
    "epsilon", "negative_slope", "alpha", "groups", "use_bias", "center", "scale", "max_value", "threshold",
    "target_shape", "dims", "size", "interpolation", "cropping", "function",
)


def _layer_function(layer: Any) -> tuple[str, dict[str, str]]:
    try:
        config = layer.get_config()
    except Exception:  # a layer without a config is compared by class alone
        config = {}
    return type(layer).__name__, {k: repr(config[k]) for k in _FUNCTION_KEYS if k in config}


def check_same_function(models: Sequence[Any]) -> None:
    """Raise :class:`~gamfsolve.FusionError` unless the models' layers are of the same classes with the
    same function-defining settings (activations, kernel sizes, strides, ...), in the same order."""
    first = [_layer_function(layer) for layer in models[0].layers]
    for k, model in enumerate(models[1:], start=1):
        other = [_layer_function(layer) for layer in model.layers]
        if len(other) != len(first):
            raise FusionError(
                f"models[{k}] has {len(other)} layers, models[0] has {len(first)}: not the same architecture"
            )
        for i, (a, b) in enumerate(zip(first, other, strict=True)):
            if a != b:
                raise FusionError(
                    f"models[{k}] layer {i} ({model.layers[i].name!r}) is {b[0]} {b[1]} but models[0]'s is {a[0]} "
                    f"{a[1]}: the models compute different functions; only models of one architecture fuse"
                )


def align_models(
    models: Sequence[Any],
    *,
    method: str = "gamf",
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    template: Any | None = None,
    **options: Any,
) -> list[Any]:
    """Each model with its units put into the common order of :func:`gamfsolve.match`.

    Every result is a new model computing the same function as its input (hidden units only
    relabelled); for models of one width their ``weights``-average is what :func:`fuse_models`
    returns for the same ``method``, ``weights``, ``seed`` and options. The inputs of
    :func:`repair`. Models of different widths come out at the widest widths (a narrower one
    with zero units in its empty slots), as copies of the widest input or of ``template``.

    Parameters
    ----------
    models : sequence of keras.Model, length N >= 2
        Models of one architecture (Sequential or functional); not modified.
    method, weights, seed, options
        As for :func:`gamfsolve.match`.
    template : keras.Model, optional
        Receives the aligned weights when the models differ in width.

    Returns
    -------
    list of keras.Model
        N new, uncompiled models.
    """
    models = list(models)
    if len(models) < 2:
        raise FusionError(f"align_models needs at least two models, got {len(models)}")
    spec = spec_from_model(models[0])
    arrays = [_aligned(models[0], m, k) for k, m in enumerate(models)]
    result = gamfsolve.match(arrays, spec, method=method, weights=weights, seed=seed, **options)
    aligned = [gamfsolve.permute(arrays[k], spec, result.model_perms(k)) for k in range(len(models))]
    sizes = [spec.group_sizes({n: tuple(x.shape) for n, x in a.items()}) for a in arrays]
    out = []
    for k, a in enumerate(aligned):
        target = models[k] if all(s == sizes[0] for s in sizes) else _widest(models, arrays, spec, template)
        names = [n for n, _, _ in _named_variables(target)]
        out.append(from_arrays(target, dict(zip(names, a.values(), strict=True))))
    return out


def _widest(models: Sequence[Any], arrays: Sequence[Mapping[str, np.ndarray]], spec: PermutationSpec,
            template: Any | None) -> Any:
    """``template``, else the input with the widest unit count of every group (receives the result)."""
    if template is not None:
        _check_model(template, "template")
        return template
    k = widest(arrays, spec)
    if k is None:
        raise FusionError(
            "no input model is the widest in every group; pass template=, a model of the same architecture "
            "with the widest unit count of every group, to receive the fused weights"
        )
    return models[k]


def _keras_path(path: str | os.PathLike[str]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise FusionTypeError(f"path must be a str or os.PathLike, got {path!r}")
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise FusionError(f"expected a .keras file, got {path!r}")
    return path


def load_model(path: str | os.PathLike[str], *, custom_objects: Mapping[str, Any] | None = None) -> Any:
    """Load a ``.keras`` file with ``safe_mode=True`` (no arbitrary code from lambdas)."""
    _require_torch_backend()
    file = _keras_path(path)
    try:
        return keras.saving.load_model(file, custom_objects=custom_objects, safe_mode=True)
    except Exception as exc:  # keras raises ValueError, TypeError, zipfile and h5py errors, ...
        text = str(exc).strip().splitlines()
        raise FusionError(f"cannot read {file} as a Keras model (safe mode): {text[0] if text else type(exc).__name__}") from exc


def save_model(model: Any, path: str | os.PathLike[str]) -> None:
    """Save a model to a ``.keras`` file."""
    _check_model(model)
    file = _keras_path(path)
    try:
        keras.saving.save_model(model, file)
    except OSError as exc:
        raise FusionError(f"cannot write {file}: {exc.strerror or exc}") from exc
