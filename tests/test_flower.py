"""FedGAMF's aggregation, called directly with crafted Flower messages, and the clients."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("flwr")
torch = pytest.importorskip("torch")

from flower_helpers import LOGGER, SPEC, as_numpy, server_identity  # noqa: E402, F401
from flower_helpers import forward as _forward  # noqa: E402
from flower_helpers import model as _model  # noqa: E402
from flower_helpers import permuted as _permuted  # noqa: E402
from flower_helpers import reply as _reply  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from gamfsolve.adapters.flower import FedGAMF, make_client_app, moon_loss, train_local  # noqa: E402

import gamfsolve  # noqa: E402
from gamfsolve import FusionError  # noqa: E402

_np = as_numpy


def test_average_method_equals_fedavg_and_keeps_keys() -> None:
    models = [_model(0), _model(1), _model(2)]
    replies = [_reply(i + 1, m, n) for i, (m, n) in enumerate(zip(models, [10, 30, 60], strict=True))]
    ours, metrics = FedGAMF(SPEC, method="average").aggregate_train(1, replies)
    theirs, _ = FedAvg().aggregate_train(1, replies)
    assert ours is not None and theirs is not None and metrics is not None
    assert list(ours.keys()) == list(models[0])
    got, want = _np(ours), _np(theirs)
    for k in models[0]:
        if k != "steps":
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
    assert got["steps"].dtype == np.int64 and int(got["steps"]) == 7  # non-float: first client's, dtype kept


def test_uniform_weighting() -> None:
    models = [_model(0), _model(1)]
    out, _ = FedGAMF(SPEC, method="average", weighting="uniform").aggregate_train(
        1, [_reply(1, models[0], 1), _reply(2, models[1], 99)]
    )
    assert out is not None
    expected = (models[0]["layers.1.bias"] + models[1]["layers.1.bias"]) / 2
    np.testing.assert_allclose(_np(out)["layers.1.bias"], expected, rtol=1e-6)


@pytest.mark.parametrize("method", ["gamf", "weight_matching", "ot"])
def test_alignment_undoes_a_permutation(method: str) -> None:
    if method not in gamfsolve.METHODS:
        pytest.skip(f"{method} is not registered yet")
    base = _model(3)
    perm = np.random.default_rng(0).permutation(8)
    replies = [_reply(1, base, 10), _reply(2, _permuted(base, perm), 30)]
    out, _ = FedGAMF(SPEC, method=method, seed=0).aggregate_train(1, replies)
    assert out is not None
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(_forward(_np(out), x), _forward(base, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda: _reply(9, None, error="client crashed"), "client crashed"),
        (lambda: _reply(9, {**_model(5), "layers.1.bias": np.array([np.nan, 0, 0], np.float32)}), "NaN"),
        (lambda: _reply(9, {**_model(5), "layers.1.bias": np.full(3, np.inf, np.float32)}), "NaN or Inf"),
        (lambda: _reply(9, {**_model(5), "layers.0.bias": np.zeros(9, np.float32)}), "shape"),
        (lambda: _reply(9, {k: v for k, v in _model(5).items() if k != "layers.1.bias"}), "key set"),
        (lambda: _reply(9, {**_model(5), "extra": np.zeros(2, np.float32)}), "key set"),
        (lambda: _reply(9, _model(5), None), "num-examples"),
        (lambda: _reply(9, _model(5), float("nan")), "num-examples"),
    ],
    ids=["error", "nan", "inf", "shape", "missing-key", "extra-key", "no-count", "nan-count"],
)
def test_bad_client_is_left_out(bad: Callable[[], Message], reason: str, caplog: pytest.LogCaptureFixture) -> None:
    good = [_model(0), _model(1)]
    strategy = FedGAMF(SPEC, method="average", min_train_nodes=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out, _ = strategy.aggregate_train(4, [_reply(1, good[0], 10), bad(), _reply(2, good[1], 10)])
    assert out is not None
    clean, _ = FedGAMF(SPEC, method="average").aggregate_train(4, [_reply(1, good[0], 10), _reply(2, good[1], 10)])
    assert clean is not None
    for k, v in _np(clean).items():
        np.testing.assert_array_equal(_np(out)[k], v)
    assert any("node 9" in r.getMessage() and reason in r.getMessage() for r in caplog.records), caplog.text


def test_too_few_valid_clients_keep_the_global_model(caplog: pytest.LogCaptureFixture) -> None:
    nan_model = {**_model(1), "layers.0.weight": np.full((8, 4), np.nan, np.float32)}
    strategy = FedGAMF(SPEC, method="average", min_train_nodes=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out, metrics = strategy.aggregate_train(2, [_reply(1, _model(0)), _reply(2, nan_model)])
    assert out is None and metrics is None  # Flower keeps the previous global model on None
    assert "fewer than the minimum 2" in caplog.text


def test_empty_round_keeps_the_global_model() -> None:
    assert FedGAMF(SPEC, method="average").aggregate_train(1, []) == (None, None)


def test_reference_is_the_global_model_sent() -> None:
    class Grid:
        def get_node_ids(self) -> list[int]:
            return [1, 2, 3]

    strategy = FedGAMF(SPEC, method="average", min_train_nodes=1)
    glob = _model(0)
    sent = strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in glob.items()}), ConfigRecord(), Grid())  # type: ignore[arg-type]
    assert len(list(sent)) == 3
    wrong = {k: v for k, v in _model(1).items() if k != "steps"}  # a majority of two agreeing wrong models
    out, _ = strategy.aggregate_train(1, [_reply(1, wrong), _reply(2, wrong), _reply(3, _model(2))])
    assert out is not None and set(out.keys()) == set(glob)


def test_bad_configuration_raises() -> None:
    with pytest.raises(FusionError, match="unknown method"):
        FedGAMF(SPEC, method="nope")
    with pytest.raises(FusionError, match="weighting"):
        FedGAMF(SPEC, weighting="size")  # type: ignore[arg-type]
    with pytest.raises(FusionError, match="PermutationSpec"):
        FedGAMF({"a": (None,)})  # type: ignore[arg-type]
    partial = gamfsolve.PermutationSpec({k: v for k, v in SPEC.axes.items() if k != "layers.1.bias"})
    with pytest.raises(FusionError, match="does not cover"):
        FedGAMF(partial, method="average").aggregate_train(1, [_reply(1, _model(0)), _reply(2, _model(1))])


def test_moon_loss() -> None:
    z = torch.randn(6, 4)
    np.testing.assert_allclose(float(moon_loss(z, z.clone(), z.clone())), np.log(2), rtol=1e-5)
    assert float(moon_loss(z, z.clone(), -z, temperature=0.5)) < 0.02  # pulled to global, far from previous


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward_repr(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.body(x))
        return z, self.head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_repr(x)[1]


def test_train_local_plain_and_moon() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    model = _Tiny()
    glob = _Tiny()
    glob.load_state_dict(model.state_dict())
    first = train_local(model, x, y, epochs=1, lr=1e-2, seed=0)
    later = train_local(model, x, y, epochs=5, lr=1e-2, seed=0)
    assert later < first
    loss = train_local(model, x, y, mu=1.0, global_model=glob, seed=0)
    assert np.isfinite(loss)
    with pytest.raises(FusionError, match="global model"):
        train_local(model, x, y, mu=1.0)
    with pytest.raises(FusionError, match="forward_repr"):
        train_local(torch.nn.Linear(4, 3), x, y, mu=1.0, global_model=torch.nn.Linear(4, 3))


def test_solver_warning_goes_to_the_log(caplog: pytest.LogCaptureFixture) -> None:
    if "gamf" not in gamfsolve.METHODS:
        pytest.skip("gamf is not registered yet")
    strategy = FedGAMF(SPEC, method="gamf", seed=0, match_options={"max_sweeps": 1, "max_iter": 12, "gamma": 0.7})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out, _ = strategy.aggregate_train(3, [_reply(i, _model(i)) for i in (1, 2, 3)])
    assert out is not None
    assert "round 3: gamf stopped after 12 iterations" in caplog.text


def _train_message(server_round: int, algorithm: str) -> Message:
    config = ConfigRecord({"server-round": server_round, "algorithm": algorithm})
    content = RecordDict({"arrays": ArrayRecord(_Tiny().state_dict()), "config": config})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_client_algorithm_per_round_and_moon_restarts_at_round_one() -> None:
    """Several runs in one simulation: the config picks the algorithm; round 1 drops MOON's previous model."""
    from flwr.app import Context
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    app = make_client_app(_Tiny, lambda context: (x, y), algorithm="local")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    had = [
        app(_train_message(r, algo), context).content["metrics"].get("moon-had-previous")
        for r, algo in [(1, "moon"), (2, "moon"), (1, "moon")]
    ]
    assert had == [0.0, 1.0, 0.0]
    reply = app(_train_message(1, "local"), context)
    assert "moon-had-previous" not in reply.content["metrics"]
    assert "gamfsolve-moon-previous" not in context.state
    with pytest.raises(FusionError, match="algorithm"):
        app(_train_message(1, "fedprox"), context)


