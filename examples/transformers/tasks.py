"""The two tasks of the transformer study: data, Hugging Face models (random init), training, scores.

- ``vit``: ``transformers.ViTForImageClassification`` on 28 x 28 images (MNIST or
  Fashion-MNIST), patches of 7 x 7; scored by held-out accuracy (%), higher is better.
- ``gpt``: ``transformers.GPT2LMHeadModel`` on bytes (vocabulary 256) of the Python standard
  library's own top-level ``.py`` files; scored by held-out bits per character, lower is better.

Nothing is downloaded: the configs are built here and the weights drawn from a seed.
"""

from __future__ import annotations

import platform
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn

from gamfsolve import datasets

__all__ = [
    "Task",
    "build",
    "ensemble_score",
    "example_inputs",
    "load_corpus",
    "load_images",
    "score",
    "train",
]

transformers.logging.set_verbosity_error()


@dataclass(frozen=True)
class Task:
    """One dataset and model size. ``x`` / ``y``: images and labels, or token windows (``y`` None)."""

    name: str  # "mnist", "fashion-mnist" or "stdlib"
    kind: str  # "vit" or "gpt"
    train_x: np.ndarray
    train_y: np.ndarray | None
    test_x: np.ndarray
    test_y: np.ndarray | None
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    init_std: float = 0.02  # std of the Linear / embedding weights at initialisation (HF's initializer_range)
    info: tuple[tuple[str, Any], ...] = ()


def load_images(name: str, n_train: int, n_test: int, *, seed: int = 0, **size: int) -> Task:
    """MNIST's test set split ``n_train`` / ``n_test`` (as examples/ensemble does), or Fashion-MNIST's
    own train and test sets subsampled to those sizes; images ``(n, 28, 28)`` in [0, 1]."""
    if name == "mnist":
        train, test = datasets.load_mnist().split(n_train, n_test, seed=seed)
    elif name == "fashion-mnist":
        rng = np.random.default_rng(seed)
        full, held = datasets.load_fashion_mnist("train"), datasets.load_fashion_mnist("test")
        train = full.subset(np.sort(rng.permutation(len(full.y))[:n_train]))
        test = held.subset(np.sort(rng.permutation(len(held.y))[:n_test]))
    else:
        raise ValueError(f"unknown image dataset {name!r}")
    info = (("train images", len(train.y)), ("held-out images", len(test.y)), ("source", train.name))
    return Task(name, "vit", train.x, train.y, test.x, test.y, info=info, **size)


def stdlib_files() -> list[Path]:
    """The standard library's top-level ``.py`` files, sorted by name (every machine has them)."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def load_corpus(context: int, n_test: int, *, holdout_every: int = 10, max_bytes: int | None = None,
                **size: int) -> Task:
    """Bytes of the stdlib's ``.py`` files: every ``holdout_every``-th file (sorted order) held out.

    Training data is the concatenation of the other files (``max_bytes`` of it at most), as one
    byte array ``(n,)``; the held-out set is ``n_test`` windows of ``context + 1`` bytes evenly
    spaced through the held-out files, ``(n_test, context + 1)``.
    """
    files = stdlib_files()
    held = [f for k, f in enumerate(files) if k % holdout_every == holdout_every - 1]
    kept = [f for k, f in enumerate(files) if k % holdout_every != holdout_every - 1]
    train = np.frombuffer(b"".join(f.read_bytes() for f in kept), dtype=np.uint8)
    if max_bytes is not None:
        train = train[:max_bytes]
    test_bytes = np.frombuffer(b"".join(f.read_bytes() for f in held), dtype=np.uint8)
    starts = np.linspace(0, len(test_bytes) - context - 1, n_test).astype(np.int64)
    test = np.stack([test_bytes[s: s + context + 1] for s in starts])
    info = (("python", platform.python_version()), ("stdlib files", f"{len(kept)} train, {len(held)} held out"),
            ("train bytes", len(train)), ("held-out bytes", len(test_bytes)),
            ("held-out windows", f"{n_test} x {context + 1}"))
    return Task("stdlib", "gpt", train, None, test, None, info=info, **size)


def build(task: Task, seed: int) -> nn.Module:
    """A freshly initialised Hugging Face model for ``task`` (weights drawn from ``seed``), eval mode."""
    torch.manual_seed(seed)
    if task.kind == "vit":
        vit = transformers.ViTConfig(
            image_size=28, patch_size=7, num_channels=1, hidden_size=task.hidden, num_hidden_layers=task.layers,
            num_attention_heads=task.heads, intermediate_size=2 * task.hidden, initializer_range=task.init_std)
        vit.num_labels = 10
        return transformers.ViTForImageClassification(vit).eval()
    context = task.test_x.shape[1] - 1
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=context, n_embd=task.hidden, n_layer=task.layers, n_head=task.heads,
        use_cache=False, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        initializer_range=task.init_std)
    return transformers.GPT2LMHeadModel(config).eval()


def example_inputs(task: Task) -> torch.Tensor:
    """Two examples of the model's input, for tracing."""
    if task.kind == "vit":
        return torch.from_numpy(task.test_x[:2]).float().unsqueeze(1)
    return torch.from_numpy(task.test_x[:2, :-1].astype(np.int64))


