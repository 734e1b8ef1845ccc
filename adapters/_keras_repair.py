"""BatchNorm reset and REPAIR (Jordan et al. 2022) for Keras 3 models on the torch backend.

The Keras counterparts of :func:`gamfsolve.adapters.torch.reset_bn_stats` and
:func:`gamfsolve.adapters.torch.repair`. Statistics are measured at inference (``training=False``,
dropout off), layer by layer in graph order, each layer's inputs computed by a sub-model of the
functional graph, so earlier corrections are accounted for. Keras layers are channels last
(``data_format="channels_first"`` convolutions are read on axis 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np

from gamfsolve import FusionError, FusionTypeError
from gamfsolve.spec._validate import check_weights

from ._keras_io import _check_model, from_arrays, graph_info, to_arrays

__all__ = ["repair", "reset_bn_stats"]

_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_BN = keras.layers.BatchNormalization
_DEAD = 1e-6  # a channel whose std is below this fraction of its RMS is treated as constant
_TINY = np.finfo(np.float64).tiny


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _batches(data: Any, n_batches: int | None) -> list[np.ndarray]:
    """Up to ``n_batches`` input arrays of ``data`` (an array, or an iterable of arrays or (x, y) pairs)."""
    if n_batches is not None and (isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1):
        raise FusionError(f"n_batches must be a positive integer or None, got {n_batches!r}")
    if isinstance(data, np.ndarray) or hasattr(data, "shape"):
        items: Iterable[Any] = [data]
    elif isinstance(data, Iterable):
        items = data
    else:
        raise FusionTypeError(f"data must be an array or an iterable of batches, got {type(data).__name__}")
    out: list[np.ndarray] = []
    for batch in items:
        if n_batches is not None and len(out) >= n_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not hasattr(x, "shape"):
            raise FusionTypeError(f"data must yield arrays or (inputs, targets) pairs, got {type(batch).__name__}")
        out.append(_numpy(x))
    if not out:
        raise FusionError("got no batches from data")
    return out


def _check(model: Any, what: str) -> None:
    _check_model(model, what)


def _copy(model: Any) -> Any:
    return from_arrays(model, to_arrays(model))


def _inputs_of(model: Any, layer: Any, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The input ``layer`` receives for each batch, at inference."""
    if len(layer._inbound_nodes) != 1:
        raise FusionError(f"layer {layer.name!r} is called {len(layer._inbound_nodes)} times; cannot measure its input")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    sub = keras.Model(inputs, layer.input)
    return [np.asarray(_numpy(sub(x, training=False)), dtype=np.float64) for x in batches]


