"""Run the compact-ensemble protocol and write RESULTS.md, the results files and the figures.

python examples/ensemble/run.py                           # MNIST, full protocol (about 20 min on 2 cores)
python examples/ensemble/run.py --quick                   # MNIST: one seed, MLP only, N = 2 (about a minute)
python examples/ensemble/run.py --dataset fashion-mnist   # every Fashion-MNIST part, one after the other
python examples/ensemble/run.py --dataset fashion-mnist --part bn-wide --resume   # one part, resumed

Each run writes its records (MNIST: results.json; Fashion-MNIST part P: results-fashion-mnist-P.json)
after every cell and rewrites RESULTS.md from every results file in the output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from time import perf_counter, process_time

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ensemble_models as em
import ensemble_protocol as ep
import ensemble_report as er

import gamfsolve
from gamfsolve import datasets

QUICK_FASHION = ep.Protocol(dataset="fashion-mnist", archs=("mlp", "resnet20"), pooled=("resnet20",), n_models=(2,),
                            seeds=(0,), n_train=256, n_test=200, epochs=1, repair_images=128)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default="mnist")
    p.add_argument("--part", action="append", choices=sorted(ep.FASHION_PARTS),
                   help="Fashion-MNIST part(s) to run (default: all, in turn); each has its own results file")
    p.add_argument("--data", metavar="DIR", help="data folder (default: gamfsolve.datasets search)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: this folder; --quick: ./ensemble-quick)")
    p.add_argument("--seeds", type=int,
                   help="number of seeds (MNIST default 10: LeNet pairs are heavy-tailed; Fashion-MNIST: per part)")
    p.add_argument("--epochs", type=int, help="training epochs per model (MNIST default 10; Fashion-MNIST: per part)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="finetuning epochs on the union (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 2 thrashed on shared cores)")
    p.add_argument("--quick", action="store_true", help="one seed, N = 2, small: a smoke run")
    p.add_argument("--resume", action="store_true", help="keep the cells already in the results file, run the rest")
    p.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md and figures from the results files")
    return p


def _protocols(args: argparse.Namespace, methods: tuple[str, ...]) -> dict[str, ep.Protocol]:
    """Results-file stem -> protocol, for the runs the arguments ask for."""
    if args.dataset == "mnist":
        base = {"results": ep.Protocol(seeds=tuple(range(10)), epochs=10)}
        if args.quick:
            base = {"results": ep.Protocol(seeds=(0,), epochs=10, archs=("mlp",), n_models=(2,))}
    elif args.quick:
        base = {"results-fashion-mnist-quick": QUICK_FASHION}
    else:
        base = {f"results-fashion-mnist-{p}": ep.FASHION_PARTS[p] for p in (args.part or ep.FASHION_PARTS)}
    changes: dict = {"methods": methods, "finetune_epochs": args.finetune_epochs}
    if args.seeds is not None:
        changes["seeds"] = tuple(range(args.seeds))
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    return {stem: dataclasses.replace(proto, **changes) for stem, proto in base.items()}


def _runs(out: Path) -> list[tuple[str, dict]]:
    """Every results file in ``out``: MNIST's first, then Fashion-MNIST's parts in protocol order."""
    files = ([out / "results.json"] if (out / "results.json").is_file() else [])
    order = [f"results-fashion-mnist-{p}" for p in ep.FASHION_PARTS]
    files += sorted(out.glob("results-fashion-mnist-*.json"),
                    key=lambda f: (order.index(f.stem) if f.stem in order else len(order), f.stem))
    return [(f.stem, json.loads(f.read_text())) for f in files]


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: parts run side by side read each other's files."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write(out: Path, stem: str, saved: dict, methods: tuple[str, ...]) -> None:
    """Save one run's records, then rewrite RESULTS.md and the figures from every results file."""
    _replace(out / f"{stem}.json", json.dumps(saved, indent=1))
    _report(out, methods, saved["meta"]["dataset_name"])


