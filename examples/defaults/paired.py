"""Paired one-shot accuracy of gamf option variants against the defaults, on the ensemble
protocol's trained models (MNIST; N = 2 and 4): one JSON line per cell and seed, then a summary of
the mean difference of each variant from the first, with its standard error, and the time ratio.

    python examples/defaults/paired.py --seeds 0-11 '{}' '{"max_sweeps": 3, "gamma": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ensemble"))
import ensemble_protocol as ep
from gamfsolve.adapters import _demo

import gamfsolve

CELLS = [("mlp", 2, "hetero"), ("lenet", 2, "homog"), ("lenet", 2, "hetero"), ("lenet", 4, "homog")]


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(t) for t in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(t) for t in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", help="gamf options as JSON objects; the first is the reference")
    parser.add_argument("--seeds", default="0-11", help="data seeds: 0-11 or 0,1,2")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    variants = [json.loads(v) for v in args.variants]
    torch.set_num_threads(1)
    proto = ep.Protocol(seeds=tuple(_seeds(args.seeds)), epochs=args.epochs)
    train, test = ep.load_data(proto)
    rows = []
    for arch, n, part in CELLS:
        spec = _demo.spec_for(arch, train.x.shape[1], bias=proto.bias)
        for seed in proto.seeds:
            models, _ = ep.train_models(proto, train, arch, n, part, seed)
            arrays = [_demo.to_arrays(m) for m in models]
            row: dict = {"cell": f"{arch} N = {n} {part}", "seed": seed, "acc": [], "cpu_s": [], "n_iter": []}
            for options in variants:
                start = time.process_time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", gamfsolve.ConvergenceWarning)
                    result = gamfsolve.match(arrays, spec, method="gamf", seed=seed, **options)
                row["cpu_s"].append(time.process_time() - start)
                row["n_iter"].append(result.n_iter)
                fused = gamfsolve.merge(arrays, spec, result)
                row["acc"].append(_demo.accuracy(_demo.from_arrays(models[0], fused), test.x, test.y))
            rows.append(row)
            print(json.dumps(row), flush=True)
    for cell in dict.fromkeys(r["cell"] for r in rows):
        cell_rows = [r for r in rows if r["cell"] == cell]
        acc = np.array([r["acc"] for r in cell_rows])
        cpu = np.array([r["cpu_s"] for r in cell_rows]).mean(axis=0)
        for i in range(1, len(variants)):
            d = acc[:, i] - acc[:, 0]
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            print(f"{cell}: {json.dumps(variants[i])} {d.mean():+.2f} +- {se:.2f} points over {len(d)} seeds, "
                  f"CPU time x{cpu[i] / cpu[0]:.2f}")


if __name__ == "__main__":
    main()
