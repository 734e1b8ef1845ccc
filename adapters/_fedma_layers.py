"""FedMA's layer plan and one layer's matched averaging, on NumPy arrays.

A model's layers, in matching order, are read from a :class:`gamfsolve.PermutationSpec`: a
floating-point parameter belongs to the layer of the group on its first axis (PyTorch's
output axis: ``weight[out, in, ...]``, ``bias[out]``, norm vectors); parameters whose first
axis is fixed (``None``, e.g. the classifier) form the last, unmatched layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from gamfsolve import FusionError, PermutationSpec
from gamfsolve.spec._spec import AxisEntry, segments_of

__all__ = ["Layer", "layer_plan", "match_layer"]


@dataclass(frozen=True)
class Layer:
    """One FedMA layer: the group its units form (None: the unmatched last layer) and its parameters."""

    group: str | None
    params: tuple[str, ...]


def _first_group(entry: AxisEntry) -> str | None:
    if entry is None or isinstance(entry, str):
        return entry
    raise FusionError(
        f"FedMA matches layers whose output axis is one plain group; an axis entry {entry!r} (Blocks or Concat) "
        "on a parameter's first axis is not supported"
    )


def _groups(entries: Sequence[AxisEntry]) -> set[str]:
    return {s.group for e in entries for s in segments_of(e) if s.group is not None}


def layer_plan(spec: PermutationSpec, names: Sequence[str]) -> list[Layer]:
    """The layers of the floating-point parameters ``names``, in the spec's group order, last layer last.

    Raises :class:`FusionError` when a parameter's input groups are not all matched before its
    own (the layers do not form a feed-forward chain in the spec's order).
    """
    missing = [n for n in names if n not in spec.axes]
    if missing:
        raise FusionError(f"the spec does not cover the floating-point arrays {missing}")
    by_group: dict[str | None, list[str]] = {}
    for name in names:
        entries = spec.axes[name]
        by_group.setdefault(_first_group(entries[0]) if entries else None, []).append(name)
    order = list(spec.groups)
    layers = [Layer(g, tuple(by_group[g])) for g in order if g in by_group]
    if None in by_group:
        layers.append(Layer(None, tuple(by_group[None])))
    for i, layer in enumerate(layers):
        earlier = {x.group for x in layers[: i + 1]}
        for name in layer.params:
            later = {g for g in _groups(spec.axes[name][1:]) if g in order} - earlier
            if later:
                raise FusionError(
                    f"FedMA: {name!r} (layer of group {layer.group!r}) takes input from groups {sorted(later)} "
                    "that are matched later; FedMA needs the layers in feed-forward order"
                )
    return layers


def _features(model: Mapping[str, np.ndarray], params: Sequence[str]) -> np.ndarray:
    """Units as rows: the layer's parameters with their first axis kept, flattened (float64)."""
    return np.concatenate([np.asarray(model[p], dtype=np.float64).reshape(model[p].shape[0], -1) for p in params], axis=1)


def match_layer(
    models: Sequence[Mapping[str, np.ndarray]],
    params: Sequence[str],
    weights: Sequence[float],
    *,
    seed: int,
    sweeps: int = 10,
) -> tuple[list[np.ndarray], int]:
    """Match one layer's units across clients; return each client's index vector and the sweeps run.

    Fixed-size matched averaging: every client is matched, in random order and until no
    assignment changes (at most ``sweeps`` passes), to the weighted mean of the others in their
    current order by the Hungarian algorithm on the squared Euclidean distance of the units'
    weights (the layer's rows: incoming weights, bias). ``perm[u]`` is the client's unit placed
    at global position ``u``. Shapes: each model's ``params`` share the first axis length ``n``.
    """
    feats = [_features(m, params) for m in models]
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    n = feats[0].shape[0]
    perms = [np.arange(n) for _ in feats]
    if len(feats) < 2:
        return perms, 0
    rng = np.random.default_rng(seed)
    run = 0
    while run < sweeps:
        run += 1
        changed = False
        for k in rng.permutation(len(feats)):
            others = [j for j in range(len(feats)) if j != k]
            target = sum(w[j] * feats[j][perms[j]] for j in others) / w[others].sum()
            sq = (feats[k] ** 2).sum(1)[None, :] + (target**2).sum(1)[:, None] - 2.0 * target @ feats[k].T
            rows, cols = linear_sum_assignment(sq)  # rows: global positions u, cols: client units
            new = cols[np.argsort(rows)]
            if not np.array_equal(new, perms[k]):
                perms[k], changed = new, True
        if not changed:
            break
    return perms, run
