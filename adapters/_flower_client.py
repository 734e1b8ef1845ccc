"""Flower clients for :class:`gamfsolve.adapters.flower.FedGAMF`: plain local training and MOON.

MOON (Li, He & Song, CVPR 2021) adds a model-contrastive term to the local loss: the local
model's projection-head representation ``z`` is pulled toward the global model's ``z_glob``
and pushed from the previous local model's ``z_prev``::

    l_con = -log( exp(cos(z, z_glob)/T) / (exp(cos(z, z_glob)/T) + exp(cos(z, z_prev)/T)) )
    loss  = cross_entropy(logits, y) + mu * l_con

A model used with MOON must define ``forward_repr(x) -> (z, logits)``.

With :class:`FedGAMF` the global model comes back in the matching's common unit order, while
the previous local model stays in the client's own order; when ``z``'s units form a
permutation group, ``z_prev`` is compared in a different order (a weaker negative). Giving
the projection layer a fixed output (``None`` in the spec) avoids this.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection
from typing import Any, Literal

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from gamfsolve import FusionError

from ._torch_train import evaluate_model, fit

__all__ = ["evaluate_model", "load_leading", "make_client_app", "moon_loss", "train_local"]

logger = logging.getLogger("gamfsolve.adapters.flower")

DataFn = Callable[[Context], tuple[torch.Tensor, torch.Tensor]]
PREVIOUS_KEY = "gamfsolve-moon-previous"


def moon_loss(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """MOON's model-contrastive loss, averaged over the batch (shapes ``(B, d)``)."""
    pos = nn.functional.cosine_similarity(z, z_glob, dim=-1)
    neg = nn.functional.cosine_similarity(z, z_prev, dim=-1)
    logits = torch.stack([pos, neg], dim=1) / temperature
    return nn.functional.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


def _repr(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    forward_repr = getattr(model, "forward_repr", None)
    if forward_repr is None:
        raise FusionError(
            f"MOON needs the model to define forward_repr(x) -> (z, logits); {type(model).__name__} does not"
        )
    z, logits = forward_repr(x)
    return z, logits


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 32,
    mu: float = 0.0,
    temperature: float = 0.5,
    global_model: nn.Module | None = None,
    previous_model: nn.Module | None = None,
    seed: int | None = None,
    frozen: Collection[str] = (),
) -> float:
    """Train ``model`` in place with Adam on ``(x, y)``; return the mean training loss.

    With ``mu > 0`` the MOON term is added, comparing with ``global_model`` (required) and
    ``previous_model`` (defaults to the global model, as in MOON's first round). Parameters
    named in ``frozen`` (``model.named_parameters()`` names) are not trained (FedMA's matched layers).
    """
    if mu > 0 and global_model is None:
        raise FusionError("MOON (mu > 0) needs the global model")
    named = dict(model.named_parameters())
    unknown = sorted(set(frozen) - set(named))
    if unknown:
        raise FusionError(f"frozen names parameters {unknown} that {type(model).__name__} does not have")
    for m in (global_model, previous_model):
        if m is not None:
            m.eval()
    previous_model = previous_model if previous_model is not None else global_model
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    trainable = [p for name, p in named.items() if name not in frozen]
    if not trainable:  # nothing to train: the loss of the model as it is
        return evaluate_model(model, x, y)[0]

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if mu <= 0:
            return nn.functional.cross_entropy(model(xb), yb)
        z, logits = _repr(model, xb)
        with torch.no_grad():
            z_glob, _ = _repr(global_model, xb)  # type: ignore[arg-type]
            z_prev, _ = _repr(previous_model, xb)  # type: ignore[arg-type]
        return nn.functional.cross_entropy(logits, yb) + mu * moon_loss(z, z_glob, z_prev, temperature)

    return fit(model, x, y, batch_loss, params=trainable, epochs=epochs, lr=lr, batch_size=batch_size, generator=gen)


def _global_arrays(msg: Message) -> ArrayRecord:
    records = list(msg.content.array_records.values())
    if len(records) != 1:
        raise FusionError(f"expected one ArrayRecord with the global model, found {len(records)}")
    return records[0]


def _config(msg: Message) -> dict[str, Any]:
    records = list(msg.content.config_records.values())
    return dict(records[0]) if records else {}


def load_leading(model: nn.Module, arrays: ArrayRecord) -> None:
    """Load ``arrays`` into ``model``; an array larger than the model's gives its leading slice.

    For a narrower client (HeteroFL's convention, used for clients of different widths): each
    axis keeps its first units, e.g. a ``(64, 256)`` global weight into a ``(32, 128)`` one.
    """
    own = model.state_dict()
    state = arrays.to_torch_state_dict()
    for name, x in state.items():
        want = own.get(name)
        if want is None or tuple(x.shape) == tuple(want.shape):
            continue
        if x.ndim != want.ndim or any(w > g for w, g in zip(want.shape, x.shape, strict=True)):
            raise FusionError(
                f"global array {name!r} of shape {tuple(x.shape)} does not contain the model's {tuple(want.shape)}"
            )
        state[name] = x[tuple(slice(0, w) for w in want.shape)].clone()
    model.load_state_dict(state)


