"""FedMA (Wang, Yurochkin, Sun, Papailiopoulos & Khazaeni, ICLR 2020) as a Flower strategy.

Federated matched averaging, layer by layer. With the model's layers ``1..L`` in feed-forward
order (:func:`~._fedma_layers.layer_plan`; layer ``L``, the classifier, has no permutable
output units):

- round 1: every client trains the whole model; the server matches layer 1's units across
  clients and averages them in the matched order;
- round ``l`` (``2 <= l <= L - 1``): every client receives layers ``1..l-1`` of the global
  model, frozen, and its own layers ``l..L`` with their input units put into the matched
  order; it retrains those layers; the server matches layer ``l``;
- round ``L``: clients retrain the last layer above the frozen matched layers; the server
  averages it;
- later rounds: FedAvg-style rounds on the whole model (no layer frozen).

A round whose aggregation is left out (too few valid clients, a failed or non-finite fusion)
matches the same layer again the next round.

Departures from the paper, named:

- fixed size: the global layer keeps the clients' width; BBP-MAP's option to open new global
  units for clients' unmatched ones is not used. The matching cost is the squared Euclidean
  distance of the units' weights (BBP-MAP's Gaussian cost with equal variances and no new-unit
  term), minimised by the Hungarian algorithm client by client against the weighted mean of
  the others, in random order, until no assignment changes
  (:func:`~._fedma_layers.match_layer`);
- the last layer is averaged weighted by example counts (or uniformly), not by each client's
  per-class proportions;
- the server keeps each client's last model to send it back in the matched order (the paper
  sends the permutation and lets the client apply it; the result is the same model);
- after the layer-wise rounds come ordinary FedAvg rounds; the paper's "FedMA with
  communication", which repeats the whole layer-wise pass, is not implemented.

The client side is :func:`gamfsolve.adapters.flower.make_client_app`: it freezes the
parameters named in the round's ``frozen`` config entry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from gamfsolve import FusionError, PermutationSpec, permute

from ._fedma_layers import Layer, layer_plan, match_layer
from ._flower_base import ScreenedStrategy, Weighting
from ._flower_checks import Accepted
from ._flower_norms import DEFAULT_NORM_SCREEN

__all__ = ["FROZEN_KEY", "FedMA"]

logger = logging.getLogger("gamfsolve.adapters.flower")

FROZEN_KEY = "frozen"


class FedMA(ScreenedStrategy):
    """FedMA's layer-wise matched averaging (module docstring), screened like :class:`FedGAMF`.

    Parameters
    ----------
    spec : PermutationSpec
        The model's permutation groups; each floating-point parameter's first axis names the
        layer it belongs to (PyTorch's layout).
    sweeps : int
        Most passes over the clients when matching one layer.
    seed : int
        Seed of the matching's client order; round ``r`` uses ``seed + r``.
    weighting, norm_screen, **fedavg_options
        As for :class:`FedGAMF`.

    Attributes
    ----------
    stage : int
        Index of the next layer to match (``len(layers)``: the layer-wise rounds are done).
    match_log : list of dict
        Per matched round: the layer's group, clients, sweeps, seconds, and how many clients
        the matching put in another unit order than the first (``permuted``).
    """

    def __init__(
        self,
        spec: PermutationSpec,
        *,
        sweeps: int = 10,
        seed: int = 0,
        weighting: Weighting = "examples",
        norm_screen: float | None = DEFAULT_NORM_SCREEN,
        **fedavg_options: Any,
    ) -> None:
        if not isinstance(spec, PermutationSpec):
            raise FusionError(f"spec must be a gamfsolve.PermutationSpec, got {type(spec).__name__}")
        if not isinstance(sweeps, int) or sweeps < 1:
            raise FusionError(f"sweeps must be a positive int, got {sweeps!r}")
        super().__init__(weighting=weighting, norm_screen=norm_screen, **fedavg_options)
        self.spec = spec
        self.sweeps = sweeps
        self.seed = seed
        self.layers: list[Layer] | None = None
        self.stage = 0
        self.match_log: list[dict[str, Any]] = []
        self._clients: dict[int, dict[str, np.ndarray]] = {}  # node -> its model in the matched order
        self._pending: tuple[int, dict[int, dict[str, np.ndarray]]] | None = None

    def frozen(self) -> list[str]:
        """The parameters the clients keep fixed this round (the layers matched so far)."""
        if self.layers is None or self.stage >= len(self.layers):
            return []
        return [p for layer in self.layers[: self.stage] for p in layer.params]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling; during the layer-wise rounds each client gets its own matched model."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.layers is None:
            names = [k for k, v in (self._global or {}).items() if np.issubdtype(v.dtype, np.floating)]
            self.layers = layer_plan(self.spec, names)
        frozen = self.frozen()
        out = []
        for msg in messages:
            cfg = ConfigRecord({**dict(config), "server-round": server_round, FROZEN_KEY: frozen})
            own = self._clients.get(msg.metadata.dst_node_id) if frozen else None
            record = arrays if own is None else ArrayRecord({k: Array(np.array(v, order="C")) for k, v in own.items()})
            content = RecordDict({self.arrayrecord_key: record, self.configrecord_key: cfg})
            out.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=msg.metadata.dst_node_id))
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen, match this stage's layer, average; the stage advances only when the round is kept."""
        self._pending = None
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self._pending is not None:
            self.stage, self._clients = self._pending
        return arrays, metrics

    def fuse(
        self, server_round: int, accepted: list[Accepted], weights: list[float] | None
    ) -> dict[str, np.ndarray] | None:
        """Match the stage's layer (if any), then the weighted mean of the clients' matched models."""
        if self.layers is None:
            self.layers = layer_plan(self.spec, [k for k, v in accepted[0].arrays.items() if v.dtype.kind == "f"])
        w = weights if weights is not None else [1.0] * len(accepted)
        models = [a.arrays for a in accepted]
        stage = self.stage
        if stage < len(self.layers) and self.layers[stage].group is not None:
            models = self._match(server_round, self.layers[stage], models, w)
        fused = _mean(models, w)
        if stage < len(self.layers):
            done = {p for layer in self.layers[: stage + 1] for p in layer.params}
            clients = {
                a.node_id: {k: (fused[k] if k in done else m[k]) for k in m} for a, m in zip(accepted, models, strict=True)
            }
            self._pending = (stage + 1, clients)
        else:
            self._pending = (stage, {})
        return fused

    def _match(
        self, server_round: int, layer: Layer, models: list[dict[str, np.ndarray]], w: list[float]
    ) -> list[dict[str, np.ndarray]]:
        t0 = time.perf_counter()
        perms, sweeps = match_layer(models, layer.params, w, seed=self.seed + server_round, sweeps=self.sweeps)
        group = str(layer.group)
        floats = {k for k in models[0] if models[0][k].dtype.kind == "f"}
        spec = PermutationSpec({k: v for k, v in self.spec.axes.items() if k in floats})
        aligned = [
            {**m, **permute({k: m[k] for k in floats}, spec, {group: p})} for m, p in zip(models, perms, strict=True)
        ]
        permuted = sum(not np.array_equal(p, perms[0]) for p in perms[1:])
        seconds = time.perf_counter() - t0
        self.match_log.append(
            {"round": server_round, "group": layer.group, "clients": len(models), "sweeps": sweeps,
             "seconds": seconds, "permuted": int(permuted)}
        )
        logger.info(
            "round %d: FedMA matched layer %r of %d clients (%d sweeps, %d permuted, %.2fs)",
            server_round, layer.group, len(models), sweeps, permuted, seconds,
        )
        return aligned


def _mean(models: list[dict[str, np.ndarray]], w: list[float]) -> dict[str, np.ndarray]:
    """Weighted mean of the floating-point arrays (in their dtype); other arrays from the first model."""
    total = float(sum(w))
    out: dict[str, np.ndarray] = {}
    for k, x in models[0].items():
        if x.dtype.kind != "f":
            out[k] = x
            continue
        acc = sum((wi / total) * m[k].astype(np.float64) for wi, m in zip(w, models, strict=True))
        out[k] = np.asarray(acc).astype(x.dtype)
    return out
