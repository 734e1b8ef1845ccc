"""How gamf's defaults were chosen: one-shot fused accuracy of solver variants on trained models.

Trains the ensemble protocol's models (examples/ensemble) for a few cells and seeds, fuses
them with each gamf variant and the baselines, and writes ``examples/defaults/RESULTS.md``:
mean one-shot accuracy per variant and cell, and the time per fusion.

    python examples/defaults/study.py [--seeds 0,1] [--quick]
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

CELLS = [("mlp", 2, "homog"), ("mlp", 4, "hetero"), ("lenet", 2, "homog")]
VARIANTS: dict[str, tuple[str, dict]] = {
    "average": ("average", {}),
    "ot": ("ot", {}),
    "weight_matching": ("weight_matching", {}),
    "gamf (default)": ("gamf", {}),
    "gamf balance=edge (paper's sum)": ("gamf", {"balance": "edge"}),
    "gamf affinity=node": ("gamf", {"affinity": "node"}),
    "gamf sigma_scale=0.5": ("gamf", {"sigma_scale": 0.5}),
    "gamf sigma_scale=2": ("gamf", {"sigma_scale": 2.0}),
    "gamf gamma=0.5": ("gamf", {"gamma": 0.5}),
    "gamf init=weight_matching": ("gamf", {"init": "weight_matching"}),
    "gamf init=random (paper)": ("gamf", {"init": "random"}),
    "gamf init=uniform": ("gamf", {"init": "uniform"}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "RESULTS.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    proto = ep.Protocol(seeds=tuple(int(s) for s in args.seeds.split(",")), epochs=args.epochs)
    train, test = ep.load_data(proto)
    acc: dict[tuple, dict[str, list[float]]] = {}
    times: dict[str, list[float]] = {}
    for arch, n, part in CELLS:
        spec = _demo.spec_for(arch, train.x.shape[1], bias=proto.bias)
        for seed in proto.seeds:
            models, _ = ep.train_models(proto, train, arch, n, part, seed)
            arrays = [_demo.to_arrays(m) for m in models]
            for name, (method, options) in VARIANTS.items():
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", gamfsolve.ConvergenceWarning)
                    fused = gamfsolve.fuse(arrays, spec, method=method, seed=seed, **options)
                times.setdefault(name, []).append(time.perf_counter() - start)
                value = _demo.accuracy(_demo.from_arrays(models[0], fused), test.x, test.y)
                acc.setdefault((arch, n, part), {}).setdefault(name, []).append(value)
                print(json.dumps({"cell": [arch, n, part], "seed": seed, "variant": name, "acc": value}), flush=True)
    lines = [
        "# How gamf's defaults were chosen",
        "",
        f"Command: `python examples/defaults/study.py --seeds {args.seeds} --epochs {args.epochs}` "
        f"({train.name}, {len(train.y)} train / {len(test.y)} held out, bias-free 784-256-256-10 MLPs and "
        "LeNets from the ensemble protocol). One-shot accuracy (%) of the fused model, mean over seeds.",
        "",
        "| variant | " + " | ".join(f"{a} N={n} {p}" for a, n, p in CELLS) + " | mean time (s) |",
        "|---|" + "---|" * (len(CELLS) + 1),
    ]
    for name in VARIANTS:
        cells = " | ".join(f"{np.mean(acc[c][name]):.1f}" for c in CELLS)
        lines.append(f"| {name} | {cells} | {np.mean(times[name]):.1f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
