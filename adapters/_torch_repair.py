"""REPAIR (Jordan et al. 2022): restore a fused model's per-channel activation statistics.

Averaging aligned networks shrinks the variance of hidden pre-activations ("variance
collapse"). REPAIR measures, on a few batches, the mean and standard deviation of every
output channel of every hidden Linear/Conv layer in each aligned source model and in the fused
model, and folds an affine correction into the fused layer so that its channel statistics
become the (fusion-weighted) average of the sources' statistics.

:func:`reset_bn_stats` recomputes BatchNorm running statistics; REPAIR uses it on models with
BatchNorm.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gamfsolve import FusionError, FusionTypeError
from gamfsolve.spec._validate import check_weights

from ._torch_io import deepcopy
from ._torch_run import EvalMode, device_check, input_batches, output_tensors

__all__ = ["repair", "reset_bn_stats"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BatchNorm = nn.modules.batchnorm._BatchNorm
_DEAD = 1e-6  # a channel whose std is below this fraction of its RMS is treated as constant
_TINY = torch.finfo(torch.float64).tiny


@dataclass
class _Moments:
    """Running per-channel first and second moments (float64) of one layer's output."""

    count: int = 0
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None

    def add(self, z: torch.Tensor, axis: int) -> None:
        """Accumulate ``z`` (channels on ``axis``, any other dims are samples)."""
        rows = z.detach().movedim(axis, -1).reshape(-1, z.shape[axis]).double()
        s, q = rows.sum(0), (rows * rows).sum(0)
        self.total = s if self.total is None else self.total + s
        self.squares = q if self.squares is None else self.squares + q
        self.count += rows.shape[0]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (population) standard deviation, each ``(channels,)``."""
        if self.total is None or self.squares is None or self.count == 0:
            raise FusionError("a layer produced no output while measuring statistics")
        mean = self.total / self.count
        return mean, (self.squares / self.count - mean * mean).clamp_min(0).sqrt()


def _channel_axis(layer: nn.Module, out: torch.Tensor) -> int:
    """Linear: the last axis; ConvNd: the axis before the ``N`` spatial ones (batched or not)."""
    if isinstance(layer, nn.Linear):
        return out.ndim - 1
    return out.ndim - 1 - len(layer.kernel_size)  # type: ignore[arg-type]


def _check_aligned(fused: Any, aligned: Any) -> list[nn.Module]:
    if not isinstance(fused, nn.Module):
        raise FusionTypeError(f"fused must be a torch.nn.Module, got {type(fused).__name__}")
    if isinstance(aligned, nn.Module) or not isinstance(aligned, Sequence) or not aligned:
        raise FusionTypeError(
            f"aligned must be a non-empty sequence of torch.nn.Module (see align_modules), got {type(aligned).__name__}"
        )
    ref = fused.state_dict()
    dev = {t.device for t in ref.values()}
    for k, m in enumerate(aligned):
        if not isinstance(m, nn.Module):
            raise FusionTypeError(f"aligned[{k}] must be a torch.nn.Module, got {type(m).__name__}")
        if type(m) is not type(fused):
            raise FusionError(f"aligned[{k}] is a {type(m).__name__} but fused is a {type(fused).__name__}")
        state = m.state_dict()
        if list(state) != list(ref) or any(state[n].shape != ref[n].shape for n in ref):
            raise FusionError(f"aligned[{k}] does not have the parameters and shapes of fused (another architecture?)")
        if {t.device for t in state.values()} != dev:
            raise FusionError(f"aligned[{k}] is on {sorted(map(str, {t.device for t in state.values()}))} but fused is on "
                              f"{sorted(map(str, dev))}; move them to one device")
    return list(aligned)


def _collect(data: Any, n_batches: int | None) -> list[tuple]:
    """Up to ``n_batches`` input batches of ``data``, kept in a list (each is reused many times)."""
    if n_batches is not None and (isinstance(n_batches, bool) or not isinstance(n_batches, int) or n_batches < 1):
        raise FusionError(f"n_batches must be a positive integer or None, got {n_batches!r}")
    if not isinstance(data, (torch.Tensor, Iterable)):
        raise FusionTypeError(f"data must be a tensor or an iterable of batches, got {type(data).__name__}")
    out: list[tuple] = []
    for batch in input_batches(data):
        if n_batches is not None and len(out) >= n_batches:
            break
        out.append(batch)
    if not out:
        raise FusionError("repair got no batches from data")
    return out


def _check_device(fused: nn.Module, batches: Sequence[tuple]) -> None:
    devices = {t.device for t in fused.state_dict().values()}
    for batch in batches:
        for t in batch:
            if devices and t.device not in devices:
                raise FusionError(f"data has a batch on {t.device} but fused is on {sorted(map(str, devices))}; "
                                  "move them to one device")


def _plan(model: nn.Module, batch: tuple) -> list[str]:
    """Names of the layers to correct, in the order the forward pass runs them.

    Left out: the last Linear/Conv to run and any whose output the model returns (output
    layers), any whose output goes straight into a BatchNorm, and any called more than once.
    """
    calls: list[tuple[str, torch.Tensor]] = []
    bn_inputs: list[torch.Tensor] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _LAYERS):
            handles.append(m.register_forward_hook(lambda _m, _i, out, name=name: calls.append((name, out))))
        elif isinstance(m, _BatchNorm):
            handles.append(m.register_forward_pre_hook(lambda _m, inp: bn_inputs.append(inp[0])))
    try:
        with EvalMode(model), torch.no_grad():
            outputs = output_tensors(model(*batch))
    finally:
        for h in handles:
            h.remove()
    counts = Counter(name for name, _ in calls)
    skip = {id(t) for t in [*bn_inputs, *outputs]} | ({id(calls[-1][1])} if calls else set())
    return [name for name, out in calls if counts[name] == 1 and id(out) not in skip]


def _measure(model: nn.Module, names: Sequence[str], batches: Sequence[tuple]) -> dict[str, _Moments]:
    """Per-channel moments of each named layer's output over ``batches`` (eval mode, no grad)."""
    moments = {name: _Moments() for name in names}

    def hook(name: str) -> Any:
        def record(layer: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            moments[name].add(out, _channel_axis(layer, out))

        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        with EvalMode(model), torch.no_grad():
            for batch in batches:
                model(*batch)
    finally:
        for h in handles:
            h.remove()
    return moments


def _fold(layer: nn.Module, current: _Moments, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold ``z -> scale * z + shift`` into ``layer`` (in place) so its channels get ``mean``/``std``.

    With a bias: ``scale = std / std_now`` (1 for a constant channel) and ``shift = mean -
    scale * mean_now``. Without: ``scale = rms / rms_now`` (root mean square, ``sqrt(mean^2 +
    std^2)``), the one statistic a scale alone can set; 1 for an all-zero channel.
    """
    now_mean, now_std = current.mean_std()
    now_rms = (now_mean * now_mean + now_std * now_std).sqrt()
    bias = layer.bias
    if isinstance(bias, torch.Tensor):
        ratio, live = std / now_std.clamp_min(_TINY), now_std > _DEAD * now_rms
    else:
        ratio, live = (mean * mean + std * std).sqrt() / now_rms.clamp_min(_TINY), now_rms > 0
    scale = torch.where(live, ratio, torch.ones_like(ratio))
    weight: torch.Tensor = layer.weight  # type: ignore[assignment]
    with torch.no_grad():
        weight.mul_(scale.to(weight).reshape(-1, *[1] * (weight.ndim - 1)))
        if isinstance(bias, torch.Tensor):
            bias.mul_(scale.to(bias)).add_((mean - scale * now_mean).to(bias))


def _targets(
    sources: Sequence[dict[str, _Moments]], weights: Sequence[float], name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of the sources' per-channel means and standard deviations of layer ``name``."""
    pairs = [m[name].mean_std() for m in sources]
    mean = sum((w * p[0] for w, p in zip(weights, pairs, strict=True)), torch.zeros_like(pairs[0][0]))
    std = sum((w * p[1] for w, p in zip(weights, pairs, strict=True)), torch.zeros_like(pairs[0][1]))
    return mean, std


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def repair(
    fused: nn.Module,
    aligned: Sequence[nn.Module],
    data: Any,
    *,
    weights: Sequence[float] | None = None,
    n_batches: int | None = None,
) -> nn.Module:
    """A copy of ``fused`` whose hidden channel statistics match the aligned sources' (REPAIR).

    For every hidden Linear/Conv layer, in forward order, let ``z_c`` be output channel ``c``
    of the fused model and ``z_c^k`` that of source ``k``, measured over ``data`` (population
    mean and std over the batch and any spatial positions). The layer becomes ``z -> a z + b``
    with ``a_c = sigma*_c / sigma_c`` and ``b_c = mu*_c - a_c mu_c``, where
    ``mu*_c = sum_k w_k mu_c^k`` and ``sigma*_c = sum_k w_k sigma_c^k``: row ``c`` of the weight
    is scaled by ``a_c`` and the bias becomes ``a_c (bias_c - mu_c) + mu*_c``. The fused
    statistics are measured again before each layer, so earlier corrections are accounted for.

    Left alone: output layers (the last Linear/Conv to run, or one whose output the model
    returns), layers called more than once per forward pass, and layers that feed a BatchNorm
    directly. For those BatchNorm does the job once its running statistics fit the fused
    weights: if ``fused`` has BatchNorm layers, :func:`reset_bn_stats` is applied on ``data``
    before the corrections and after each, so a BatchNorm network gets exactly the BN reset
    (the right tool for it) plus REPAIR of any un-normalised hidden layers.

    Bias-free layers (``bias=False``) cannot take the shift without changing the state-dict
    keys: they are rescaled only, by ``a_c = rho*_c / rho_c`` with ``rho = sqrt(mu^2 + sigma^2)``
    (root mean square; ``rho*_c`` from the targets ``mu*_c``, ``sigma*_c``), so the second moment
    is matched and mean and std are only approximately right (their ratio cannot change).
    Matching the std alone measured worse on small MLPs. A channel that is constant in the fused
    model is shifted only (bias) or left alone (no bias).

    Parameters
    ----------
    fused : torch.nn.Module
        The fused model (e.g. from :func:`fuse_modules`); not modified.
    aligned : sequence of torch.nn.Module, length N >= 1
        The source models in the fused model's unit order (:func:`align_modules`), same
        architecture and device as ``fused``; not modified.
    data : tensor or iterable
        One batch, or an iterable of input tensors or ``(inputs, targets)`` pairs, on the
        models' device. The first ``n_batches`` batches are kept in memory and reused.
    weights : sequence of float, optional
        The fusion weights of ``aligned`` (normalised; default uniform).
    n_batches : int, optional
        Use at most this many batches of ``data``.

    Returns
    -------
    torch.nn.Module
        A new module; train/eval flags are those of ``fused``.
    """
    sources = _check_aligned(fused, aligned)
    w = check_weights(weights, len(sources))
    batches = _collect(data, n_batches)
    _check_device(fused, batches)
    model = deepcopy(fused)
    bn = _has_bn(model)
    if bn:
        model = reset_bn_stats(model, batches)
    names = _plan(model, batches[0])
    if not names:
        return model
    stats = [_measure(m, names, batches) for m in sources]
    for name in names:
        mean, std = _targets(stats, w, name)
        current = _measure(model, [name], batches)[name]
        _fold(model.get_submodule(name), current, mean, std)
        if bn:
            model = reset_bn_stats(model, batches)
    return model


def reset_bn_stats(module: nn.Module, data: Any, *, n_batches: int | None = None) -> nn.Module:
    """A copy of ``module`` whose BatchNorm running statistics are recomputed from ``data``.

    After fusion the averaged running means and variances no longer match the fused weights'
    activations. This resets every BatchNorm layer, runs the copy with only those layers in
    training mode (cumulative averages, momentum ``None``) over up to ``n_batches`` batches of
    ``data`` (a tensor, or an iterable of tensors or ``(inputs, targets)`` pairs), and restores
    each layer's mode and momentum. The input module is not modified; a module without
    BatchNorm comes back as an unchanged copy.
    """
    if not isinstance(module, nn.Module):
        raise FusionTypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    new = deepcopy(module)
    norms = [m for m in new.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return new
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    seen = 0
    with EvalMode(new), torch.no_grad():
        for m in norms:
            m.training = True
        for batch in input_batches(data):
            if n_batches is not None and seen >= n_batches:
                break
            device_check(new, batch)
            new(*batch)
            seen += 1
    for m, momentum in saved:
        m.momentum = momentum
    if seen == 0:
        raise FusionError("reset_bn_stats got no batches from data")
    return new
