"""Importing gamfsolve loads no deep-learning framework, GPU library or JIT compiler."""

from __future__ import annotations

import os
import subprocess
import sys


def _clean_env() -> dict[str, str]:
    # Ray (the Flower simulation tests run it in-process) puts the working directory, the source
    # tree, on PYTHONPATH in os.environ; these checks are about the installed package alone.
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_import_is_light(tmp_path):
    code = (
        "import sys, gamfsolve, gamfsolve.adapters; "
        "heavy = [m for m in ('torch', 'keras', 'cupy', 'numba', 'tensorflow', 'flwr', 'jax') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    # outside the source tree, so the installed package is what gets imported
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path, env=_clean_env()
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_adapters_live_under_gamfsolve(tmp_path):
    # Run outside the source tree, where the folder adapters/ is not on the path.
    code = (
        "import importlib.util as u; "
        "assert u.find_spec('gamfsolve.adapters') is not None; "
        "s = u.find_spec('adapters'); assert s is None, f'top-level adapters module: {s}'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path, env=_clean_env()
    )
    assert proc.returncode == 0, proc.stderr


def test_a_process_started_in_the_checkout_root_finds_the_adapters(tmp_path):
    # A checkout's layout (gamfsolve/ and adapters/ side by side) first on the path, as for
    # ``python -m`` in the checkout's root or Ray's workers (which put the driver's working
    # folder first): gamfsolve.adapters resolves to the folder beside the package.
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("gamfsolve", "adapters"):
        os.symlink(os.path.join(src, name), tmp_path / name)
    code = (
        "import sys, gamfsolve, gamfsolve.adapters as a, gamfsolve.adapters._demo as d; "
        "assert gamfsolve.__file__.startswith(sys.argv[1]), gamfsolve.__file__; "
        "assert a.__file__.startswith(sys.argv[1]) and gamfsolve.adapters is a, a.__file__; "
        "assert d.__name__ == 'gamfsolve.adapters._demo'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=False, cwd=tmp_path,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