def _moments(arrays: Sequence[np.ndarray], axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel population mean and variance of ``arrays`` (channels on ``axis``), float64."""
    rows = np.concatenate([np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]) for a in arrays])
    mean = rows.mean(0)
    return mean, np.maximum((rows * rows).mean(0) - mean * mean, 0.0)


def _bn_axis(layer: Any, ndim: int) -> int:
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    return axis % ndim


def _bn_layers(model: Any) -> list[Any]:
    return [layer for layer in graph_info(model).order if isinstance(layer, _BN)]


def _reset(model: Any, batches: Sequence[np.ndarray]) -> Any:
    for layer in _bn_layers(model):
        xs = _inputs_of(model, layer, batches)
        mean, var = _moments(xs, _bn_axis(layer, xs[0].ndim))
        layer.moving_mean.assign(mean.astype(str(layer.moving_mean.dtype)))
        layer.moving_variance.assign(var.astype(str(layer.moving_variance.dtype)))
    return model


def reset_bn_stats(model: Any, data: Any, *, n_batches: int | None = None) -> Any:
    """A copy of ``model`` whose BatchNormalization moving statistics are recomputed from ``data``.

    After fusion the averaged moving means and variances no longer match the fused weights'
    activations. For every BatchNormalization layer in graph order, the mean and (population)
    variance of its input over all batches, per channel, become its moving statistics; each
    layer's input is computed at inference with the statistics already reset before it.

    Parameters
    ----------
    model : keras.Model
        A Sequential or functional model on the torch backend; not modified.
    data : array or iterable
        One batch ``(batch, *input_shape)``, or an iterable of arrays or ``(inputs, targets)``
        pairs (NumPy arrays or torch tensors). The first ``n_batches`` are kept in memory.
    n_batches : int, optional
        Use at most this many batches of ``data``.

    Returns
    -------
    keras.Model
        A new, uncompiled model; a model without BatchNormalization comes back as an unchanged copy.
    """
    _check(model, "model")
    batches = _batches(data, n_batches)
    return _reset(_copy(model), batches)


def _plan(model: Any) -> list[Any]:
    """Hidden Dense/Conv layers in graph order: not the last, not a model output, not feeding a BN, called once."""
    layers = [layer for layer in graph_info(model).order if isinstance(layer, _LAYERS)]
    outputs = {id(t) for t in model.outputs}
    keep = []
    for layer in layers[:-1]:
        if len(layer._inbound_nodes) != 1 or id(layer.output) in outputs:
            continue
        if any(isinstance(node.operation, _BN) for node in layer._outbound_nodes):
            continue
        keep.append(layer)
    return keep


def _channel_axis(layer: Any, ndim: int) -> int:
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else ndim - 1


def _pre_activation(model: Any, layer: Any, batches: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``layer``'s output before its built-in activation."""
    xs = _inputs_of(model, layer, batches)
    saved = layer.activation
    layer.activation = keras.activations.linear
    try:
        zs = [np.asarray(_numpy(layer(x.astype(np.float32))), dtype=np.float64) for x in xs]
    finally:
        layer.activation = saved
    mean, var = _moments(zs, _channel_axis(layer, zs[0].ndim))
    return mean, np.sqrt(var)


def _fold(layer: Any, now: tuple[np.ndarray, np.ndarray], mean: np.ndarray, std: np.ndarray) -> None:
    """Fold ``z -> scale * z + shift`` into ``layer`` (as the torch adapter's REPAIR does)."""
    now_mean, now_std = now
    now_rms = np.sqrt(now_mean**2 + now_std**2)
    if layer.use_bias:
        ratio, live = std / np.maximum(now_std, _TINY), now_std > _DEAD * now_rms
    else:
        ratio, live = np.sqrt(mean**2 + std**2) / np.maximum(now_rms, _TINY), now_rms > 0
    scale = np.where(live, ratio, 1.0)
    kernel = np.asarray(_numpy(layer.kernel.value), dtype=np.float64)
    # Dense (in, out) and channels-last or channels-first ConvND (*kernel, in, out): outputs on the last axis
    layer.kernel.assign((kernel * scale).astype(str(layer.kernel.dtype)))
    if layer.use_bias:
        bias = np.asarray(_numpy(layer.bias.value), dtype=np.float64)
        layer.bias.assign((bias * scale + mean - scale * now_mean).astype(str(layer.bias.dtype)))


def _check_aligned(fused: Any, aligned: Any) -> list[Any]:
    _check(fused, "fused")
    if isinstance(aligned, keras.Model) or not isinstance(aligned, Sequence) or not aligned:
        raise FusionTypeError(
            f"aligned must be a non-empty sequence of keras.Model (see align_models), got {type(aligned).__name__}"
        )
    ref = {k: v.shape for k, v in to_arrays(fused).items()}
    for k, m in enumerate(aligned):
        _check(m, f"aligned[{k}]")
        shapes = [v.shape for v in to_arrays(m).values()]
        if shapes != list(ref.values()):
            raise FusionError(f"aligned[{k}] does not have the weights and shapes of fused (another architecture?)")
    return list(aligned)


def repair(
    fused: Any,
    aligned: Sequence[Any],
    data: Any,
    *,
    weights: Sequence[float] | None = None,
    n_batches: int | None = None,
) -> Any:
    """A copy of ``fused`` whose hidden channel statistics match the aligned sources' (REPAIR).

    The method of :func:`gamfsolve.adapters.torch.repair`: for every hidden Dense/Conv layer
    in graph order, the per-channel mean ``mu_c`` and std ``sigma_c`` of its output before its
    built-in activation are measured in the fused model and in each source, and the layer
    becomes ``z -> a z + b`` with ``a_c = sigma*_c / sigma_c``, ``b_c = mu*_c - a_c mu_c``,
    where ``mu*`` and ``sigma*`` are the ``weights``-average of the sources' statistics.
    Left alone: the last Dense/Conv layer, model outputs, layers called more than once and
    layers feeding a BatchNormalization (a BatchNorm model gets :func:`reset_bn_stats` before
    the corrections and after each). A bias-free layer is rescaled to the target root mean
    square ``sqrt(mu*^2 + sigma*^2)``.

    Parameters
    ----------
    fused : keras.Model
        The fused model (e.g. from :func:`~gamfsolve.adapters.keras.fuse_models`); not modified.
    aligned : sequence of keras.Model, length N >= 1
        The source models in the fused model's unit order
        (:func:`~gamfsolve.adapters.keras.align_models`), with ``fused``'s weight shapes.
    data : array or iterable
        One batch, or an iterable of arrays or ``(inputs, targets)`` pairs.
    weights : sequence of float, optional
        The fusion weights of ``aligned`` (normalised; default uniform).
    n_batches : int, optional
        Use at most this many batches of ``data``.

    Returns
    -------
    keras.Model
        A new, uncompiled model.
    """
    sources = _check_aligned(fused, aligned)
    w = check_weights(weights, len(sources))
    batches = _batches(data, n_batches)
    model = _copy(fused)
    bn = bool(_bn_layers(model))
    if bn:
        model = _reset(model, batches)
    plan = _plan(model)
    if not plan:
        return model
    source_plans = [dict(zip((layer.name for layer in plan), _plan(m), strict=True)) for m in sources]
    for layer in plan:
        stats = [_pre_activation(m, p[layer.name], batches) for m, p in zip(sources, source_plans, strict=True)]
        mean = sum((wk * s[0] for wk, s in zip(w, stats, strict=True)), np.zeros_like(stats[0][0]))
        std = sum((wk * s[1] for wk, s in zip(w, stats, strict=True)), np.zeros_like(stats[0][1]))
        _fold(layer, _pre_activation(model, layer, batches), mean, std)
        if bn:
            model = _reset(model, batches)
    return model
