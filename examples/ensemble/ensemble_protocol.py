"""The compact-ensemble protocol of the GAMF paper (Liu et al. 2022, Sec. 5.1): MNIST, Fashion-MNIST.

N models of one architecture are trained from different initialisations on shares of one
fixed training set (equal random shares, or Dirichlet(alpha) label-skewed shares), then
fused into one model of the same size by each method. Reported on a fixed held-out set:
each individual model, their prediction ensemble (N x size), and every fused model one-shot
after REPAIR (Jordan et al. 2022: each hidden channel's activation statistics restored to the
aligned sources' average, measured on ``repair_images`` training images; no gradient step), and
after the same finetuning budget (``finetune_epochs`` on the union of the shares). REPAIR and
finetuning use training data only and are applied to every method alike. For BatchNorm networks
REPAIR is the BN reset (running statistics recomputed on the same images) plus REPAIR of any
hidden layer that no BatchNorm follows (``gamfsolve.adapters.torch.repair``).

Fashion-MNIST runs as named parts (:data:`FASHION_PARTS`), each a :class:`Protocol` sized to
run within an hour on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ensemble_models as em
import numpy as np
import torch
from gamfsolve.adapters import _demo
from gamfsolve.adapters import torch as gtorch
from torch import nn

import gamfsolve
from gamfsolve import datasets

__all__ = ["FASHION_PARTS", "METHODS", "Cell", "Protocol", "interpolate", "iter_configs", "load_data", "run_config"]

METHODS = ("average", "ot", "weight_matching", "gamf")


@dataclass(frozen=True)
class Protocol:
    """Everything that defines a run; the defaults are the full MNIST protocol.

    ``dataset`` is "mnist" (``n_train`` + ``n_test`` of its 10,000 images) or "fashion-mnist"
    (``n_train`` of its 60,000 training images, ``n_test`` of its 10,000 test images, each a fixed
    random subset). Architectures in ``pooled`` read the images 2x2 mean-pooled (14x14).
    """

    dataset: str = "mnist"
    archs: tuple[str, ...] = ("mlp", "lenet")
    n_models: tuple[int, ...] = (2, 4)
    partitions: tuple[str, ...] = ("homog", "hetero")
    seeds: tuple[int, ...] = tuple(range(10))
    methods: tuple[str, ...] = METHODS
    n_train: int = 8000
    n_test: int = 2000
    split_seed: int = 0
    alpha: float = 0.5
    epochs: int = 10
    finetune_epochs: int = 1
    repair_images: int = 2000
    lr: float = 1e-3
    batch_size: int = 64
    bias: bool = False
    width: int = 256
    pooled: tuple[str, ...] = ()
    solver_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def _fashion(archs: tuple[str, ...], **sizes: Any) -> Protocol:
    return Protocol(dataset="fashion-mnist", archs=archs, **sizes)


FASHION_PARTS: dict[str, Protocol] = {
    "mlp-lenet": _fashion(("mlp", "lenet"), seeds=tuple(range(5)), epochs=5),
    "bn": _fashion(("resnet20", "vgg11"), pooled=("resnet20",), seeds=(0, 1, 2), epochs=8, n_train=5000,
                   n_test=1000, repair_images=500, batch_size=32),
    "bn-wide": _fashion(("resnet20x4",), pooled=("resnet20x4",), seeds=(0, 1, 2), epochs=7, n_train=1600,
                        n_test=500, repair_images=256, batch_size=32),
}
"""Fashion-MNIST, in parts that each run within an hour on one CPU thread (see README)."""


def load_data(proto: Protocol, path: str | None = None) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The fixed train / held-out split (MNIST, or the bundled digits when MNIST is absent; Fashion-MNIST)."""
    if proto.dataset == "fashion-mnist":
        train = datasets.load_fashion_mnist("train", path)
        test = datasets.load_fashion_mnist("test", path)
        return (train.split(proto.n_train, 0, seed=proto.split_seed)[0],
                test.split(proto.n_test, 0, seed=proto.split_seed)[0])
    if proto.dataset != "mnist":
        raise ValueError(f"dataset must be 'mnist' or 'fashion-mnist', got {proto.dataset!r}")
    ds = datasets.load_images(path)
    n_train = min(proto.n_train, int(0.8 * len(ds.y)))
    return ds.split(n_train, min(proto.n_test, len(ds.y) - n_train), seed=proto.split_seed)


