"""Helpers for the CNN architecture tests: share of channels permuted, fuse-a-permuted-copy check."""

from __future__ import annotations

import torch
from gamfsolve.adapters import torch as gt
from torch import nn

import gamfsolve

from .torch_helpers import outputs_close, permuted_copy


def conv_share(model: nn.Module, spec: gamfsolve.PermutationSpec) -> tuple[int, int]:
    """(output channels of every convolution that lie in a permutation group, all of them)."""
    permuted = total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            axis = 1 if m.transposed else 0
            n = int(m.weight.shape[axis])
            total += n
            permuted += n if spec.axes[f"{name}.weight"][axis] is not None else 0
    return permuted, total


def first_output(model: nn.Module) -> nn.Module:
    """The module with its first tensor output only (logits of a Hugging Face model)."""

    class First(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out if isinstance(out, torch.Tensor) else out[0]

    return First()


def recovers_permuted_copy(model: nn.Module, x: torch.Tensor, spec: gamfsolve.PermutationSpec, method: str) -> bool:
    """Fusing ``model`` with a permuted copy of itself by ``method`` gives the model back (1e-5)."""
    other = permuted_copy(model, spec)
    fused = gt.fuse_modules([model, other], x, method=method, spec=spec, seed=0)
    return outputs_close(fused, model, x, atol=1e-5)