def _report(out: Path, methods: tuple[str, ...], only: str | None = None) -> None:
    """RESULTS.md from every results file, and the figures of dataset ``only`` (default: all)."""
    runs = _runs(out)
    _replace(out / "RESULTS.md", er.markdown_all([(s["records"], s["meta"]) for _, s in runs], methods))
    for dataset in dict.fromkeys(s["meta"].get("dataset_name", "mnist") for _, s in runs):
        if only is not None and dataset != only:
            continue
        group = [s for _, s in runs if s["meta"].get("dataset_name", "mnist") == dataset]
        suffix = "" if dataset == "mnist" else f"-{dataset}"
        curves = {k: v for s in group for k, v in s["interpolation"].items()}
        if curves:
            er.interpolation_figure(out / f"interpolation{suffix}.png", curves)
        er.summary_figure(out / f"summary{suffix}.png", [r for s in group for r in s["records"]], methods)


def _meta(proto: ep.Protocol, train: datasets.Dataset, test: datasets.Dataset, threads: int, minutes: float) -> dict:
    return {
        "dataset": train.name,
        "dataset_name": proto.dataset,
        "n_train": len(train.y),
        "n_test": len(test.y),
        "alpha": proto.alpha,
        "epochs": proto.epochs,
        "finetune_epochs": proto.finetune_epochs,
        "repair_images": proto.repair_images,
        "lr": proto.lr,
        "batch_size": proto.batch_size,
        "seeds": list(proto.seeds),
        "threads": threads,
        "total_minutes": minutes,
        "cells": len(list(ep.iter_configs(proto))),
        "archs": {a: em.describe(a, ep.side(proto, a, train), proto.width) for a in proto.archs},
    }


def run(out: Path, stem: str, proto: ep.Protocol, args: argparse.Namespace) -> float:
    """Run (or resume) one protocol into ``out/stem.json``; returns its total minutes."""
    start, cpu_start = perf_counter(), process_time()
    train, test = ep.load_data(proto, args.data)
    saved = {"records": [], "interpolation": {}, "meta": {"total_minutes": 0.0}}
    if args.resume and (out / f"{stem}.json").is_file():
        saved = json.loads((out / f"{stem}.json").read_text())
    before, cpu_before = saved["meta"]["total_minutes"], saved["meta"].get("cpu_minutes", 0.0)
    loads = saved["meta"].get("load_averages", [])
    done = {(r["arch"], r["n_models"], r["partition"], r["seed"]) for r in saved["records"]}
    todo = [c for c in ep.iter_configs(proto) if c not in done]
    saved["meta"] = _meta(proto, train, test, args.threads, before) | {
        "part": stem.removeprefix("results-fashion-mnist-"), "cpu_minutes": cpu_before, "load_averages": loads}
    if not todo:
        _write(out, stem, saved, proto.methods)
    for arch, n, part, seed in tqdm(todo, desc=stem, unit="cell", file=sys.stderr):
        cell = ep.run_config(proto, train, test, arch, n, part, seed)
        saved["records"].append(cell.record)
        if n == 2 and seed == proto.seeds[0] and arch not in em.BN_ARCHS:
            spec = em.spec_for(arch, ep.side(proto, arch, train), bias=proto.bias)
            view = datasets.Dataset(ep.images(proto, arch, test.x), test.y, test.name)
            saved["interpolation"][f"{arch}, {part}, N=2"] = ep.interpolate(cell.models, spec, cell.results, view)
        # write everything after every cell: an interrupted run leaves its numbers (see --resume)
        saved["meta"]["total_minutes"] = before + (perf_counter() - start) / 60
        saved["meta"]["cpu_minutes"] = cpu_before + (process_time() - cpu_start) / 60
        loads.append(round(os.getloadavg()[0], 2))  # the machine's 1-minute load after each cell
        _write(out, stem, saved, proto.methods)
    return float(saved["meta"]["total_minutes"])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or ("ensemble-quick" if args.quick else Path(__file__).resolve().parent))
    out.mkdir(parents=True, exist_ok=True)
    methods = tuple(m for m in ep.METHODS if m in gamfsolve.METHODS)
    missing = [m for m in ep.METHODS if m not in methods]
    if missing:
        print(f"note: method(s) {missing} not registered in this gamfsolve; skipped", file=sys.stderr)
    if args.report_only:
        _report(out, methods)
        print((out / "RESULTS.md").read_text())
        return 0
    for stem, proto in _protocols(args, methods).items():
        minutes = run(out, stem, proto, args)
        print(f"{stem}: {minutes:.1f} min in all", file=sys.stderr)
    print((out / "RESULTS.md").read_text())
    print(f"wrote {out}/RESULTS.md, the results files and figures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
