"""Shared pieces of the federated-learning example: a small CNN with a MOON projection head,
its permutation spec, and Dirichlet-split MNIST partitions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import gamfsolve
from gamfsolve import Blocks, conv, dense, make_spec
from gamfsolve.datasets import dirichlet_split, load_images


class SmallCNN(nn.Module):
    """conv(1->6,5) - pool - conv(6->16,5) - pool - fc 64 - projection 32 (MOON's z) - fc 10.

    Works for 28x28 MNIST (and the 8x8 digits fallback, with ``size=8``).
    """

    def __init__(self, size: int = 28, n_classes: int = 10) -> None:
        super().__init__()
        self.size = size
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2 if size < 16 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2 if size < 16 else 0)
        side = size // 4 if size < 16 else ((size - 4) // 2 - 4) // 2
        self.flat = 16 * side * side
        self.fc1 = nn.Linear(self.flat, 64)
        self.proj = nn.Linear(64, 32)
        self.out = nn.Linear(32, n_classes)

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
        inner = model.flat // 16
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


def make_federation(n_clients: int, *, per_client: int, n_test: int, alpha: float, seed: int) -> Federation:
    """``n_clients`` Dirichlet(alpha) label-skewed shares of ``n_clients * per_client`` images."""
    data = load_images()
    train, test = data.split(n_clients * per_client, n_test, seed=seed)
    parts = dirichlet_split(train.y, n_clients, alpha, seed=seed)

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(x[:, None].copy()), torch.from_numpy(y.copy())

    return Federation(
        parts=[tensors(train.x[p], train.y[p]) for p in parts],
        test=tensors(test.x, test.y),
        size=int(data.x.shape[1]),
    )