def test_match_log_records_each_fused_round() -> None:
    base = _model(0)
    perm = np.array([3, 0, 1, 2, 7, 4, 5, 6])
    strategy = FedGAMF(SPEC, method="weight_matching", seed=0)
    strategy.aggregate_train(1, [_reply(1, base), _reply(2, _permuted(base, perm))])
    strategy.aggregate_train(2, [_reply(1, base), _reply(2, base)])
    assert [(m["round"], m["clients"], m["permuted"]) for m in strategy.match_log] == [(1, 2, 1), (2, 2, 0)]


def _narrow(m: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """``m`` cut to its first ``n`` hidden units (a client of smaller width)."""
    return {**m, "layers.0.weight": m["layers.0.weight"][:n], "layers.0.bias": m["layers.0.bias"][:n],
            "layers.1.weight": m["layers.1.weight"][:, :n]}


@pytest.mark.parametrize("method", ["average", "gamf", "ot"])
def test_clients_of_smaller_width_are_fused_into_the_widest(method: str, caplog: pytest.LogCaptureFixture) -> None:
    from flower_helpers import FakeGrid

    wide, narrow = _model(0), _narrow(_model(1), 6)
    strategy = FedGAMF(SPEC, method=method, seed=0, narrower=True)
    strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in wide.items()}), ConfigRecord(), FakeGrid([1, 2]))  # type: ignore[arg-type]
    out, _ = strategy.aggregate_train(1, [_reply(1, wide), _reply(2, narrow)])
    assert out is not None and _np(out)["layers.0.weight"].shape == (8, 4)
    if method == "average":  # HeteroFL: the shared leading units averaged, the rest the wide client's
        got = _np(out)["layers.0.weight"]
        np.testing.assert_allclose(got[:6], (wide["layers.0.weight"][:6] + narrow["layers.0.weight"]) / 2, rtol=1e-6)
        np.testing.assert_allclose(got[6:], wide["layers.0.weight"][6:], rtol=1e-6)
    plain = FedGAMF(SPEC, method=method, seed=0, min_train_nodes=1)
    plain.configure_train(1, ArrayRecord({k: Array(v) for k, v in wide.items()}), ConfigRecord(), FakeGrid([1, 2]))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        plain.aggregate_train(1, [_reply(1, wide), _reply(2, narrow)])
    assert "node 2 left out" in caplog.text and "shape" in caplog.text


