"""Re-fuse the study's parents with other gamf options and other weight-matching solver seeds.

python examples/transformers/variants.py --task mnist --cache examples/transformers/parents

Parents come from ``--cache`` (as ``run.py --cache`` left them) or are trained the same way.
Prints each variant's one-shot score, LayerNorm-corrected score, and the score with the correction
also folded into the feed-forward up-projections, per seed and their means.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import correction
import run
import study
import tasks
from gamfsolve.adapters import torch as gt

import gamfsolve

VARIANTS: list[tuple[str, dict]] = [
    ("gamf", {}), ("gamf", {"balance": "edge"}), ("gamf", {"balance": "sqrt"}),
    ("gamf", {"sigma_scale": 1.0}), ("gamf", {"sigma_scale": 300.0}),
    *(("weight_matching", {"seed": s}) for s in range(10, 15)),
]


def _scores(task: tasks.Task, budget: study.Budget, seed: int,
            cache: Path | None) -> dict[str, tuple[float, float, float]]:
    models = study._parents(task, budget, seed, lambda text: None, cache)
    spec = gt.spec_from_module(models[0], tasks.example_inputs(task))
    arrays = [gt.to_arrays(m) for m in models]
    batches = study._correction_batches(task, budget, seed)
    out = {}
    for method, options in VARIANTS:
        opts = dict(options)
        solver_seed = opts.pop("seed", seed)
        result = gamfsolve.match(arrays, spec, method=method, seed=solver_seed, **opts)
        fused = gt.from_arrays(models[0], gamfsolve.merge(arrays, spec, result))
        aligned = [gt.from_arrays(m, gamfsolve.permute(a, spec, result.model_perms(k)))
                   for k, (m, a) in enumerate(zip(models, arrays, strict=True))]
        name = f"{method} {json.dumps(options)}"
        up = correction.corrected_layers(fused, up_projections=True)
        out[name] = (tasks.score(task, fused), tasks.score(task, correction.correct(fused, aligned, batches)),
                     tasks.score(task, correction.correct(fused, aligned, batches, up)))
        print(f"seed {seed}: {name}: " + ", ".join(f"{v:.3f}" for v in out[name]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=list(run.FULL), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache", metavar="DIR", help="trained parents (run.py --cache)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    size, budget = run.FULL[args.task]
    task = run.load_task(args.task, size)
    if task is None:
        raise SystemExit(f"{args.task}: data absent")
    per_seed = [_scores(task, budget, s, Path(args.cache) if args.cache else None) for s in args.seeds]
    for name in per_seed[0]:
        v = np.array([d[name] for d in per_seed])
        print(f"{name:45s} one-shot {v[:, 0].mean():.3f}, corrected {v[:, 1].mean():.3f}, "
              f"with up-projections {v[:, 2].mean():.3f}; "
              f"one-shot per seed {[round(x, 3) for x in v[:, 0].tolist()]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
