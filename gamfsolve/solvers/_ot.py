"""OTFusion-style layer-wise optimal transport (Singh & Jaggi, NeurIPS 2020), weight based.

Groups are visited once, in the network's order (the spec's order of first appearance).
For group ``g`` every other model is matched to model 0 by optimal transport with the
Euclidean distance of incoming weights as ground cost: the parameters touching ``g`` whose
other groups are already aligned (incoming weights, biases, norm vectors). With equal widths
and uniform marginals the optimal transport plan is a permutation (Birkhoff), found exactly
by the Hungarian algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._api import register_method
from .._result import MatchResult
from .._xp import clip
from ..affinity._features import unit_features
from ..spec._spec import PermutationSpec, segments_of
from ..spec._validate import Checked
from ._assign import hungarian

__all__: list[str] = []

Array = Any


def _incoming(spec: PermutationSpec, group: str, solved: set[str]) -> set[str] | None:
    """Parameters touching ``group`` whose other groups are all solved; None if there are none."""
    names = set()
    for name, _ in spec.users(group):
        others = {s.group for e in spec.axes[name] for s in segments_of(e) if s.group not in (None, group)}
        if others <= solved:
            names.add(name)
    return names or None


def _flat(features: Sequence[Any], n: int, xp: Any) -> Array:
    return xp.concat([xp.reshape(f.x, (n, -1)) for f in features], axis=1)


@register_method("ot")
def _ot(models: Sequence[Mapping[str, Array]], spec: PermutationSpec, checked: Checked, *, seed: int | None) -> MatchResult:
    """Layer-by-layer exact OT of every model onto model 0 (no options)."""
    xp, sizes = checked.xp, checked.sizes
    maps: list[dict[str, Array]] = [{} for _ in models]
    solved: set[str] = set()
    for g in spec.groups:
        n = sizes[g]
        only = _incoming(spec, g, solved)
        ref = _flat(unit_features(models[0], spec, g, sizes, {}, xp, only=only), n, xp)
        costs = []
        for k in range(1, len(models)):
            x = _flat(unit_features(models[k], spec, g, sizes, maps[k], xp, only=only), n, xp)
            if checked.presence:  # different widths: distances over the entries both units have
                pk = _flat(unit_features(checked.presence[k], spec, g, sizes, maps[k], xp, only=only), n, xp)
                p0 = _flat(unit_features(checked.presence[0], spec, g, sizes, {}, xp, only=only), n, xp)
                sq = (x * x) @ p0.T + pk @ (ref * ref).T - 2.0 * (x @ ref.T)
            else:
                sq = xp.sum(x * x, axis=1)[:, None] + xp.sum(ref * ref, axis=1)[None, :] - 2.0 * (x @ ref.T)
            costs.append(-xp.sqrt(clip(sq, 0.0, None, xp)))
        live = [checked.live(k, g, partner=0) for k in range(1, len(models))]
        for k, p in enumerate(hungarian(costs, xp, live=live), start=1):
            maps[k][g] = p
        solved.add(g)
    ident = {g: xp.arange(n, device=checked.device) for g, n in sizes.items()}
    perms = {g: [ident[g], *(maps[k][g] for k in range(1, len(models)))] for g in spec.groups}
    return MatchResult(perms=perms, method="ot", n_iter=1, message="one pass in network order")
