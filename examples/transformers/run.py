"""Fuse pairs of small Hugging Face transformers (ViT, GPT-2) by each method; write RESULTS.md and a figure.

python examples/transformers/run.py            # 3 seeds x (MNIST ViT, Fashion-MNIST ViT, stdlib GPT-2)
python examples/transformers/run.py --quick    # tiny models, a few steps, one seed: a smoke run
python examples/transformers/run.py --resume   # keep the cells in OUT/results.json, run the rest
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from time import perf_counter, strftime
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
import study
import tasks

import gamfsolve
from gamfsolve import datasets

# (task size, budget) per task; the full protocol, then --quick
FULL: dict[str, tuple[dict[str, Any], study.Budget]] = {
    "mnist": ({"n_train": 8000, "n_test": 2000, "hidden": 64, "layers": 2, "heads": 4, "init_std": 0.1},
              study.Budget(steps=500, finetune_steps=100, batch=64, lr=2e-3, finetune_lr=5e-4)),
    "fashion-mnist": ({"n_train": 8000, "n_test": 2000, "hidden": 64, "layers": 2, "heads": 4, "init_std": 0.1},
                      study.Budget(steps=500, finetune_steps=100, batch=64, lr=2e-3, finetune_lr=5e-4)),
    "stdlib": ({"context": 64, "n_test": 400, "hidden": 64, "layers": 2, "heads": 4, "init_std": 0.1},
               study.Budget(steps=600, finetune_steps=100, batch=32, lr=3e-3, finetune_lr=1e-3)),
}
QUICK: dict[str, tuple[dict[str, Any], study.Budget]] = {
    "mnist": ({"n_train": 256, "n_test": 128, "hidden": 16, "layers": 1, "heads": 2, "init_std": 0.1},
              study.Budget(steps=8, finetune_steps=2, batch=32, lr=2e-3, finetune_lr=5e-4, correction_batches=2)),
    "fashion-mnist": ({"n_train": 256, "n_test": 128, "hidden": 16, "layers": 1, "heads": 2, "init_std": 0.1},
                      study.Budget(steps=8, finetune_steps=2, batch=32, lr=2e-3, finetune_lr=5e-4,
                                   correction_batches=2)),
    "stdlib": ({"context": 16, "n_test": 32, "hidden": 16, "layers": 1, "heads": 2, "init_std": 0.1,
                "max_bytes": 20_000},
               study.Budget(steps=8, finetune_steps=2, batch=8, lr=3e-3, finetune_lr=1e-3, correction_batches=2)),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", metavar="DIR", help="output folder (default: this folder; --quick: ./transformers-quick)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per task (default 3)")
    p.add_argument("--tasks", nargs="+", choices=list(FULL), default=list(FULL), help="tasks to run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny models, a few steps, one seed")
    p.add_argument("--resume", action="store_true", help="keep the cells already in OUT/results.json")
    p.add_argument("--methods", nargs="+", choices=study.METHODS, default=list(study.METHODS), help="methods")
    p.add_argument("--init-std", type=float, help="std of the initial weights (default 0.1; Hugging Face's own: 0.02)")
    p.add_argument("--cache", metavar="DIR", help="keep trained parents here and reuse them (default: none)")
    p.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md and the figure from results.json")
    return p


def load_task(name: str, size: dict[str, Any]) -> tasks.Task | None:
    """The task's data, or None when its files are absent (Fashion-MNIST is an optional package)."""
    if name == "stdlib":
        return tasks.load_corpus(**size)
    if name == "fashion-mnist" and datasets.fashion_mnist_dir() is None:
        return None
    return tasks.load_images(name, **size)


def _log(text: str) -> None:
    print(f"[{strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _write(out: Path, records: list[dict], meta: dict, methods: tuple[str, ...], notes: list[str]) -> None:
    (out / "results.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    (out / "RESULTS.md").write_text(report.markdown(records, meta, methods, notes))
    if records:
        report.figure(out / "transformers.png", records, methods)


def _notes(folder: Path) -> list[str]:
    """The hand-written notes appended to RESULTS.md (NOTES.md next to this file, if present)."""
    path = folder / "NOTES.md"
    return path.read_text().splitlines() if path.is_file() else []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    start = perf_counter()
    here = Path(__file__).resolve().parent
    out = Path(args.out or ("transformers-quick" if args.quick else here))
    out.mkdir(parents=True, exist_ok=True)
    methods = tuple(m for m in args.methods if m in gamfsolve.METHODS)
    saved = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None
    if args.report_only:
        if saved is None:
            raise SystemExit(f"no {out}/results.json to report")
        _write(out, saved["records"], saved["meta"], methods, _notes(here))
        return 0
    records: list[dict] = saved["records"] if args.resume and saved else []
    minutes_before = saved["meta"]["total_minutes"] if args.resume and saved else 0.0
    seeds = list(range(1 if args.quick else args.seeds))
    sizes = QUICK if args.quick else FULL
    override = {} if args.init_std is None else {"init_std": args.init_std}
    loaded = {name: load_task(name, {**sizes[name][0], **override}) for name in args.tasks}
    for name, task in loaded.items():
        if task is None:
            _log(f"{name}: data absent, skipped")
    todo = [(n, s) for n, t in loaded.items() if t is not None for s in seeds]
    meta = {"seeds": seeds, "threads": args.threads, "total_minutes": minutes_before, "cells": len(todo),
            "command": "python examples/transformers/run.py" + (" --quick" if args.quick else "")
            + (f" --cache {args.cache}" if args.cache else ""),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tasks": {n: _task_meta(t, sizes[n][1]) for n, t in loaded.items() if t is not None}}
    done = {(r["task"], r["seed"]) for r in records}
    for k, (name, seed) in enumerate(todo):
        if (name, seed) in done:
            continue
        _log(f"cell {k + 1}/{len(todo)}: {name}, seed {seed}")
        task = loaded[name]
        assert task is not None
        cache = Path(args.cache) if args.cache else None
        records.append(study.run_cell(task, sizes[name][1], seed, methods, log=_log, cache=cache))
        meta["total_minutes"] = minutes_before + (perf_counter() - start) / 60
        _write(out, records, meta, methods, _notes(here))  # after every cell: --resume continues from here
    if not any((n, s) not in done for n, s in todo):  # nothing ran: the report is still rewritten
        _write(out, records, meta, methods, _notes(here))
    _log(f"wrote {out}/RESULTS.md, results.json, transformers.png ({meta['total_minutes']:.1f} min)")
    return 0


def _task_meta(task: tasks.Task, budget: study.Budget) -> dict[str, Any]:
    size = {"model": f"{task.layers} layers, width {task.hidden}, {task.heads} heads, initial weights' std "
                     f"{task.init_std}"}
    train = {"training": f"{budget.steps} AdamW steps of batch {budget.batch} (lr {budget.lr}, cosine)",
             "finetune": f"{budget.finetune_steps} steps (lr {budget.finetune_lr}) for every method",
             "correction data": f"{budget.correction_batches} training batches"}
    return {**dict(task.info), **size, **train}


if __name__ == "__main__":
    sys.exit(main())
