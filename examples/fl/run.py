"""Federated learning on Flower's simulation runtime: FedAvg, GAMF, MOON, GAMF + MOON.

Dirichlet(alpha) label-skewed MNIST shares, all clients every round, a small CNN, held-out
accuracy of the global model after every round (server-side evaluation). One Flower
simulation (one Ray start) per (client count, seed) runs the four methods one after the
other from the same initial model; each method is a fresh strategy (``strategy.start``), and
the clients switch between plain and MOON training by the round's config.

Writes ``results.json`` (after every finished run, so an interrupted run resumes where it
stopped: runs already there under the same protocol are not repeated), ``RESULTS.md`` (final
accuracy, mean +- std over seeds, laid out like Table 1 of Liu et al. 2022) and
``accuracy.png`` into ``--out``.

    python examples/fl/run.py                      # the full run: 5 and 10 clients, 3 seeds, 20 rounds
    python examples/fl/run.py --clients 5 --seeds 0 --rounds 3 --out /tmp/fl   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fl_common import Federation, SmallCNN, cnn_spec, make_federation
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from gamfsolve.adapters.flower import FedGAMF, evaluate_model, make_client_app
from report import write_report

logger = logging.getLogger("fl-example")

# name -> (server aggregation, client algorithm)
METHODS = {
    "FedAvg": ("fedavg", "local"),
    "GAMF": ("gamf", "local"),
    "MOON": ("fedavg", "moon"),
    "GAMF + MOON": ("gamf", "moon"),
}
# the settings a cached run must share with this invocation to be reused
PROTOCOL = ("rounds", "per_client", "n_test", "alpha", "epochs", "lr", "batch_size", "mu", "fuse_method", "match_options")


def _model(size: int) -> SmallCNN:
    torch.set_num_threads(1)
    return SmallCNN(size)


def _strategy(aggregation: str, model: SmallCNN, n_clients: int, seed: int, args: argparse.Namespace) -> FedAvg:
    common = {"fraction_evaluate": 0.0, "min_train_nodes": n_clients, "min_available_nodes": n_clients}
    if aggregation == "gamf":
        return FedGAMF(cnn_spec(model), method=args.fuse_method, seed=seed, match_options=args.match_options, **common)
    return FedAvg(**common)


def run_cell(
    fed: Federation, *, seed: int, methods: list[str], args: argparse.Namespace, on_done: Callable[[dict[str, Any]], None]
) -> None:
    """One Flower simulation running ``methods`` in turn; ``on_done(record)`` after each."""
    n_clients = len(fed.parts)
    size = fed.size

    def data_fn(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
        return fed.parts[int(context.node_config["partition-id"])]

    client = make_client_app(
        lambda: _model(size), data_fn, algorithm="local", epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, mu=args.mu, temperature=0.5, seed=seed,
    )
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        for name in methods:
            on_done(_run_method(name, grid, fed, seed=seed, args=args))

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=n_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": args.cpus}},
    )


def _run_method(name: str, grid: Grid, fed: Federation, *, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One federated run (``args.rounds`` rounds) of ``name`` on the simulation's grid."""
    aggregation, algorithm = METHODS[name]
    n_clients = len(fed.parts)
    torch.manual_seed(seed)  # the same initial model for every method of a (clients, seed) cell
    model = _model(fed.size)
    strategy = _strategy(aggregation, model, n_clients, seed, args)
    stamps: list[float] = []
    curve: dict[int, tuple[float, float]] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        stamps.append(time.perf_counter())
        net = _model(fed.size)
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate_model(net, *fed.test)
        curve[server_round] = (acc, loss)
        return MetricRecord({"accuracy": acc, "loss": loss})

    t0 = time.perf_counter()
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=args.rounds,
        train_config=ConfigRecord({"algorithm": algorithm, "mu": args.mu}),
        evaluate_fn=evaluate_fn,
        timeout=600,
    )
    seconds = time.perf_counter() - t0
    rounds = sorted(curve)
    record = {
        "method": name, "clients": n_clients, "seed": seed,
        "accuracy": [curve[r][0] for r in rounds], "loss": [curve[r][1] for r in rounds],
        "round_s": [b - a for a, b in itertools.pairwise(stamps)], "seconds": seconds,
        "match": getattr(strategy, "match_log", None),
    }
    logger.info("%s, %d clients, seed %d: final %.4f (%.0f s)", name, n_clients, seed, record["accuracy"][-1], seconds)
    return record


