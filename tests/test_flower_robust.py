"""No single client reply ends a FedGAMF run or corrupts its global model.

Each test sends one round's replies, crafted as Flower messages, to ``aggregate_train`` and
checks that the round goes on (or keeps the previous global model) with a WARNING naming the
node and the reason.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("flwr")

from flower_helpers import LOGGER, SPEC, FakeGrid, as_numpy, model, reply, server_identity  # noqa: F401
from flwr.app import Array, ArrayRecord, ConfigRecord
from gamfsolve.adapters import flower as flower_adapter
from gamfsolve.adapters.flower import FedGAMF

from gamfsolve import FusionError


def _sent(strategy: FedGAMF, glob: dict[str, np.ndarray], nodes: int = 3) -> None:
    """Let the strategy send ``glob`` to ``nodes`` clients (its reference for the replies)."""
    record = ArrayRecord({k: Array(v) for k, v in glob.items()})
    assert len(list(strategy.configure_train(1, record, ConfigRecord(), FakeGrid(list(range(1, nodes + 1)))))) == nodes


def _near(glob: dict[str, np.ndarray], seed: int, scale: float = 0.01) -> dict[str, np.ndarray]:
    """A client's update: the global model plus a small random step."""
    step = model(seed)
    return {k: (v + scale * step[k] if v.dtype.kind == "f" else v) for k, v in glob.items()}


