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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gamfsolve import METHODS, ConvergenceWarning, FusionError, MatchResult, PermutationSpec, match, merge

from ._flower_base import ScreenedStrategy, Weighting
from ._flower_checks import Accepted
from ._flower_client import evaluate_model, load_leading, make_client_app, moon_loss, train_local
from ._flower_fedma import FedMA
from ._flower_norms import DEFAULT_NORM_SCREEN

__all__ = ["FedGAMF", "FedMA", "evaluate_model", "load_leading", "make_client_app", "moon_loss", "train_local"]

logger = logging.getLogger("gamfsolve.adapters.flower")

class FedGAMF(ScreenedStrategy):
    """FedAvg whose aggregation first aligns the client models (GAMF by default).

    Each round, the valid client replies are put into one unit order with
    :func:`gamfsolve.match` on the server's NumPy copies of their arrays (state-dict keys
    kept), then averaged. Floating-point arrays named in ``spec`` are fused; other arrays
    (integer counters such as BatchNorm's ``num_batches_tracked``) are copied from the first
    valid client. ``method="ot"`` is OTFusion's aggregation (Singh & Jaggi 2020),
    ``method="average"`` FedAvg's.

    ``match_log`` lists, per fused round, the number of clients, the matching's iterations,
    convergence and seconds, and how many models it put in another unit order than the first of
    the widest (``permuted``; 0: the aggregate is FedAvg's, up to one relabelling of all units, or
    with narrower clients slice averaging's, each client's own units where the widest's of the
    same index are).

    Robustness (:class:`~gamfsolve.adapters._flower_base.ScreenedStrategy`): a client whose
    reply carries an error, NaN/Inf, a wrong shape or key set, a dtype that cannot be cast
    safely to the global model's, no usable example count, or an update far larger than the
    round's others (``norm_screen``) is left out of that round with a WARNING; example counts
    are normalised without overflow. A round with fewer than ``min_train_nodes`` valid
    replies, whose matching fails, or whose fused model would not be finite keeps the previous
    global model (Flower keeps it when the aggregate is ``None``).

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
    norm_screen : float or None
        Threshold of the update-norm screen (default 10.0; ``None``: off). A client is left
        out when its distance to the previous global model exceeds
        ``m + norm_screen * max(1.4826 * MAD, m)``, ``m`` the round's lower median distance.
    narrower : bool
        Accept clients of smaller widths (each array's leading slice of the global model's, as
        :func:`load_leading` gives them). :func:`gamfsolve.match` matches them in the universe of
        the widest, and :func:`gamfsolve.merge` averages each entry over the clients that have
        it; with ``method="average"`` this is HeteroFL's slice averaging. The widest client
        must take part: a round whose fused model is narrower than the global one keeps it.
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
        norm_screen: float | None = DEFAULT_NORM_SCREEN,
        narrower: bool = False,
        **fedavg_options: Any,
    ) -> None:
        if not isinstance(spec, PermutationSpec):
            raise FusionError(f"spec must be a gamfsolve.PermutationSpec, got {type(spec).__name__}")
        if method not in METHODS:
            raise FusionError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
        super().__init__(weighting=weighting, norm_screen=norm_screen, narrower=narrower, **fedavg_options)
        self.spec = spec
        self.method = method
        self.seed = seed
        self.match_options = dict(match_options or {})
        self.match_log: list[dict[str, Any]] = []  # per fused round: clients, iterations, convergence, seconds

    @classmethod
    def from_module(cls, module: Any, example_inputs: Any, **options: Any) -> FedGAMF:
        """Build the strategy with the spec traced from a PyTorch module by the torch adapter."""
        from .torch import spec_from_module

        return cls(spec_from_module(module, example_inputs), **options)

    def summary(self) -> None:
        """Log FedAvg's summary plus the alignment settings."""
        super().summary()
        logger.info(
            "FedGAMF: method=%s, weighting=%s, norm_screen=%s, %d spec entries",
            self.method, self.weighting, self.norm_screen, len(self.spec),
        )

    def check_setup(self, accepted: list[Accepted]) -> None:
        """The spec must cover every floating-point array of the model."""
        _restrict(self.spec, _floats(accepted[0].arrays))

    def fuse(
        self, server_round: int, accepted: list[Accepted], weights: list[float] | None
    ) -> dict[str, np.ndarray] | None:
        """Aligned weighted average of the accepted models (non-floating arrays: the first client's)."""
        first = accepted[0].arrays
        floats = _floats(first)
        models = [{k: a.arrays[k] for k in floats} for a in accepted]
        spec = _restrict(self.spec, floats)
        if len(models) == 1:
            fused = dict(models[0])
        else:
            seed = None if self.seed is None else self.seed + server_round
            result = self._match(server_round, models, spec, weights, seed)
            fused = merge(models, spec, result, weights=weights)
            sizes = [spec.group_sizes({k: v.shape for k, v in m.items()}) for m in models]
            self.match_log.append(
                {"round": server_round, "clients": len(models), "n_iter": result.n_iter,
                 "converged": result.converged, "seconds": result.time, "permuted": _permuted(result.perms, sizes)}
            )
            logger.info(
                "round %d: fused %d clients by %s (%d iterations, converged=%s, %.2fs)",
                server_round, len(models), result.method, result.n_iter, result.converged, result.time,
            )
        return {k: (fused[k] if k in fused else first[k]) for k in first}  # keep the state-dict order

    def _match(
        self, server_round: int, models: list[dict[str, np.ndarray]], spec: PermutationSpec,
        weights: list[float] | None, seed: int | None,
    ) -> MatchResult:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            warnings.simplefilter("error", RuntimeWarning)  # overflow in the matching costs: the round fails
            try:
                result = match(models, spec, method=self.method, weights=weights, seed=seed, **self.match_options)
            except RuntimeWarning as exc:
                raise FloatingPointError(f"{self.method} matching: {exc}") from exc
        for w in caught:  # a solver's warnings go to the log, once per round; others are re-issued
            if issubclass(w.category, ConvergenceWarning):
                logger.warning("round %d: %s", server_round, w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return result


def _floats(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return [k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating)]


def _permuted(perms: Mapping[str, Any], sizes: Sequence[Mapping[str, int]]) -> int:
    """How many models the matching put in a unit order other than the reference model's: the
    first of the widest (with models of one width, the first). ``perms[g][k][s]`` is model ``k``'s
    unit at universe slot ``s``; ``sizes[k][g]`` its own units of ``g`` (the rest of its slots are
    empty). A model is unpermuted when each of its own units sits where the reference's unit of the
    same index does: the leading-slice placement of slice averaging, or, at one width, the
    reference's order (the aggregate is then FedAvg's up to one relabelling of all units)."""
    n = len(sizes)
    full = {g: max(s[g] for s in sizes) for g in perms}
    ref = next((k for k in range(n) if all(sizes[k][g] == full[g] for g in perms)), 0)
    moved = 0
    for k in range(n):
        if k == ref:
            continue
        for g, p in perms.items():
            own, base = np.asarray(p[k]), np.asarray(p[ref])
            real = own < sizes[k][g]  # the slots that hold model k's own units
            if not np.array_equal(own[real], base[real]):
                moved += 1
                break
    return moved


def _restrict(spec: PermutationSpec, names: list[str]) -> PermutationSpec:
    """The spec's entries for ``names``; a floating array the spec does not cover is an error."""
    missing = [n for n in names if n not in spec.axes]
    if missing:
        raise FusionError(
            f"the spec does not cover the floating-point arrays {missing}; give each an entry "
            "(all None for an array that is never permuted)"
        )
    return PermutationSpec({n: spec.axes[n] for n in names})
