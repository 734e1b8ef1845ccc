"""The protocol's architectures: build, permutation spec, input layout, array round trip.

``mlp`` and ``lenet`` are the demo's bias-free models (``gamfsolve.adapters._demo``, specs
written by hand); ``resnet20``, ``resnet20x4`` and ``vgg11`` are the literature's BatchNorm
networks from ``gamfsolve.adapters.torch_zoo`` with one input channel, their specs derived from
the traced graph. Images are kept as ``(N, side, side)`` arrays; :func:`inputs` gives the layout
a model reads (a channel axis for the zoo's convolutional nets).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
import torch
from gamfsolve.adapters import _demo, torch_zoo
from gamfsolve.adapters import torch as gtorch
from torch import nn

import gamfsolve

__all__ = ["ARCHS", "BN_ARCHS", "build", "describe", "from_arrays", "inputs", "spec_for", "to_arrays"]

BN_ARCHS = ("resnet20", "resnet20x4", "vgg11")
ARCHS = ("mlp", "lenet", *BN_ARCHS)
VGG_BASE = 16  # VGG-11 at a quarter of the literature's width: channels 16-32-64-64-128-128-128-128


def build(arch: str, side: int, n_classes: int, *, bias: bool = False, seed: int = 0, width: int = 256) -> nn.Module:
    """A freshly initialised model of ``arch`` for ``side x side`` images (seeded).

    ``width`` and ``bias`` apply to the demo's MLP (and ``bias`` to its LeNet); the zoo's nets
    have bias-free convolutions followed by BatchNorm and a linear head with a bias.
    """
    if arch in ("mlp", "lenet"):
        return _demo.build(arch, side, n_classes, bias=bias, seed=seed, width=width)
    torch.manual_seed(seed)
    if arch in ("resnet20", "resnet20x4"):
        return torch_zoo.resnet20(width=4 if arch == "resnet20x4" else 1, in_channels=1, num_classes=n_classes)
    if arch == "vgg11":
        return torch_zoo.vgg11(base=VGG_BASE, batch_norm=True, in_channels=1, num_classes=n_classes, input_size=side)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {list(ARCHS)}")


def describe(arch: str, side: int, width: int = 256) -> str:
    """A one-line description for the report."""
    return {
        "mlp": f"MLP {side * side}-{width}-{width}-10 (bias-free)",
        "lenet": "LeNet-style CNN (bias-free)",
        "resnet20": f"ResNet-20 x1 (BatchNorm; widths 16-32-64; {side}x{side} inputs)",
        "resnet20x4": f"ResNet-20 x4 (BatchNorm; widths 64-128-256; {side}x{side} inputs)",
        "vgg11": f"VGG-11-BN at 1/4 width (channels {VGG_BASE}-...-{8 * VGG_BASE}; {side}x{side} inputs)",
    }.get(arch, arch)


def inputs(arch: str, x: np.ndarray) -> np.ndarray:
    """Images ``(N, H, W)`` in the layout ``arch`` reads: as is, or ``(N, 1, H, W)``."""
    return x[:, None] if arch in BN_ARCHS else x


@cache
def spec_for(arch: str, side: int, *, bias: bool = False) -> gamfsolve.PermutationSpec:
    """The permutation spec of :func:`build`'s model: hand-written, or derived from its graph."""
    if arch in ("mlp", "lenet"):
        return _demo.spec_for(arch, side, bias=bias)
    model = build(arch, side, 10)
    example = torch.zeros(2, 1, side, side)
    return gtorch.spec_from_module(model, example)


def to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's floating-point parameters and buffers as NumPy arrays (copies)."""
    return {k: v.cpu().numpy().copy() for k, v in gtorch.to_arrays(model).items()}


def from_arrays(template: nn.Module, arrays: Mapping[str, Any]) -> nn.Module:
    """A copy of ``template`` holding ``arrays`` (integer buffers from ``template``)."""
    return gtorch.from_arrays(template, {k: np.asarray(v) for k, v in arrays.items()})
