"""PyTorch adapter: derive a spec from a module's graph, fuse modules, reset BatchNorm statistics.

The spec is derived from the traced graph (``torch.fx``; ``torch.export`` when fx cannot trace
the module): every Linear/Conv output opens a channel group, which flows unchanged through
activations, dropout, pooling and normalisation layers (their vectors join it); residual adds
unite groups; ``torch.cat`` gives a :class:`~gamfsolve.Concat` axis and a flatten a
:class:`~gamfsolve.Blocks` axis; model inputs and outputs stay fixed. Whatever cannot be
permuted safely (attention heads, grouped convolutions, GroupNorm with several groups,
unknown ops) is fixed, and :func:`check_spec` verifies the result numerically.

Example
-------
>>> from gamfsolve.adapters import torch as gt
>>> fused = gt.fuse_modules([model_a, model_b], example_inputs=x[:2])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import gamfsolve
from gamfsolve import FusionError, FusionTypeError, PermutationSpec
from gamfsolve._api import check_options
from gamfsolve.spec._validate import check_weights, widest

from ._torch_attention import opaque_attention
from ._torch_io import aliases, deepcopy, from_arrays, load_program, load_state, save_state, to_arrays
from ._torch_repair import repair, reset_bn_stats
from ._torch_run import EvalMode, device_check, output_tensors
from ._torch_same import check_same_function, module_ops
from ._torch_trace import derive_spec, trace_export, trace_fx

__all__ = [
    "align_modules",
    "check_spec",
    "from_arrays",
    "fuse_modules",
    "load_program",
    "load_state",
    "repair",
    "reset_bn_stats",
    "save_state",
    "spec_from_module",
    "to_arrays",
]


def _check_module_type(module: Any) -> None:
    if not isinstance(module, nn.Module):
        raise FusionTypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")


def _inputs(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        return tuple(example_inputs)
    raise FusionTypeError(
        f"example_inputs must be a tensor or a non-empty tuple of tensors, got {type(example_inputs).__name__}"
    )


def spec_from_module(
    module: nn.Module | torch.export.ExportedProgram,
    example_inputs: Any = None,
    *,
    check: bool = True,
    strict: bool = False,
    atol: float = 1e-5,
) -> PermutationSpec:
    """Derive the :class:`~gamfsolve.PermutationSpec` of a module from its traced graph.

    Parameters
    ----------
    module : torch.nn.Module or torch.export.ExportedProgram
        The model (not modified; traced in eval mode). An exported program is read as is.
    example_inputs : tensor or tuple of tensors
        A small batch on the module's device; gives the shapes (H*W for a flatten) and drives
        the check. Optional for an exported program that stored its example inputs.
    check : bool
        Run :func:`check_spec` on the result (random permutations must not change the outputs).
    strict : bool
        Raise :class:`~gamfsolve.FusionError` instead of fixing units an op cannot permute safely
        (the message lists each such op); by default they are fixed and logged at INFO level on
        the ``gamfsolve.adapters.torch`` logger.
    atol : float
        Tolerance of the check, relative to the output scale.

    Returns
    -------
    PermutationSpec
        Covers every floating parameter and buffer of :func:`to_arrays`.
    """
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol >= 0 or atol == float("inf"):
        raise FusionError(f"atol must be a finite number >= 0, got {atol!r}")
    if isinstance(module, torch.export.ExportedProgram):
        program = module
        if example_inputs is None and program.example_inputs is not None:
            example_inputs = program.example_inputs[0]
        module = program.module()
        inputs = _inputs(example_inputs) if example_inputs is not None else None
        source: Any = program
        shapes = None
    else:
        if not isinstance(module, nn.Module):
            raise FusionTypeError(f"module must be a torch.nn.Module or ExportedProgram, got {type(module).__name__}")
        inputs = _inputs(example_inputs)
        device_check(module, inputs)
        _run_once(module, inputs)
        source, shapes = _trace(module, inputs)
    params = {k: tuple(v.shape) for k, v in to_arrays(module).items()}
    spec = derive_spec(source, shapes, params, aliases(module), strict=strict)
    spec.group_sizes(params)
    if check and inputs is not None:
        check_spec(module, spec, inputs, atol=atol)
    return spec


def _run_once(module: nn.Module, inputs: tuple) -> None:
    """Run the module on the example inputs once: a shape or dtype it refuses is the inputs' fault, said so."""
    try:
        with EvalMode(module), torch.no_grad():
            module(*inputs)
    except Exception as exc:  # whatever the model raises on inputs it cannot take
        got = ", ".join(f"shape {tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
                        for t in inputs)
        raise FusionError(
            f"{type(module).__name__} cannot run on example_inputs ({got}): {_first_line(exc)}; pass a small batch "
            "of the inputs the model takes (their shape and dtype)"
        ) from exc


