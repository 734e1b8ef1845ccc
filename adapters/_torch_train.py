"""The training and evaluation loops of small PyTorch classifiers.

One training loop for the demo, the examples and the Flower clients: Adam over shuffled
mini-batches (a seeded generator) of the caller's loss. :func:`evaluate_model` is the
clients' (and the federated examples') loss and accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["evaluate_model", "fit"]

BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: BatchLoss,
    *,
    params: Iterable[nn.Parameter] | None = None,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator | None,
) -> float:
    """Train ``params`` (default: all of ``model``'s) with Adam on ``loss(xb, yb)``; the mean loss.

    ``x`` of shape ``(n, ...)``, ``y`` of shape ``(n,)``; each epoch visits ``randperm(n)`` in
    batches of ``batch_size``. ``model`` is left in training mode.
    """
    opt = torch.optim.Adam(model.parameters() if params is None else params, lr=lr)
    model.train()
    total, count = 0.0, 0
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            opt.zero_grad(set_to_none=True)
            value = loss(x[idx], y[idx])
            value.backward()
            opt.step()
            total += float(value.detach()) * len(idx)
            count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        yb = y[start : start + batch_size]
        loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    return loss / max(len(y), 1), correct / max(len(y), 1)
