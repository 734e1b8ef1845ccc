"""Model files for ``gamfsolve fuse``: read them safely, derive one spec, write the fused model.

Three kinds, told apart by suffix: Keras ``.keras`` files (safe mode), PyTorch ``.pt2``
export programs, and PyTorch state dicts (``.pt``/``.pth``/``.bin``/``.safetensors``) that
need a factory building the architecture. Tensors are read without unpickling arbitrary
objects. Failures become :class:`CliError` with the exit status of their kind.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import FusionError
from .._factory import import_factory
from ..spec._spec import PermutationSpec
from ..spec._validate import check_models, widest
from ._common import EXIT_BAD_FILE, EXIT_MISMATCH, EXIT_USAGE, CliError

__all__ = ["KINDS", "Loaded", "kind_of", "load"]

#: suffix -> kind
KINDS = {
    ".keras": "keras",
    ".pt2": "program",
    ".pt": "state",
    ".pth": "state",
    ".bin": "state",
    ".safetensors": "state",
}
_DESCRIBE = {"keras": "Keras .keras", "program": "PyTorch .pt2 export program", "state": "PyTorch state dict"}


@dataclass(frozen=True)
class Loaded:
    """Every input as named arrays (under the first model's names), one spec, and a writer."""

    kind: str
    arrays: list[dict[str, Any]]
    spec: PermutationSpec
    write: Callable[[Mapping[str, Any], Path], None]
    #: named arrays -> a model of the kind's adapter (torch module, Keras model); None where unsupported
    build: Callable[[Mapping[str, Any]], Any] | None = None

    @property
    def description(self) -> str:
        return _DESCRIBE[self.kind]


def kind_of(path: Path) -> str:
    """The kind of a model file from its suffix; an unknown suffix is a usage error."""
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise CliError(f"{path}: unknown model format {path.suffix or '(no suffix)'!r}; expected one of {known}")
    return kind


def _need(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CliError(f"reading these files needs {module}: pip install 'gamfsolve[{extra}]' ({exc})") from exc


def _fusion_error(exc: Exception, what: str) -> CliError:
    return CliError(f"{what}: {exc}", EXIT_MISMATCH)


# --- Keras ---------------------------------------------------------------------------------


def _load_keras(paths: Sequence[Path]) -> Loaded:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    _need("keras", "keras")
    gk = importlib.import_module("gamfsolve.adapters.keras")
    try:
        gk._require_torch_backend()
    except FusionError as exc:  # Keras on another backend than torch
        raise CliError(str(exc)) from exc
    models = []
    for path in paths:
        if not zipfile.is_zipfile(path):
            raise CliError(f"cannot read {path}: not a .keras archive (a zip file)", EXIT_BAD_FILE)
        try:
            models.append(gk.load_model(path))
        except FusionError as exc:
            raise CliError(str(exc), EXIT_BAD_FILE) from exc
        except Exception as exc:  # keras raises ValueError, TypeError, zipfile errors, ...
            raise CliError(f"cannot read {path} as a Keras model (safe mode): {exc}", EXIT_BAD_FILE) from exc
    template = models[0]
    try:
        spec = gk.spec_from_model(template)
        names = list(gk.to_arrays(template))
        arrays = [_by_position(names, gk.to_arrays(m), paths[0], p) for m, p in zip(models, paths, strict=True)]
        _check_names(arrays, paths)
        target = models[_widest(arrays, spec, paths)]
        gk.check_same_function(models)
    except FusionError as exc:
        raise _fusion_error(exc, f"cannot fuse {paths[0]}") from exc

    def build(fused: Mapping[str, Any]) -> Any:
        # the widest input receives the result; its weights correspond by position
        return gk.from_arrays(target, dict(zip(gk.to_arrays(target), fused.values(), strict=True)))

    def write(fused: Mapping[str, Any], out: Path) -> None:
        gk.save_model(build(fused), out)

    return Loaded("keras", arrays, spec, write, build)


def _by_position(names: list[str], arrays: Mapping[str, np.ndarray], first: Path, path: Path) -> dict[str, Any]:
    """``arrays`` renamed to the first model's ``names`` by position, after checking shapes."""
    items = list(arrays.items())
    if len(items) != len(names):
        raise CliError(
            f"{path} has {len(items)} weights but {first} has {len(names)}: not the same architecture", EXIT_MISMATCH
        )
    out = {}
    for name, (other, value) in zip(names, items, strict=True):
        if name.rsplit(".", 1)[-1] != other.rsplit(".", 1)[-1]:
            raise CliError(f"{path}: weight {other!r} does not correspond to {first}'s {name!r}", EXIT_MISMATCH)
        out[name] = value
    return out


# --- PyTorch -------------------------------------------------------------------------------


def _torch_adapter() -> Any:
    _need("torch", "torch")
    return importlib.import_module("gamfsolve.adapters.torch")


def _check_names(arrays: list[dict[str, Any]], paths: Sequence[Path]) -> None:
    """Same parameter names; shapes are the core's to check (widths may differ, nothing else)."""
    first = arrays[0]
    for a, path in zip(arrays[1:], paths[1:], strict=True):
        if set(a) != set(first):
            diff = sorted(set(a) ^ set(first))[:5]
            raise CliError(f"{path} and {paths[0]} have different parameters, e.g. {diff}", EXIT_MISMATCH)


def _widest(arrays: list[dict[str, Any]], spec: PermutationSpec, paths: Sequence[Path]) -> int:
    """The input that receives the fused weights: the widest in every group (models may differ in width)."""
    try:
        check_models(arrays, spec)
    except FusionError as exc:
        raise CliError(f"cannot fuse {', '.join(map(str, paths))}: {exc}", EXIT_MISMATCH) from exc
    k = widest(arrays, spec)
    if k is None:
        raise CliError(
            "the inputs differ in width and none is the widest in every group, so no input can hold the "
            "fused model; fuse them with the Python API and a template of the widest widths",
            EXIT_MISMATCH,
        )
    return k


class _Quiet:
    """Silence one logger below ERROR inside a ``with`` block."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)
        self.level = self.logger.level

    def __enter__(self) -> None:
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR + 10)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def _load_programs(paths: Sequence[Path]) -> Loaded:
    gt = _torch_adapter()
    programs = []
    quiet = _Quiet("torch.export")  # torch logs a traceback before raising on a bad archive
    for path in paths:
        try:
            with quiet:
                programs.append(gt.load_program(path))
        except FusionError as exc:
            raise CliError(str(exc), EXIT_BAD_FILE) from exc
    arrays = [_host(gt.to_arrays(p.module())) for p in programs]
    _check_names(arrays, paths)
    same = importlib.import_module("gamfsolve.adapters._torch_same")
    try:
        same.check_same_function([same.program_ops(p) for p in programs], [str(p) for p in paths])
    except FusionError as exc:
        raise CliError(str(exc), EXIT_MISMATCH) from exc
    try:
        spec = gt.spec_from_module(programs[0])
    except FusionError as exc:
        raise _fusion_error(exc, f"cannot derive the permutation spec of {paths[0]}") from exc
    template = programs[_widest(arrays, spec, paths)]

    def write(fused: Mapping[str, Any], out: Path) -> None:
        import torch

        state = template.state_dict
        missing = sorted(set(fused) - set(state))
        if missing:
            raise CliError(f"cannot write the fused program: {missing[:5]} are not in its state dict", EXIT_MISMATCH)
        with torch.no_grad():
            for name, value in fused.items():
                state[name].copy_(torch.as_tensor(np.asarray(value)))
        torch.export.save(template, str(out))

    return Loaded("program", arrays, spec, write)


def _host(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Tensors as NumPy arrays; bfloat16 (which NumPy lacks) as float32, written back in bfloat16."""
    import torch

    return {k: (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy() for k, v in tensors.items()}


def _check_factory(factory: str | None, first: Path) -> None:
    if factory is None:
        raise CliError(f"{first.name} is a state dict: pass --model package.module:factory to build the model")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # the console script's path lacks the working folder
        sys.path.append(cwd)  # appended, as a fallback: installed packages keep precedence
    try:
        import_factory(factory, "--model")
    except FusionError as exc:
        raise CliError(str(exc)) from exc


def _read_state(path: Path) -> None:
    """Read the raw tensors once with the safe readers: a corrupt or unsafe file is a bad file."""
    import pickle

    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = (
            f"cannot read {path}: not a plain state dict of tensors (a corrupt file, or one that would "
            "need arbitrary unpickling, which is refused; save model.state_dict() instead)"
        )
        raise CliError(message, EXIT_BAD_FILE) from exc
    except Exception as exc:  # torch and safetensors raise many types on a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot read {path} as a tensor file: {reason}", EXIT_BAD_FILE) from exc
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CliError(f"{path} does not hold a state dict of tensors", EXIT_BAD_FILE)


def _load_states(paths: Sequence[Path], factory: str | None, input_shape: Sequence[int] | None) -> Loaded:
    gt = _torch_adapter()
    if any(p.suffix.lower() == ".safetensors" for p in paths):
        _need("safetensors", "torch")
    _check_factory(factory, paths[0])
    if input_shape is None:
        raise CliError("state dicts need --input-shape (one example's shape, e.g. 1,28,28) to trace the model")
    import torch

    modules = []
    for path in paths:
        _read_state(path)
        try:
            modules.append(gt.load_state(path, factory))
        except FusionError as exc:
            raise CliError(f"the inputs must share one architecture: {exc}", EXIT_MISMATCH) from exc
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, *input_shape, generator=gen)
    try:
        spec = gt.spec_from_module(modules[0], example)
    except (FusionError, RuntimeError) as exc:
        what = f"cannot derive the permutation spec of {factory} on inputs of shape {tuple(input_shape)}"
        raise _fusion_error(exc, what) from exc
    arrays = [_host(gt.to_arrays(m)) for m in modules]

    def build(fused: Mapping[str, Any]) -> Any:
        return gt.from_arrays(modules[0], fused)

    def write(fused: Mapping[str, Any], out: Path) -> None:
        gt.save_state(build(fused), out)

    return Loaded("state", arrays, spec, write, build)


def load(paths: Sequence[Path], *, factory: str | None, input_shape: Sequence[int] | None) -> Loaded:
    """Read every input (all of one kind) and derive the spec of the first."""
    kinds = {p: kind_of(p) for p in paths}
    if len(set(kinds.values())) > 1:
        found = ", ".join(f"{p.name}: {_DESCRIBE[k]}" for p, k in kinds.items())
        raise CliError(f"all inputs must have one format, got {found}", EXIT_USAGE)
    for p in paths:
        if not p.is_file():
            raise CliError(f"{p}: no such file", EXIT_BAD_FILE)
    kind = kinds[paths[0]]
    if kind != "state" and factory is not None:
        raise CliError(f"--model is only for state dicts; {paths[0].name} is a {_DESCRIBE[kind]}")
    if kind == "keras":
        return _load_keras(paths)
    if kind == "program":
        return _load_programs(paths)
    return _load_states(paths, factory, input_shape)
