"""The gradient ``R_g^(k)`` of the GAMF objective for one group, in time linear in the models.

``R_g^(k) = sum_{j in partners(k)} w_j A_g(X_k, X_j) M_j`` (Alg. 2 line 6), where ``X_j`` are
model ``j``'s unit features with neighbouring axes in the common order and ``M_j`` its map
for ``g``. Where the edge kernel has an accurate feature map ``A(x, y) ~ Phi(x) Phi(y)^T``
(scalar edges), the sum over models moves inside one product:
``R^(k) = Phi_k (T - w_k Phi_k^T M_k)`` with the template ``T = sum_j w_j Phi_j^T M_j`` built
once per colour class and updated in ``O(n F)`` when a model's map changes. Other features
(convolution kernel slices, the node kernel) fall back to pairwise products.

Within a colour class no group is a neighbour of another, so the unit features of every
model stay fixed while the class is updated; only the maps of the class's groups change.
Across classes and sweeps, :class:`FeatureCache` keeps the features (and feature maps) of a
parameter whose neighbouring maps are the very same objects as when they were computed:
node attributes and parameters with no other mapped axis (never change), the anchor model of
a two-model solve (has no maps), and, in the discrete stage, neighbours whose index vectors
did not move.

In the discrete stage of a two-model solve a group's raw scores are also kept with the mover's
features they came from, in two parts (features with a feature map, features on the exact
kernel); the next time, only the edges whose values changed (the units that moved in a
neighbouring group) are scored, as ``R += A(new_S, y_S) - A(old_S, y_S)``, the kernel being a sum
over edges (:meth:`GroupScores._delta`); a part whose scalar edges' series degrees changed is
first brought to the new degrees by the added terms' product (:meth:`GroupScores._regrade`), any
other change of how a part is scored rescores it afresh; within ``bases_budget`` bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._xp import device
from ..spec._spec import PermutationSpec, groups_beside
from ._affinity import group_affinity, map_columns, standardize
from ._features import Feature, unit_features
from ._kernels import edge_features
from ._kernels._series import max_degree, series_errors, series_features

__all__ = ["FeatureCache", "GroupScores", "array_nbytes", "value_ranges"]

Array = Any


def value_ranges(models: Sequence[Mapping[str, Array]], names: Sequence[str], xp: Any) -> dict[str, tuple[float, float]]:
    """``(centre, half-range)`` of each parameter's values over all models.

    Soft plans are (nearly) doubly stochastic, so mapped features stay within these ranges; the
    half-range is padded by 5% for Sinkhorn plans stopped at their tolerance.
    """
    out = {}
    for name in names:
        lo = min(float(xp.min(m[name])) for m in models)
        hi = max(float(xp.max(m[name])) for m in models)
        out[name] = ((lo + hi) / 2.0, max(1.05 * (hi - lo) / 2.0, 1e-30))
    return out


# How far the annealing stage's series scores may stray: the spread of their error over the spread
# of the exact affinity, per unit of temperature (see GroupScores._add_series).
SERIES_KAPPA = 0.25
# ... and in the Hungarian stage: about the rounding of float32 sums over a layer's edges. The
# sampled check's own floor, where higher degrees stop improving, measured 1.5e-5 to 2.7e-5 on
# 512- to 784-edge layers of random MLPs (degree 4 to 6 of the scalar series, float32)
SERIES_DISCRETE = 5e-5

Entry = tuple[tuple[Any, ...], list[Feature], list[Any], int]  # deps, features, maps, stamp


class FeatureCache:
    """Unit features and their feature maps per ``(model, group, parameter)``, reused while valid.

    An entry records the map objects of the groups on the parameter's other axes; it is valid
    while those are the same objects (maps are replaced, never modified in place). Entries are
    kept when they can be hit again, i.e. when every such map is absent or an index vector,
    within ``budget`` bytes (soft plans change every sweep); the pair sums of such features
    (:meth:`pair`) have ``budget`` bytes of their own, their series feature maps (:meth:`series`)
    ``series_budget``.
    """

    def __init__(
        self, models: Sequence[Mapping[str, Array]], spec: PermutationSpec, sizes: Mapping[str, int], *,
        sigmas: Mapping[str, float], ranges: Mapping[str, tuple[float, float]], kind: str, kernel: str, xp: Any,
        budget: int, own: Sequence[Mapping[str, int]] | None = None, series_budget: int = 0, bases_budget: int = 0,
    ) -> None:
        self.models, self.spec, self.sizes, self.xp = models, spec, sizes, xp
        self.own = own  # each model's real unit counts when some are narrower than the universe
        self.masks: dict[tuple[int, str], Array | None] = {}
        self.sigmas, self.ranges, self.kind, self.kernel = sigmas, ranges, kind, kernel
        self.budget, self.used = budget, 0
        self.entries: dict[tuple[int, str, str], tuple[Entry, int]] = {}
        # pairwise affinities of features without a map, one per unordered pair of models, valid
        # while both sides' entries are; their own ``budget`` bytes (n^2 bytes save n^2 E kernel
        # evaluations per sweep, so they must not be crowded out by the features they came from)
        self.pairs: dict[tuple[str, int, int, tuple[int, ...]], tuple[tuple[Any, ...], Array, int]] = {}
        self.pairs_used = 0
        # series feature maps of cached features, by the cache stamp of the features, the degree and pooling
        self.series_maps: dict[tuple[int, int, bool], Array] = {}
        self.series_budget, self.series_used = series_budget, 0
        # measured error of the series per (group, parameter, axis, degree, pooled): see :meth:`series_ratio`
        self.series_ratios: dict[tuple[str, str, int, int, bool], float] = {}
        self.stamp = 0
        # the last raw scores of a group for a mover with the features they came from (discrete
        # stage, two models): see GroupScores._delta; their own byte budget
        self.bases: dict[tuple[int, str], tuple[dict[str, Any], list[Array], dict[str, Any], int]] = {}
        self.bases_budget, self.bases_used = bases_budget, 0
        self.deps: dict[tuple[str, str], tuple[str, ...]] = {}
        for g in spec.groups:
            for name, axis in spec.users(g):
                others = set(groups_beside(spec, name, axis))
                self.deps[g, name] = tuple(sorted(set(self.deps.get((g, name), ())) | others))

    def _compute(self, k: int, group: str, name: str, maps: Mapping[str, Array]) -> tuple[list[Feature], list[Any]]:
        feats = unit_features(self.models[k], self.spec, group, self.sizes, maps, self.xp, only={name})
        phis: list[Any] = []
        for feat in feats:
            sigma = self.sigmas.get(feat.name) if self.kind == "edge" else None
            if sigma is None:
                phis.append(None)
                continue
            centre, bound = self.ranges[feat.name]
            phi = edge_features(feat.x, sigma, kernel=self.kernel, bound=bound, center=centre)
            alive = self.alive(k, group)
            phis.append(phi if alive is None or phi is None else phi * alive[:, None])  # empty slots: no edges
        return feats, phis

    def alive(self, k: int, group: str) -> Array | None:
        """1 for model ``k``'s real units of ``group``, 0 for empty universe slots; None if all real."""
        key = (k, group)
        if key not in self.masks:
            n, own = self.sizes[group], (None if self.own is None else self.own[k][group])
            if own is None or own == n:
                self.masks[key] = None
            else:
                ref = next(iter(self.models[k].values()))
                idx = self.xp.arange(n, device=device(ref))
                self.masks[key] = self.xp.astype(idx < own, ref.dtype)
        return self.masks[key]

    def get(self, k: int, group: str, maps: Mapping[str, Array]) -> tuple[list[Feature], list[Any], list[Any]]:
        """Features of ``group`` for model ``k``, their maps (or None) and cache stamps (or None)."""
        feats: list[Feature] = []
        phis: list[Any] = []
        stamps: list[Any] = []
        for name in dict.fromkeys(n for n, _ in self.spec.users(group)):
            deps = tuple(maps.get(h) for h in self.deps[group, name])
            key = (k, group, name)
            hit = self.entries.get(key)
            if hit is not None and all(a is b for a, b in zip(hit[0][0], deps, strict=True)):
                f, p, stamp = hit[0][1], hit[0][2], hit[0][3]
            else:
                if hit is not None:
                    self.used -= hit[1]
                    del self.entries[key]
                    self._drop_series(hit[0][3])
                f, p = self._compute(k, group, name, maps)
                stamp = None
                if all(d is None or d.ndim == 1 for d in deps):
                    size = sum(array_nbytes(x.x) for x in f) + sum(array_nbytes(x) for x in p if x is not None)
                    if self.used + size <= self.budget:
                        self.stamp += 1
                        stamp = self.stamp
                        self.entries[key] = ((deps, f, p, stamp), size)
                        self.used += size
            feats += f
            phis += p
            stamps += [stamp] * len(f)
        return feats, phis, stamps

    def series_ratio(self, group: str, feat: Feature, k: int, j: int, degree: int, pooled: bool = False) -> float:
        """The series' error spread over the exact affinity's (:func:`series_error`) for feature
        ``feat`` of ``group``, measured once per solve on models ``k`` and ``j`` in their own unit
        orders (the statistics of the weights set it, not the current plans)."""
        key = (group, feat.name, feat.axis, degree, pooled)
        if key not in self.series_ratios:  # every degree offered at once: one pass over the sample
            x, y = (next(f.x for f in unit_features(self.models[i], self.spec, group, self.sizes, {}, self.xp,
                                                    only={feat.name}) if f.axis == feat.axis) for i in (k, j))
            top = max(degree, max_degree(int(x.shape[2])))
            both = series_errors(x, y, self.sigmas[feat.name], self.xp, center=self.ranges[feat.name][0], degree=top)
            for pool, ratios in zip((False, True), both, strict=True):
                for t, ratio in enumerate(ratios, start=1):
                    self.series_ratios[group, feat.name, feat.axis, t, pool] = ratio
        return self.series_ratios[key]

    def _drop_series(self, stamp: int) -> None:
        for key in [key for key in self.series_maps if key[0] == stamp]:
            self.series_used -= array_nbytes(self.series_maps.pop(key))

    def series(self, k: int, group: str, feat: Feature, stamp: int | None, degree: int, pooled: bool = False) -> Array:
        """The degree-``degree`` series feature map of ``feat`` (see :mod:`._kernels._series`), zero
        on model ``k``'s empty slots; kept while its features are cached (``stamp``)."""
        key = None if stamp is None else (stamp, degree, pooled)
        if key is not None and key in self.series_maps:
            return self.series_maps[key]
        centre = self.ranges[feat.name][0]
        phi = series_features(feat.x, self.sigmas[feat.name], self.xp, center=centre, degree=degree, pooled=pooled)
        alive = self.alive(k, group)
        if alive is not None:
            phi = phi * alive[:, None]
        if key is not None and self.series_used + array_nbytes(phi) <= self.series_budget:
            self.series_maps[key] = phi
            self.series_used += array_nbytes(phi)
        return phi

    def base(self, k: int, group: str) -> tuple[dict[str, Any], list[Array], dict[str, Any], int] | None:
        """The stored ``(configs, mover features, raw parts, bytes)`` of ``group`` for model ``k``, or None."""
        return self.bases.get((k, group))

    def store_base(self, k: int, group: str, config: dict[str, Any], own: list[Array], raws: dict[str, Any]) -> None:
        old = self.bases.pop((k, group), None)
        if old is not None:
            self.bases_used -= old[3]
        size = sum(array_nbytes(r) for r in raws.values() if r is not None) + sum(array_nbytes(x) for x in own)
        if self.bases_used + size <= self.bases_budget:
            self.bases[k, group] = (config, own, raws, size)
            self.bases_used += size

    def pair(self, key: tuple[str, int, int, tuple[int, ...]], stamps: tuple[Any, ...]) -> Array | None:
        """A stored pairwise affinity whose features are still the cached ones, or None."""
        hit = self.pairs.get(key)
        return hit[1] if hit is not None and None not in stamps and hit[0] == stamps else None

    def store_pair(self, key: tuple[str, int, int, tuple[int, ...]], stamps: tuple[Any, ...], a: Array) -> None:
        old = self.pairs.pop(key, None)
        if old is not None:
            self.pairs_used -= old[2]
        size = array_nbytes(a)
        if None not in stamps and self.pairs_used + size <= self.budget:
            self.pairs[key] = (stamps, a, size)
            self.pairs_used += size


