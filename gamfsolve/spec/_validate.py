"""The one validation funnel for every public entry point that takes several models."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import FusionError, FusionTypeError
from .._xp import device, is_floating, namespace
from ._spec import AxisEntry, PermutationSpec, segments_of

__all__ = ["Checked", "check_models", "check_weights", "universe_shape", "widest"]

Array = Any


@dataclass(frozen=True)
class Checked:
    """What the funnel learned: the namespace, device, group sizes and model weights.

    ``sizes[g]`` is the universe size of group ``g`` (the largest model's unit count);
    ``model_sizes[k][g]`` model ``k``'s own count (equal to ``sizes`` unless widths differ);
    ``presence[k]``, set by :func:`gamfsolve.match` when widths differ, is model ``k`` placed
    into the universe as 1 for its real entries and 0 for empty slots.
    """

    xp: Any
    device: Any
    sizes: dict[str, int]
    weights: tuple[float, ...]
    model_sizes: tuple[dict[str, int], ...] = ()
    presence: tuple[dict[str, Any], ...] = ()

    def live(self, k: int, group: str, partner: int | None = None) -> tuple[int, int] | None:
        """Real rows (model ``k``) and columns (``partner``, else the universe) of a score matrix."""
        if self.same_widths:
            return None
        cols = self.sizes[group] if partner is None else self.model_sizes[partner][group]
        return self.model_sizes[k][group], cols

    @property
    def same_widths(self) -> bool:
        """Whether every model has the universe's unit count in every group."""
        return all(s == self.sizes for s in self.model_sizes)


def check_weights(weights: Sequence[float] | None, n_models: int) -> tuple[float, ...]:
    """Normalise model weights to sum to one; ``None`` means equal weights."""
    if weights is None:
        return (1.0 / n_models,) * n_models
    if isinstance(weights, (str, bytes, Mapping)):
        raise FusionTypeError(f"weights must be a sequence of numbers, got {weights!r}")
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError) as exc:
        raise FusionTypeError(f"weights must be a sequence of numbers, got {weights!r}") from exc
    if len(values) != n_models:
        raise FusionError(f"weights has {len(values)} entries for {n_models} models")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise FusionError(f"weights must be finite and non-negative, got {values}")
    top = max(values)
    if top <= 0:
        raise FusionError(f"weights must sum to something positive, got {values}")
    values = [w / top for w in values]  # first to at most 1: weights near 1e308 sum without overflow
    total = sum(values)
    return tuple(w / total for w in values)


def check_models(
    models: Sequence[Mapping[str, Array]], spec: PermutationSpec, weights: Sequence[float] | None = None
) -> Checked:
    """Validate a list of models (parameter name -> array) against ``spec``.

    Models may differ in the unit counts of permutation groups (different widths); the result's
    ``sizes`` are then the largest counts. Raises :class:`FusionError` / :class:`FusionTypeError`
    for fewer than two models, differing names or fixed axes, mixed libraries or devices,
    non-floating or non-finite arrays, a spec that does not fit, or bad weights.
    """
    if not isinstance(spec, PermutationSpec):
        raise FusionTypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    if isinstance(models, (Mapping, str, bytes)) or not isinstance(models, Sequence):
        raise FusionTypeError("models must be a sequence of parameter mappings (one per model)")
    if len(models) < 2:
        raise FusionError(f"need at least two models to fuse, got {len(models)}")
    for k, model in enumerate(models):
        if not isinstance(model, Mapping):
            raise FusionTypeError(f"models[{k}] must be a mapping of parameter name to array")
    names = list(models[0])
    for k, model in enumerate(models[1:], start=1):
        if set(model) != set(names):
            diff = sorted(set(model) ^ set(names))
            raise FusionError(f"models[{k}] has different parameter names from models[0]: {diff}")
    arrays = [model[n] for model in models for n in names]
    xp = namespace(*arrays)
    dev = device(arrays[0])
    if str(dev) == "meta":
        raise FusionError("the models' arrays are on the meta device (shapes without values); load their weights first")
    for k, model in enumerate(models):
        for n in names:
            x = model[n]
            if not is_floating(xp, x):
                raise FusionTypeError(f"parameter {n!r} of models[{k}] has dtype {x.dtype}; expected floating point")
            if device(x) != dev:
                raise FusionError(f"parameter {n!r} of models[{k}] is on {device(x)}, models[0] on {dev}")
            if not bool(xp.all(xp.isfinite(x))):
                raise FusionError(f"parameter {n!r} of models[{k}] contains NaN or Inf")
    model_sizes = tuple(_sizes_of(model, spec, names, k) for k, model in enumerate(models))
    for k, own in enumerate(model_sizes):
        empty = sorted(g for g, n in own.items() if n < 1)
        if empty:
            raise FusionError(f"models[{k}] has no units in group(s) {empty} (a layer of width 0); every "
                              "permuted layer needs at least one unit")
    sizes = {g: max(s[g] for s in model_sizes) for g in spec.groups}
    for n in names:  # widths may differ; every fixed axis (and run) must agree
        want = universe_shape(tuple(models[0][n].shape), spec.axes[n], model_sizes[0], sizes)
        for k, model in enumerate(models[1:], start=1):
            if universe_shape(tuple(model[n].shape), spec.axes[n], model_sizes[k], sizes) != want:
                raise FusionError(
                    f"parameter {n!r} has shape {tuple(model[n].shape)} in models[{k}] but "
                    f"{tuple(models[0][n].shape)} in models[0], and not only along permuted axes (models of "
                    "different widths may differ in the unit counts of permutation groups, nothing else)"
                )
    return Checked(xp=xp, device=dev, sizes=sizes, weights=check_weights(weights, len(models)), model_sizes=model_sizes)


def _sizes_of(model: Mapping[str, Array], spec: PermutationSpec, names: list[str], k: int) -> dict[str, int]:
    try:
        return spec.group_sizes({n: tuple(model[n].shape) for n in names})
    except FusionError as exc:
        raise FusionError(f"models[{k}]: {exc}") from None


def universe_shape(
    shape: tuple[int, ...], entries: tuple[AxisEntry, ...], own: Mapping[str, int], universe: Mapping[str, int]
) -> tuple[int, ...]:
    """The shape a parameter takes when every group has its universe size instead of ``own``."""
    out = []
    for length, entry in zip(shape, entries, strict=True):
        segs = segments_of(entry)
        if len(segs) == 1 and segs[0].group is None:
            out.append(length)
        else:
            out.append(sum(s.outer if s.group is None else s.outer * universe[s.group] * s.inner for s in segs))
    return tuple(out)


def widest(models: Sequence[Mapping[str, Array]], spec: PermutationSpec) -> int | None:
    """Index of the first model with the largest unit count of every group, or None if none has.

    The model whose architecture holds the fusion of models of different widths.
    """
    sizes = [spec.group_sizes({n: tuple(x.shape) for n, x in m.items()}) for m in models]
    for k, s in enumerate(sizes):
        if all(s[g] >= other[g] for other in sizes for g in s):
            return k
    return None