def _node_model(
    model_fn: Callable[[], nn.Module], node_model_fn: Callable[[Context], nn.Module] | None, context: Context
) -> nn.Module:
    return node_model_fn(context) if node_model_fn is not None else model_fn()


def make_client_app(
    model_fn: Callable[[], nn.Module],
    data_fn: DataFn,
    *,
    algorithm: Literal["local", "moon"] = "local",
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 32,
    mu: float = 1.0,
    temperature: float = 0.5,
    seed: int = 0,
    eval_data_fn: DataFn | None = None,
    node_model_fn: Callable[[Context], nn.Module] | None = None,
) -> ClientApp:
    """A Flower ``ClientApp`` that trains a PyTorch model locally (plainly or with MOON).

    ``model_fn()`` builds a fresh model; ``data_fn(context)`` returns this node's training
    tensors ``(x, y)`` (e.g. chosen by ``context.node_config["partition-id"]``). The train
    reply carries the state dict and ``{"train-loss", "num-examples"}``; the evaluate reply
    ``{"loss", "accuracy", "num-examples"}`` on ``eval_data_fn`` (default: the training data).
    The config keys ``local-epochs``, ``lr``, ``mu`` and ``algorithm`` override the defaults per
    round; ``frozen`` (a list of parameter names) keeps those parameters fixed (FedMA's
    clients); ``init-seed`` (an int) makes the client train a freshly initialised model (seeded
    by it and the partition id) instead of the global one: clients from different
    initialisations, as in one-shot fusion. ``node_model_fn(context)``, if given, builds this
    node's own model (e.g. a narrower one), into which the global arrays are loaded by leading
    slices (:func:`load_leading`). MOON keeps the previous local model in ``context.state`` (and reports
    ``moon-had-previous``); round 1 starts a new run, so a model kept from an earlier run in the
    same simulation (several ``strategy.start`` calls) is not used as the negative.
    """
    if algorithm not in ("local", "moon"):
        raise FusionError(f"algorithm must be 'local' or 'moon', got {algorithm!r}")
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = _config(msg)
        algo = str(cfg.get("algorithm", algorithm))
        if algo not in ("local", "moon"):
            raise FusionError(f"algorithm must be 'local' or 'moon', got {algo!r}")
        if int(cfg.get("server-round", 0)) == 1:  # a new run: no previous local model yet
            context.state.pop(PREVIOUS_KEY, None)
        global_arrays = _global_arrays(msg)
        partition = int(context.node_config.get("partition-id", 0))
        model = _node_model(model_fn, node_model_fn, context)
        load_leading(model, global_arrays)
        glob = copy.deepcopy(model)
        if "init-seed" in cfg:  # a fresh initialisation of this node's own
            torch.manual_seed(int(cfg["init-seed"]) * 1009 + partition)
            model = _node_model(model_fn, node_model_fn, context)
        x, y = data_fn(context)
        extra: dict[str, Any] = {}
        if algo == "moon":
            extra["global_model"] = glob
            if PREVIOUS_KEY in context.state:
                previous = _node_model(model_fn, node_model_fn, context)
                previous.load_state_dict(context.state[PREVIOUS_KEY].to_torch_state_dict())  # type: ignore[union-attr]
                extra["previous_model"] = previous
            extra["mu"] = float(cfg.get("mu", mu))
            extra["temperature"] = temperature
        loss = train_local(
            model,
            x,
            y,
            epochs=int(cfg.get("local-epochs", epochs)),
            lr=float(cfg.get("lr", lr)),
            batch_size=batch_size,
            seed=seed * 1_000_003 + int(cfg.get("server-round", 0)) * 1009 + partition,
            frozen=[str(n) for n in cfg.get("frozen", [])],
            **extra,
        )
        state = ArrayRecord(model.state_dict())
        if algo == "moon":
            context.state[PREVIOUS_KEY] = ArrayRecord(model.state_dict())
        metrics = MetricRecord({"train-loss": loss, "num-examples": len(y)})
        if algo == "moon":
            metrics["moon-had-previous"] = float("previous_model" in extra)
        return Message(content=RecordDict({"arrays": state, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        model = _node_model(model_fn, node_model_fn, context)
        load_leading(model, _global_arrays(msg))
        x, y = (eval_data_fn or data_fn)(context)
        loss, acc = evaluate_model(model, x, y)
        metrics = MetricRecord({"loss": loss, "accuracy": acc, "num-examples": len(y)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app
