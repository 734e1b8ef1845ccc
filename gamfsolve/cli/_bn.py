"""``gamfsolve fuse --reset-bn DATA`` / ``--repair DATA``: fix a fused model's activation statistics.

DATA is an ``.npz`` file or a folder of ``.npy`` files of model inputs, each array
``(n, *input_shape)``, read without unpickling (``allow_pickle=False``). In an ``.npz`` holding
an array named ``x`` or ``inputs``, only that array is read (labels beside it are ignored);
otherwise every array is. Arrays are cut into batches of :data:`BATCH` rows.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import FusionError
from ._common import EXIT_BAD_FILE, EXIT_USAGE, CliError

__all__ = ["BATCH", "bn_hint", "fix_statistics", "read_inputs"]

BATCH = 256
_BN_SUFFIXES = ("running_mean", "moving_mean")


def _load_npy(path: Path, option: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CliError(f"{option}: cannot read {path} as a .npy array without pickle: {exc}", EXIT_BAD_FILE) from exc


def _load_npz(path: Path, option: str) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = [k for k in ("x", "inputs") if k in archive.files][:1] or list(archive.files)
            return [archive[k] for k in keys]
    except (OSError, ValueError) as exc:
        raise CliError(f"{option}: cannot read {path} as an .npz archive without pickle: {exc}", EXIT_BAD_FILE) from exc


def read_inputs(path: str | Path, option: str) -> list[np.ndarray]:
    """The input batches in ``path`` (an ``.npz`` file or a folder of ``.npy`` files), each ``(<=BATCH, ...)``."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise CliError(f"{option} {path}: the folder holds no .npy files", EXIT_BAD_FILE)
        arrays = [_load_npy(f, option) for f in files]
    elif path.is_file() and path.suffix.lower() == ".npz":
        arrays = _load_npz(path, option)
    elif path.is_file():
        raise CliError(f"{option} takes an .npz file or a folder of .npy files, got {path.name!r}", EXIT_USAGE)
    else:
        raise CliError(f"{option} {path}: no such file or folder", EXIT_BAD_FILE)
    batches = []
    for a in arrays:
        if a.ndim < 1 or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.number):
            raise CliError(f"{option} {path}: expected numeric arrays of inputs (n, ...), got {a.dtype} {a.shape}",
                           EXIT_BAD_FILE)
        batches += [a[i : i + BATCH] for i in range(0, a.shape[0], BATCH)]
    return batches


def bn_hint(names: Sequence[str]) -> str | None:
    """A note for the summary when the fused weights include BatchNorm statistics."""
    if not any(n.endswith(_BN_SUFFIXES) for n in names):
        return None
    return ("note: the fused model has BatchNorm layers whose statistics are averages of the inputs' and no longer "
            "fit its weights; pass --reset-bn DATA (or --repair DATA) with a few hundred training inputs to "
            "recompute them (one-shot accuracy usually drops without it)")


def _adapter(kind: str) -> Any:
    return importlib.import_module("gamfsolve.adapters.keras" if kind == "keras" else "gamfsolve.adapters.torch")


def _as_batches(kind: str, batches: Sequence[np.ndarray], dtype: Any) -> list[Any]:
    out = [b.astype(dtype) if np.issubdtype(b.dtype, np.floating) else b for b in batches]
    if kind == "keras":
        return out
    import torch

    return [torch.as_tensor(b) for b in out]


def _values(kind: str, model: Any) -> list[np.ndarray]:
    arrays = _adapter(kind).to_arrays(model)
    return [v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for v in arrays.values()]


def fix_statistics(
    loaded: Any, fused: Mapping[str, Any], aligned: Sequence[Mapping[str, Any]] | None,
    batches: Sequence[np.ndarray], weights: Sequence[float] | None,
) -> dict[str, Any]:
    """``fused`` after a BatchNorm reset (``aligned`` None) or REPAIR on ``aligned``, as named arrays.

    ``loaded`` is the :class:`~gamfsolve.cli._formats.Loaded` the arrays came from; its ``build``
    turns named arrays into a model of the adapter of its kind.
    """
    if loaded.build is None:
        raise CliError(f"--reset-bn and --repair are not available for {loaded.description} files; "
                       "fuse state dicts (with --model) or .keras files instead")
    adapter = _adapter(loaded.kind)
    dtype = next((np.asarray(v).dtype for v in fused.values() if np.issubdtype(np.asarray(v).dtype, np.floating)),
                 np.float32)
    data = _as_batches(loaded.kind, batches, dtype)
    model = loaded.build(fused)
    try:
        if aligned is None:
            model = adapter.reset_bn_stats(model, data)
        else:
            model = adapter.repair(model, [loaded.build(a) for a in aligned], data, weights=weights)
    except FusionError as exc:
        raise CliError(f"cannot recompute the fused model's statistics: {exc}", EXIT_USAGE) from exc
    except (RuntimeError, ValueError) as exc:  # the framework rejects inputs of the wrong shape or type
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"the inputs in DATA do not fit the model: {reason}", EXIT_BAD_FILE) from exc
    return dict(zip(fused.keys(), _values(loaded.kind, model), strict=True))
