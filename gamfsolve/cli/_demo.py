"""``gamfsolve demo``: train small MLPs, fuse them by every method, print and plot the comparison."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

from ._common import EXIT_USAGE, EXIT_WRITE, CliError

__all__ = ["METHOD_ORDER", "MethodRow", "run_demo"]

#: Display order: the baselines first, GAMF last.
METHOD_ORDER = ("average", "ot", "weight_matching", "gamf")


@dataclass(frozen=True)
class MethodRow:
    """One fusion method's outcome in the demo."""

    method: str
    accuracy: float
    time: float  #: seconds of a second call (kernels compiled): what a user's next call costs
    n_iter: int
    converged: bool
    first_call: float  #: seconds of the first call, which also compiles or loads the kernels


def _methods(requested: str | None) -> list[str]:
    from .. import METHODS

    if requested:
        chosen = [m.strip() for m in requested.split(",") if m.strip()]
        unknown = [m for m in chosen if m not in METHODS]
        if unknown:
            raise CliError(f"unknown method(s) {unknown} in --methods; available: {sorted(METHODS)}")
        return chosen
    known = [m for m in METHOD_ORDER if m in METHODS]
    return known + sorted(m for m in METHODS if m not in known)


def _seconds(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def _load(data: str | None, seed: int) -> tuple[Any, Any]:
    from .. import datasets
    from .._errors import FusionError

    if data is not None and not all((Path(data) / name).is_file() for name in (datasets._IMAGES, datasets._LABELS)):
        raise CliError(f"--data {data}: no MNIST idx files ({datasets._IMAGES}, {datasets._LABELS}) there")
    try:
        ds = datasets.load_images(data)
    except (FusionError, OSError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    n_train = min(8000, int(0.8 * len(ds.y)))
    return ds.split(n_train, min(2000, len(ds.y) - n_train), seed=seed)


def _table(indiv: list[float], ens: float, rows: list[MethodRow], n: int) -> str:
    w = max(32, *(len(r.method) + 18 for r in rows))
    lines = [f"{'model':<{w}} {'accuracy':>9} {'match time':>11} {'iters':>6}", "-" * (w + 29)]
    lines += [f"{f'model {k} (1x size)':<{w}} {a:>8.2f}%" for k, a in enumerate(indiv)]
    lines.append(f"{f'prediction ensemble ({n}x size)':<{w}} {ens:>8.2f}%")
    for r in rows:
        it = f"{r.n_iter}" + ("" if r.converged else "*")
        lines.append(f"{f'fused: {r.method} (1x size)':<{w}} {r.accuracy:>8.2f}% {_seconds(r.time):>11} {it:>6}")
    if any(not r.converged for r in rows):
        lines.append("* stopped at its iteration limit without converging")
    slow = [r for r in rows if r.first_call - r.time > 0.1]
    if slow:
        firsts = ", ".join(f"{r.method} {_seconds(r.first_call)}" for r in slow)
        lines.append(f"match time: a second call; the first also compiles (or loads) kernels: {firsts}")
    return "\n".join(lines)


def _figure(path: Path, indiv: list[float], ens: float, rows: list[MethodRow], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    names = [f"model {k}" for k in range(len(indiv))] + ["ensemble"] + [r.method for r in rows]
    accs = [*indiv, ens, *(r.accuracy for r in rows)]
    colors = ["0.6"] * len(indiv) + ["0.3"] + [f"C{i}" for i in range(len(rows))]
    ax.bar(names, accs, color=colors)
    ax.axhline(max(indiv), color="0.5", ls="--", lw=1, label="best single model")
    ax.set_ylim(max(0.0, min(accs) - 10), 108)  # headroom above 100 for the legend
    ax.set_yticks([t for t in ax.get_yticks() if t <= 100])
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(loc="upper right", fontsize=8)
    for i, a in enumerate(accs):
        ax.text(i, a + 0.3, f"{a:.1f}", ha="center", fontsize=7)
    bx.bar([r.method for r in rows], [max(r.time, 1e-6) * 1e3 for r in rows], color=colors[len(indiv) + 1 :])
    bx.set_yscale("log")
    bx.set_ylabel("matching time (ms, log scale)")
    bx.set_title("time to match", fontsize=10)
    bx.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(args: argparse.Namespace) -> int:
    """Train ``args.models`` MLPs, fuse them by every method, print a table, write a figure."""
    try:
        import torch
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise CliError(f"the demo needs the torch and examples extras: pip install 'gamfsolve[torch,examples]' ({exc})") from exc
    if args.models < 2:
        raise CliError(f"--models must be at least 2, got {args.models}")
    import gamfsolve

    from .. import datasets
    from ..adapters import _demo

    methods = _methods(args.methods)
    start = perf_counter()
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {out}: {exc}", EXIT_WRITE) from exc
    train, test = _load(args.data, args.seed)
    side = train.x.shape[1]
    print(f"data: {train.name}, {len(train.y)} training and {len(test.y)} held-out images of {side}x{side}")
    shares = datasets.equal_split(len(train.y), args.models, seed=args.seed)
    models = []
    for k in tqdm(range(args.models), desc="training", unit="model", file=sys.stderr):
        part = train.subset(shares[k])
        model = _demo.build("mlp", side, train.n_classes, seed=args.seed * 1000 + k)
        models.append(_demo.train(model, part.x, part.y, epochs=args.epochs, seed=args.seed * 1000 + k))
    indiv = [_demo.accuracy(m, test.x, test.y) for m in models]
    ens = _demo.ensemble_accuracy(models, test.x, test.y)

    spec = _demo.spec_for("mlp", side)
    arrays = [_demo.to_arrays(m) for m in models]
    rows = []
    for method in tqdm(methods, desc="fusing", unit="method", file=sys.stderr):
        t0 = perf_counter()
        gamfsolve.match(arrays, spec, method=method, seed=args.seed)
        first = perf_counter() - t0
        result = gamfsolve.match(arrays, spec, method=method, seed=args.seed)  # the same, kernels warm
        fused = _demo.from_arrays(models[0], gamfsolve.merge(arrays, spec, result))
        acc = _demo.accuracy(fused, test.x, test.y)
        rows.append(MethodRow(method, acc, result.time, result.n_iter, result.converged, first))

    hidden = "-".join(str(s) for s in (side * side, 256, 256, train.n_classes))
    title = f"{args.models} MLPs {hidden} on equal shares of {len(train.y)} {train.name} images"
    print(f"\n{title}, one-shot fusion (no finetuning)\n")
    print(_table(indiv, ens, rows, args.models))
    record = {
        "dataset": train.name,
        "n_train": len(train.y),
        "n_test": len(test.y),
        "n_models": args.models,
        "epochs": args.epochs,
        "seed": args.seed,
        "individual": indiv,
        "prediction_ensemble": ens,
        "fused": [asdict(r) for r in rows],
        "total_seconds": None,
    }
    try:
        _figure(out / "demo.png", indiv, ens, rows, title)
        record["total_seconds"] = round(perf_counter() - start, 2)
        (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write to {out}: {exc}", EXIT_WRITE) from exc
    best = max(rows, key=lambda r: r.accuracy)
    print(
        f"\nbest fusion: {best.method} at {best.accuracy:.2f}% (best single model {max(indiv):.2f}%, "
        f"ensemble of {args.models} {ens:.2f}%)"
    )
    print(f"wrote {out / 'demo.png'} and {out / 'results.json'} in {perf_counter() - start:.1f} s")
    return 0