def _trace(module: nn.Module, inputs: tuple) -> tuple[Any, Any]:
    with EvalMode(module):
        try:
            traced = trace_fx(module, inputs)
            if not opaque_attention(traced[0]):
                return traced
            return trace_export(module, inputs), None  # attention modules are fx leaves; export opens them
        except Exception as fx_error:  # fx raises many types (TraceError, TypeError, ...)
            try:
                return trace_export(module, inputs), None
            except Exception as export_error:
                raise FusionError(
                    f"cannot trace {type(module).__name__}: torch.fx failed ({_first_line(fx_error)}) and "
                    f"torch.export failed ({_first_line(export_error)}); write the PermutationSpec by hand"
                ) from export_error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _max_error(ref: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    scale = max([1.0] + [float(r.abs().max()) for r in ref if r.is_floating_point() and r.numel()])
    errs = [float((r.double() - o.double()).abs().max()) for r, o in zip(ref, out, strict=True) if r.numel()]
    return max(errs, default=0.0) / scale


def check_spec(
    module: nn.Module, spec: PermutationSpec, example_inputs: Any, *, atol: float = 1e-5, seed: int = 0
) -> None:
    """Check that permuting every group at random leaves the module's outputs unchanged.

    Runs in eval mode on a copy. The error ``max |f(x) - f_P(x)| / max(1, max |f(x)|)`` must
    not exceed ``atol``; otherwise each group is tried alone and :class:`~gamfsolve.FusionError`
    names those that change the outputs (a wrong spec, or an op the derivation misread).
    """
    if not isinstance(spec, PermutationSpec):
        raise FusionTypeError(f"spec must be a PermutationSpec, got {type(spec).__name__}")
    _check_module_type(module)
    inputs = _inputs(example_inputs)
    device_check(module, inputs)
    model = deepcopy(module).eval()
    arrays = to_arrays(model)
    sizes = spec.group_sizes({k: tuple(v.shape) for k, v in arrays.items()})
    rng = np.random.default_rng(seed)
    dev = next(iter(arrays.values())).device if arrays else torch.device("cpu")
    perms = {g: torch.as_tensor(rng.permutation(n), device=dev) for g, n in sizes.items()}
    with torch.no_grad():
        ref = output_tensors(model(*inputs))

        def error(selected: dict[str, torch.Tensor]) -> float:
            permuted = from_arrays(model, gamfsolve.permute(arrays, spec, selected))
            return _max_error(ref, output_tensors(permuted(*inputs)))

        err = error(perms)
        if err <= atol:
            return
        bad = [g for g in perms if error({g: perms[g]}) > atol]
    raise FusionError(
        f"the spec does not describe {type(module).__name__}: permuting groups {bad or list(perms)} changes "
        f"the outputs (relative error {err:.2e} > atol {atol:.1e})"
    )


def _check_same(modules: Sequence[nn.Module]) -> None:
    """Same class and state-dict names; shapes are left to the core (widths may differ)."""
    if isinstance(modules, nn.Module) or not isinstance(modules, Sequence) or len(modules) < 2:
        raise FusionError("modules must be a sequence of at least two torch.nn.Module")
    first = modules[0]
    for k, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise FusionTypeError(f"modules[{k}] must be a torch.nn.Module, got {type(m).__name__}")
        if type(m) is not type(first):
            raise FusionError(f"modules[{k}] is a {type(m).__name__} but modules[0] is a {type(first).__name__}")
        a, b = first.state_dict(), m.state_dict()
        if list(a) != list(b):
            diff = sorted(set(a) ^ set(b))
            raise FusionError(f"modules[{k}] has different parameters from modules[0]: {diff[:5]}")
    check_same_function([module_ops(m) for m in modules], [f"modules[{k}]" for k in range(len(modules))])


def _prepare(modules: Sequence[nn.Module], example_inputs: Any, spec: PermutationSpec | None, check: bool,
             method: str = "gamf", options: Mapping[str, Any] | None = None, seed: Any = None,
             weights: Sequence[float] | None = None) -> tuple[PermutationSpec, list[dict[str, Any]]]:
    """Validate ``modules`` against each other and the inputs; the spec (derived unless given) and arrays."""
    _check_same(modules)
    inputs = _inputs(example_inputs)
    check_options(method, options or {}, seed)  # before any tracing
    if weights is not None:
        check_weights(weights, len(modules))
    for k, m in enumerate(modules):
        device_check(m, inputs, f"modules[{k}]")
    if spec is None:
        spec = spec_from_module(modules[0], inputs, check=check)
    return spec, [to_arrays(m) for m in modules]


def _template(modules: Sequence[nn.Module], arrays: Sequence[Mapping[str, Any]], spec: PermutationSpec,
              template: nn.Module | None) -> nn.Module:
    """The module that receives the result: ``template``, else the input with the universe's widths."""
    if template is not None:
        if not isinstance(template, nn.Module):
            raise FusionTypeError(f"template must be a torch.nn.Module, got {type(template).__name__}")
        return template
    k = widest(arrays, spec)
    if k is None:
        raise FusionError(
            "no input module is the widest in every group; pass template=, a module of the same class "
            "with the widest unit count of every group, to receive the fused weights"
        )
    return modules[k]


def fuse_modules(
    modules: Sequence[nn.Module],
    example_inputs: Any,
    *,
    method: str = "gamf",
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    spec: PermutationSpec | None = None,
    check: bool = True,
    template: nn.Module | None = None,
    **options: Any,
) -> nn.Module:
    """Fuse modules of one architecture into a new module (:func:`gamfsolve.fuse` on their arrays).

    The spec is derived from ``modules[0]`` (and checked) unless given. The result is a deep copy
    of ``modules[0]`` holding the fused arrays; integer buffers come from ``modules[0]``; the
    inputs are not modified. BatchNorm running statistics are averaged like the other arrays:
    call :func:`reset_bn_stats` on the result when data is available.

    Modules of different widths (e.g. hidden sizes 256 and 128) fuse into the widest: the
    result is a copy of the input that is widest in every group, or of ``template``.
    """
    spec, arrays = _prepare(modules, example_inputs, spec, check, method, options, seed, weights)
    fused = gamfsolve.fuse(arrays, spec, method=method, weights=weights, seed=seed, **options)
    return from_arrays(_template(modules, arrays, spec, template), fused)


def align_modules(
    modules: Sequence[nn.Module],
    example_inputs: Any,
    *,
    method: str = "gamf",
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    spec: PermutationSpec | None = None,
    check: bool = True,
    template: nn.Module | None = None,
    **options: Any,
) -> list[nn.Module]:
    """Each module with its units put into the common order of :func:`gamfsolve.match`.

    Every result is a new module computing the same function as its input (hidden units only
    relabelled); for modules of one width their ``weights``-average is what :func:`fuse_modules`
    returns for the same ``method``, ``weights``, ``seed`` and options. The inputs of
    :func:`repair`. Modules of different widths come out at the universe's widths (a narrower
    one with zero units in its empty slots, still the same function), as copies of the widest
    input or of ``template``.
    """
    spec, arrays = _prepare(modules, example_inputs, spec, check, method, options, seed, weights)
    result = gamfsolve.match(arrays, spec, method=method, weights=weights, seed=seed, **options)
    aligned = [gamfsolve.permute(arrays[k], spec, result.model_perms(k)) for k in range(len(modules))]
    sizes = [spec.group_sizes({n: tuple(x.shape) for n, x in a.items()}) for a in arrays]
    if all(s == sizes[0] for s in sizes):
        return [from_arrays(m, a) for m, a in zip(modules, aligned, strict=True)]
    target = _template(modules, arrays, spec, template)
    return [from_arrays(target, a) for a in aligned]
