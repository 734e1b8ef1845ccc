"""Crafted Flower messages and small models for the Flower adapter's in-process tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from gamfsolve import mlp_spec

SPEC = mlp_spec(2)  # layers.0: (8, 4), layers.1: (3, 8); hidden group h0
LOGGER = "gamfsolve.adapters.flower"


@pytest.fixture(autouse=True)
def server_identity() -> Iterator[None]:
    """Flower only builds Messages inside a task: pose as the ServerApp of run 1 (restored after)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def model(seed: int) -> dict[str, np.ndarray]:
    """A 4-8-3 MLP's arrays (float32) plus an int64 counter."""
    rng = np.random.default_rng(seed)
    return {
        "layers.0.weight": rng.normal(size=(8, 4)).astype(np.float32),
        "layers.0.bias": rng.normal(size=8).astype(np.float32),
        "layers.1.weight": rng.normal(size=(3, 8)).astype(np.float32),
        "layers.1.bias": rng.normal(size=3).astype(np.float32),
        "steps": np.array(seed + 7, dtype=np.int64),
    }


def permuted(m: dict[str, np.ndarray], perm: np.ndarray) -> dict[str, np.ndarray]:
    """``m`` with its hidden units reordered by ``perm`` (the same function)."""
    out = dict(m)
    out["layers.0.weight"] = m["layers.0.weight"][perm]
    out["layers.0.bias"] = m["layers.0.bias"][perm]
    out["layers.1.weight"] = m["layers.1.weight"][:, perm]
    return out


def forward(m: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ m["layers.0.weight"].T + m["layers.0.bias"], 0)
    return h @ m["layers.1.weight"].T + m["layers.1.bias"]


def reply(node: int, arrays: dict[str, np.ndarray] | None, n: float | None = 10, *, error: str | None = None) -> Message:
    """A train reply from ``node`` with ``arrays`` and ``num-examples = n``."""
    instruction = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    if error is not None:
        return Message(Error(code=1, reason=error), reply_to=instruction)
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    content["metrics"] = MetricRecord({} if n is None else {"num-examples": n})
    return Message(content=content, reply_to=instruction)


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


class FakeGrid:
    """The part of a Grid that FedAvg's configure_train uses."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)