def images(proto: Protocol, arch: str, x: np.ndarray) -> np.ndarray:
    """Images ``(N, H, W)`` as ``arch`` reads them: 2x2 mean-pooled if in ``proto.pooled``, its layout."""
    if arch in proto.pooled:
        n, h, w = x.shape
        x = x[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return em.inputs(arch, np.ascontiguousarray(x, dtype=np.float32))


def side(proto: Protocol, arch: str, data: datasets.Dataset) -> int:
    """The image side ``arch`` reads."""
    return data.x.shape[1] // 2 if arch in proto.pooled else data.x.shape[1]


def iter_configs(proto: Protocol) -> Iterator[tuple[str, int, str, int]]:
    """``(arch, n_models, partition, seed)`` for every cell, seed by seed, N = 2 before N = 4.

    Seed-major, so that a run cut short holds the first seeds of every cell.
    """
    for seed in proto.seeds:
        for n in proto.n_models:
            for arch in proto.archs:
                for part in proto.partitions:
                    yield arch, n, part, seed


def shares(y: np.ndarray, n: int, partition: str, *, alpha: float, seed: int) -> list[np.ndarray]:
    """Indices of each model's share: equal random shares or Dirichlet(alpha) label skew."""
    if partition == "homog":
        return datasets.equal_split(len(y), n, seed=seed)
    if partition == "hetero":
        return datasets.dirichlet_split(y, n, alpha, seed=seed)
    raise ValueError(f"partition must be 'homog' or 'hetero', got {partition!r}")


def train_models(
    proto: Protocol, train: datasets.Dataset, arch: str, n: int, partition: str, seed: int
) -> tuple[list[nn.Module], list[int]]:
    """Train ``n`` models, model k from init seed ``100 * seed + k`` on share k; and share sizes."""
    parts = shares(train.y, n, partition, alpha=proto.alpha, seed=seed)
    x = images(proto, arch, train.x)
    models = []
    for k, idx in enumerate(parts):
        model = em.build(arch, side(proto, arch, train), train.n_classes, bias=proto.bias, seed=100 * seed + k,
                         width=proto.width)
        models.append(_demo.train(model, x[idx], train.y[idx], epochs=proto.epochs, lr=proto.lr,
                                  batch_size=proto.batch_size, seed=100 * seed + k))
    return models, [len(p) for p in parts]


def _fuse(
    proto: Protocol, method: str, models: Sequence[nn.Module], spec: gamfsolve.PermutationSpec, seed: int
) -> tuple[nn.Module, gamfsolve.MatchResult]:
    arrays = [em.to_arrays(m) for m in models]
    result = gamfsolve.match(arrays, spec, method=method, seed=seed, **proto.solver_options.get(method, {}))
    return em.from_arrays(models[0], gamfsolve.merge(arrays, spec, result)), result


def _repaired(
    fused: nn.Module, models: Sequence[nn.Module], spec: gamfsolve.PermutationSpec,
    result: gamfsolve.MatchResult, images: np.ndarray,
) -> nn.Module:
    """REPAIR of ``fused`` against the sources put into its unit order by ``result``."""
    aligned = [
        em.from_arrays(m, gamfsolve.permute(em.to_arrays(m), spec, result.model_perms(k)))
        for k, m in enumerate(models)
    ]
    return gtorch.repair(fused, aligned, torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))


@dataclass
class Cell:
    """One protocol cell's outcome: the JSON-ready record, the trained models, each method's match."""

    record: dict[str, Any]
    models: list[nn.Module]
    results: dict[str, gamfsolve.MatchResult]


def run_config(
    proto: Protocol,
    train: datasets.Dataset,
    test: datasets.Dataset,
    arch: str,
    n: int,
    partition: str,
    seed: int,
) -> Cell:
    """One protocol cell: every accuracy (%) one-shot, repaired and finetuned, and each method's time."""
    models, sizes = train_models(proto, train, arch, n, partition, seed)
    spec = em.spec_for(arch, side(proto, arch, train), bias=proto.bias)
    x_train, x_test = images(proto, arch, train.x), images(proto, arch, test.x)
    record: dict[str, Any] = {
        "arch": arch,
        "n_models": n,
        "partition": partition,
        "seed": seed,
        "share_sizes": sizes,
        "individual": [_demo.accuracy(m, x_test, test.y) for m in models],
        "ensemble": _demo.ensemble_accuracy(models, x_test, test.y),
        "methods": {},
    }
    results = {}
    for method in proto.methods:
        fused, results[method] = _fuse(proto, method, models, spec, seed)
        result = results[method]
        one_shot = _demo.accuracy(fused, x_test, test.y)
        repaired = _repaired(fused, models, spec, result, x_train[: proto.repair_images])
        _demo.train(fused, x_train, train.y, epochs=proto.finetune_epochs, lr=proto.lr, batch_size=proto.batch_size,
                    seed=seed + 7)
        record["methods"][method] = {
            "one_shot": one_shot,
            "repaired": _demo.accuracy(repaired, x_test, test.y),
            "finetuned": _demo.accuracy(fused, x_test, test.y),
            "time": result.time,
            "n_iter": result.n_iter,
            "converged": bool(result.converged),
        }
    return Cell(record, models, results)


def interpolate(
    models: Sequence[nn.Module],
    spec: gamfsolve.PermutationSpec,
    results: dict[str, gamfsolve.MatchResult],
    test: datasets.Dataset,
    *,
    steps: int = 11,
) -> dict[str, Any]:
    """Accuracy of ``(1-s) * aligned A + s * B`` over ``s`` in [0, 1] for each method's match.

    ``merge`` with weights ``(1-s, s)`` puts both models into the matched common order, which
    is a function-preserving relabelling of each, so it traces the straight path from the
    aligned A to the (relabelled) B.
    """
    a, b = models
    arrays = [em.to_arrays(a), em.to_arrays(b)]
    s_values = np.linspace(0.0, 1.0, steps)
    curves: dict[str, list[float]] = {}
    with torch.no_grad():
        for method, result in results.items():
            mixed = (gamfsolve.merge(arrays, spec, result, weights=[1 - s, s]) for s in s_values)
            curves[method] = [_demo.accuracy(em.from_arrays(a, m), test.x, test.y) for m in mixed]
    return {
        "s": s_values.tolist(),
        "curves": curves,
        "model_a": _demo.accuracy(a, test.x, test.y),
        "model_b": _demo.accuracy(b, test.x, test.y),
        "ensemble": _demo.ensemble_accuracy(models, test.x, test.y),
    }
