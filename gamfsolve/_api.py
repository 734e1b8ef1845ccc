"""Public entry points: :func:`match`, :func:`fuse`, :func:`merge`; methods from a registry."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from time import perf_counter
from typing import Any

from ._errors import FusionError, OptionError
from ._guard import check_scale
from ._numeric import compute_dtype, output_dtype, power_of_two_scale, scale_widths, scaled, to_dtype
from ._options import check_option_values, check_seed
from ._progress import resolve_progress
from ._result import MatchResult
from ._xp import host_views, namespace
from .spec._heads import collapse, expand_models, expand_spec
from .spec._permute import permute
from .spec._spec import PermutationSpec
from .spec._validate import Checked, check_models, check_weights

__all__ = ["METHODS", "check_options", "fuse", "match", "merge", "register_method"]

Array = Any
Model = Mapping[str, Array]
Solver = Callable[..., MatchResult]

METHODS: dict[str, Solver] = {}


def register_method(name: str) -> Callable[[Solver], Solver]:
    """Decorator adding a solver ``f(models, spec, checked, *, seed, **options)`` to the registry."""

    def wrap(func: Solver) -> Solver:
        METHODS[name] = func
        return func

    return wrap


def _solver(method: str, options: Mapping[str, Any]) -> Solver:
    try:
        func = METHODS[method]
    except KeyError:
        raise FusionError(f"unknown method {method!r}; choose one of {sorted(METHODS)}") from None
    params = inspect.signature(func).parameters
    allowed = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n != "seed"]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise OptionError(f"unknown option(s) {unknown} for method {method!r}; valid options: {allowed}")
    return func


def check_options(method: str, options: Mapping[str, Any], seed: Any = None) -> None:
    """Raise :class:`FusionError` for an unknown method or a bad seed, :class:`OptionError` for an
    unknown option name or a value of the wrong type or range (see ``_options.RULES``)."""
    _solver(method, options)
    check_option_values(method, options)
    check_seed(seed)


def match(
    models: Sequence[Model],
    spec: PermutationSpec,
    *,
    method: str = "gamf",
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    max_memory: int | float | str | None = None,
    **options: Any,
) -> MatchResult:
    """Find, for every group, the permutation of each model's units into a common order.

    Parameters
    ----------
    models : sequence of mappings, length N >= 2
        Each maps parameter name to an array (any array-API library; all the same library,
        device, names and shapes).
    spec : PermutationSpec
        Which group permutes which axis.
    method : {"gamf", "weight_matching", "ot", "average"}
        ``"gamf"``: graduated assignment on the Gaussian edge affinity (Liu et al. 2022,
        Alg. 1 for two models, Alg. 2 in a shared universe for more). ``"weight_matching"``:
        coordinate descent of linear assignments (Ainsworth et al. 2023). ``"ot"``: layer by
        layer optimal transport of incoming weights (Singh & Jaggi 2020). ``"average"``: identity.
    weights : sequence of float, optional
        Non-negative model weights (normalised); used by methods that align to a weighted mean.
    seed : int, optional
        Makes randomised initialisations reproducible.
    progress : bool, optional
        Report iterations (a tqdm bar when tqdm is installed, else log lines); by default when
        standard error is a terminal.
    max_memory : int, float or str, optional
        Limit on the solver's working memory beyond the models (bytes, or e.g. ``"8GB"``; default
        4 GiB). A problem whose estimate exceeds it raises :class:`ScaleError` before any work.
    **options
        Method options; an unknown name raises :class:`FusionError` listing the valid ones.

    Returns
    -------
    MatchResult
        ``result.perms[group][k]``: index vector putting model ``k`` into the common order.

    Models of different widths (unit counts of a group differ; every other axis agrees) are
    matched in a universe of the largest width: each narrower model is given zero units up to
    that size, so its index vectors are permutations of ``range(U)`` whose entries ``>= n_k``
    are empty slots (see :func:`gamfsolve.permute` and :func:`merge`).

    Options and ``seed`` are checked for type and range before any work (:class:`OptionError`,
    :class:`FusionError`). Models of different float dtypes are matched in the widest, float16
    and bfloat16 in float32; arrays of extreme magnitude (far outside ``2**-16 .. 2**16``) are
    first scaled by one power of two, which leaves every method's result unchanged.
    """
    check_options(method, options, seed)
    solver = _solver(method, options)
    if isinstance(spec, PermutationSpec) and spec.has_split:  # every method sees Split axes as plain sub-axes
        return match(expand_models(models, spec), expand_spec(spec), method=method, weights=weights, seed=seed,
                     progress=progress, max_memory=max_memory, **options)
    checked = check_models(models, spec, weights)
    first = next(iter(models[0].values()), None)
    itemsize = getattr(getattr(first, "dtype", None), "itemsize", 4) or 4
    check_scale(checked.sizes, itemsize, len(models), method, max_memory)
    start = perf_counter()
    models = to_dtype(models, checked.xp, compute_dtype(models, checked.xp))  # bfloat16 -> float32, mixed -> widest
    exponent = power_of_two_scale(models, checked.xp)
    if exponent:  # far from 1 (1e19, 1e-25): exact power-of-two rescale, results unchanged
        models = scaled(models, exponent)
        if options.get("sigma") is not None:
            options = dict(options, sigma=scale_widths(options["sigma"], exponent))
    views = host_views(models)
    if views is not None:  # PyTorch CPU tensors: solve on shared-memory NumPy views, answer in torch
        result = match(views, spec, method=method, weights=weights, seed=seed, progress=progress,
                       max_memory=max_memory, **options)
        xp = checked.xp
        perms = {g: [xp.asarray(p) for p in ps] for g, ps in result.perms.items()}
        return replace(result, perms=perms, time=perf_counter() - start)
    if "progress" in inspect.signature(solver).parameters:
        options = {**options, "progress": resolve_progress(progress)}
    if not checked.same_widths:  # narrower models get zero units up to the universe's size
        xp = checked.xp
        grow = {g: xp.arange(n, device=checked.device) for g, n in checked.sizes.items()}
        presence = tuple(_presence(m, spec, grow) for m in models)
        models = [permute(model, spec, grow) for model in models]
        checked = replace(checked, presence=presence)
    result = solver(models, spec, checked, seed=seed, **options)
    if exponent and isinstance(result.info.get("sigmas"), Mapping):  # report widths in the inputs' units
        info = dict(result.info, sigmas={k: math.ldexp(v, -2 * exponent) for k, v in result.info["sigmas"].items()})
        result = replace(result, info=info)
    return replace(result, time=perf_counter() - start)


def merge(
    models: Sequence[Model], spec: PermutationSpec, result: MatchResult, *, weights: Sequence[float] | None = None
) -> dict[str, Array]:
    """Weighted average of the models after putting each into the common order of ``result``.

    ``fused[name] = sum_k w_k * permute(models[k])[name]`` with ``w`` normalised to sum to one.
    For models of different widths every entry is the weighted mean over the models that have
    it (an entry touching an empty slot of model ``k`` leaves ``k`` out; an entry no model has
    is zero), so a unit only the wider model has keeps its weights, and fusing a model with a
    pruned, permuted copy of itself returns the model. The output has the universe's widths.
    Same array library and device as the input; the dtype is the widest of the inputs' (float16
    and bfloat16 are averaged in float32 and returned in their own dtype).
    """
    if result.n_models != len(models) and result.perms:
        raise FusionError(f"result matches {result.n_models} models but {len(models)} were given")
    if isinstance(spec, PermutationSpec) and spec.has_split:
        return collapse(merge(expand_models(models, spec), expand_spec(spec), result, weights=weights), spec)
    w = check_weights(weights, len(models))
    xp = check_models(models, spec).xp
    work, final = compute_dtype(models, xp), output_dtype(models, xp)
    out: dict[str, Array] = {}
    total: dict[str, Array] = {}
    for k, model in enumerate(to_dtype(models, xp, work)):  # half precision is averaged in float32
        perms = result.model_perms(k)
        aligned = permute(model, spec, perms)
        own = spec.group_sizes({n: tuple(x.shape) for n, x in model.items()})
        masks = None
        if any(p.shape[0] > own[g] for g, p in perms.items()):  # entries this model does not have
            masks = _presence(model, spec, perms)
        for name, x in aligned.items():
            term, weight = (w[k] * x, w[k]) if masks is None else (w[k] * masks[name] * x, w[k] * masks[name])
            out[name] = term if k == 0 else out[name] + term
            total[name] = weight if k == 0 else total[name] + weight
    for name, t in total.items():
        if not isinstance(t, float):  # some entries are missing in some models
            has = t > 0
            out[name] = xp.where(has, out[name] / xp.where(has, t, xp.ones_like(t)), xp.zeros_like(t))
    return {n: x if x.dtype == final else xp.astype(x, final) for n, x in out.items()}


def _presence(model: Model, spec: PermutationSpec, perms: Mapping[str, Array]) -> dict[str, Array]:
    """``model`` placed by ``perms`` as 1 for its own entries and 0 for empty universe slots."""
    xp = namespace(*model.values())
    return permute({n: xp.ones_like(x) for n, x in model.items()}, spec, perms)


def fuse(
    models: Sequence[Model],
    spec: PermutationSpec,
    *,
    method: str = "gamf",
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    **options: Any,
) -> dict[str, Array]:
    """Align the models with :func:`match`, then average them (weighted) with :func:`merge`.

    Returns a new mapping of parameter name to array, same library, dtype and device as the
    input. Inputs are not modified.
    """
    result = match(models, spec, method=method, weights=weights, seed=seed, **options)
    return merge(models, spec, result, weights=weights)


@register_method("average")
def _average(models: Sequence[Model], spec: PermutationSpec, checked: Checked, *, seed: int | None) -> MatchResult:
    """Vanilla averaging: every model keeps its own unit order."""
    xp = checked.xp
    perms = {g: [xp.arange(n, device=checked.device) for _ in models] for g, n in checked.sizes.items()}
    return MatchResult(perms=perms, method="average", message="identity (no alignment)")
