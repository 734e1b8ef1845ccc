"""Scripted sessions: `nox -s tests` (default), lint, typecheck, slow, bench, gpu, torchvision (not in CI), demo, ensemble,
ensemble_fashion, transformers, docs.

Python: every session runs on the interpreter that runs nox, which must be one the package
supports (3.10-3.13), else the session fails; `nox -s tests_all` runs the fast suite on every
supported Python present on PATH. The README's two sessions, `tests` and `demo`, share one
environment (`.nox/shared-py3.X`, the `test` extra, which includes the demo's dependencies),
so the two commands build one copy of torch instead of two.

Sessions run the installed console script (`gamfsolve ...`), not `python -m gamfsolve`: the
latter puts the source folder first on sys.path, where gamfsolve.adapters (installed from the
top-level adapters/ folder) is not found. Every session installs through constraints.txt,
which pins torch to the CPU build on the project's machines; a user elsewhere can drop it.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (files in
/usr/share/datasets/fashion-mnist) or a folder named by ``GAMFSOLVE_FASHION_MNIST``; the sessions
that use it install the package where apt-get is available (`tests` tries, and its Fashion-MNIST
tests skip without it; `ensemble_fashion` needs it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

SUPPORTED = ("3.10", "3.11", "3.12", "3.13")
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # the interpreter that runs nox
PRESENT = [v for v in SUPPORTED if shutil.which(f"python{v}")] or [PYTHON]
CONSTRAINTS = ("-c", "constraints.txt")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ENV = {"KERAS_BACKEND": "torch", "PYTHONHASHSEED": "0", "NUMBA_CACHE_DIR": os.path.join(tempfile.gettempdir(), "gamfsolve-numba")}


def _short_tmp() -> str:
    """A temporary folder under the system's temp dir. Not nox's session.create_tmp(): that also
    points TMPDIR into .nox/, and Ray's Unix sockets under such a long path exceed the 107-byte
    limit, which hangs Flower's simulation."""
    return tempfile.mkdtemp(prefix="gamfsolve-")


def _install(session: nox.Session, extras: str, *, editable: bool = False) -> None:
    target = f".[{extras}]"
    session.install(*CONSTRAINTS, *(["-e", target] if editable else [target]))


def _check_python(session: nox.Session) -> None:
    if PYTHON not in SUPPORTED:
        session.error(f"gamfsolve supports Python {SUPPORTED[0]}-{SUPPORTED[-1]}; nox runs on {PYTHON}: "
                      f"run it with one of those, e.g. python{SUPPORTED[-1]} -m nox")


def _shared(session: nox.Session, extras: str = "test") -> Path:
    """The environment shared by `tests` and `demo` (created once, updated each run); its bin folder."""
    _check_python(session)
    venv = Path(".nox") / f"shared-py{PYTHON}"
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    if not (bin_dir / "python").exists() and not (bin_dir / "python.exe").exists():
        session.run(sys.executable, "-m", "virtualenv", "-q", "-p", sys.executable, str(venv), external=True)
    # --no-compile: pip would byte-compile every module (0.32 GB of .pyc in this 2.0 GB environment);
    # Python still caches the modules a run imports
    session.run(str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-compile", *CONSTRAINTS, f".[{extras}]",
                external=True)
    return bin_dir.resolve()


