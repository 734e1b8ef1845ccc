"""Modules <-> named arrays, and state files (``.pt`` state dicts, ``.safetensors``, ``.pt2``)."""

from __future__ import annotations

import copy
import io
import logging
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gamfsolve import FusionError, FusionTypeError, UnsafeFileError
from gamfsolve._factory import import_factory

from ._pt2_check import check_pt2_bytes

__all__ = ["aliases", "deepcopy", "from_arrays", "load_state", "save_state", "to_arrays"]


def _check_module(module: Any, what: str = "module") -> nn.Module:
    if not isinstance(module, nn.Module):
        raise FusionTypeError(f"{what} must be a torch.nn.Module, got {type(module).__name__}")
    return module


def to_arrays(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's floating-point parameters and buffers, by state-dict name.

    Tensors are detached views of the module's own storage (no copy; same device and dtype).
    Integer buffers such as BatchNorm's ``num_batches_tracked`` are left out: they are not
    fused (:func:`from_arrays` copies them from the module it is given).
    """
    _check_module(module)
    state = module.state_dict(keep_vars=True)
    return {k: v.detach() for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def aliases(module: nn.Module) -> dict[str, str]:
    """Tied parameters: every later state-dict name of a shared tensor -> the first name."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, value in module.state_dict(keep_vars=True).items():
        if not isinstance(value, torch.Tensor):
            continue
        key = id(value)
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


def from_arrays(module: nn.Module, arrays: Mapping[str, Any]) -> nn.Module:
    """A deep copy of ``module`` holding ``arrays`` (every floating parameter and buffer).

    ``arrays`` must name exactly the tensors :func:`to_arrays` returns; values are copied into
    the new module's tensors (converted to their dtype and device). Integer buffers come from
    ``module``. The input module is not modified.
    """
    _check_module(module)
    if not isinstance(arrays, Mapping):
        raise FusionTypeError(f"arrays must be a mapping of parameter name to array, got {type(arrays).__name__}")
    expected = to_arrays(module)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise FusionError(f"arrays do not fit {type(module).__name__}: missing {missing}, unexpected {extra}")
    values = {name: _real_tensor(name, arrays[name], tuple(ref.shape)) for name, ref in expected.items()}
    new = deepcopy(module)
    state = new.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in values.items():
            state[name].copy_(value)
    return new


def _real_tensor(name: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """``value`` as a tensor of ``shape`` holding finite real numbers, or a FusionError naming ``name``."""
    got = tuple(getattr(value, "shape", ()))
    if got != shape:
        raise FusionError(f"array {name!r} has shape {got}, the module expects {shape}")
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise FusionTypeError(f"array {name!r} is not numeric: {_first_line(exc)}") from exc
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (torch.int8, torch.int16,
                                                                                   torch.int32, torch.int64,
                                                                                   torch.uint8, torch.bool)):
        raise FusionTypeError(f"array {name!r} has dtype {tensor.dtype}; expected real numbers")
    if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
        raise FusionError(f"array {name!r} contains NaN or Inf")
    return tensor


def deepcopy(module: nn.Module) -> nn.Module:
    """``copy.deepcopy``, silencing a deprecation torch itself triggers when copying exported modules."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        try:
            return copy.deepcopy(module)
        except RuntimeError as exc:  # e.g. a computed weight of the legacy nn.utils.weight_norm
            hint = ""
            if "weight_norm" in str(exc):
                hint = ("; it uses the legacy torch.nn.utils.weight_norm: apply "
                        "torch.nn.utils.parametrizations.weight_norm instead, or torch.nn.utils.remove_weight_norm")
            raise FusionError(f"cannot copy {type(module).__name__}: {_first_line(exc)}{hint}") from exc


def _factory(spec: str) -> nn.Module:
    func = import_factory(spec)
    return _check_module(func(), f"factory {spec!r} result")


def load_state(path: str | Path, factory: str | None = None, *, map_location: Any = "cpu") -> nn.Module:
    """Load a model: build it with ``factory`` and load a state file, or load a ``.pt2`` program.

    ``.pt`` / ``.pth``: a state dict, read with ``torch.load(weights_only=True)``; a file that
    needs arbitrary unpickling (a whole pickled module) is refused. ``.safetensors``: a flat
    tensor file. Both need ``factory`` ("package.module:callable" returning the empty model).
    ``.pt2``: a :func:`torch.export.save` program; its module is returned (no factory needed).
    """
    path = _path(path)
    if not path.is_file():
        raise FusionError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        return load_program(path).module()
    if factory is None:
        raise FusionError(f"loading {path.name} needs factory='package.module:callable' to build the model")
    if suffix == ".safetensors":
        from safetensors.torch import load_model

        model = _factory(factory)
        try:
            load_model(model, str(path), strict=True, device=str(map_location))
        except Exception as exc:  # safetensors raises its own error type for a damaged header
            raise FusionError(f"cannot load {path.name} into the model from {factory!r}: {_first_line(exc)}") from exc
        return model
    if suffix in (".pt", ".pth", ".bin"):
        try:
            state: Mapping[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeFileError(
                f"{path.name} is not a plain state dict (it needs arbitrary unpickling, which is refused "
                "for safety); save model.state_dict() instead"
            ) from exc
        except Exception as exc:  # a damaged or truncated file: torch raises several types
            raise FusionError(f"cannot read {path.name} as a tensor file: {_first_line(exc)}") from exc
    else:
        raise FusionError(f"unknown file type {suffix!r}; expected .pt, .pth, .safetensors or .pt2")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FusionError(f"{path.name} does not hold a state dict of tensors")
    model = _factory(factory)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FusionError(f"{path.name} does not fit the model from {factory!r}: {exc}") from exc
    return model


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """A ``.pt2`` file written by :func:`torch.export.save` (it carries its graph).

    The archive is read once into memory and checked before torch sees it: a file whose loading
    would unpickle anything beyond plain tensors, run code strings or load compiled code is refused
    with :class:`~gamfsolve.UnsafeFileError` (see ``_pt2_check``).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FusionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    check_pt2_bytes(data, str(path))
    logger = logging.getLogger("torch.export")
    level = logger.level
    try:
        logger.setLevel(logging.CRITICAL)  # torch logs a traceback before raising on a bad archive
        with warnings.catch_warnings():
            # torch 2.11 warns while reading the archive's weights into tensors: harmless, and
            # under a warnings-as-errors filter it would abort the load.
            warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
            return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises several types for a bad archive
        raise FusionError(f"cannot load the exported program {path}: {_first_line(exc)}") from exc
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def save_state(module: nn.Module, path: str | Path) -> None:
    """Write the module's state dict to ``.pt``/``.pth`` (torch.save) or ``.safetensors``."""
    _check_module(module)
    path = _path(path)
    state = module.state_dict()
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise FusionError(
            f"unknown file type {suffix!r}; expected .pt, .pth or .safetensors (use torch.export.save for .pt2)"
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_model

            save_model(module, str(path))
        else:
            torch.save(state, path)
    except Exception as exc:  # a missing folder, no permission, a full disk, shared tensors safetensors refuses
        raise FusionError(f"cannot write {path}: {_first_line(exc)}") from exc


def _path(path: Any) -> Path:
    if not isinstance(path, (str, Path)) or not str(path):
        raise FusionTypeError(f"path must be a str or pathlib.Path, got {path!r}")
    return Path(path)
