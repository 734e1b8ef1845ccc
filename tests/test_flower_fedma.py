"""FedMA's layer-wise matched averaging: the layer plan, one layer's matching, the strategy's
rounds (crafted Flower messages, in process) and its client side (frozen layers)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("flwr")
torch = pytest.importorskip("torch")

from flower_helpers import LOGGER, FakeGrid, as_numpy, reply, server_identity  # noqa: E402, F401
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from gamfsolve.adapters._fedma_layers import layer_plan, match_layer  # noqa: E402
from gamfsolve.adapters.flower import FedMA, make_client_app, train_local  # noqa: E402

from gamfsolve import FusionError, PermutationSpec, mlp_spec, permute  # noqa: E402

SPEC = mlp_spec(3)  # layers.0 (h0, None), layers.1 (h1, h0), layers.2 (None, h1)
WIDTHS = (6, 10, 7, 3)  # input, h0, h1, output


def _base(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(3):
        out[f"layers.{i}.weight"] = rng.normal(size=(WIDTHS[i + 1], WIDTHS[i])).astype(np.float32)
        out[f"layers.{i}.bias"] = rng.normal(size=WIDTHS[i + 1]).astype(np.float32)
    return out


def _forward(m: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x @ m["layers.0.weight"].T + m["layers.0.bias"], 0)
    h = np.maximum(h @ m["layers.1.weight"].T + m["layers.1.bias"], 0)
    return h @ m["layers.2.weight"].T + m["layers.2.bias"]


def _client(base: dict[str, np.ndarray], seed: int, noise: float = 1e-3) -> dict[str, np.ndarray]:
    """``base`` with both hidden layers randomly relabelled, plus a little noise: the same function."""
    rng = np.random.default_rng(100 + seed)
    perms = {"h0": rng.permutation(WIDTHS[1]), "h1": rng.permutation(WIDTHS[2])}
    out = permute(base, SPEC, perms)
    return {k: (v + noise * rng.normal(size=v.shape)).astype(np.float32) for k, v in out.items()}


def test_layer_plan_follows_the_output_axes() -> None:
    plan = layer_plan(SPEC, list(SPEC.axes))
    assert [(layer.group, layer.params) for layer in plan] == [
        ("h0", ("layers.0.weight", "layers.0.bias")),
        ("h1", ("layers.1.weight", "layers.1.bias")),
        (None, ("layers.2.weight", "layers.2.bias")),
    ]
    backwards = PermutationSpec({"a.weight": ("g1", "g2"), "b.weight": ("g2", None), "c.weight": (None, "g1")})
    with pytest.raises(FusionError, match="feed-forward order"):  # g1's layer reads g2, matched after it
        layer_plan(backwards, ["a.weight", "b.weight", "c.weight"])
    with pytest.raises(FusionError, match="does not cover"):
        layer_plan(SPEC, ["layers.0.weight", "extra"])


def test_match_layer_recovers_planted_permutations() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(12, 5))
    planted = [np.arange(12), *(rng.permutation(12) for _ in range(3))]
    models = [{"w": rows[p] + 1e-3 * rng.normal(size=rows.shape)} for p in planted]
    perms, sweeps = match_layer(models, ["w"], [1, 2, 3, 4], seed=0)
    aligned = [m["w"][p] for m, p in zip(models, perms, strict=True)]
    for a in aligned[1:]:
        np.testing.assert_allclose(a, aligned[0], atol=1e-2)
    assert 1 <= sweeps <= 10


def _round(strategy: FedMA, r: int, glob: dict[str, np.ndarray], nodes: list[int]) -> list[Message]:
    record = ArrayRecord({k: Array(v) for k, v in glob.items()})
    return list(strategy.configure_train(r, record, ConfigRecord({"lr": 0.1}), FakeGrid(nodes)))


def test_fedma_rounds_match_one_layer_each_then_average(caplog: pytest.LogCaptureFixture) -> None:
    base = _base(0)
    x = np.random.default_rng(1).normal(size=(20, WIDTHS[0])).astype(np.float32)
    strategy = FedMA(SPEC, seed=0, min_train_nodes=3)
    nodes = [1, 2, 3]
    glob = _base(5)  # the initial global model
    sent = _round(strategy, 1, glob, nodes)
    assert [list(m.content["config"]["frozen"]) for m in sent] == [[], [], []]
    models = {n: _client(base, n) for n in nodes}
    out, _ = strategy.aggregate_train(1, [reply(n, models[n]) for n in nodes])
    assert out is not None and strategy.stage == 1
    glob = as_numpy(out)
    assert strategy.match_log[-1]["group"] == "h0" and strategy.match_log[-1]["permuted"] == 2

    sent = _round(strategy, 2, glob, nodes)
    for msg in sent:  # each client's own model, layer 0 replaced by the global one, layer 1's inputs matched
        own = as_numpy(msg.content["arrays"])
        assert list(msg.content["config"]["frozen"]) == ["layers.0.weight", "layers.0.bias"]
        assert msg.content["config"]["lr"] == 0.1 and msg.content["config"]["server-round"] == 2
        np.testing.assert_array_equal(own["layers.0.weight"], glob["layers.0.weight"])
        np.testing.assert_allclose(_forward(own, x), _forward(base, x), atol=0.05)
    # the clients retrain the layers above (here: they send back what they got), the server matches h1
    out, _ = strategy.aggregate_train(2, [reply(m.metadata.dst_node_id, as_numpy(m.content["arrays"])) for m in sent])
    assert out is not None and strategy.stage == 2
    glob = as_numpy(out)
    np.testing.assert_allclose(_forward(glob, x), _forward(base, x), atol=0.05)  # all hidden units matched

    sent = _round(strategy, 3, glob, nodes)  # the last layer: everything below frozen
    assert list(sent[0].content["config"]["frozen"]) == [f"layers.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    out, _ = strategy.aggregate_train(3, [reply(m.metadata.dst_node_id, as_numpy(m.content["arrays"])) for m in sent])
    assert out is not None and strategy.stage == 3
    sent = _round(strategy, 4, as_numpy(out), nodes)  # FedAvg-style rounds: nothing frozen, the global model sent
    assert list(sent[0].content["config"]["frozen"]) == []
    np.testing.assert_array_equal(as_numpy(sent[1].content["arrays"])["layers.1.weight"], as_numpy(out)["layers.1.weight"])
    assert [m["group"] for m in strategy.match_log] == ["h0", "h1"]


def test_a_round_left_out_matches_the_same_layer_again(caplog: pytest.LogCaptureFixture) -> None:
    strategy = FedMA(SPEC, seed=0, min_train_nodes=2)
    _round(strategy, 1, _base(5), [1, 2])
    bad = {**_client(_base(0), 2), "layers.1.bias": np.full(WIDTHS[2], np.nan, np.float32)}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out, _ = strategy.aggregate_train(1, [reply(1, _client(_base(0), 1)), reply(2, bad)])
    assert out is None and strategy.stage == 0 and "node 2 left out" in caplog.text
    sent = _round(strategy, 2, _base(5), [1, 2])
    assert list(sent[0].content["config"]["frozen"]) == []


def test_bad_configuration_raises() -> None:
    with pytest.raises(FusionError, match="PermutationSpec"):
        FedMA({"a": (None,)})  # type: ignore[arg-type]
    with pytest.raises(FusionError, match="sweeps"):
        FedMA(SPEC, sweeps=0)


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_client_keeps_frozen_parameters_fixed() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    model = _Mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, x, y, epochs=2, lr=1e-2, seed=0, frozen=["layers.0.weight", "layers.0.bias"])
    after = model.state_dict()
    assert torch.equal(after["layers.0.weight"], before["layers.0.weight"])
    assert not torch.equal(after["layers.2.weight"], before["layers.2.weight"])
    with pytest.raises(FusionError, match="does not have"):
        train_local(model, x, y, frozen=["nope"])
    app = make_client_app(_Mlp, lambda context: (x, y), lr=1e-2)
    config = ConfigRecord({"server-round": 2, "frozen": ["layers.2.weight", "layers.2.bias"]})
    msg = Message(
        content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}),
        dst_node_id=1, message_type=MessageType.TRAIN,
    )
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    got = app(msg, context).content["arrays"].to_torch_state_dict()
    assert torch.equal(got["layers.2.bias"], model.state_dict()["layers.2.bias"])
    assert not torch.equal(got["layers.0.weight"], model.state_dict()["layers.0.weight"])