def array_nbytes(x: Array) -> int:
    n = 1
    for s in x.shape:
        n *= int(s)
    return n * x.dtype.itemsize if hasattr(x.dtype, "itemsize") else n * 8


class GroupScores:
    """Scores of one group for every model, given the maps at the start of a colour class."""

    def __init__(
        self, models: Sequence[Mapping[str, Array]], spec: PermutationSpec, group: str, sizes: Mapping[str, int],
        maps: Sequence[Mapping[str, Array]], *, pool: Sequence[int], weights: Sequence[float],
        sigmas: Mapping[str, float], kind: str, kernel: str, xp: Any, cache: FeatureCache,
        live: Callable[[int, str, int | None], tuple[int, int] | None] | None = None,
        edge_weights: Mapping[str, float] | None = None, tau: float | None = None, movers: Sequence[int] = (),
        series: bool = False, pooled: bool = True, discrete: bool = False,
    ) -> None:
        self.group, self.pool, self.weights, self.xp = group, list(pool), weights, xp
        self.discrete, self.pooled = discrete, pooled
        self._live = live
        self.sigmas, self.kind, self.kernel = sigmas, kind, kernel
        self.edge_weights = edge_weights
        self.cache = cache
        # raw pairwise affinities waiting for their transpose: the features are fixed for the
        # life of this object (a colour class), and the kernel is symmetric, so A(X_j, X_k) is
        # A(X_k, X_j)^T bit for bit; each is dropped once used, within the cache's byte budget
        self._pending: dict[tuple[int, int, tuple[int, ...]], Array] = {}
        self._pending_bytes = 0
        got = [cache.get(k, group, mp) for k, mp in enumerate(maps)]
        self.features: list[list[Feature]] = [f for f, _, _ in got]
        self.stamps = [st for _, _, st in got]
        self.phi: dict[int, list[Array]] = {}  # feature index -> per-model feature maps (see _map)
        for f in range(len(self.features[0])):
            maps_f = [p[f] for _, p, _ in got]
            if all(p is not None for p in maps_f):
                self.phi[f] = maps_f
        self.series_degree: dict[int, int] = {}
        self.series_pooled: dict[int, bool] = {}
        if series and kind == "edge":
            self._add_series(SERIES_KAPPA * tau if tau is not None else SERIES_DISCRETE, list(movers) or self.pool)
        # terms[f][j] = Phi_j^T M_j (unweighted) for every pool model: the template is their
        # weighted sum, the self-term of a mover is its own term (its map has not moved since),
        # and after a move only the new term is computed.
        # Built when first read (:meth:`_term`): scores updated from stored ones need none.
        self._start = [mp.get(group) for mp in maps]  # the group's maps now (maps are replaced, not changed)
        self.terms: dict[int, dict[int, Array]] = {f: {} for f in self.phi}
        # one pool model (two-model solves): no template copy; its weight scales the (n, n) product
        self.templates = {} if len(self.pool) == 1 else {f: self._template(f) for f in self.phi}

    def _add_series(self, allowed: float, movers: Sequence[int]) -> None:
        """Series feature maps for the features without one, where accurate enough.

        Accurate enough: on sampled unit pairs of the first mover and a partner, the spread of the
        series' error is at most ``allowed`` times the spread of the exact affinity. While
        annealing ``allowed = SERIES_KAPPA * tau``: the error moves Sinkhorn's log-plan by at most
        about ``SERIES_KAPPA`` (scores are standardised). In the Hungarian stage's last part
        ``SERIES_DISCRETE``: the level of float32 rounding in the exact kernel's sums. Degree 1
        first, higher degrees where offered, else the exact kernel stays.
        """
        k = movers[0]
        j = next((i for i in self.pool if i != k), None)
        if j is None:
            return
        for f in range(len(self.features[k])):
            feat = self.features[k][f]
            sigma = self.sigmas.get(feat.name)
            if f in self.phi or sigma is None:
                continue
            dim = int(feat.x.shape[2])
            # cheapest first: pooled degree T has T E + 1 columns (scalar edges), plain T (T + 1) E;
            # pooled maps only while annealing (the Hungarian stage's score updates read the maps
            # of a subset of edges, and its tolerances are below a pooled map's floor)
            for degree, pooled in ((t, p) for t in range(1, max_degree(dim) + 1) for p in (True, False)):
                if pooled and (self.discrete or not self.pooled):
                    continue
                if self.cache.series_ratio(self.group, feat, k, j, degree, pooled) <= allowed:
                    # built when first read (:meth:`_map`): a mover's scores may be updated without them
                    self.phi[f] = [None] * len(self.features)
                    self.series_degree[f] = degree
                    self.series_pooled[f] = pooled
                    break

    def _map(self, f: int, i: int) -> Array:
        """Model ``i``'s feature map of feature ``f``; a series map is built on first use."""
        phi = self.phi[f]
        if phi[i] is None:
            degree, pooled = self.series_degree[f], self.series_pooled[f]
            phi[i] = self.cache.series(i, self.group, self.features[i][f], self.stamps[i][f], degree, pooled)
        return phi[i]

    def _term(self, f: int, j: int) -> Array:
        """``Phi_j^T M_j`` of feature ``f`` for pool model ``j`` under its map at construction, or as updated by :meth:`moved`."""
        term = self.terms[f].get(j)
        if term is None:
            term = self.terms[f][j] = map_columns(self._map(f, j).T, self._start[j], self.xp)
        return term

    def _template(self, f: int) -> Array:
        total = None
        for j in self.pool:
            term = self.weights[j] * self._term(f, j)
            total = term if total is None else total + term
        return total

    def live(self, k: int) -> tuple[int, int] | None:
        """Real rows and columns of model ``k``'s scores when some models are narrower, else None.

        Rows are model ``k``'s units; columns its single partner's (two models) or the universe's.
        """
        if self._live is None:
            return None
        return self._live(k, self.group, self.pool[0] if len(self.pool) == 1 else None)

    def scores(self, k: int, maps: Sequence[Mapping[str, Array]]) -> Array:
        """Standardised ``R_g^(k)`` under the current maps of the other models.

        Empty slots of narrower models (see :meth:`live`) score 0 before standardising: no
        edges, no affinity, below every real pair (a sum of Gaussians is positive). Their
        feature maps are zero (:meth:`FeatureCache.alive`); pairwise affinities are masked here.
        """
        # two parts, the features with a feature map (products) and those on the exact kernel, so
        # that a change of series degree (the Hungarian stage's last part) rescores only the first
        parts = {"maps": [f for f in range(len(self.features[k])) if f in self.phi],
                 "exact": [f for f in range(len(self.features[k])) if f not in self.phi]}
        ready = self._delta_ready(k, maps)
        raws: dict[str, Array | None] = {}
        for name, which in parts.items():
            raw = None
            if ready is not None and ready[2].get(name) is not None:
                stored = ready[2][name]
                if ready[0].get(name) != self._config(k, which):  # scored another way: other series degrees
                    stored = self._regrade(k, ready[1], stored, ready[0].get(name), which)
                if stored is not None:
                    raw = self._delta(k, ready[1], stored, which)
            raws[name] = raw if raw is not None else self._raw(k, maps, which)
        if self._deltas_apply(k):
            self.cache.store_base(k, self.group, {name: self._config(k, which) for name, which in parts.items()},
                                  [f.x for f in self.features[k]], raws)
        present = [r for r in raws.values() if r is not None]
        return standardize(present[0] if len(present) == 1 else present[0] + present[1], self.xp)

    def _deltas_apply(self, k: int) -> bool:
        """Scores may be updated from the last ones: the discrete stage of a two-model solve,
        both models of full width (every map an index vector, so features change by whole edges)."""
        return (self.discrete and self.kind == "edge" and len(self.pool) == 1 and self.pool[0] != k
                and self.cache.alive(k, self.group) is None
                and self.cache.alive(self.pool[0], self.group) is None)

    def _config(self, k: int, which: list[int]) -> tuple[Any, ...]:
        """How features ``which`` are scored: the exact kernel, a feature map, or the series of some degree."""
        return tuple((self.features[k][f].name, self.features[k][f].axis,
                      self.series_degree.get(f, "map" if f in self.phi else "exact"), self.series_pooled.get(f, False))
                     for f in which)

    def _delta_ready(self, k: int, maps: Sequence[Mapping[str, Array]]) -> tuple[Any, list[Array], Any, int] | None:
        """The stored ``(configs, features, raw parts, bytes)`` to update, when the partner has no
        maps (its features never change); each part is updated only where scored the same way."""
        if not self._deltas_apply(k) or any(m is not None for m in maps[self.pool[0]].values()):
            return None
        return self.cache.base(k, self.group)

    def _regrade(self, k: int, old: list[Array], raw: Array, before: tuple[Any, ...] | None,
                 which: list[int]) -> Array | None:
        """Raw scores ``raw`` (of features ``old``, scored as ``before`` says) at the series degrees
        of now, or None where the two differ by more than the degrees of scalar edges' plain series.

        The series is a sum over its terms and the maps are term-major, so a degree raised from
        ``a`` to ``b`` adds the product of terms ``a + 1..b`` alone (lowered: subtracts it): the
        Hungarian stage's last part, where scalar edges go from degree 2 to 4 or so, costs
        ``b - a`` columns per edge instead of ``b + 1``."""
        now = self._config(k, which)
        if before is None or len(before) != len(now):
            return None
        xp, j = self.xp, self.pool[0]
        total = raw
        for f, was, is_ in zip(which, before, now, strict=True):
            if was == is_:
                continue
            if (was[:2] != is_[:2] or was[3] or is_[3] or not isinstance(was[2], int) or not isinstance(is_[2], int)
                    or int(old[f].shape[2]) != 1):
                return None
            feat = self.features[k][f]
            lo, hi = sorted((was[2], is_[2]))
            cols = slice((lo + 1) * int(old[f].shape[1]), (hi + 1) * int(old[f].shape[1]))  # terms lo + 1..hi
            centre, sigma = self.cache.ranges[feat.name][0], self.sigmas[feat.name]
            own = series_features(old[f], sigma, xp, center=centre, degree=hi)[:, cols]
            other = (self._map(f, j) if hi == is_[2] else
                     series_features(self.features[j][f].x, sigma, xp, center=centre, degree=hi))[:, cols]
            step = (own @ other.T) * (self.weights[j] * self._edge_weight(feat.name))
            total = total + step if is_[2] > was[2] else total - step
        return total

    def _delta(self, k: int, old: list[Array], raw: Array, which: list[int]) -> Array | None:
        """Raw scores updated from ``raw`` (computed on features ``old``) over only the edges whose
        values changed: ``R += A(new_S, y_S) - A(old_S, y_S)`` per feature, ``S`` the changed
        edges (the kernel is a sum over edges). None where that would cost more than scoring afresh
        (twice the changed edges against all of them). In the Hungarian stage a sweep moves few
        units, so few edges change."""
        xp, j = self.xp, self.pool[0]
        changed: list[tuple[int, Array]] = []
        work = full = 0
        for f in which:
            feat = self.features[k][f]
            n_edges, dim = int(feat.x.shape[1]), int(feat.x.shape[2])
            full += n_edges * dim
            if feat.x is old[f]:
                continue
            moved = xp.any(feat.x != old[f], axis=(0, 2))
            idx = xp.nonzero(moved)[0]
            if int(idx.shape[0]):
                changed.append((f, idx))
                work += 2 * int(idx.shape[0]) * dim
        if work >= full:
            return None
        total = raw
        for f, idx in changed:
            feat = self.features[k][f]
            new, before, y = (xp.take(z, idx, axis=1) for z in (feat.x, old[f], self.features[j][f].x))
            w = self.weights[j] * self._edge_weight(feat.name)
            if f in self.phi:  # a feature map: one product of the maps' difference
                step = (self._edge_map(f, new) - self._edge_map(f, before)) @ self._edge_map(f, y).T
                total = total + (step * w if w != 1.0 else step)
            else:  # the exact kernel: the changed edges' affinity before and after
                pair = [Feature(feat.name, feat.axis, y)]
                after_, before_ = (group_affinity([Feature(feat.name, feat.axis, z)], pair, self.sigmas, xp, kind=self.kind,
                                                  kernel=self.kernel, weights=self.edge_weights) for z in (new, before))
                total = total + self.weights[j] * (after_ - before_)
        return total

    def _edge_weight(self, name: str) -> float:
        """The weight of parameter ``name``'s edges (1 where none is set)."""
        return 1.0 if self.edge_weights is None else self.edge_weights.get(name, 1.0)

    def _edge_map(self, f: int, x: Array) -> Array:
        """Feature ``f``'s map (its series, or the kernel's feature map) of edges ``x`` (n, E', D),
        built as the full feature's is."""
        feat = self.features[self.pool[0]][f]
        sigma = self.sigmas[feat.name]
        if f in self.series_degree:  # never pooled here (see _add_series)
            return series_features(x, sigma, self.xp, center=self.cache.ranges[feat.name][0], degree=self.series_degree[f])
        centre, bound = self.cache.ranges[feat.name]
        phi = edge_features(x, sigma, kernel=self.cache.kernel, bound=bound, center=centre)
        if phi is None:  # the same call gave a map for all edges; never for a subset
            raise AssertionError(f"no feature map for a subset of {feat.name!r}'s edges")
        return phi

    def _raw(self, k: int, maps: Sequence[Mapping[str, Array]], which: list[int] | None = None) -> Array | None:
        """Raw ``R_g^(k)`` from features ``which`` (default all; see :meth:`scores`); None if there are none."""
        xp, group = self.xp, self.group
        partners = [j for j in self.pool if j != k]
        chosen = set(range(len(self.features[k]))) if which is None else set(which)
        total = None
        for f in (f for f in self.phi if f in chosen):
            if not self.templates:  # a single pool model j: R = w_j Phi_k (Phi_j^T M_j), or 0 when j = k
                (j,) = self.pool
                if j == k:
                    continue
                term = self.weights[j] * (self._map(f, k) @ self._term(f, j))
            else:
                t = self.templates[f]
                if k in self.pool:
                    t = t - self.weights[k] * self._term(f, k)
                term = self._map(f, k) @ t
            w = self._edge_weight(self.features[k][f].name)
            if w != 1.0:
                term = term * w
            total = term if total is None else total + term
        rest = [i for i in range(len(self.features[k])) if i not in self.phi and i in chosen]
        if rest:
            for j in partners:
                a = self._rest_affinity(k, j, rest)
                rows, cols = self.cache.alive(k, group), self.cache.alive(j, group)
                if rows is not None:  # empty slots have no edges
                    a = a * rows[:, None]
                if cols is not None:
                    a = a * cols[None, :]
                term = self.weights[j] * map_columns(a, maps[j].get(group), xp)
                total = term if total is None else total + term
        return total

    def _rest_affinity(self, k: int, j: int, rest: list[int]) -> Array:
        """Raw pairwise affinity of model ``k``'s units to ``j``'s over the features without maps.

        Features that are cached on both sides (they do not move: e.g. a first layer's incoming
        weights, or anything of the anchor model) are summed once and kept across sweeps; the
        others are computed afresh, once per unordered pair (:meth:`_pairwise`).
        """
        fixed = tuple(i for i in rest if self.stamps[k][i] is not None and self.stamps[j][i] is not None)
        moving = tuple(i for i in rest if i not in fixed)
        total = None
        if fixed:
            lo, hi = min(k, j), max(k, j)  # stored once per unordered pair, as A(X_lo, X_hi)
            key = (self.group, lo, hi, fixed)
            stamps = tuple(self.stamps[lo][i] for i in fixed) + tuple(self.stamps[hi][i] for i in fixed)
            stored = self.cache.pair(key, stamps)
            if stored is None:
                total = self._pairwise(k, j, fixed)
                self.cache.store_pair(key, stamps, total if k == lo else self.xp.permute_dims(total, (1, 0)))
            else:
                total = stored if k == lo else self.xp.permute_dims(stored, (1, 0))
                self._take(j, k, fixed)  # the transpose kept for this read, if any, is not needed
        if moving:
            a = self._pairwise(k, j, moving)
            total = a if total is None else total + a
        return total

    def _take(self, k: int, j: int, which: tuple[int, ...]) -> Array | None:
        """Remove and return model ``k``'s affinity to ``j`` kept for ``j``'s transposed read, if any."""
        hit = self._pending.pop((k, j, which), None)
        if hit is not None:
            self._pending_bytes -= array_nbytes(hit)
        return hit

    def _pairwise(self, k: int, j: int, which: tuple[int, ...]) -> Array:
        """Raw affinity of model ``k``'s units to ``j``'s over features ``which``: one kernel call
        per unordered pair."""
        hit = self._take(j, k, which)
        if hit is not None:
            return self.xp.permute_dims(hit, (1, 0))
        own = [self.features[k][i] for i in which]
        other = [self.features[j][i] for i in which]
        a = group_affinity(own, other, self.sigmas, self.xp, kind=self.kind, kernel=self.kernel, weights=self.edge_weights)
        size = array_nbytes(a)
        if len(self.pool) > 1 and j in self.pool and self._pending_bytes + size <= self.cache.budget:
            self._pending[k, j, which] = a  # model j's scores, later in this class, read it transposed
            self._pending_bytes += size
        return a

    def moved(self, k: int, old: Array | None, new: Array) -> None:
        """Model ``k``'s map for this group changed from ``old`` to ``new``: update the templates."""
        if k not in self.pool:
            return
        for f in self.phi:
            after = map_columns(self._map(f, k).T, new, self.xp)
            if self.templates:
                self.templates[f] = self.templates[f] + self.weights[k] * (after - self._term(f, k))
            self.terms[f][k] = after
