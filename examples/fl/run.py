"""Federated learning on Flower's simulation runtime: the six rows of Liu et al. 2022's Table 1
(FedAvg, OTFusion, FedMA, GAMF, MOON, GAMF + MOON) in four settings (settings.py).

Dirichlet(alpha) label-skewed MNIST or Fashion-MNIST shares, all clients every round, a small
CNN, held-out accuracy of the global model after every round (server-side evaluation). One
Flower simulation (one Ray start) per (setting, dataset, alpha, client count, seed) runs the
methods one after the other from the same initial model; each method is a fresh strategy.

Results go to ``<out>/results-<setting>.json`` after every finished run, so an interrupted run
resumes where it stopped (runs already there under the same protocol are not repeated; each
setting has its own file); then ``RESULTS.md`` and ``accuracy-<setting>.png``.

    python examples/fl/run.py                 # the full comparison (hours on 2 cores)
    python examples/fl/run.py --quick         # the documented subset: about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fl_common import Federation, SmallCNN, make_federation
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from gamfsolve.adapters.flower import make_client_app
from methods import run_method
from report import write_report
from settings import FULL, METHODS, QUICK, Setting

logger = logging.getLogger("fl-example")

# the settings a cached run must share with this invocation to be reused
PROTOCOL = ("per_client", "n_test", "lr", "batch_size", "mu", "match_options")


def run_cell(fed: Federation, setting: Setting, *, seed: int, methods: list[str], args: argparse.Namespace,
             on_done: Any) -> None:
    """One Flower simulation running ``methods`` in turn; ``on_done(record)`` after each."""
    n_clients = len(fed.parts)
    size = fed.size

    def data_fn(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
        return fed.parts[int(context.node_config["partition-id"])]

    def node_model(context: Context) -> SmallCNN:
        torch.set_num_threads(1)
        widths = setting.widths
        return SmallCNN(size, width=widths[int(context.node_config["partition-id"]) % len(widths)])

    client = make_client_app(
        lambda: SmallCNN(size), data_fn, algorithm="local", epochs=setting.epochs, lr=args.lr,
        batch_size=args.batch_size, mu=args.mu, temperature=0.5, seed=seed, node_model_fn=node_model,
    )
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        for name in methods:
            on_done(run_method(name, grid, fed, setting, seed=seed, args=args))

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=n_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": args.cpus}},
    )


def _solver_source() -> str:
    """A digest of the installed gamfsolve's sources (adapters included): a run made by other code is not reused."""
    import hashlib

    import gamfsolve

    digest = hashlib.sha256()
    root = Path(gamfsolve.__file__).parent
    for f in sorted([*root.rglob("*.py"), *Path(gamfsolve.adapters.__file__).parent.rglob("*.py")]):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def _protocol(args: argparse.Namespace, setting: Setting) -> dict[str, Any]:
    return {k: getattr(args, k) for k in PROTOCOL} | {"setting": vars(setting) | {"widths": list(setting.widths)},
                                                     "solver_source": _solver_source()}


def _load_cached(path: Path, protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs of an earlier results file made under the same protocol (else none)."""
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if {k: old.get("config", {}).get(k) for k in protocol} != json.loads(json.dumps(protocol)):
        logger.info("%s was made under another protocol; starting it afresh", path)
        return []
    return list(old.get("runs", []))


def _earlier_commands(path: Path) -> list[str]:
    """The commands that made the runs kept from an earlier results file."""
    try:
        return [c for c in json.loads(path.read_text())["config"]["command"].split("; ") if c]
    except (OSError, KeyError, json.JSONDecodeError):
        return []


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def run_setting(setting: Setting, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every (dataset, alpha, clients, seed) cell of one setting; returns its results (also saved)."""
    path = args.out / f"results-{setting.name}.json"
    protocol = _protocol(args, setting)
    runs = _load_cached(path, protocol)
    commands = _earlier_commands(path) if runs else []
    start = time.perf_counter()
    results: dict[str, Any] = {"config": protocol | {"command": "; ".join(dict.fromkeys([*commands, command])),
                                                     "cpus": args.cpus}, "runs": runs,
                               "load_at_start": _load(), "machine": f"{platform.machine()} {platform.system()}, "
                               f"{os.cpu_count()} CPU cores"}

    def save(record: dict[str, Any] | None = None) -> None:
        if record is not None:
            runs.append(record)
        results["wall_s"] = results.get("wall_s_before", 0.0) + time.perf_counter() - start
        results["load_at_end"] = _load()
        path.write_text(json.dumps(results, indent=1))

    for dataset in args.datasets:
        for alpha in args.alphas:
            for n in args.clients:
                for seed in args.seeds:
                    key = (dataset, alpha, n, seed)
                    done = {r["method"] for r in runs if (r["dataset"], r["alpha"], r["clients"], r["seed"]) == key}
                    todo = [m for m in args.methods if m not in done]
                    if todo:
                        fed = make_federation(n, per_client=args.per_client, n_test=args.n_test, alpha=alpha, seed=seed,
                                              dataset=dataset)
                        run_cell(fed, setting, seed=seed, methods=todo,
                                 args=argparse.Namespace(**vars(args), dataset=dataset, alpha=alpha), on_done=save)
    save()
    return results


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    table = QUICK if args.quick else FULL
    if args.quick:  # the documented subset (unless narrowed further on the command line)
        args.clients, args.seeds, args.alphas = args.clients or [5], args.seeds or [0], args.alphas or [0.5]
    args.clients, args.seeds, args.alphas = args.clients or [5, 10], args.seeds or [0, 1, 2], args.alphas or [0.5, 0.1]
    args.match_options = _parse_options(args.match_options)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python examples/fl/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.report_only:
        _setup_logging()
        for name in args.settings:
            run_setting(table[name], args, command)
    results = {}
    for name in FULL:
        path = args.out / f"results-{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    write_report(results, args.out, list(METHODS), note=args.note)
    logger.info("wrote %s", args.out / "RESULTS.md")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the quick subset: shorter settings (settings.QUICK), "
                   "5 clients, seed 0, alpha 0.5, both datasets (about 6 minutes on 2 cores)")
    p.add_argument("--settings", nargs="+", default=list(FULL), choices=list(FULL))
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion"], choices=["mnist", "fashion"])
    p.add_argument("--alphas", type=float, nargs="+", default=None, help="Dirichlet alphas (default 0.5 0.1)")
    p.add_argument("--clients", type=int, nargs="+", default=None, help="client counts (default 5 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--per-client", type=int, default=300)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--mu", type=float, default=1.0)
    p.add_argument("--match-options", nargs="*", default=None, metavar="KEY=VALUE",
                   help="options for the GAMF rows' gamf method (default: the library's, edge affinity)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray (one client actor per CPU)")
    p.add_argument("--note", default="", help="a paragraph put at the top of RESULTS.md")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the results files in --out")
    return p


def _parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["affinity=node", "max_iter=50"]`` -> ``{"affinity": "node", "max_iter": 50}``."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
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


if __name__ == "__main__":
    main()
