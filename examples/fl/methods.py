"""One federated run of one of the six methods in one setting, on a running simulation's grid."""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

import torch
from fl_common import Federation, SmallCNN, cnn_spec
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from gamfsolve.adapters.flower import FedGAMF, FedMA, evaluate_model
from settings import METHODS, Setting

logger = logging.getLogger("fl-example")


def make_strategy(aggregation: str, model: SmallCNN, setting: Setting, seed: int, n_clients: int,
                  match_options: dict[str, Any]) -> FedAvg | None:
    """The server side of a method; None where it does not apply (fixed-size FedMA with clients of several widths)."""
    common: dict[str, Any] = {"fraction_evaluate": 0.0, "min_train_nodes": n_clients, "min_available_nodes": n_clients}
    several = len(setting.widths) > 1
    spec = cnn_spec(model)
    if aggregation == "fedma":
        return None if several else FedMA(spec, seed=seed, **common)
    if aggregation in ("gamf", "ot"):
        options = match_options if aggregation == "gamf" else {}
        return FedGAMF(spec, method=aggregation, seed=seed, match_options=options, narrower=several, **common)
    if several:  # FedAvg cannot average different shapes: HeteroFL's slice averaging
        return FedGAMF(spec, method="average", narrower=True, **common)
    return FedAvg(**common)


def _per_round(strategy: FedAvg, setting: Setting, seed: int) -> None:
    """Round 1 of a one-shot setting: long local training from each client's own initialisation."""
    configure = strategy.configure_train

    def configure_train(server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        cfg = ConfigRecord(dict(config))
        if server_round == 1 and setting.first_epochs is not None:
            cfg["local-epochs"] = setting.first_epochs
        if server_round == 1 and setting.fresh_init:
            cfg["init-seed"] = seed
        return configure(server_round, arrays, cfg, grid)

    strategy.configure_train = configure_train  # type: ignore[method-assign]


def run_method(name: str, grid: Grid, fed: Federation, setting: Setting, *, seed: int,
               args: argparse.Namespace) -> dict[str, Any]:
    """One federated run (``setting.rounds`` rounds) of ``name``; its record for the results file."""
    aggregation, algorithm = METHODS[name]
    n_clients = len(fed.parts)
    torch.manual_seed(seed)  # the same initial model for every method of a cell
    model = SmallCNN(fed.size)
    record: dict[str, Any] = {"setting": setting.name, "dataset": args.dataset, "alpha": args.alpha,
                              "clients": n_clients, "seed": seed, "method": name}
    strategy = make_strategy(aggregation, model, setting, seed, n_clients, args.match_options)
    if strategy is None:
        return record | {"accuracy": [], "not_applicable": "FedMA at fixed size needs clients of one width"}
    _per_round(strategy, setting, seed)
    stamps: list[float] = []
    curve: dict[int, tuple[float, float]] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        stamps.append(time.perf_counter())
        net = SmallCNN(fed.size)
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate_model(net, *fed.test)
        curve[server_round] = (acc, loss)
        return MetricRecord({"accuracy": acc, "loss": loss})

    t0 = time.perf_counter()
    strategy.start(
        grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=setting.rounds,
        train_config=ConfigRecord({"algorithm": algorithm, "mu": args.mu, "local-epochs": setting.epochs}),
        evaluate_fn=evaluate_fn, timeout=900,
    )
    rounds = sorted(curve)
    record |= {
        "accuracy": [curve[r][0] for r in rounds], "loss": [curve[r][1] for r in rounds],
        "round_s": [b - a for a, b in itertools.pairwise(stamps)], "seconds": time.perf_counter() - t0,
        "match": getattr(strategy, "match_log", None),
    }
    logger.info("%s / %s / %s a=%s, %d clients, seed %d: final %.4f (%.0f s)", setting.name, args.dataset, name,
                args.alpha, n_clients, seed, record["accuracy"][-1], record["seconds"])
    return record
