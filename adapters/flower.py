"""Flower adapter: a FedAvg strategy that aligns client models by graph matching before averaging.

:class:`FedGAMF` subclasses Flower's message-API :class:`flwr.serverapp.strategy.FedAvg` and
replaces only the array aggregation of a training round: the clients' models are put into one
common unit order by :func:`gamfsolve.match` (GAMF in a shared universe by default) and then
averaged, weighted by each client's example count (or uniformly). Everything else (sampling,
configuration, metrics, evaluation) is FedAvg's.

Clients for plain local training and MOON live in :func:`make_client_app`.

Example
-------
::

    from flwr.serverapp import ServerApp
    from gamfsolve.adapters.flower import FedGAMF

    app = ServerApp()

    @app.main()
    def main(grid, context):
        model = Net()
        strategy = FedGAMF.from_module(model, torch.zeros(1, 1, 28, 28))
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=20)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from gamfsolve import METHODS, ConvergenceWarning, FusionError, PermutationSpec, match, merge

from ._flower_checks import Accepted, Signature, screen_replies, signature_of
from ._flower_client import evaluate_model, make_client_app, moon_loss, train_local

__all__ = ["FedGAMF", "evaluate_model", "make_client_app", "moon_loss", "train_local"]

logger = logging.getLogger("gamfsolve.adapters.flower")

Weighting = Literal["examples", "uniform"]


class FedGAMF(FedAvg):
    """FedAvg whose aggregation first aligns the client models (GAMF by default).

    Each round, the valid client replies are put into one unit order with
    :func:`gamfsolve.match` on the server's NumPy copies of their arrays (state-dict keys
    kept), then averaged. Floating-point arrays named in ``spec`` are fused; other arrays
    (integer counters such as BatchNorm's ``num_batches_tracked``) are copied from the first
    valid client.

    ``match_log`` lists, per fused round, the number of clients, the matching's iterations,
    convergence and seconds, and how many models it put in another unit order than the first
    (``permuted``; 0: the aggregate is FedAvg's, up to one relabelling of all units).

    Robustness: a client whose reply carries an error, NaN/Inf, a wrong shape, a wrong key
    set or no usable example count is left out of that round (logged at WARNING level). A
    round with fewer than ``min_train_nodes`` valid replies, or whose fused model would not be
    finite, keeps the previous global model (Flower keeps it when the aggregate is ``None``).

    Parameters
    ----------
    spec : PermutationSpec
        Permutation groups of the model's parameters (e.g. from
        ``gamfsolve.adapters.torch.spec_from_module``; see :meth:`from_module`). Entries for
        non-floating arrays are ignored.
    method : {"gamf", "weight_matching", "ot", "average"}
        Matching method; ``"average"`` makes this plain FedAvg.
    weighting : {"examples", "uniform"}
        Weight each client by the ``weighted_by_key`` entry of its MetricRecord (FedAvg's
        convention, default ``"num-examples"``), or equally (the GAMF paper's choice).
    seed : int, optional
        Seed for randomised matchings; round ``r`` uses ``seed + r``.
    match_options : mapping, optional
        Extra keyword options for the method (see :func:`gamfsolve.match`).
    **fedavg_options
        Passed to :class:`flwr.serverapp.strategy.FedAvg` (``fraction_train``,
        ``min_train_nodes``, ``weighted_by_key``, ...).
    """

    def __init__(
        self,
        spec: PermutationSpec,
        *,
        method: str = "gamf",
        weighting: Weighting = "examples",
        seed: int | None = None,
        match_options: Mapping[str, Any] | None = None,
        **fedavg_options: Any,
    ) -> None:
        if not isinstance(spec, PermutationSpec):
            raise FusionError(f"spec must be a gamfsolve.PermutationSpec, got {type(spec).__name__}")
        if method not in METHODS:
            raise FusionError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        if weighting not in ("examples", "uniform"):
            raise FusionError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
        super().__init__(**fedavg_options)
        self.spec = spec
        self.method = method
        self.weighting: Weighting = weighting
        self.seed = seed
        self.match_options = dict(match_options or {})
        self._reference: Signature | None = None
        self.match_log: list[dict[str, Any]] = []  # per fused round: clients, iterations, convergence, seconds

    @classmethod
    def from_module(cls, module: Any, example_inputs: Any, **options: Any) -> FedGAMF:
        """Build the strategy with the spec traced from a PyTorch module by the torch adapter."""
        from .torch import spec_from_module

        return cls(spec_from_module(module, example_inputs), **options)

    def summary(self) -> None:
        """Log FedAvg's summary plus the alignment settings."""
        super().summary()
        logger.info("FedGAMF: method=%s, weighting=%s, %d spec entries", self.method, self.weighting, len(self.spec))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's configuration; the global model's structure is kept to check replies against."""
        self._reference = signature_of({k: v.numpy() for k, v in arrays.items()})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the replies, align the valid models, and average them."""
        accepted = screen_replies(
            replies,
            self._reference,
            weight_key=self.weighted_by_key,
            need_weight=self.weighting == "examples",
            server_round=server_round,
        )
        needed = max(self.min_train_nodes, 1)
        if len(accepted) < needed:
            logger.warning(
                "round %d: %d valid client update(s), fewer than the minimum %d; the global model is kept",
                server_round,
                len(accepted),
                needed,
            )
            return None, None
        fused = self._fuse(server_round, accepted)
        if fused is None:
            return None, None
        return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in fused.items()}), self._metrics(accepted)

    def _fuse(self, server_round: int, accepted: list[Accepted]) -> dict[str, np.ndarray] | None:
        """Aligned weighted average of the accepted models; None if it is not finite."""
        first = accepted[0].arrays
        floats = [k for k, v in first.items() if np.issubdtype(v.dtype, np.floating)]
        weights = [a.weight for a in accepted] if self.weighting == "examples" else None
        models = [{k: a.arrays[k] for k in floats} for a in accepted]
        spec = _restrict(self.spec, floats)
        if len(models) == 1:
            fused = dict(models[0])
        else:
            seed = None if self.seed is None else self.seed + server_round
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                result = match(models, spec, method=self.method, weights=weights, seed=seed, **self.match_options)
            for w in caught:  # a solver's warnings go to the log, once per round; others are re-issued
                if issubclass(w.category, ConvergenceWarning):
                    logger.warning("round %d: %s", server_round, w.message)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            fused = merge(models, spec, result, weights=weights)
            self.match_log.append(
                {"round": server_round, "clients": len(models), "n_iter": result.n_iter,
                 "converged": result.converged, "seconds": result.time, "permuted": _permuted(result.perms)}
            )
            logger.info(
                "round %d: fused %d clients by %s (%d iterations, converged=%s, %.2fs)",
                server_round,
                len(models),
                result.method,
                result.n_iter,
                result.converged,
                result.time,
            )
        out = {k: (fused[k] if k in fused else first[k]) for k in first}  # keep the state-dict order
        bad = [k for k in floats if not np.all(np.isfinite(out[k]))]
        if bad:
            logger.warning("round %d: the fused model has NaN/Inf in %s; the global model is kept", server_round, bad)
            return None
        return out

    def _metrics(self, accepted: list[Accepted]) -> MetricRecord | None:
        contents: list[RecordDict] = [a.content for a in accepted]
        try:
            return self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        except Exception as exc:  # metrics are advisory: never lose a round's model over them
            logger.warning("training metrics not aggregated: %s", exc)
            return None


def _permuted(perms: Mapping[str, Any]) -> int:
    """How many models the matching put in a unit order other than the first model's."""
    n = len(next(iter(perms.values()), []))
    return sum(
        any(not np.array_equal(np.asarray(p[k]), np.asarray(p[0])) for p in perms.values()) for k in range(1, n)
    )


def _restrict(spec: PermutationSpec, names: list[str]) -> PermutationSpec:
    """The spec's entries for ``names``; a floating array the spec does not cover is an error."""
    missing = [n for n in names if n not in spec.axes]
    if missing:
        raise FusionError(
            f"the spec does not cover the floating-point arrays {missing}; give each an entry "
            "(all None for an array that is never permuted)"
        )
    return PermutationSpec({n: spec.axes[n] for n in names})
