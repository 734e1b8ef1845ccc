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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._affinity import group_affinity, map_columns, standardize
from ._features import Feature, unit_features
from ._kernels import edge_features
from ._spec import PermutationSpec

__all__ = ["GroupScores", "value_ranges"]

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


class GroupScores:
    """Scores of one group for every model, given the maps at the start of a colour class."""

    def __init__(
        self, models: Sequence[Mapping[str, Array]], spec: PermutationSpec, group: str, sizes: Mapping[str, int],
        maps: Sequence[Mapping[str, Array]], *, pool: Sequence[int], weights: Sequence[float],
        sigmas: Mapping[str, float], ranges: Mapping[str, tuple[float, float]], kind: str, kernel: str, xp: Any,
    ) -> None:
        self.group, self.pool, self.weights, self.xp = group, list(pool), weights, xp
        self.sigmas, self.kind, self.kernel = sigmas, kind, kernel
        self.features: list[list[Feature]] = [
            unit_features(m, spec, group, sizes, mp, xp) for m, mp in zip(models, maps, strict=True)
        ]
        self.phi: dict[int, list[Array]] = {}  # feature index -> per-model feature maps
        if kind == "edge":
            for f, feat in enumerate(self.features[0]):
                sigma = sigmas.get(feat.name)
                if sigma is None:
                    continue
                centre, bound = ranges[feat.name]
                maps_f = [edge_features(fs[f].x, sigma, kernel=kernel, bound=bound, center=centre) for fs in self.features]
                if all(p is not None for p in maps_f):
                    self.phi[f] = maps_f
        self.templates = {f: self._template(f, maps) for f in self.phi}

    def _template(self, f: int, maps: Sequence[Mapping[str, Array]]) -> Array:
        total = None
        for j in self.pool:
            term = self.weights[j] * map_columns(self.phi[f][j].T, maps[j].get(self.group), self.xp)
            total = term if total is None else total + term
        return total

    def scores(self, k: int, maps: Sequence[Mapping[str, Array]]) -> Array:
        """Standardised ``R_g^(k)`` under the current maps of the other models."""
        xp, group = self.xp, self.group
        partners = [j for j in self.pool if j != k]
        total = None
        for f, per_model in self.phi.items():
            t = self.templates[f]
            if k in self.pool:
                t = t - self.weights[k] * map_columns(per_model[k].T, maps[k].get(group), xp)
            term = per_model[k] @ t
            total = term if total is None else total + term
        rest = [i for i in range(len(self.features[k])) if i not in self.phi]
        if rest:
            own = [self.features[k][i] for i in rest]
            for j in partners:
                other = [self.features[j][i] for i in rest]
                a = group_affinity(own, other, self.sigmas, xp, kind=self.kind, kernel=self.kernel)
                term = self.weights[j] * map_columns(a, maps[j].get(group), xp)
                total = term if total is None else total + term
        return standardize(total, xp)

    def moved(self, k: int, old: Array | None, new: Array) -> None:
        """Model ``k``'s map for this group changed from ``old`` to ``new``: update the templates."""
        if k not in self.pool:
            return
        xp = self.xp
        for f, per_model in self.phi.items():
            before = map_columns(per_model[k].T, old, xp)
            after = map_columns(per_model[k].T, new, xp)
            self.templates[f] = self.templates[f] + self.weights[k] * (after - before)
