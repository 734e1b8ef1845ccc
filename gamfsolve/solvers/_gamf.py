"""GAMF: graduated assignment model fusion (Liu et al., ICML 2022, Alg. 1 and Alg. 2).

Two models (Alg. 1): model 0 is the anchor (its order is the common order); model 1's
soft plans ``P_g`` are updated group by group from the gradient of the Lawler QAP
``R_g = d/dP_g sum P K P``, which for the Gaussian edge affinity only involves the layers
next to ``g`` (the "three-layer window"), then projected by Sinkhorn at temperature ``tau``;
``tau`` is annealed and the last stage projects by Hungarian, so the output is an exact
permutation. Many models (Alg. 2): every model ``k`` gets a map ``U_g^(k)`` into a shared
universe and ``R_g^(k) = sum_{k' != k} w_k' R_g(k, k') U_g^(k')``, so all pairwise matchings
``U^(k) U^(k')^T`` are cycle-consistent by construction.

Departures from the released research code, each fixing a measured failure
(ALGORITHM.md, sec. 4): ``R`` is standardised so ``tau`` is scale-free; ``sigma`` adapts to
each parameter's scale; groups are updated Gauss-Seidel by colour classes (groups that share
no parameter are updated together), which removes the 2-cycles of simultaneous updates;
a stage ends when the plans stop moving; the discrete stage stops at a fixed point, a
2-cycle or a sweep that gains less than ``hungarian_tol`` of the objective, and returns the
best iterate it saw. And one departure from the paper's objective:
each weight tensor's edges are weighed by 1 / its edge count (``balance="param"``,
``_affinity.edge_weights``), so a unit hears each of its layers equally; and for models of
one width the kernel is 30 times wider than two independent edges' expected squared distance
(``sigma_scale``), near its linear limit over typical distances and bounded for outliers:
measured at or above the paper-like width 1 on every two-model cell of the MNIST ensemble
protocol.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._api import match, register_method
from .._errors import ConvergenceWarning, FusionError, OptionError
from .._progress import Progress
from .._result import MatchResult
from .._xp import from_host, to_host
from ..affinity._affinity import AFFINITIES, BALANCES, edge_weights, param_sigmas
from ..affinity._features import color_groups
from ..affinity._kernels._numba import available as numba_available
from ..affinity._kernels._threads import one_blas_thread
from ..affinity._objective import matched_affinity
from ..affinity._scores import FeatureCache, GroupScores, array_nbytes, value_ranges
from ..spec._spec import PermutationSpec, groups_beside
from ..spec._validate import Checked
from ._assign import hungarian, sinkhorn
from ._stamps import unmoved as _unmoved

__all__: list[str] = []

Array = Any
Maps = dict[str, Array]
INITS = ("auto", "uniform", "identity", "random", "weight_matching")


class _Problem:
    """The fixed data of one solve: models, spec, kernel widths, colour classes, partners."""

    def __init__(self, models: Sequence[Mapping[str, Array]], spec: PermutationSpec, checked: Checked,
                 universe: bool, sigmas: dict[str, float], kind: str, kernel: str, balance: str,
                 wide: bool = False, series: bool | str = True) -> None:
        self.models, self.spec, self.xp = models, spec, checked.xp
        self.series = bool(series) and kernel == "auto"
        self.pooled = series != "plain"  # pooled series maps offered while annealing
        self.sizes, self.weights = checked.sizes, checked.weights
        self.sigmas, self.kind, self.kernel = sigmas, kind, kernel
        self.edge_weights = edge_weights(models, spec, sigmas, balance)
        self.universe, self.device = universe, checked.device
        self.own = None if checked.same_widths else checked.model_sizes  # narrower models' real units
        self.live = None if checked.same_widths else checked.live
        self.movers = list(range(len(models))) if universe else list(range(1, len(models)))
        self.pool = list(range(len(models))) if universe else [0]
        self.colors = color_groups(spec)
        # the groups whose maps a group's unit features read (the other axes of its parameters)
        self.reads = {g: tuple(dict.fromkeys(h for name, axis in spec.users(g) for h in groups_beside(spec, name, axis)))
                      for g in spec.groups}
        # Two models: a group that reads no group's map and whose map no group reads (a transformer's
        # feed-forward hidden units when only those are permuted) has the same scores in every
        # sweep, and its soft plans feed nothing: its graduated assignment ends in the linear
        # assignment of those scores whatever the annealing did, so it sits the annealing out
        # (the same result; ViT-S/16's 12 feed-forward groups: 3 of 5 scoring sweeps saved)
        read = {h for hs in self.reads.values() for h in hs}
        self.isolated = frozenset() if universe else frozenset(g for g in spec.groups if not self.reads[g] and g not in read)
        ranges = value_ranges(models, list(sigmas), checked.xp)
        weight_bytes = sum(array_nbytes(x) for m in models for x in m.values())
        # the Hungarian stage's score store (two models): every group's mover features (each
        # weight is read by the groups on both its axes: twice the mover's weights, the models'
        # weights in all) and its raw scores in two parts; ResNet-50 needed 249 MiB, 22 MiB above
        # weights + 32 MiB, and rescored its two widest 3 x 3 groups from scratch in every sweep
        first = next(iter(models[0].values()))
        score_bytes = sum(2 * n * n for n in self.sizes.values()) * getattr(first.dtype, "itemsize", 8)
        # Feature cache: static features, the anchor's, and unmoved neighbours in the discrete
        # stage; bounded so that peak memory stays a small multiple of the models' own.
        self.cache = FeatureCache(models, spec, self.sizes, sigmas=sigmas, ranges=ranges, kind=kind,
                                  kernel=_map_kernel(kernel, models, len(self.pool), wide, self.series), xp=self.xp,
                                  budget=weight_bytes // 4 + (16 << 20), own=self.own,
                                  series_budget=weight_bytes + (32 << 20),
                                  bases_budget=weight_bytes + score_bytes + (32 << 20))

    def group_scores(self, group: str, maps: list[Maps], tau: float | None = None, discrete: bool = False) -> GroupScores:
        """Scores of ``group`` for every model (Alg. 1 line 5; Alg. 2 line 6); ``tau``: the Sinkhorn
        stage's temperature, which sets how closely a short series must match the exact kernel to
        stand in for it (None: the end of the Hungarian stage, float32 rounding; see :mod:`._kernels._series`)."""
        return GroupScores(self.models, self.spec, group, self.sizes, maps, pool=self.pool, weights=self.weights,
                           sigmas=self.sigmas, kind=self.kind, kernel=self.kernel, xp=self.xp, cache=self.cache,
                           live=self.live, edge_weights=self.edge_weights if self.kind == "edge" else None,
                           tau=tau, movers=self.movers, series=self.series, pooled=self.pooled, discrete=discrete)


# Feature maps (templates, linear in N) against pairwise exact Numba affinities, NumPy input, per
# outer iteration on N planted MLPs 784-256-256-256-10 (one process per case, 2 cores, BLAS at one
# thread on the pairwise path), pairwise / templates: at the paper-like kernel width 1 (map rank
# ~20) 1.11 / 1.76 s at N = 12, 2.27 / 2.24 at 16 (peak 293 / 1174 MiB): templates from 17 models
# on. The wide default kernel (sigma_scale 30) needs maps of lower rank: 0.53 / 0.64 s at N = 10,
# 0.87 / 0.72 at 12, 1.97 / 1.00 at 16 (width 1 at N = 12: 1.01 / 1.60): templates from 12 models
# on there. (On a GPU the maps are taken at every N: pairwise there is not measured.) The Sinkhorn
# stage's series feature maps (``series=True``) are templates at every N whatever this choice.
MIN_POOL_FOR_MAPS_NUMBA = 17
MIN_POOL_FOR_MAPS_NUMBA_WIDE = 12


def _map_kernel(kernel: str, models: Sequence[Mapping[str, Array]], pool: int, wide: bool = False,
                series: bool = False) -> str:
    """Kernel name for the feature cache's maps: ``"numba"`` (no maps) where pairwise is faster;
    ``wide``: kernel widths of at least ``SIGMA_SCALE`` (lower-rank maps, templates pay off sooner).
    With the series on at a wide kernel, the series' own maps are the templates wherever it is
    accurate (nearly everywhere there), and the factorised maps, of higher rank, would take their
    place: pairwise exact kernels then serve only what the series cannot. Measured on N planted
    784-512-512-512-10 MLPs: N = 16 took 19.1 s of CPU a sweep with the factorised maps, against
    1.7 s at N = 8 with the series."""
    if kernel != "auto":
        return kernel
    if not (series and wide) and pool >= (MIN_POOL_FOR_MAPS_NUMBA_WIDE if wide else MIN_POOL_FOR_MAPS_NUMBA):
        return kernel
    first = next(iter(models[0].values()))
    return "numba" if isinstance(first, np.ndarray) and numba_available() else kernel


def _init_maps(prob: _Problem, init: str, seed: int | None, checked: Checked) -> list[Maps]:
    xp, dev = prob.xp, checked.device
    dtype = prob.models[0][next(iter(prob.models[0]))].dtype
    maps: list[Maps] = [{} for _ in prob.models]
    if init == "weight_matching":
        res = match(prob.models, prob.spec, method="weight_matching", seed=seed)
        return [res.model_perms(k) for k in range(len(prob.models))]
    rng = np.random.default_rng(seed)
    for k in prob.movers:
        for g, n in prob.sizes.items():
            if init == "identity" or (prob.universe and k == 0 and init == "uniform"):
                maps[k][g] = xp.arange(n, device=dev)  # the universe starts in model 0's order
            elif init == "uniform":
                maps[k][g] = xp.full((n, n), 1.0 / n, dtype=dtype, device=dev)
            else:
                noise = from_host(rng.standard_normal((n, n)), xp, prob.models[0][next(iter(prob.models[0]))])
                maps[k][g] = sinkhorn(xp.astype(noise, dtype), 1.0, xp)[0]
    return maps


def _same(old: Array | None, new: Array, xp: Any) -> bool:
    return old is not None and old.ndim == 1 and bool(xp.all(old == new))


def _snapshot(maps: list[Maps], movers: list[int]) -> tuple[bytes, ...]:
    return tuple(to_host(maps[k][g]).tobytes() for k in movers for g in sorted(maps[k]))


def _change(old: list[Maps], new: list[Maps], movers: list[int], xp: Any, skip: frozenset[str] = frozenset()) -> float:
    """Largest mean absolute change of a plan in the last sweep (exact maps count as changed), over
    the groups not in ``skip`` (those out of the annealing)."""
    worst = 0.0
    for k in movers:
        for g, m in new[k].items():
            if g in skip:
                continue
            o = old[k].get(g)
            if o is None or o.ndim != 2 or m.ndim != 2:
                return float("inf")
            worst = max(worst, float(xp.mean(xp.abs(m - o))))
    return worst


GAMMA_TWO = 0.25  # the annealing factor's default for two models (examples/defaults)
GAMMA_UNIVERSE = 0.85  # and in the shared universe (N > 2 by default): see _gamf's docstring
TAU0_TWO = 0.5  # the first temperature for two models, and in the universe: see _gamf's docstring
TAU0_UNIVERSE = 1.0
MAX_SWEEPS_TWO = 1  # Sinkhorn sweeps per temperature at most, for two models and in the universe
MAX_SWEEPS_UNIVERSE = 2
HUNGARIAN_TOL = 1e-6  # a Hungarian sweep raising the objective by less than this, relative, ends a sub-stage
SINKHORN_TOL_TWO = 1e-2  # the column-sum error a Sinkhorn plan stops at, for two models and in the universe
SINKHORN_TOL_UNIVERSE = 1e-4
SIGMA_SCALE = 30.0  # the kernel width's default multiple of 2 D var(w), models of one width
SIGMA_SCALE_WIDTHS = 1.0  # and for models of different widths: see _gamf's docstring


@register_method("gamf")
def _gamf(
    models: Sequence[Mapping[str, Array]], spec: PermutationSpec, checked: Checked, *, seed: int | None,
    affinity: str = "edge", kernel: str = "auto", sigma: float | Mapping[str, float] | None = None,
    sigma_scale: float | None = None, tau0: float | None = None, gamma: float | None = None, tau_min: float = 0.02,
    max_sweeps: int | None = None, tol: float = 1e-3, sinkhorn_tol: float | None = None, sinkhorn_max_iter: int = 500,
    hungarian_tol: float = HUNGARIAN_TOL,
    max_iter: int = 300, init: str = "auto", universe: bool | None = None, balance: str = "param",
    series: bool | str = True, progress: bool = False,
) -> MatchResult:
    """Graduated assignment; see the module docstring. Options are keyword-only.

    ``affinity``: "edge" (the paper's) or "node"; ``sigma_scale``: each parameter's kernel width
    in units of ``2 D var(w)``, the expected squared distance of two independent edges (``sigma``
    sets widths outright). The default is 30 for models of one width, 1 for models of different
    widths. 30 puts the Gaussian near its linear limit (weight
    matching's objective, with each tensor balanced) over typical distances while keeping it
    bounded for outliers; against width 1, paired on models trained as the MNIST ensemble
    protocol trains them: LeNet N = 2 homog +0.6 +- 0.5 and +0.8 +- 0.4 points (two sets of 40 pairs),
    hetero +0.8 +- 0.9 and +0.1 +- 0.7, MLP N = 2 hetero +0.2 +- 0.3 (15) and +0.5 +- 0.2 (25),
    homog +0.1 +- 0.1, N = 4 hetero +0.8 +- 0.4, homog -0.1 +- 0.1 (15), LeNet N = 4 level
    (+0.2 +- 1.0 homog, 15 fusions). Models of different widths keep width 1: the narrow
    kernel's locality is what finds a pruned copy's units among empty slots (planted pruned
    copies of a small residual net recovered 20 / 20 at 1, 16 at 3, 12 at 30); ``tau0 > tau_min``, ``0 < gamma < 1``: the
    annealing schedule on the standardised scores (``tau0`` by default 0.5 for two models, 1 in the
    universe: paired over 16 seeds per cell of the ensemble protocol's MNIST pairs, 0.5 against 1
    gave the same accuracy on all 48 pairs at 0.79-1.01x the CPU time, and on LeNet N = 4 homog
    -0.16 +- 0.87 points, where 0.25 was -0.82 +- 0.53; ``gamma`` by default 0.25 for two models
    (three temperatures from 0.5: 0.25 against 0.5 paired over 12 seeds per cell, MLP N = 2 hetero
    +0.00 +- 0.11 points, LeNet N = 2 homog +0.57 +- 0.50, hetero +0.12 +- 0.84 at 0.62-0.78x the
    CPU time; on random pairs of real networks the matched objective within 5e-5 relative and
    0.72-0.9x the time), 0.85 in the universe: slower annealing there, measured paired over 15 fusions per cell on N = 4
    models, LeNet homog +2.8 +- 0.8 points, MLP hetero +0.6 +- 0.3, the other two cells level, at
    about twice the iterations; for two models it did not help); ``max_sweeps``: sweeps per temperature at
    most (a stage also ends when plans change by less than ``tol``); by default 1 for two models, 2 in
    the universe: 1 against 2 paired over 16 seeds per cell, MLP N = 2 hetero -0.06 +- 0.13 points,
    LeNet N = 2 homog -0.11 +- 0.23, hetero +0.31 +- 0.42 at 0.59-0.73x the CPU time, but LeNet N = 4
    homog -1.44 +- 1.08 (so the universe keeps 2). Before that, ``max_sweeps=2``
    and, for two models, ``gamma=0.5``, paired on the ensemble protocol's MNIST models
    (``examples/defaults/paired.py``): 3 and 0.5 against 8 and 0.7 (12 seeds per cell), max_sweeps
    3 alone MLP N = 2 hetero +0.00 +- 0.00 points, LeNet N = 2 homog +0.11 +- 0.11, hetero -0.13 +- 0.13,
    LeNet N = 4 homog -0.05 +- 0.87, at 0.53-0.90x the CPU time; with gamma 0.5 for the pairs
    -0.07 +- 0.15, -0.06 +- 0.27, +0.63 +- 0.69 at 0.61-0.70x; then max_sweeps 2 against 3 (16
    seeds per cell) -0.09 +- 0.09, +0.18 +- 0.21, -0.06 +- 0.46, +0.29 +- 0.63 at 0.66-0.91x (on
    two random initialisations, where every temperature uses all its sweeps, 2 instead of 3
    sweeps at each of six temperatures). ``init``: "auto" (uniform
    plans for two models; random plans, the paper's, in the universe: from uniform plans the
    universe's symmetry is broken late and greedily, measured 4-11 points lower on LeNet N = 4), "uniform",
    "identity", "random" (the paper's) or "weight_matching"; ``universe``: Alg. 2 for all
    models (default when N > 2) instead of aligning to model 0; ``balance``: "param" (each weight
    tensor's edges weighed by 1 / its edge count, so a unit hears each of its layers equally:
    measured on MNIST MLPs, N = 2 hetero +1.6 +- 0.3 points over 25 pairs, N = 4 hetero +4.0 +- 0.8)
    or "sqrt" (1 / sqrt of the edge count: ahead of "param" on LeNet pairs, +3.4 points over 40
    pairs, behind it on MLPs) or "edge" (the paper's plain sum over edges); see ``_affinity``.
    It also weighs the objective that picks the best Hungarian iterate, whatever the
    ``affinity``. ``hungarian_tol``: the Hungarian stage's series part, and then its exact part,
    also end when a sweep raises the objective by no more than this fraction of it (0: only at a
    fixed point or a 2-cycle). On two random ResNet-50 initialisations (HF layout, 64 px) the
    Hungarian stage raised the objective by 8e-5 relative over 28 sweeps, all but the first 6
    gaining less than 3.5e-6 each; with 1e-6 the whole solve took 17 iterations, not 33. On the
    ensemble protocol's trained MNIST pairs and LeNet quadruples (16 seeds per cell) 1e-6 against
    0 gave the same accuracy on all 64 fusions at 0.74-1.01x the CPU time (1e-5: one LeNet N = 4
    fusion 2.2 points lower). ``series``: True (a short power series of the Gaussian stands in for
    the exact kernel where a sampled check allows, pooled maps included while annealing; see
    :mod:`gamfsolve.affinity._kernels._series`), "plain" (the series without pooled maps) or False
    (the exact kernel throughout). ``sinkhorn_tol``: a Sinkhorn plan stops when every column sum
    is within it of one; by default 1e-2 for two models (a plan only sets the next sweep's scores;
    against 1e-4, paired over 12 seeds per cell of the ensemble protocol, MLP N = 2 hetero -0.02 +-
    0.02 points, LeNet N = 2 homog and hetero the same accuracy on every pair, at 0.71-0.89x the
    CPU time; on random pairs of ViT-S/16 feed-forward groups, EfficientNet-B0 and ResNet-50
    0.8-0.91x the time, matched objective within 2e-5 relative), 1e-4 in the universe (LeNet
    N = 4 homog at 1e-2: +2.03 +- 1.37 points over 7 fusions, not settled). ``result.info``
    reports ``universe``, ``affinity``, ``sigmas``, ``sigma_scale``, ``gamma``, ``tau0``,
    ``max_sweeps``, ``sinkhorn_tol`` and ``balance``.
    """
    if affinity not in AFFINITIES:
        raise OptionError(f"affinity must be one of {AFFINITIES}, got {affinity!r}")
    if init not in INITS:
        raise OptionError(f"init must be one of {INITS}, got {init!r}")
    if balance not in BALANCES:
        raise OptionError(f"balance must be one of {BALANCES}, got {balance!r}")
    uni = len(models) > 2 if universe is None else bool(universe)
    if gamma is None:
        gamma = GAMMA_UNIVERSE if uni else GAMMA_TWO
    if tau0 is None:
        tau0 = TAU0_UNIVERSE if uni else TAU0_TWO
    if max_sweeps is None:
        max_sweeps = MAX_SWEEPS_UNIVERSE if uni else MAX_SWEEPS_TWO
    if sinkhorn_tol is None:
        sinkhorn_tol = SINKHORN_TOL_UNIVERSE if uni else SINKHORN_TOL_TWO
    if not (0 < gamma < 1 and tau0 > tau_min > 0):
        raise OptionError(f"need 0 < gamma < 1 and tau0 > tau_min > 0, got gamma={gamma}, tau0={tau0}, tau_min={tau_min}")
    xp = checked.xp
    if init == "auto":
        init = "random" if uni else "uniform"
    if sigma_scale is None:
        sigma_scale = SIGMA_SCALE if checked.same_widths else SIGMA_SCALE_WIDTHS
    sigmas = param_sigmas(models, spec, xp, scale=sigma_scale, sigma=sigma)
    prob = _Problem(models, spec, checked, uni, sigmas, affinity, kernel, balance,
                    wide=sigma is None and sigma_scale >= SIGMA_SCALE, series=series)
    maps = _init_maps(prob, init, seed, checked)
    # the pairwise edge path alternates parallel Numba kernels and small products: BLAS threads
    # that spin between products would halve the kernels' speed (gamfsolve/affinity/_kernels/_threads.py);
    # the node affinity is all products
    with one_blas_thread(prob.kind == "edge" and prob.cache.kernel == "numba"), Progress(progress, "gamf") as bar:
        best, trace, it, converged, message = _anneal(
            prob, maps, tau0=tau0, gamma=gamma, tau_min=tau_min, max_sweeps=max_sweeps, tol=tol,
            hungarian_tol=hungarian_tol, sinkhorn_tol=sinkhorn_tol, sinkhorn_max_iter=sinkhorn_max_iter,
            max_iter=max_iter, bar=bar)
    if best is None:
        raise FusionError("max_iter ended before the Hungarian stage; raise max_iter or lower max_sweeps")
    if not converged:
        warnings.warn(f"gamf stopped after {it} iterations without converging", ConvergenceWarning, stacklevel=3)
    final = best[1]
    perms = {g: [_perms_of(prob, final, k)[g] for k in range(len(models))] for g in spec.groups}
    return MatchResult(perms=perms, method="gamf", n_iter=it, converged=converged, objective=tuple(trace),
                       message=message, info={"universe": uni, "affinity": affinity, "sigmas": sigmas,
                                                     "sigma_scale": sigma_scale, "gamma": gamma, "tau0": tau0,
                                                     "max_sweeps": max_sweeps, "sinkhorn_tol": sinkhorn_tol,
                                                     "balance": balance})


def _anneal(
    prob: _Problem, maps: list[Maps], *, tau0: float, gamma: float, tau_min: float, max_sweeps: int, tol: float,
    hungarian_tol: float, sinkhorn_tol: float, sinkhorn_max_iter: int, max_iter: int, bar: Progress,
) -> tuple[tuple[float, list[Maps]] | None, list[float], int, bool, str]:
    """Alg. 1 / 2's loop: Sinkhorn sweeps at falling temperature, then Hungarian sweeps until a
    fixed point or a 2-cycle. Updates ``maps`` in place; returns the best Hungarian iterate
    (objective, maps), the objective trace, the iterations, whether it converged, and why it stopped.

    The Hungarian stage first scores with the series wherever it was accurate enough at the last
    temperature, then, from that stage's fixed point, with the exact kernel until its own fixed
    point: the result is a fixed point of the exact objective's Hungarian sweep, as without the
    series, and most of the stage's sweeps cost a matrix product per layer. Every iterate is
    valued by the exact objective (:func:`matched_affinity`)."""
    models, spec, sigmas, xp = prob.models, prob.spec, prob.sigmas, prob.xp
    potentials: dict[tuple[int, str], Array] = {}
    tau, sweeps_at_tau = tau0, 0
    discrete = exact = False
    seen: list[tuple[bytes, ...]] = []
    trace: list[float] = []
    best: tuple[float, list[Maps]] | None = None
    converged, message, it = False, "iteration limit reached", 0
    # Hungarian stage, one mover: a group none of whose read maps moved since its last assignment
    # (the same objects, the same kernel) would get the same scores and the same answer: skipped
    assigned: dict[str, tuple[Any, ...]] = {}
    series_of: dict[str, bool] = {}
    duals: dict[tuple[int, str], Any] = {}  # each (model, group)'s assignment duals: the next sweep's warm start
    objective_memo: dict[str, Any] = {}  # per-parameter sums of the objective, kept while their maps are
    for it in range(1, max_iter + 1):
        old = [dict(m) for m in maps]
        used_series = False  # a series stood in for the exact kernel somewhere in this sweep
        for color in prob.colors:  # Gauss-Seidel over colour classes (Alg. 1 line 4)
            # With several movers the class's scores objects live through the class (templates);
            # with one (two models) each is dropped after use: one group's features at a time.
            keep = len(prob.movers) > 1
            state: dict[str, GroupScores] = {}
            for k in prob.movers:
                scores, live, stamps = {}, [], {}
                for g in color:
                    if not discrete and g in prob.isolated:
                        continue
                    if discrete and not keep:
                        stamps[g] = (exact, *(maps[k].get(h) for h in prob.reads[g]))
                        if _unmoved(assigned.get(g), stamps[g]):
                            used_series = used_series or series_of[g]
                            continue
                    st = state[g] if g in state else prob.group_scores(g, maps, None if exact else tau, discrete=discrete)
                    used_series = used_series or bool(st.series_degree)
                    series_of[g] = bool(st.series_degree)
                    if keep:
                        state[g] = st
                    scores[g] = st.scores(k, maps)
                    live.append(st.live(k))
                    del st
                if discrete:  # Alg. 1 line 9: the Hungarian projector, one host hop per class
                    perms = hungarian(list(scores.values()), xp, live=live, duals=duals, keys=[(k, g) for g in scores])
                    new = dict(zip(scores, perms, strict=True))
                    assigned.update(stamps)
                    # an unchanged index vector keeps its object: templates need no update and
                    # the neighbours' cached features stay valid
                    new = {g: m for g, m in new.items() if not _same(maps[k].get(g), m, xp)}
                else:
                    new = {}
                    for g, r in scores.items():
                        new[g], potentials[k, g], _ = sinkhorn(r, tau, xp, tol=sinkhorn_tol,
                                                               max_iter=sinkhorn_max_iter, v=potentials.get((k, g)))
                for g, m in new.items():
                    if g in state:
                        state[g].moved(k, maps[k].get(g), m)
                    maps[k][g] = m
        if not discrete:
            bar.update(it, f"sinkhorn tau={tau:.3g}")
            sweeps_at_tau += 1
            if _change(old, maps, prob.movers, xp, prob.isolated) < tol or sweeps_at_tau >= max_sweeps:
                tau, sweeps_at_tau = tau * gamma, 0  # Alg. 1 line 7: anneal
                discrete = tau < tau_min  # Alg. 1 line 8: switch to Hungarian
            continue
        # groups without a map (the anchor's) are not moved: no identity copies
        value = matched_affinity(models, spec, maps, sigmas, xp, prob.edge_weights, memo=objective_memo)
        trace.append(value)
        bar.update(it, "hungarian", value)
        if best is None or value > best[0]:
            best = (value, [dict(m) for m in maps])
        snap = _snapshot(maps, prob.movers)
        # a sweep that raised the objective by less than hungarian_tol (relative) ends a sub-stage
        # as a fixed point would: on random pairs the exact sub-stage otherwise creeps on for tens
        # of sweeps of ~1e-7 each (see the docstring)
        gain = trace[-1] - trace[-2] if len(trace) >= 2 else math.inf
        stalled = hungarian_tol > 0 and 0 <= gain <= hungarian_tol * abs(trace[-1])
        settled = snap in seen[-2:] or stalled  # a fixed point, a 2-cycle, or a stall
        if not exact and settled:
            exact = True  # the series stage settled: go on with the exact kernel from here
            if used_series:
                seen = [snap]
                continue
        if seen and snap == seen[-1]:
            converged, message = True, "fixed point of the Hungarian stage"
            break
        if len(seen) >= 2 and snap == seen[-2]:
            converged, message = True, "2-cycle in the Hungarian stage; returned the better iterate"
            break
        if stalled and exact:
            converged, message = True, f"Hungarian sweep gained less than hungarian_tol={hungarian_tol:g} of the objective"
            break
        seen.append(snap)
    return best, trace, it, converged, message


def _perms_of(prob: _Problem, maps: list[Maps], k: int) -> dict[str, Array]:
    out = {}
    for g, n in prob.sizes.items():
        m = maps[k].get(g)
        out[g] = prob.xp.arange(n, device=prob.device) if m is None else m
    return out