def _round(strategy: FedGAMF, replies: list, caplog: pytest.LogCaptureFixture) -> dict[str, np.ndarray] | None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out, _ = strategy.aggregate_train(1, replies)
    return None if out is None else as_numpy(out)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtype_is_cast_to_the_global_models(dtype: type, caplog: pytest.LogCaptureFixture) -> None:
    glob = model(0)
    strategy = FedGAMF(SPEC, method="average")
    _sent(strategy, glob)
    a, b = _near(glob, 1), _near(glob, 2)
    odd = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in b.items()}
    out = _round(strategy, [reply(1, a), reply(2, odd)], caplog)
    assert out is not None and all(out[k].dtype == glob[k].dtype for k in glob)
    cast_back = {k: v.astype(glob[k].dtype) for k, v in odd.items()}
    np.testing.assert_allclose(out["layers.0.weight"], (a["layers.0.weight"] + cast_back["layers.0.weight"]) / 2, rtol=1e-6)
    assert "node 2 sent" in caplog.text and "cast to the global model's" in caplog.text


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("layers.0.bias", np.full(8, 1e300), "beyond the range of float32"),
        ("steps", np.array(2**40, dtype=np.int64).astype(np.float64), "not castable"),
        ("layers.1.bias", np.arange(3, dtype=np.int64), "not castable"),
    ],
    ids=["float64-overflow", "float-for-int", "int-for-float"],
)
def test_uncastable_dtype_is_left_out(name: str, value: np.ndarray, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    glob = model(0)
    strategy = FedGAMF(SPEC, method="average", min_train_nodes=2)
    _sent(strategy, glob)
    good = [_near(glob, 1), _near(glob, 2)]
    out = _round(strategy, [reply(1, good[0]), reply(9, {**_near(glob, 3), name: value}), reply(2, good[1])], caplog)
    assert out is not None
    np.testing.assert_allclose(out["layers.0.weight"], (good[0]["layers.0.weight"] + good[1]["layers.0.weight"]) / 2)
    assert any("node 9 left out" in r.getMessage() and reason in r.getMessage() for r in caplog.records), caplog.text


def test_narrower_int_dtype_is_cast_when_values_fit(caplog: pytest.LogCaptureFixture) -> None:
    glob = model(0)
    strategy = FedGAMF(SPEC, method="average")
    _sent(strategy, glob)
    out = _round(strategy, [reply(1, {**_near(glob, 1), "steps": np.array(7, np.int32)}), reply(2, _near(glob, 2))], caplog)
    assert out is not None and out["steps"].dtype == np.int64 and int(out["steps"]) == 7


def test_overflowing_example_counts_do_not_zero_the_model(caplog: pytest.LogCaptureFixture) -> None:
    glob = model(0)
    strategy = FedGAMF(SPEC, method="average")
    _sent(strategy, glob)
    a, b = _near(glob, 1), _near(glob, 2)
    out = _round(strategy, [reply(1, a, 1e308), reply(2, b, 1e308)], caplog)
    assert out is not None
    for k in ("layers.0.weight", "layers.1.bias"):
        np.testing.assert_allclose(out[k], (a[k] + b[k]) / 2, rtol=1e-6)
    out = _round(strategy, [reply(1, a, 1e308), reply(2, b, 1e-300)], caplog)  # proportions kept
    assert out is not None
    np.testing.assert_allclose(out["layers.0.weight"], a["layers.0.weight"], rtol=1e-6)


@pytest.mark.parametrize("method", ["average", "gamf", "ot"])
@pytest.mark.parametrize("scale", [1e6, 1e19])
def test_update_norm_screen_leaves_out_a_scaled_update(method: str, scale: float, caplog: pytest.LogCaptureFixture) -> None:
    glob = model(0)
    strategy = FedGAMF(SPEC, method=method, seed=0)
    _sent(strategy, glob)
    honest = [_near(glob, s) for s in (1, 2, 3)]
    poisoned = {k: (glob[k] + scale * (v - glob[k]) if v.dtype.kind == "f" else v) for k, v in _near(glob, 4).items()}
    out = _round(strategy, [reply(1, honest[0]), reply(2, honest[1]), reply(7, poisoned), reply(3, honest[2])], caplog)
    assert out is not None
    assert any("node 7 left out" in r.getMessage() and "beyond the round's bar" in r.getMessage() for r in caplog.records)
    clean = FedGAMF(SPEC, method=method, seed=0)
    _sent(clean, glob)
    want = as_numpy(clean.aggregate_train(1, [reply(i + 1, h) for i, h in enumerate(honest)])[0])  # type: ignore[arg-type]
    for k in want:
        np.testing.assert_allclose(out[k], want[k], rtol=1e-5, atol=1e-6)


def test_norm_screen_with_two_clients_keeps_the_smaller_update(caplog: pytest.LogCaptureFixture) -> None:
    glob = model(0)
    strategy = FedGAMF(SPEC, method="average", min_train_nodes=1)
    _sent(strategy, glob, nodes=2)
    honest = _near(glob, 1)
    poisoned = {k: (glob[k] + 1e6 * (v - glob[k]) if v.dtype.kind == "f" else v) for k, v in _near(glob, 2).items()}
    out = _round(strategy, [reply(1, honest), reply(2, poisoned)], caplog)
    assert out is not None
    np.testing.assert_allclose(out["layers.0.weight"], honest["layers.0.weight"])
    assert "node 2 left out" in caplog.text


def test_norm_screen_passes_ordinary_spread_and_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    glob = model(0)
    # honest clients whose steps differ 8-fold (more data, more steps) all pass the default screen
    replies = [reply(i + 1, _near(glob, i + 1, scale)) for i, scale in enumerate([0.01, 0.02, 0.04, 0.08])]
    strategy = FedGAMF(SPEC, method="average")
    _sent(strategy, glob, nodes=4)
    assert _round(strategy, replies, caplog) is not None and "left out" not in caplog.text
    scaled = {k: (glob[k] + 1e6 * (v - glob[k]) if v.dtype.kind == "f" else v) for k, v in _near(glob, 5).items()}
    off = FedGAMF(SPEC, method="average", norm_screen=None)
    _sent(off, glob, nodes=5)
    out = _round(off, [*replies, reply(5, scaled)], caplog)
    assert out is not None and np.abs(out["layers.0.weight"]).max() > 1e3  # accepted: the screen is what stops it
    with pytest.raises(FusionError, match="norm_screen"):
        FedGAMF(SPEC, norm_screen=-1.0)


def test_clients_at_1e19_are_matched_and_fused(caplog: pytest.LogCaptureFixture) -> None:
    glob = model(0)
    strategy = FedGAMF(SPEC, method="gamf", seed=0, norm_screen=None)
    _sent(strategy, glob)
    huge = [{k: (v * 1e19 if v.dtype.kind == "f" else v) for k, v in _near(glob, s).items()} for s in (1, 2, 3)]
    out = _round(strategy, [reply(i + 1, m) for i, m in enumerate(huge)], caplog)
    # the matching rescales by a power of two, so weights of 1e19 are fused, finite, at their scale
    assert out is not None and all(np.isfinite(v).all() for v in out.values())
    assert 1e18 < np.abs(out["layers.0.weight"]).max() < 1e21


def test_a_failing_matching_keeps_the_global_model(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_match(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise FloatingPointError("overflow encountered in the scores")

    monkeypatch.setattr(flower_adapter, "match", failing_match)
    glob = model(0)
    strategy = FedGAMF(SPEC, method="gamf", seed=0, norm_screen=None)
    _sent(strategy, glob)
    out = _round(strategy, [reply(i + 1, _near(glob, s)) for i, s in enumerate((1, 2, 3))], caplog)
    assert out is None and "the aggregation failed" in caplog.text and "the global model is kept" in caplog.text


def test_non_finite_fused_model_keeps_the_global_model(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def overflowing_merge(models, spec, result, *, weights=None):  # type: ignore[no-untyped-def]
        return {k: np.full_like(v, np.inf) for k, v in models[0].items()}

    monkeypatch.setattr(flower_adapter, "merge", overflowing_merge)
    glob = model(0)
    strategy = FedGAMF(SPEC, method="average")
    _sent(strategy, glob)
    out = _round(strategy, [reply(1, _near(glob, 1)), reply(2, _near(glob, 2))], caplog)
    assert out is None and "the fused model has NaN/Inf" in caplog.text