def batch(task: Task, rng: np.random.Generator, size: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A training mini-batch: images and labels, or token windows and their next tokens."""
    if task.kind == "vit":
        idx = rng.integers(0, len(task.train_x), size)
        assert task.train_y is not None
        return torch.from_numpy(task.train_x[idx]).float().unsqueeze(1), torch.from_numpy(task.train_y[idx])
    starts = rng.integers(0, len(task.train_x) - context - 1, size)
    win = torch.from_numpy(np.stack([task.train_x[s: s + context + 1] for s in starts]).astype(np.int64))
    return win[:, :-1], win[:, 1:]


def _loss(task: Task, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x).logits
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def train(task: Task, model: nn.Module, steps: int, *, lr: float, batch_size: int, seed: int,
          warmup: int = 0) -> nn.Module:
    """AdamW, ``steps`` mini-batches drawn with ``seed``; linear warm-up then cosine decay. In place."""
    rng = np.random.default_rng(seed)
    context = task.test_x.shape[1] - 1 if task.kind == "gpt" else 0
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    for _ in range(steps):
        x, y = batch(task, rng, batch_size, context)
        opt.zero_grad(set_to_none=True)
        _loss(task, model, x, y).backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def _probs(task: Task, models: Sequence[nn.Module], chunk: int = 500) -> torch.Tensor:
    """Mean predicted distribution of ``models`` on the held-out set: ``(n, classes)`` or ``(n, T, 256)``."""
    x = torch.from_numpy(task.test_x).float().unsqueeze(1) if task.kind == "vit" else \
        torch.from_numpy(task.test_x[:, :-1].astype(np.int64))
    total = None
    for model in models:
        model.eval()
        p = torch.cat([torch.softmax(model(b).logits.double(), -1) for b in x.split(chunk)])
        total = p if total is None else total + p
    assert total is not None
    return total / len(models)


def ensemble_score(task: Task, models: Sequence[nn.Module]) -> float:
    """Held-out accuracy (%) or bits per character of the models' mean predicted distribution."""
    p = _probs(task, models)
    if task.kind == "vit":
        return float(100.0 * (p.argmax(-1).numpy() == task.test_y).mean())
    target = torch.from_numpy(task.test_x[:, 1:].astype(np.int64))
    nll = -torch.log(p.gather(-1, target.unsqueeze(-1)).clamp_min(1e-300)).mean()
    return float(nll / np.log(2))


def score(task: Task, model: nn.Module) -> float:
    """Held-out accuracy (%) for a ViT, bits per character for a GPT."""
    return ensemble_score(task, [model])


def higher_is_better(kind: str) -> bool:
    """Whether a larger score is better for models of ``kind``."""
    return kind == "vit"