def test_load_leading_and_fresh_initialisation() -> None:
    from flwr.app import Context
    from gamfsolve.adapters.flower import load_leading

    big, small = torch.nn.Linear(4, 8), torch.nn.Linear(4, 6)
    load_leading(small, ArrayRecord(big.state_dict()))
    assert torch.equal(small.weight, big.weight[:6]) and torch.equal(small.bias, big.bias[:6])
    with pytest.raises(FusionError, match="does not contain"):
        load_leading(big, ArrayRecord(small.state_dict()))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    app = make_client_app(_Tiny, lambda context: (x, y), epochs=0)  # no training: the reply is the start model
    sent = _Tiny().state_dict()

    def start(config: dict, partition: int) -> dict:
        msg = Message(content=RecordDict({"arrays": ArrayRecord(sent), "config": ConfigRecord(config)}),
                      dst_node_id=1, message_type=MessageType.TRAIN)
        context = Context(run_id=1, node_id=1, node_config={"partition-id": partition}, state=RecordDict(), run_config={})
        return app(msg, context).content["arrays"].to_torch_state_dict()

    assert torch.equal(start({"server-round": 1}, 0)["body.weight"], sent["body.weight"])
    fresh = [start({"server-round": 1, "init-seed": 3}, p)["body.weight"] for p in (0, 0, 1)]
    assert not torch.equal(fresh[0], sent["body.weight"]) and torch.equal(fresh[0], fresh[1])
    assert not torch.equal(fresh[0], fresh[2])  # each partition its own initialisation


