"""Shared fixtures: array backends and a deterministic hypothesis profile."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("KERAS_BACKEND", "torch")
if "KERAS_HOME" not in os.environ:  # a private Keras home, removed when the session ends
    _keras_home = tempfile.mkdtemp(prefix="gamfsolve-keras-")
    os.environ["KERAS_HOME"] = _keras_home
    atexit.register(shutil.rmtree, _keras_home, ignore_errors=True)

settings.register_profile(
    "default", deadline=None, derandomize=True, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _numpy(x: np.ndarray) -> np.ndarray:
    return np.array(x)


def _numpy_readonly(x: np.ndarray) -> np.ndarray:
    y = np.array(x)
    y.flags.writeable = False
    return y


def _strict(x: np.ndarray):
    import array_api_strict as xs

    return xs.asarray(x)


def _torch(x: np.ndarray):
    import torch

    return torch.from_numpy(np.array(x))


def _cupy(x: np.ndarray):
    import cupy

    return cupy.asarray(x)


def _torch_cuda(x: np.ndarray):
    import torch

    return torch.from_numpy(np.array(x)).cuda()


def _gpu_ok(name: str) -> bool:
    try:
        if name == "cupy":
            import cupy

            return bool(cupy.is_available())
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


BACKENDS = {
    "numpy": _numpy,
    "numpy_readonly": _numpy_readonly,
    "array_api_strict": _strict,
    "torch": _torch,
    "cupy": _cupy,
    "torch_cuda": _torch_cuda,
}


def converter(name: str):
    """The NumPy -> backend conversion for ``name``; skips the calling test for a GPU backend without a device."""
    if name in ("cupy", "torch_cuda") and not _gpu_ok(name):
        pytest.skip(f"{name}: no GPU here")
    return BACKENDS[name]


@pytest.fixture(params=list(BACKENDS))
def to_backend(request):
    """Converts a NumPy array to each backend (GPU ones skip without a device)."""
    return converter(request.param)


def to_numpy(x) -> np.ndarray:
    """Any backend's array back to NumPy (for comparisons)."""
    from gamfsolve._xp import to_host

    return np.asarray(to_host(x))
