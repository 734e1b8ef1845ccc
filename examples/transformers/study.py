"""The transformer fusion study: two parents from different inits, fused by each method, scored.

One cell is one (task, seed): two models built from seeds ``100 * seed`` and ``100 * seed + 1``
and trained on the same data with their own batch order; each method's one-shot fusion, the
fusion after the LayerNorm statistics correction (:mod:`correction`), and the fusion after the
same finetuning budget for every method. Scores are those of :mod:`tasks` (accuracy % for a
ViT, bits per character for a GPT).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import correction
import numpy as np
import tasks
import torch
from gamfsolve.adapters import torch as gt
from torch import nn

import gamfsolve

__all__ = ["METHODS", "Budget", "coverage", "fuse", "run_cell"]

METHODS = ("average", "ot", "weight_matching", "gamf")


@dataclass(frozen=True)
class Budget:
    """Training sizes of one task: parents' steps, finetune steps, batch, learning rate, correction batches."""

    steps: int
    finetune_steps: int
    batch: int
    lr: float
    finetune_lr: float
    correction_batches: int = 8


def coverage(model: nn.Module, spec: gamfsolve.PermutationSpec, logits: str) -> float:
    """Share of the Linear / Conv1D output units (the logits layer left out) that some group permutes."""
    permuted = total = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if name == logits or weight is None or weight.ndim != 2:
            continue
        axis = 1 if type(module).__name__ == "Conv1D" else 0 if isinstance(module, nn.Linear) else None
        if axis is None:
            continue
        entry = spec.axes[f"{name}.weight"][axis]
        total += weight.shape[axis]
        permuted += 0 if entry is None else weight.shape[axis]
    return permuted / total


def fuse(models: Sequence[nn.Module], spec: gamfsolve.PermutationSpec, method: str,
         seed: int) -> tuple[nn.Module, list[nn.Module], float]:
    """The fused model, the parents put into its unit order, and the matching time (s)."""
    arrays = [gt.to_arrays(m) for m in models]
    result = gamfsolve.match(arrays, spec, method=method, seed=seed)
    fused = gt.from_arrays(models[0], gamfsolve.merge(arrays, spec, result))
    aligned = [gt.from_arrays(m, gamfsolve.permute(a, spec, result.model_perms(k)))
               for k, (m, a) in enumerate(zip(models, arrays, strict=True))]
    return fused, aligned, float(result.time)


def _correction_batches(task: tasks.Task, budget: Budget, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(10_000 + seed)
    context = task.test_x.shape[1] - 1 if task.kind == "gpt" else 0
    return [tasks.batch(task, rng, budget.batch, context)[0] for _ in range(budget.correction_batches)]


def _parents(task: tasks.Task, budget: Budget, seed: int, log: Any, cache: Path | None) -> list[nn.Module]:
    """The two trained parents; loaded from ``cache`` when a run with the same sizes saved them there."""
    models = []
    for k in range(2):
        start = perf_counter()
        model = tasks.build(task, 100 * seed + k)
        key = f"{task.name}-{budget.steps}-{task.hidden}-{task.init_std}-{seed}-{k}.pt"
        path = None if cache is None else cache / key
        if path is not None and path.is_file():
            model.load_state_dict(torch.load(path))
        else:
            tasks.train(task, model, budget.steps, lr=budget.lr, batch_size=budget.batch, seed=100 * seed + k,
                        warmup=budget.steps // 10)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), path)
        models.append(model)
        log(f"  parent {k}: {tasks.score(task, model):.3f} ({perf_counter() - start:.0f} s)")
    return models


def run_cell(task: tasks.Task, budget: Budget, seed: int, methods: Sequence[str] = METHODS,
             log: Any = print, cache: Path | None = None) -> dict[str, Any]:
    """One (task, seed) cell as a JSON-ready record; trained parents are kept in ``cache`` if given."""
    start = perf_counter()
    models = _parents(task, budget, seed, log, cache)
    x = tasks.example_inputs(task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = gt.spec_from_module(models[0], x)
    logits = "classifier" if task.kind == "vit" else "lm_head"
    record: dict[str, Any] = {
        "task": task.name, "kind": task.kind, "seed": seed,
        "parents": [tasks.score(task, m) for m in models],
        "ensemble": tasks.ensemble_score(task, models),
        "coverage": coverage(models[0], spec, logits),
        "adapter_warnings": [str(w.message) for w in caught if issubclass(w.category, UserWarning)],
        "methods": {},
    }
    batches = _correction_batches(task, budget, seed)
    for method in methods:
        fused, aligned, seconds = fuse(models, spec, method, seed)
        row = {"one_shot": tasks.score(task, fused),
               "corrected": tasks.score(task, correction.correct(fused, aligned, batches))}
        if task.kind == "vit":  # the adapter's REPAIR corrects nn.Linear outputs; GPT-2 has Conv1D
            row["repair"] = tasks.score(task, gt.repair(fused, aligned, torch.cat(batches)))
        row["time"] = seconds
        tasks.train(task, fused, budget.finetune_steps, lr=budget.finetune_lr, batch_size=budget.batch,
                    seed=7 + seed, warmup=budget.finetune_steps // 10)
        row["finetuned"] = tasks.score(task, fused)
        record["methods"][method] = row
        log(f"  {method}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    record["seconds"] = perf_counter() - start
    return record
