"""Fusing networks trained on MNIST from different seeds (slow: trains small models on the CPU).

Prints the figures; run with ``pytest -m slow -s tests/test_torch_mnist.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from gamfsolve.adapters import torch as gt  # noqa: E402
from gamfsolve.adapters import torch_zoo as zoo  # noqa: E402
from torch import nn  # noqa: E402

import gamfsolve  # noqa: E402
from gamfsolve import datasets  # noqa: E402

pytestmark = pytest.mark.slow
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if datasets.mnist_dir() is None:
        pytest.skip("MNIST not available locally")
    train, test = datasets.load_mnist().split(8000, 2000, seed=0)
    to_x = lambda d: torch.as_tensor(d.x).unsqueeze(1)  # noqa: E731
    return to_x(train), torch.as_tensor(train.y), to_x(test), torch.as_tensor(test.y)


def train(factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int,
          lr: float = 1e-3) -> nn.Module:
    torch.manual_seed(seed)
    model = factory()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean()) * 100


PAIRS = ((1, 2), (3, 4), (5, 6))


def _compare(name: str, factory: Callable[[], nn.Module], mnist: tuple, epochs: int) -> dict[str, float]:
    """Mean one-shot accuracy over three pairs trained from different seeds (one pair swings by up to 8 points)."""
    x, y, xt, yt = mnist
    per_pair: dict[str, list[float]] = {}
    for seeds in PAIRS:
        models = [train(factory, x, y, seed=s, epochs=epochs) for s in seeds]
        spec = gt.spec_from_module(models[0], xt[:4])
        per_pair.setdefault("models", []).extend(accuracy(m, xt, yt) for m in models)
        for method in ("average", "ot", "weight_matching", "gamf"):
            fused = gt.fuse_modules(models, xt[:4], method=method, spec=spec, seed=0)
            per_pair.setdefault(method, []).append(accuracy(fused, xt, yt))
    print(f"\n{name} one-shot fusion, MNIST accuracy (%), pairs {PAIRS}:")
    for k, v in per_pair.items():
        print(f"  {k:<16} mean {sum(v) / len(v):5.1f}  (" + ", ".join(f"{a:.1f}" for a in v) + ")")
    return {k: sum(v) / len(v) for k, v in per_pair.items()}


@pytest.mark.parametrize(
    ("name", "factory", "epochs"),
    [
        pytest.param("MLP 784-256-256-10", lambda: zoo.mlp(hidden=(256, 256)), 3, id="mlp"),
        pytest.param("LeNet-5", lambda: zoo.lenet(), 2, id="lenet"),
    ],
)
def test_gamf_beats_averaging(name: str, factory: Callable[[], nn.Module], epochs: int, mnist: tuple) -> None:
    if "gamf" not in gamfsolve.METHODS:
        pytest.skip("gamf not registered")
    acc = _compare(name, factory, mnist, epochs)
    assert acc["gamf"] > acc["average"] + 5.0
    assert acc["gamf"] >= acc["ot"] - 1.0  # one point of slack: 2,000 test images, pairs differ by several points


def test_resnet20_bn_reset(mnist: tuple) -> None:
    x, y, xt, yt = mnist
    factory = lambda: zoo.resnet20(in_channels=1)  # noqa: E731
    # recalibrated endpoints: BN statistics that match each model's final weights
    models = [gt.reset_bn_stats(train(factory, x[:4000], y[:4000], seed=s, epochs=1), x[:1000].split(100))
              for s in (1, 2)]
    fused = gt.fuse_modules(models, xt[:4], method="weight_matching", seed=0)
    reset = gt.reset_bn_stats(fused, x[:1000].split(100), n_batches=10)
    acc = {"model0": accuracy(models[0], xt, yt), "model1": accuracy(models[1], xt, yt),
           "fused": accuracy(fused, xt, yt), "fused+bn reset": accuracy(reset, xt, yt)}
    print("\nResNet-20 (BN) weight matching, MNIST accuracy (%): " + ", ".join(f"{k} {v:.1f}" for k, v in acc.items()))
    assert acc["fused+bn reset"] > acc["fused"]
