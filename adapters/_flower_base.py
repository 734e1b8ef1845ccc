"""A FedAvg whose training rounds no single client can end or corrupt: the base of the
strategies in :mod:`gamfsolve.adapters.flower`.

Each round :meth:`ScreenedStrategy.aggregate_train` (1) screens the replies against the global
model sent (:func:`~._flower_checks.screen_replies`: errors, keys, shapes, dtypes cast where
safe, NaN/Inf, example counts), (2) screens the update sizes
(:func:`~._flower_norms.screen_update_norms`), (3) normalises the example counts safely,
(4) calls the subclass's :meth:`ScreenedStrategy.fuse` and (5) keeps the previous global model
when too few clients are left, when the fusion fails, or when its result is not finite.
Everything left out is logged at WARNING level and the run goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from gamfsolve import FusionError

from ._flower_checks import Accepted, Signature, screen_replies, signature_of
from ._flower_norms import DEFAULT_NORM_SCREEN, safe_weights, screen_update_norms

__all__ = ["ScreenedStrategy", "Weighting"]

logger = logging.getLogger("gamfsolve.adapters.flower")

Weighting = Literal["examples", "uniform"]


class ScreenedStrategy(FedAvg):
    """FedAvg's sampling and configuration with screened, fail-safe aggregation.

    Subclasses implement :meth:`fuse`. Parameters: ``weighting`` (``"examples"``: by the
    ``weighted_by_key`` metric, FedAvg's convention; ``"uniform"``), ``norm_screen`` (the
    update-norm screen's threshold, default 10.0; ``None`` turns it off; see
    :mod:`gamfsolve.adapters._flower_norms`), ``narrower`` (accept clients whose arrays are
    smaller than the global model's along some axes: clients of smaller widths; the fused
    model must still have the global model's shapes), and FedAvg's options.
    """

    def __init__(
        self,
        *,
        weighting: Weighting = "examples",
        norm_screen: float | None = DEFAULT_NORM_SCREEN,
        narrower: bool = False,
        **fedavg_options: Any,
    ) -> None:
        if weighting not in ("examples", "uniform"):
            raise FusionError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
        if norm_screen is not None and not (isinstance(norm_screen, (int, float)) and norm_screen > 0):
            raise FusionError(f"norm_screen must be a positive number or None, got {norm_screen!r}")
        super().__init__(**fedavg_options)
        self.weighting: Weighting = weighting
        self.norm_screen = None if norm_screen is None else float(norm_screen)
        self.narrower = bool(narrower)
        self._reference: Signature | None = None
        self._global: dict[str, np.ndarray] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's configuration; the global model sent is kept to check the replies against."""
        self._global = {k: v.numpy() for k, v in arrays.items()}
        self._reference = signature_of(self._global)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies and fuse the valid ones; ``(None, None)`` keeps the global model."""
        accepted = screen_replies(
            replies,
            self._reference,
            weight_key=self.weighted_by_key,
            need_weight=self.weighting == "examples",
            server_round=server_round,
            narrower=self.narrower,
        )
        accepted = screen_update_norms(accepted, self._global, self.norm_screen, server_round=server_round)
        needed = max(self.min_train_nodes, 1)
        if len(accepted) < needed:
            logger.warning(
                "round %d: %d valid client update(s), fewer than the minimum %d; the global model is kept",
                server_round, len(accepted), needed,
            )
            return None, None
        weights = safe_weights([a.weight for a in accepted]) if self.weighting == "examples" else None
        self.check_setup(accepted)  # the user's configuration errors do raise
        try:
            fused = self.fuse(server_round, accepted, weights)
        except (FusionError, ArithmeticError, ValueError) as exc:  # a round's data must not end the run
            logger.warning("round %d: the aggregation failed (%s); the global model is kept", server_round, exc)
            return None, None
        if fused is None:
            return None, None
        if self._reference is not None:
            shapes = {k: tuple(v.shape) for k, v in fused.items()}
            if shapes != {k: s for k, (s, _) in self._reference.items()}:
                logger.warning("round %d: the fused model's shapes differ from the global model's; it is kept", server_round)
                return None, None
        bad = [k for k, v in fused.items() if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v))]
        if bad:
            logger.warning("round %d: the fused model has NaN/Inf in %s; the global model is kept", server_round, bad)
            return None, None
        return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in fused.items()}), self._metrics(accepted)

    def check_setup(self, accepted: list[Accepted]) -> None:
        """Raise :class:`FusionError` if the strategy's configuration cannot fuse these models."""

    def fuse(
        self, server_round: int, accepted: list[Accepted], weights: list[float] | None
    ) -> dict[str, np.ndarray] | None:
        """The round's new global arrays from the accepted updates (``weights`` None: uniform)."""
        raise NotImplementedError

    def _metrics(self, accepted: list[Accepted]) -> MetricRecord | None:
        contents: list[RecordDict] = [a.content for a in accepted]
        try:
            return self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        except Exception as exc:  # metrics are advisory: never lose a round's model over them
            logger.warning("training metrics not aggregated: %s", exc)
            return None