def _fashion_mnist(session: nox.Session, *, required: bool) -> None:
    """Install Debian's dataset-fashion-mnist unless Fashion-MNIST is present; where that cannot be
    done, fail with what to do (``required``) or say so and go on."""
    if os.environ.get("GAMFSOLVE_FASHION_MNIST") or (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        return
    apt = shutil.which("apt-get")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    sudo = [] if root else (["sudo", "-n"] if shutil.which("sudo") else None)
    if apt is not None and sudo is not None:
        codes = [0] if required else list(range(256))
        session.run(*sudo, apt, "update", "-q", external=True, success_codes=codes)
        session.run(*sudo, apt, "install", "-y", "-q", "dataset-fashion-mnist", external=True, success_codes=codes)
        if (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
            return
    message = (f"Fashion-MNIST is absent ({FASHION_MNIST}) and could not be installed here "
               f"({'no apt-get' if apt is None else 'apt-get needs root or password-less sudo'}): install Debian's "
               "dataset-fashion-mnist package, or set GAMFSOLVE_FASHION_MNIST to a folder holding its four IDX files")
    if required:
        session.error(message)
    session.warn(message + "; the tests that need it are skipped")


def _run_tests(session: nox.Session, bin_dir: Path) -> None:
    """The fast suite on a regular (non-editable) install, then an editable-install check."""
    _fashion_mnist(session, required=False)
    env = {**ENV, "KERAS_HOME": _short_tmp()}
    session.run(str(bin_dir / "python"), "-m", "pytest", "-m", "not slow", *session.posargs, env=env, external=True)
    # The adapters install as gamfsolve.adapters from the top-level adapters/ folder: prove it
    # works in an editable install too, imported from outside the source tree.
    session.run(str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "-e", ".", external=True)
    session.chdir(_short_tmp())  # outside the source tree, whose root holds adapters/
    session.run(
        str(bin_dir / "python"), "-c",
        "import gamfsolve.adapters, importlib.util as u; "
        "assert u.find_spec('adapters') is None, 'a top-level adapters module leaked'; "
        "print('editable install OK:', gamfsolve.adapters.__file__)",
        env=env, external=True,
    )


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The fast test suite (in the environment shared with `demo`), then an editable-install check."""
    _run_tests(session, _shared(session))


@nox.session(python=PRESENT)
def tests_all(session: nox.Session) -> None:
    """The fast test suite on every supported Python present on PATH (one environment each)."""
    _install(session, "test")
    _run_tests(session, Path(session.bin))


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


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """The documentation site (docs/ -> docs/_build/html), warnings as errors; the gallery's scripts run.

    Uses the environment of `tests` and `demo` plus the `docs` extra. ``nox -s docs -- -D
    plot_gallery=0`` skips running the gallery's scripts.
    """
    bin_dir = _shared(session, "test,docs")
    mnist = Path("..").resolve() / "shared" / "data" / "mnist"
    env = {**ENV, "KERAS_HOME": _short_tmp(), **({"GAMFSOLVE_MNIST": str(mnist)} if mnist.is_dir() else {})}
    session.run(str(bin_dir / "python"), "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html",
                *session.posargs, env=env, external=True)


@nox.session(python=PYTHON)
def torchvision(session: nox.Session) -> None:
    """torchvision CNNs (not in CI): spec derived and checked, permuted copy given back, share of units permuted.

    Installs torch 2.14.1 and torchvision 0.29.1 (a ~5.5 GB CUDA build, which runs on the CPU) instead
    of the pinned torch; torchvision does not import beside torch 2.13.0. Extra arguments go to pytest
    (e.g. ``nox -s torchvision -- -k weight_matching``).
    """
    session.install("torch==2.14.1", "torchvision==0.29.1")
    session.install(".[torch,numba]", "pytest>=8", "hypothesis>=6.100")
    session.run("pytest", "-s", "tests/test_torchvision_models.py", *session.posargs, env=ENV)


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The main job: train small models on bundled data, fuse them by every method, compare."""
    bin_dir = _shared(session)
    session.run(str(bin_dir / "gamfsolve"), "demo", *session.posargs, env=ENV, external=True)


@nox.session(python=PYTHON)
def ensemble(session: nox.Session) -> None:
    """The paper's compact-ensemble protocol on MNIST, 10 seeds; writes examples/ensemble/RESULTS.md and figures (20 min)."""
    _install(session, "torch,examples,numba")
    session.run("python", "examples/ensemble/run.py", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def transformers(session: nox.Session) -> None:
    """Small Hugging Face ViT and GPT-2 pairs fused by each method; writes examples/transformers/RESULTS.md (30 min)."""
    _install(session, "torch,examples,numba")
    session.install(*CONSTRAINTS, "transformers>=4.46")
    session.run("python", "examples/transformers/run.py", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def ensemble_fashion(session: nox.Session) -> None:
    """The compact-ensemble protocol on Fashion-MNIST: MLP, LeNet, ResNet-20 x1 and x4, VGG-11-BN, in parts
    of under an hour each (see examples/ensemble/README.md); adds its cells to examples/ensemble/RESULTS.md.
    Installs Debian's dataset-fashion-mnist where apt-get is available. Extra arguments go to run.py,
    e.g. `nox -s ensemble_fashion -- --part bn --resume`."""
    _fashion_mnist(session, required=True)
    _install(session, "torch,examples,numba")
    session.run("python", "examples/ensemble/run.py", "--dataset", "fashion-mnist", *session.posargs, env=ENV)


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
    subset (5 clients, Dirichlet 0.5, one seed, both data sets, the four settings: 6.1 minutes
    for ``examples/fl/run.py --quick`` on 2 quiet cores, load average 1). Each setting resumes from its
    examples/fl/results-<setting>.json, so an interrupted run repeats no finished one. Extra
    arguments go to examples/fl/run.py.
    """
    _install(session, "fl,examples,test")
    # the Ray simulation test runs in a child process with a time limit (test_flower_ci.py)
    session.run(
        "pytest", "tests/test_flower.py", "tests/test_flower_robust.py", "tests/test_flower_fedma.py",
        "tests/test_flower_ci.py", "tests/test_flower_deployment.py", env=ENV,
    )
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp" if os.path.isdir("/tmp") else None)  # short socket paths
    session.run("python", "examples/fl/run.py", *session.posargs, env={**ENV, "RAY_TMPDIR": ray_tmp})
