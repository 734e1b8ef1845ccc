"""The typed, frozen result of :func:`gamfsolve.match`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MatchResult"]

Array = Any


@dataclass(frozen=True)
class MatchResult:
    """Permutations that put every model into one common unit order.

    Attributes
    ----------
    perms : dict of str to list of arrays
        ``perms[group][k]`` is an integer index vector ``p`` of length ``n_group``: taking
        model ``k``'s units in the order ``p`` along every axis of ``group`` puts model ``k``
        into the common order. Same array library and device as the input.
    method : str
        The method that produced it.
    n_iter : int
        Outer iterations (sweeps over all groups) performed.
    converged : bool
        Whether the convergence test passed before the iteration limit.
    objective : tuple of float
        gamf: the matched affinity (its objective, higher is better) after each iterate of the
        discrete (Hungarian) stage, in order; empty for methods without an objective
        trace (``weight_matching``, ``ot``, ``average``).
    time : float
        Wall-clock seconds spent in the solver.
    message : str
        A human-readable account of how the solver stopped.
    info : mapping
        Method-specific details; gamf reports ``universe``, ``affinity``, ``sigmas`` (the
        kernel width of each parameter), ``sigma_scale``, ``gamma`` and ``balance``.
    """

    perms: dict[str, list[Array]]
    method: str
    n_iter: int = 0
    converged: bool = True
    objective: tuple[float, ...] = ()
    time: float = 0.0
    message: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_models(self) -> int:
        """Number of models matched."""
        return len(next(iter(self.perms.values()))) if self.perms else 0

    def model_perms(self, k: int) -> dict[str, Array]:
        """The index vectors of model ``k``, one per group (the input of :func:`gamfsolve.permute`)."""
        return {g: ps[k] for g, ps in self.perms.items()}
