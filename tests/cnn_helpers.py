"""Helpers for the CNN architecture tests: share of channels permuted, fuse-a-permuted-copy check."""

from __future__ import annotations

import torch
from gamfsolve.adapters import torch as gt
from torch import nn

import gamfsolve

from .torch_helpers import permuted_copy


def conv_share(model: nn.Module, spec: gamfsolve.PermutationSpec, *, linear: bool = False) -> tuple[int, int]:
    """(output channels of every convolution that lie in a permutation group, all of them).

    ``linear=True`` counts the output units of linear layers too (classifier heads included).
    """
    permuted = total = 0
    kinds: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear) if linear else (nn.modules.conv._ConvNd,)
    for name, m in model.named_modules():
        if isinstance(m, kinds):
            axis = 1 if getattr(m, "transposed", False) else 0
            n = int(m.weight.shape[axis])
            total += n
            permuted += n if spec.axes[f"{name}.weight"][axis] is not None else 0
    return permuted, total


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first tensor a model returns (the logits of a Hugging Face ``ModelOutput``)."""
    with torch.no_grad():
        out = model(x)
    while not isinstance(out, torch.Tensor):
        out = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))
    return out


def recovers_permuted_copy(model: nn.Module, x: torch.Tensor, spec: gamfsolve.PermutationSpec, method: str) -> bool:
    """Fusing ``model`` with a permuted copy of itself by ``method`` gives the model back (1e-5)."""
    other = permuted_copy(model, spec)
    fused = gt.fuse_modules([model, other], x, method=method, spec=spec, seed=0)
    ya, yb = logits(model, x), logits(fused, x)
    return bool((ya - yb).abs().max() <= 1e-5 * max(1.0, float(ya.abs().max())))
