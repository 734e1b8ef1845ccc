"""Shared helpers for the PyTorch adapter tests (zoo cases, permuted copies)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gamfsolve.adapters import torch as gt
from gamfsolve.adapters import torch_zoo as zoo
from torch import nn

import gamfsolve

torch.set_num_threads(1)

# name -> (factory(width, batch_norm), example input shape)
ZOO: dict[str, tuple[Callable[[int, bool], nn.Module], tuple[int, ...]]] = {
    "mlp": (lambda w, bn: zoo.mlp(hidden=(24, 16), width=w, bias=not bn), (4, 1, 28, 28)),
    "lenet": (lambda w, bn: zoo.lenet(width=w), (4, 1, 28, 28)),
    "lenet32": (lambda w, bn: zoo.lenet(width=w, input_size=32, in_channels=3), (4, 3, 32, 32)),
    "vgg11": (lambda w, bn: zoo.vgg11(base=4, width=w, batch_norm=bn), (4, 3, 32, 32)),
    "vgg11_28": (lambda w, bn: zoo.vgg11(base=4, width=w, batch_norm=bn, input_size=28, in_channels=1),
                 (4, 1, 28, 28)),
    "resnet20": (lambda w, bn: zoo.resnet20(width=w, batch_norm=bn), (4, 3, 32, 32)),
    "resnet18": (lambda w, bn: zoo.resnet18(base=4, width=w, batch_norm=bn), (4, 3, 32, 32)),
    "transformer": (lambda w, bn: zoo.tiny_transformer(width=w), (4, 8, 16)),
}


def make(name: str, width: int = 1, batch_norm: bool = True, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model in eval mode with non-trivial norm statistics, and an example batch."""
    factory, shape = ZOO[name]
    torch.manual_seed(seed)
    model = factory(width, batch_norm).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model, torch.randn(shape)


def permuted_copy(model: nn.Module, spec: gamfsolve.PermutationSpec, seed: int = 1) -> nn.Module:
    """The same function with every group's units shuffled."""
    arrays = gt.to_arrays(model)
    sizes = spec.group_sizes({k: tuple(v.shape) for k, v in arrays.items()})
    rng = np.random.default_rng(seed)
    perms = {g: torch.as_tensor(rng.permutation(n)) for g, n in sizes.items()}
    return gt.from_arrays(model, gamfsolve.permute(arrays, spec, perms))


def outputs_close(a: nn.Module, b: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> bool:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return bool((ya - yb).abs().max() <= atol * max(1.0, float(ya.abs().max())))
