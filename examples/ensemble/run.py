"""Run the compact-ensemble protocol and write RESULTS.md, results.json and the figures.

python examples/ensemble/run.py            # full protocol (about 15-20 min on 2 cores)
python examples/ensemble/run.py --quick    # one seed, MLP only, N = 2 (about a minute)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from time import perf_counter

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ensemble_protocol as ep
import ensemble_report as er
from gamfsolve.adapters import _demo

import gamfsolve


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="MNIST folder (default: gamfsolve.datasets search)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: this folder; --quick: ./ensemble-quick)")
    p.add_argument("--seeds", type=int, default=10,
                   help="number of seeds (default 10: LeNet pairs are heavy-tailed, 5 misrank methods a point apart)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per model (default 10)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="finetuning epochs on the union (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 2 thrashed on shared cores)")
    p.add_argument("--quick", action="store_true", help="MLP, N = 2, one seed: a smoke run")
    p.add_argument("--resume", action="store_true", help="keep the cells already in OUT/results.json, run the rest")
    p.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md and figures from OUT/results.json")
    return p


def _write(out: Path, records: list[dict], curves: dict, meta: dict, methods: tuple[str, ...]) -> None:
    (out / "results.json").write_text(json.dumps({"meta": meta, "records": records, "interpolation": curves}, indent=1))
    (out / "RESULTS.md").write_text(er.markdown(records, meta, methods))
    if curves:
        er.interpolation_figure(out / "interpolation.png", curves)
    er.summary_figure(out / "summary.png", records, methods)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    start = perf_counter()
    out = Path(args.out or ("ensemble-quick" if args.quick else Path(__file__).resolve().parent))
    out.mkdir(parents=True, exist_ok=True)
    methods = tuple(m for m in ep.METHODS if m in gamfsolve.METHODS)
    missing = [m for m in ep.METHODS if m not in methods]
    if missing:
        print(f"note: method(s) {missing} not registered in this gamfsolve; skipped", file=sys.stderr)
    proto = ep.Protocol(
        seeds=tuple(range(1 if args.quick else args.seeds)),
        methods=methods,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        **({"archs": ("mlp",), "n_models": (2,)} if args.quick else {}),
    )
    if args.report_only:
        saved = json.loads((out / "results.json").read_text())
        _write(out, saved["records"], saved["interpolation"], saved["meta"], methods)
        print((out / "RESULTS.md").read_text())
        return 0
    train, test = ep.load_data(proto, args.data)
    records: list[dict] = []
    curves: dict[str, dict] = {}
    minutes_before = 0.0
    if args.resume and (out / "results.json").is_file():
        saved = json.loads((out / "results.json").read_text())
        records, curves = saved["records"], saved["interpolation"]
        minutes_before = saved["meta"]["total_minutes"]
    done_keys = {(r["arch"], r["n_models"], r["partition"], r["seed"]) for r in records}
    configs = list(ep.iter_configs(proto))
    todo = [c for c in configs if c not in done_keys]
    meta = {
        "dataset": train.name,
        "n_train": len(train.y),
        "n_test": len(test.y),
        "alpha": proto.alpha,
        "epochs": proto.epochs,
        "finetune_epochs": proto.finetune_epochs,
        "repair_images": proto.repair_images,
        "lr": proto.lr,
        "seeds": list(proto.seeds),
        "threads": args.threads,
        "total_minutes": minutes_before,
        "cells": len(configs),
    }
    if not todo:
        _write(out, records, curves, meta, methods)
    for arch, n, part, seed in tqdm(todo, desc="ensemble protocol", unit="cell", file=sys.stderr):
        cell = ep.run_config(proto, train, test, arch, n, part, seed)
        records.append(cell.record)
        if n == 2 and seed == proto.seeds[0]:
            spec = _demo.spec_for(arch, train.x.shape[1], bias=proto.bias)
            curves[f"{arch}, {part}, N=2"] = ep.interpolate(cell.models, spec, cell.results, test)
        # write everything after every cell: an interrupted run leaves its numbers (see --resume)
        meta["total_minutes"] = minutes_before + (perf_counter() - start) / 60
        _write(out, records, curves, meta, methods)
    print((out / "RESULTS.md").read_text())
    print(f"wrote {out}/RESULTS.md, results.json, interpolation.png, summary.png in {meta['total_minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
