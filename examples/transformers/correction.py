"""A REPAIR-style statistics correction for LayerNorm transformers (Hugging Face ViT and GPT-2).

``gamfsolve.adapters.torch.repair`` corrects the output channels of hidden ``nn.Linear`` /
``ConvNd`` layers. On a transformer that is the wrong place for most of them: the attention
projections and the layers that write into the residual stream feed softmax logits or a sum
that every later LayerNorm renormalises per token, and GPT-2's projections are
``transformers.Conv1D`` (``(in, out)`` layout), which it does not see at all.

LayerNorm itself renormalises each token over its channels, so it undoes a uniform shrinking
of the residual stream but not the per-channel variance collapse that averaging two aligned
networks causes. Its affine parameters, however, act per channel, so the correction of
Jordan et al. (2022) folds into them exactly: for every LayerNorm output channel ``c``
``gamma_c <- a_c gamma_c`` and ``beta_c <- a_c (beta_c - mu_c) + mu*_c`` with
``a_c = sigma*_c / sigma_c``, where ``mu*``, ``sigma*`` are the average of the aligned sources'
per-channel mean and std and ``mu``, ``sigma`` the fused model's, all measured on training
inputs over every token. Corrections run in forward order, the fused model measured again
before each. The same fold can be applied to the feed-forward up-projection (the one hidden
layer whose units pass through a per-unit nonlinearity) through its weight and bias
(``up_projections=True``); on the MNIST ViT pairs that measured worse than the LayerNorms
alone, so it is off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["correct", "corrected_layers"]


def corrected_layers(model: nn.Module, *, up_projections: bool = False) -> list[str]:
    """Names of the LayerNorms (and feed-forward up-projections) of a HF ViT / GPT-2, in forward order."""
    names = []
    up = ("intermediate.dense", "mlp.fc1", "mlp.c_fc") if up_projections else ()
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) or (up and name.endswith(up)):
            names.append(name)
    return names


def _channel_axis(module: nn.Module) -> int:
    """The weight axis that indexes output channels: 0 for LayerNorm and Linear, 1 for HF Conv1D."""
    return 1 if type(module).__name__ == "Conv1D" else 0


@torch.no_grad()
def _moments(model: nn.Module, name: str, batches: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``(channels,)`` of module ``name``'s output over all tokens."""
    rows: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda _m, _i, out: rows.append(out.detach().reshape(-1, out.shape[-1]).double()))
    try:
        model.eval()
        for batch in batches:
            model(batch)
    finally:
        handle.remove()
    z = torch.cat(rows)
    return z.mean(0), z.std(0, unbiased=False)


@torch.no_grad()
def correct(fused: nn.Module, aligned: Sequence[nn.Module], batches: Sequence[torch.Tensor],
            names: Sequence[str] | None = None) -> nn.Module:
    """A copy of ``fused`` whose LayerNorm and up-projection channel statistics are the sources' average.

    Parameters
    ----------
    fused : nn.Module
        The fused model; not modified.
    aligned : sequence of nn.Module
        The parents with their units in the fused model's order (same function as each parent).
    batches : sequence of tensors
        Training inputs (images ``(B, 1, H, W)`` or token ids ``(B, T)``).
    names : sequence of str, optional
        The modules to correct (default :func:`corrected_layers`), in forward order.
    """
    import copy

    model = copy.deepcopy(fused)
    names = corrected_layers(model) if names is None else list(names)
    targets = {name: [_moments(m, name, batches) for m in aligned] for name in names}
    for name in names:
        mean_t = torch.stack([t[0] for t in targets[name]]).mean(0)
        std_t = torch.stack([t[1] for t in targets[name]]).mean(0)
        mean, std = _moments(model, name, batches)
        scale = torch.where(std > 1e-8, std_t / std.clamp_min(1e-12), torch.ones_like(std))
        module = model.get_submodule(name)
        weight, bias = module.weight, module.bias
        assert isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)
        shape = [1] * weight.ndim
        shape[_channel_axis(module)] = -1
        weight.mul_(scale.reshape(shape).to(weight))
        bias.copy_((scale * (bias.double() - mean) + mean_t).to(bias))
    return model