def test_permuted_count_reads_only_each_clients_own_units() -> None:
    """A narrower client whose own units sit where the widest client's units of the same index do
    (slice averaging's placement) is not permuted, whatever fills its empty slots; a swap of two of
    its own units is; at one width the count is of orders other than the first client's."""
    from gamfsolve.adapters.flower import _permuted

    wide = np.array([2, 0, 3, 1])  # the wide client's unit at each universe slot
    narrow_in_place = np.array([2, 0, 3, 1])  # own units 0, 1 (2 and 3 are empty slots) where the wide ones are
    narrow_empty_moved = np.array([3, 0, 2, 1])  # the same own units, empty slots filled otherwise
    narrow_swapped = np.array([2, 1, 3, 0])  # own units 0 and 1 swapped
    sizes = [{"h": 4}, {"h": 2}, {"h": 2}, {"h": 2}]
    perms = {"h": [wide, narrow_in_place, narrow_empty_moved, narrow_swapped]}
    assert _permuted(perms, sizes) == 1
    # the widest client need not come first: it is the reference
    assert _permuted({"h": [narrow_swapped, wide, narrow_in_place]}, [{"h": 2}, {"h": 4}, {"h": 2}]) == 1
    same = {"h": [wide, wide.copy(), np.array([0, 1, 2, 3])]}
    assert _permuted(same, [{"h": 4}] * 3) == 1


def test_a_leading_slice_client_is_not_counted_as_permuted(caplog: pytest.LogCaptureFixture) -> None:
    """Clients that trained the leading slices of the global model (here: unchanged but for a
    little noise) are fused in slice averaging's placement, and the log says no client moved."""
    from flower_helpers import FakeGrid

    wide = _model(0)
    rng = np.random.default_rng(3)
    noisy = {k: (v + 1e-3 * rng.standard_normal(v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v
             for k, v in wide.items()}
    strategy = FedGAMF(SPEC, method="gamf", seed=0, narrower=True)
    strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in wide.items()}), ConfigRecord(), FakeGrid([1, 2, 3]))  # type: ignore[arg-type]
    out, _ = strategy.aggregate_train(1, [_reply(1, _narrow(noisy, 6)), _reply(2, wide), _reply(3, _narrow(wide, 4))])
    assert out is not None and _np(out)["layers.0.weight"].shape == (8, 4)
    assert strategy.match_log[-1]["permuted"] == 0
