"""Shared pieces of the federated-learning example: a small CNN with a MOON projection head
(at any hidden width), its permutation spec, and Dirichlet-split MNIST / Fashion-MNIST partitions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import gamfsolve
import gamfsolve.datasets
from gamfsolve import Blocks, conv, dense, make_spec
from gamfsolve.datasets import dirichlet_split, load_fashion_mnist, load_images


def hidden_widths(width: float) -> tuple[int, int, int, int]:
    """Channels of conv1, conv2 and units of fc1, proj at a width multiplier (1.0: 6, 16, 64, 32)."""
    return tuple(max(1, round(n * width)) for n in (6, 16, 64, 32))  # type: ignore[return-value]


class SmallCNN(nn.Module):
    """conv(1->6,5) - pool - conv(6->16,5) - pool - fc 64 - projection 32 (MOON's z) - fc 10.

    Works for 28x28 MNIST (and the 8x8 digits fallback, with ``size=8``); ``width`` scales
    every hidden layer (0.5: 3, 8, 32, 16).
    """

    def __init__(self, size: int = 28, n_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        self.size = size
        c1, c2, h, z = hidden_widths(width)
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2 if size < 16 else 0)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2 if size < 16 else 0)
        side = size // 4 if size < 16 else ((size - 4) // 2 - 4) // 2
        self.flat = c2 * side * side
        self.fc1 = nn.Linear(self.flat, h)
        self.proj = nn.Linear(h, z)
        self.out = nn.Linear(z, n_classes)

    def forward_repr(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projection-head representation z, logits)."""
        h = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = nn.functional.max_pool2d(torch.relu(self.conv2(h)), 2)
        h = torch.relu(self.fc1(h.flatten(1)))
        z = self.proj(h)
        return z, self.out(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_repr(x)[1]


def cnn_spec(model: SmallCNN) -> gamfsolve.PermutationSpec:
    """The CNN's spec: the torch adapter's traced one when it is installed, else by hand."""
    try:
        from gamfsolve.adapters.torch import spec_from_module
    except ImportError:
        inner = model.flat // model.conv2.out_channels
        return make_spec(
            conv("conv1", None, "c1"),
            conv("conv2", "c1", "c2"),
            dense("fc1", Blocks("c2", inner=inner), "h"),
            dense("proj", "h", "z"),
            dense("out", "z", None),
        )
    return spec_from_module(model, torch.zeros(1, 1, model.size, model.size))


@dataclass(frozen=True)
class Federation:
    """Client partitions (tensors) and a held-out test set."""

    parts: list[tuple[torch.Tensor, torch.Tensor]]
    test: tuple[torch.Tensor, torch.Tensor]
    size: int


def _images(dataset: str, n_train: int, n_test: int, seed: int) -> tuple[gamfsolve.datasets.Dataset, gamfsolve.datasets.Dataset]:
    """Training and held-out images: MNIST's 10,000 (test-set) images split in two disjoint parts,
    or Fashion-MNIST's train split for training and its test split held out."""
    if dataset == "mnist":
        return load_images().split(n_train, n_test, seed=seed)
    if dataset == "fashion":
        train = load_fashion_mnist("train").split(n_train, 0, seed=seed)[0]
        return train, load_fashion_mnist("test").split(n_test, 0, seed=seed)[0]
    raise ValueError(f"unknown dataset {dataset!r}; choose 'mnist' or 'fashion'")


def make_federation(
    n_clients: int, *, per_client: int, n_test: int, alpha: float, seed: int, dataset: str = "mnist"
) -> Federation:
    """``n_clients`` Dirichlet(alpha) label-skewed shares of ``n_clients * per_client`` images."""
    train, test = _images(dataset, n_clients * per_client, n_test, seed)
    parts = dirichlet_split(train.y, n_clients, alpha, seed=seed)

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x[:, None].copy()), torch.from_numpy(y.copy())

    return Federation(
        parts=[tensors(train.x[p], train.y[p]) for p in parts],
        test=tensors(test.x, test.y),
        size=int(train.x.shape[1]),
    )
