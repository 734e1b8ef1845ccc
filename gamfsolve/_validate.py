"""The one validation funnel for every public entry point that takes several models."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import FusionError, FusionTypeError
from ._spec import PermutationSpec
from ._xp import device, is_floating, namespace

__all__ = ["Checked", "check_models", "check_weights"]

Array = Any


@dataclass(frozen=True)
class Checked:
    """What the funnel learned: the namespace, device, group sizes and model weights."""

    xp: Any
    device: Any
    sizes: dict[str, int]
    weights: tuple[float, ...]


def check_weights(weights: Sequence[float] | None, n_models: int) -> tuple[float, ...]:
    """Normalise model weights to sum to one; ``None`` means equal weights."""
    if weights is None:
        return (1.0 / n_models,) * n_models
    try:
        values = [float(w) for w in weights]
    except (TypeError, ValueError) as exc:
        raise FusionTypeError(f"weights must be a sequence of numbers, got {weights!r}") from exc
    if len(values) != n_models:
        raise FusionError(f"weights has {len(values)} entries for {n_models} models")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise FusionError(f"weights must be finite and non-negative, got {values}")
    total = sum(values)
    if total <= 0:
        raise FusionError(f"weights must sum to something positive, got {values}")
    return tuple(w / total for w in values)


def check_models(
    models: Sequence[Mapping[str, Array]], spec: PermutationSpec, weights: Sequence[float] | None = None
) -> Checked:
    """Validate a list of models (parameter name -> array) against ``spec``.

    Raises :class:`FusionError` / :class:`FusionTypeError` for fewer than two models, differing
    names or shapes, mixed libraries or devices, non-floating or non-finite arrays, a spec that
    does not fit, or bad weights.
    """
    if not isinstance(spec, PermutationSpec):
        raise FusionTypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    if isinstance(models, Mapping) or not isinstance(models, Sequence):
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
    for k, model in enumerate(models):
        for n in names:
            x = model[n]
            if tuple(x.shape) != tuple(models[0][n].shape):
                raise FusionError(
                    f"parameter {n!r} has shape {tuple(x.shape)} in models[{k}] but "
                    f"{tuple(models[0][n].shape)} in models[0]"
                )
            if not is_floating(xp, x):
                raise FusionTypeError(f"parameter {n!r} of models[{k}] has dtype {x.dtype}; expected floating point")
            if device(x) != dev:
                raise FusionError(f"parameter {n!r} of models[{k}] is on {device(x)}, models[0] on {dev}")
            if not bool(xp.all(xp.isfinite(x))):
                raise FusionError(f"parameter {n!r} of models[{k}] contains NaN or Inf")
    sizes = spec.group_sizes({n: tuple(models[0][n].shape) for n in names})
    return Checked(xp=xp, device=dev, sizes=sizes, weights=check_weights(weights, len(models)))
