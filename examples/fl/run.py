"""Federated learning on Flower's simulation runtime: FedAvg, GAMF, MOON, GAMF + MOON.

Dirichlet(alpha) label-skewed MNIST shares, all clients every round, a small CNN, held-out
accuracy of the global model after every round (server-side evaluation). Writes
``results.json``, ``RESULTS.md`` (final accuracy, mean +- std over seeds, laid out like
Table 1 of Liu et al. 2022) and ``accuracy.png`` into ``--out``.

    python examples/fl/run.py                      # the full run: 5 and 10 clients, 3 seeds, 20 rounds
    python examples/fl/run.py --clients 5 --seeds 0 --rounds 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fl_common import Federation, SmallCNN, cnn_spec, make_federation
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from gamfsolve.adapters.flower import FedGAMF, evaluate_model, make_client_app

logger = logging.getLogger("fl-example")

# name -> (server aggregation, client algorithm)
METHODS = {
    "FedAvg": ("fedavg", "local"),
    "GAMF": ("gamf", "local"),
    "MOON": ("fedavg", "moon"),
    "GAMF + MOON": ("gamf", "moon"),
}


def _model(size: int) -> SmallCNN:
    torch.set_num_threads(1)
    return SmallCNN(size)


def run_one(name: str, fed: Federation, *, rounds: int, seed: int, args: argparse.Namespace) -> list[float]:
    """One simulation; the held-out accuracy of the global model after rounds 0..rounds."""
    aggregation, algorithm = METHODS[name]
    n_clients = len(fed.parts)
    size = fed.size
    store: dict[str, Any] = {}

    def data_fn(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
        return fed.parts[int(context.node_config["partition-id"])]

    client = make_client_app(
        lambda: _model(size),
        data_fn,
        algorithm=algorithm,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        mu=args.mu,
        temperature=0.5,
        seed=seed,
    )
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(seed)
        model = _model(size)
        common = {"fraction_evaluate": 0.0, "min_train_nodes": n_clients, "min_available_nodes": n_clients}
        if aggregation == "gamf":
            strategy: FedAvg = FedGAMF(
                cnn_spec(model), method=args.fuse_method, seed=seed, match_options=args.match_options, **common
            )
        else:
            strategy = FedAvg(**common)

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            net = _model(size)
            net.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate_model(net, *fed.test)
            return MetricRecord({"accuracy": acc, "loss": loss})

        store["result"] = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds, evaluate_fn=evaluate_fn
        )

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=n_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": args.cpus}},
    )
    history = store["result"].evaluate_metrics_serverapp
    return [float(history[r]["accuracy"]) for r in sorted(history)]


def write_report(results: dict[str, Any], out: Path, note: str) -> None:
    """RESULTS.md (final accuracy table) and accuracy.png (accuracy vs round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    clients = sorted({r["clients"] for r in runs})
    names = [m for m in METHODS if any(r["method"] == m for r in runs)]
    lines = [
        "# Federated learning with FedGAMF on Flower (MNIST, small CNN)",
        "",
        note,
        "",
        "Final held-out accuracy (%) of the global model after the last round, mean ± std over seeds:",
        "",
        "| method | " + " | ".join(f"MNIST, {c} clients" for c in clients) + " |",
        "|---|" + "---|" * len(clients),
    ]
    fig, axes = plt.subplots(1, len(clients), figsize=(5 * len(clients), 3.6), squeeze=False)
    for name in names:
        cells = []
        for j, c in enumerate(clients):
            curves = np.array([r["accuracy"] for r in runs if r["method"] == name and r["clients"] == c]) * 100
            if curves.size == 0:
                cells.append("—")
                continue
            final = curves[:, -1]
            cells.append(f"{final.mean():.2f} ± {final.std():.2f} (n={len(final)})")
            mean = curves.mean(axis=0)
            axes[0, j].plot(np.arange(len(mean)), mean, label=name)
            axes[0, j].fill_between(np.arange(len(mean)), curves.min(axis=0), curves.max(axis=0), alpha=0.15)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for j, c in enumerate(clients):
        axes[0, j].set(
            title=f"{c} clients, Dirichlet alpha={results['config']['alpha']}",
            xlabel="round",
            ylabel="held-out accuracy (%)",
        )
        axes[0, j].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    cfg = results["config"]
    lines += [
        "",
        "![accuracy vs round](accuracy.png)",
        "",
        "## Setting",
        "",
        f"- data: {cfg['dataset']}, {cfg['per_client']} training images per client on average, Dirichlet "
        f"alpha = {cfg['alpha']} label skew, {cfg['n_test']} held-out test images",
        f"- {cfg['rounds']} rounds, all clients every round, {cfg['epochs']} local epoch(s), Adam lr {cfg['lr']}, "
        f"batch {cfg['batch_size']}; MOON mu = {cfg['mu']}, temperature 0.5",
        f"- GAMF rows: `FedGAMF(method={cfg['fuse_method']!r}, match_options={cfg['match_options']!r})`, "
        "weighted by example count; FedAvg/MOON rows: "
        "Flower's own `FedAvg`",
        f"- seeds {cfg['seeds']}; wall time {results['wall_s']:.0f} s on {os.cpu_count()} CPU cores",
        "- command: `" + cfg["command"] + "`",
    ]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[5, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--per-client", type=int, default=300)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--mu", type=float, default=1.0)
    p.add_argument("--fuse-method", default="gamf", help="gamfsolve method for the GAMF rows")
    p.add_argument(
        "--match-options",
        nargs="*",
        default=None,
        metavar="KEY=VALUE",
        help="options for the GAMF rows' method (default for gamf: affinity=node, the released code's "
        "neuron-vector kernel; the paper's edge kernel costs minutes per round on 2 cores)",
    )
    p.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray")
    p.add_argument("--note", default="", help="a line stating what was run, put at the top of RESULTS.md")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--report-only", type=Path, default=None, help="rewrite the report from this results.json")
    args = p.parse_args(argv)
    if args.report_only is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_report(json.loads(args.report_only.read_text()), args.out, args.note or "Run as configured below.")
        return
    args.match_options = _parse_options(args.match_options, args.fuse_method)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("fl-example", "gamfsolve"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for n in args.clients:
        for seed in args.seeds:
            fed = make_federation(n, per_client=args.per_client, n_test=args.n_test, alpha=args.alpha, seed=seed)
            for name in args.methods:
                t0 = time.perf_counter()
                acc = run_one(name, fed, rounds=args.rounds, seed=seed, args=args)
                logger.info(
                    "%s, %d clients, seed %d: final %.4f (%.0f s)", name, n, seed, acc[-1], time.perf_counter() - t0
                )
                runs.append({"method": name, "clients": n, "seed": seed, "accuracy": acc})
    config = {k: v for k, v in vars(args).items() if k not in ("out", "note")}
    config.update(
        dataset=_dataset_name(),
        n_test=args.n_test,
        command="python examples/fl/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    results = {"config": config, "runs": runs, "wall_s": time.perf_counter() - start}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, args.out, args.note or "Run as configured below.")
    logger.info("wrote %s (%.0f s)", args.out / "RESULTS.md", results["wall_s"])


def _parse_options(pairs: list[str] | None, method: str) -> dict[str, Any]:
    """``["affinity=node", "max_iter=50"]`` -> ``{"affinity": "node", "max_iter": 50}``."""
    if pairs is None:
        return {"affinity": "node"} if method == "gamf" else {}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _dataset_name() -> str:
    from gamfsolve.datasets import load_images

    return load_images().name


if __name__ == "__main__":
    main()
