"""Small PyTorch models, training and evaluation for the demo and the ensemble example.

Imported only by ``gamfsolve demo`` and ``examples/ensemble``; it imports torch at import
time, so nothing in the core imports it (``import gamfsolve`` stays framework-free).

Two architectures, both with hand-written :class:`gamfsolve.PermutationSpec` built from the
public builders: an MLP ``in-256-256-classes`` and a LeNet-style CNN (two 5x5 convolutions
with 2x2 max pooling, then three dense layers).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from gamfsolve import Blocks, FusionError, PermutationSpec, conv, dense, make_spec, mlp_spec

from ._torch_train import fit

__all__ = [
    "LeNet",
    "MLP",
    "accuracy",
    "build",
    "ensemble_accuracy",
    "from_arrays",
    "predict_proba",
    "spec_for",
    "to_arrays",
    "train",
]

Arch = Literal["mlp", "lenet"]
ARCHS: tuple[str, ...] = ("mlp", "lenet")


class MLP(nn.Module):
    """``in -> hidden... -> n_classes`` with ReLU; layers named ``layers.0, layers.1, ...``."""

    def __init__(self, n_in: int, n_classes: int, hidden: Sequence[int] = (256, 256), *, bias: bool = False) -> None:
        super().__init__()
        sizes = [n_in, *hidden, n_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


class LeNet(nn.Module):
    """LeNet-5 style: conv 5x5 (6) - pool - conv 5x5 (16) - pool - dense 120 - 84 - classes.

    Both convolutions pad by 2, so any image side divisible by 4 works (28 for MNIST, 8 for
    the digits).
    """

    def __init__(self, side: int, n_classes: int, *, bias: bool = False) -> None:
        super().__init__()
        if side % 4:
            raise FusionError(f"LeNet needs an image side divisible by 4, got {side}")
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2, bias=bias)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2, bias=bias)
        self.fc1 = nn.Linear(16 * (side // 4) ** 2, 120, bias=bias)
        self.fc2 = nn.Linear(120, 84, bias=bias)
        self.fc3 = nn.Linear(84, n_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x.unsqueeze(1))), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


def build(arch: str, side: int, n_classes: int, *, bias: bool = False, seed: int = 0, width: int = 256) -> nn.Module:
    """A freshly initialised model for square images of side ``side`` (seeded).

    ``width`` is the MLP's hidden size (two hidden layers); LeNet's widths are fixed.
    """
    torch.manual_seed(seed)
    if arch == "mlp":
        return MLP(side * side, n_classes, (width, width), bias=bias)
    if arch == "lenet":
        return LeNet(side, n_classes, bias=bias)
    raise FusionError(f"unknown architecture {arch!r}; choose one of {list(ARCHS)}")


def spec_for(arch: str, side: int, *, bias: bool = False) -> PermutationSpec:
    """The permutation spec of :func:`build`'s model (PyTorch ``(out, in)`` layout)."""
    if arch == "mlp":
        return mlp_spec(3, prefix="layers", bias=bias)
    if arch == "lenet":
        # fc1 reads the flattened (16, s, s) feature map: channel c owns a block of s*s inputs.
        flat = Blocks("c1", inner=(side // 4) ** 2)
        return make_spec(
            conv("conv1", None, "c0", bias=bias),
            conv("conv2", "c0", "c1", bias=bias),
            dense("fc1", flat, "h0", bias=bias),
            dense("fc2", "h0", "h1", bias=bias),
            dense("fc3", "h1", None, bias=bias),
        )
    raise FusionError(f"unknown architecture {arch!r}; choose one of {list(ARCHS)}")


def to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as NumPy arrays (copies), keyed like its ``state_dict``."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def from_arrays(template: nn.Module, arrays: Mapping[str, Any]) -> nn.Module:
    """A copy of ``template`` holding ``arrays`` (NumPy or torch), checked key by key."""
    model = copy.deepcopy(template)
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True)
    return model


def _images(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Adam on cross-entropy, in place, shuffled mini-batches (seeded); returns ``model``."""
    xt, yt = _images(x), torch.from_numpy(np.asarray(y, dtype=np.int64))

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(xb), yb)

    fit(model, xt, yt, batch_loss, epochs=epochs, lr=lr, batch_size=batch_size, generator=torch.Generator().manual_seed(seed))
    model.eval()
    return model


@torch.no_grad()
def predict_proba(models: Iterable[nn.Module], x: np.ndarray, *, batch_size: int = 2048) -> np.ndarray:
    """Mean softmax output of ``models`` on ``x`` (one model: its own probabilities)."""
    xt = _images(x)
    total: torch.Tensor | None = None
    count = 0
    for model in models:
        model.eval()
        probs = torch.cat([torch.softmax(model(b), dim=1) for b in xt.split(batch_size)])
        total = probs if total is None else total + probs
        count += 1
    if total is None:
        raise FusionError("predict_proba needs at least one model")
    return (total / count).numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of one model, in percent."""
    return ensemble_accuracy([model], x, y)


def ensemble_accuracy(models: Sequence[nn.Module], x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (%) of the prediction ensemble (mean of the models' softmax outputs)."""
    return float(100.0 * np.mean(predict_proba(models, x).argmax(axis=1) == y))