def _solver_source() -> str:
    """A digest of the installed gamfsolve's sources: a run made by other solver code (say, other
    defaults) is not reused."""
    import hashlib

    import gamfsolve

    digest = hashlib.sha256()
    root = Path(gamfsolve.__file__).parent
    for f in sorted(root.rglob("*.py")):
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def _protocol(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in PROTOCOL} | {"dataset": _dataset_name(), "solver_source": _solver_source()}


def _load_cached(path: Path, protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs of an earlier results.json made under the same protocol (else none)."""
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if {k: old.get("config", {}).get(k) for k in protocol} != protocol:
        logger.info("%s was made under another protocol; starting afresh", path)
        return []
    return list(old.get("runs", []))


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _machine() -> str:
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores"


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.report_only is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        results = json.loads(args.report_only.read_text())
        results["note"] = args.note or results.get("note", "")
        write_report(results, args.out, list(METHODS))
        return
    args.match_options = _parse_options(args.match_options, args.fuse_method)
    _setup_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    protocol = _protocol(args)
    runs = _load_cached(path, protocol)
    start = time.perf_counter()
    config = protocol | {
        "clients": args.clients, "seeds": args.seeds, "methods": args.methods, "cpus": args.cpus,
        "command": "python examples/fl/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    results: dict[str, Any] = {"config": config, "runs": runs, "note": args.note, "load_at_start": _load()}

    def save(record: dict[str, Any] | None = None) -> None:
        if record is not None:
            runs.append(record)
        results["wall_s"] = time.perf_counter() - start
        results["machine"] = _machine()
        results["load_at_end"] = _load()
        path.write_text(json.dumps(results, indent=1))

    reused = 0
    for n in args.clients:
        for seed in args.seeds:
            done = {r["method"] for r in runs if r["clients"] == n and r["seed"] == seed}
            todo = [m for m in args.methods if m not in done]
            reused += len(args.methods) - len(todo)
            if todo:
                fed = make_federation(n, per_client=args.per_client, n_test=args.n_test, alpha=args.alpha, seed=seed)
                run_cell(fed, seed=seed, methods=todo, args=args, on_done=save)
    results["reused_runs"] = reused
    save()
    write_report(results, args.out, list(METHODS))
    logger.info("wrote %s (%.0f s, %d run(s) reused)", args.out / "RESULTS.md", results["wall_s"], reused)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[5, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--per-client", type=int, default=300)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--mu", type=float, default=1.0)
    p.add_argument("--fuse-method", default="gamf", help="gamfsolve method for the GAMF rows")
    p.add_argument(
        "--match-options", nargs="*", default=None, metavar="KEY=VALUE",
        help="options for the GAMF rows' method (default for gamf: see DEFAULT_GAMF_OPTIONS)",
    )
    p.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray (one client actor per CPU)")
    p.add_argument("--note", default="", help="a paragraph put at the top of RESULTS.md (e.g. the machine's other load)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--report-only", type=Path, default=None, help="rewrite the report from this results.json")
    return p


# The released code's neuron-vector ("node") affinity: on a shared 2-core machine the paper's edge affinity
# took 2-12 s per 5-client and 5-60 s per 10-client aggregation (node: 0.7-3 s and 1.4-9 s), too slow for
# 240 aggregations in about 30 minutes. Pass --match-options affinity=edge for the paper's.
DEFAULT_GAMF_OPTIONS: dict[str, Any] = {"affinity": "node"}


def _parse_options(pairs: list[str] | None, method: str) -> dict[str, Any]:
    """``["affinity=node", "max_iter=50"]`` -> ``{"affinity": "node", "max_iter": 50}``."""
    if pairs is None:
        return dict(DEFAULT_GAMF_OPTIONS) if method == "gamf" else {}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _setup_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("fl-example", "gamfsolve"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)


def _dataset_name() -> str:
    from gamfsolve.datasets import load_images

    return load_images().name


if __name__ == "__main__":
    main()
