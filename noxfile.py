"""Scripted sessions: `nox -s tests` (default), lint, typecheck, slow, bench, gpu, demo, ensemble.

Sessions run the installed console script (`gamfsolve ...`), not `python -m gamfsolve`: the
latter puts the source folder first on sys.path, where gamfsolve.adapters (installed from the
top-level adapters/ folder) is not found. Every session installs through constraints.txt,
which pins torch to the CPU build on the project's machines; a user elsewhere can drop it.
"""

from __future__ import annotations

import os
import tempfile

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints.txt")
ENV = {"KERAS_BACKEND": "torch", "PYTHONHASHSEED": "0", "NUMBA_CACHE_DIR": os.path.join(tempfile.gettempdir(), "gamfsolve-numba")}


def _short_tmp() -> str:
    """A temporary folder under the system's temp dir. Not nox's session.create_tmp(): that also
    points TMPDIR into .nox/, and Ray's Unix sockets under such a long path exceed the 107-byte
    limit, which hangs Flower's simulation."""
    return tempfile.mkdtemp(prefix="gamfsolve-")


def _install(session: nox.Session, extras: str, *, editable: bool = False) -> None:
    target = f".[{extras}]"
    session.install(*CONSTRAINTS, *(["-e", target] if editable else [target]))


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The fast test suite on a regular (non-editable) install, then an editable-install check."""
    _install(session, "test")
    env = {**ENV, "KERAS_HOME": _short_tmp()}
    session.run("pytest", "-m", "not slow", *session.posargs, env=env)
    # The adapters install as gamfsolve.adapters from the top-level adapters/ folder: prove it
    # works in an editable install too, imported from outside the source tree.
    session.install("--no-deps", "-e", ".")
    session.chdir(_short_tmp())  # outside the source tree, whose root holds adapters/
    session.run(
        "python", "-c",
        "import gamfsolve.adapters, importlib.util as u; "
        "assert u.find_spec('adapters') is None, 'a top-level adapters module leaked'; "
        "print('editable install OK:', gamfsolve.adapters.__file__)",
        env=env,
    )


@nox.session(python=PYTHON)
def slow(session: nox.Session) -> None:
    """Slow tests (training on MNIST, planted recovery at full size)."""
    _install(session, "test,examples")
    session.run("pytest", "-m", "slow", *session.posargs, env={**ENV, "KERAS_HOME": _short_tmp()})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check (the formatter is not enforced)."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on the package and adapters."""
    _install(session, "test")
    session.install("mypy")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks: every figure measured side by side in one run."""
    _install(session, "test,examples")
    session.run("gamfsolve", "bench", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """On a machine with a CUDA device: the CuPy and torch-CUDA tests, then the benchmarks on both."""
    _install(session, "test,gpu")
    session.run("python", "-c", "import cupy, torch; assert cupy.is_available() and torch.cuda.is_available(), "
                "'nox -s gpu needs a CUDA device that both CuPy and torch see'")
    session.run("pytest", "-m", "not slow", "-k", "cupy or torch_cuda or cuda", "tests/test_gpu.py", "tests/test_kernels.py",
                "tests/test_backends.py", "tests/test_permute.py", "tests/test_widths.py", env=ENV)
    for backend in ("cupy", "torch_cuda"):
        session.run("gamfsolve", "bench", "--backend", backend, *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: train small models on bundled data, fuse them by every method, compare."""
    _install(session, "torch,examples,numba")
    session.run("gamfsolve", "demo", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def ensemble(session: nox.Session) -> None:
    """The paper's compact-ensemble protocol on MNIST, 10 seeds; writes examples/ensemble/RESULTS.md and figures (20 min)."""
    _install(session, "torch,examples,numba")
    session.run("python", "examples/ensemble/run.py", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def widths(session: nox.Session) -> None:
    """MNIST models of different widths fused into the widest; writes examples/widths/RESULTS.md (about 10 minutes)."""
    _install(session, "torch,examples,numba")
    session.run("python", "examples/widths/run.py", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def fl(session: nox.Session) -> None:
    """Federated learning on Flower: the adapter's tests (Ray simulation and a SuperLink with two
    SuperNodes included), then examples/fl (writes RESULTS.md and accuracy-<setting>.png).

    The full comparison (six methods, four settings, MNIST and Fashion-MNIST, Dirichlet 0.5 and 0.1,
    5 and 10 clients, 3 seeds) takes hours on 2 cores; ``nox -s fl -- --quick`` runs the documented
    subset (about 10 minutes). Each setting resumes from its examples/fl/results-<setting>.json, so
    an interrupted run repeats no finished one. Extra arguments go to examples/fl/run.py.
    """
    _install(session, "fl,examples,test")
    # the Ray simulation test runs in a child process with a time limit (test_flower_ci.py)
    session.run(
        "pytest", "tests/test_flower.py", "tests/test_flower_robust.py", "tests/test_flower_fedma.py",
        "tests/test_flower_ci.py", "tests/test_flower_deployment.py", env=ENV,
    )
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp" if os.path.isdir("/tmp") else None)  # short socket paths
    session.run("python", "examples/fl/run.py", *session.posargs, env={**ENV, "RAY_TMPDIR": ray_tmp})
