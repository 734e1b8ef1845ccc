"""FedGAMF as a Flower App for the Deployment Runtime: ``flwr run`` against a SuperLink.

Each SuperNode reads its share of the images (MNIST when found, else scikit-learn's digits; a
Dirichlet(``alpha``) label-skewed split of ``num-partitions * per-client`` images, the share
picked by the node config's ``partition-id``) and trains a small MLP locally; the ServerApp
aligns the clients' models with ``gamfsolve.match`` and averages them (``FedGAMF``), and
evaluates the global model on held-out images after every round.
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from gamfsolve.adapters.flower import FedGAMF, evaluate_model, make_client_app

from gamfsolve import dense, make_spec
from gamfsolve.datasets import dirichlet_split, load_images

SEED = 0


class Mlp(torch.nn.Module):
    """Flattened image -> 64 -> 32 -> 10."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(pixels, 64)
        self.fc2 = torch.nn.Linear(64, 32)
        self.out = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.out(torch.relu(self.fc2(h)))


SPEC = make_spec(dense("fc1", None, "h1"), dense("fc2", "h1", "h2"), dense("out", "h2", None))


Pair = tuple[torch.Tensor, torch.Tensor]


@cache
def _split(n_parts: int, per_client: int, n_test: int, alpha: float) -> tuple[list[Pair], Pair]:
    """The clients' shares and the held-out test set (the same on every process: fixed seed)."""
    data = load_images()
    train, test = data.split(n_parts * per_client, n_test, seed=SEED)
    parts = dirichlet_split(train.y, n_parts, alpha, seed=SEED)

    def tensors(x: np.ndarray, y: np.ndarray) -> Pair:
        return torch.from_numpy(x.reshape(len(x), -1).copy()), torch.from_numpy(y.copy())

    return [tensors(train.x[p], train.y[p]) for p in parts], tensors(test.x, test.y)


def _pixels() -> int:
    return int(np.prod(load_images().x.shape[1:]))


def _data(context: Context) -> Pair:
    cfg, node = context.run_config, context.node_config
    parts, _ = _split(int(node["num-partitions"]), int(cfg["per-client"]), int(cfg["n-test"]), float(cfg["alpha"]))
    return parts[int(node["partition-id"])]


def _model() -> Mlp:
    torch.set_num_threads(1)
    return Mlp(_pixels())


client = make_client_app(_model, _data, epochs=1, lr=2e-3, batch_size=20, seed=SEED)
server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n_nodes = max(len(list(grid.get_node_ids())), 1)
    _, test = _split(n_nodes, int(cfg["per-client"]), int(cfg["n-test"]), float(cfg["alpha"]))
    torch.manual_seed(SEED)
    model = _model()
    strategy = FedGAMF(SPEC, method=str(cfg["method"]), seed=SEED, fraction_evaluate=0.0)
    accuracy: dict[int, float] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = _model()
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate_model(net, *test)
        accuracy[server_round] = acc
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=ConfigRecord({"local-epochs": int(cfg["local-epochs"])}),
        evaluate_fn=evaluate_fn,
    )
    if cfg["result-path"]:
        with open(str(cfg["result-path"]), "w") as f:
            json.dump({"accuracy": accuracy, "match_log": strategy.match_log, "nodes": n_nodes}, f)
