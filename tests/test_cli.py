"""The ``gamfsolve`` command line: help, dispatch, and ``fuse`` round trips and failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="gamfsolve-keras-"))

import numpy as np
import pytest

import gamfsolve
from gamfsolve.cli import main

torch = pytest.importorskip("torch")
from gamfsolve.adapters import torch as gt  # noqa: E402

FACTORY_MODULE = "gamfsolve_cli_test_models"
FACTORY = f"{FACTORY_MODULE}:small"
FACTORY_SOURCE = """
import torch
from torch import nn

def small():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

def wide():
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3))

not_callable = 3
"""


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder (the working directory) with an importable factory module."""
    (tmp_path / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(FACTORY_MODULE, None)
    return tmp_path


def _module(seed: int, kind: str = "small") -> torch.nn.Module:
    torch.manual_seed(seed)
    widths = (20, 8) if kind == "wide" else (16, 8)
    return torch.nn.Sequential(
        torch.nn.Linear(12, widths[0]),
        torch.nn.ReLU(),
        torch.nn.Linear(*widths),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 4 if kind == "four" else 3),
    )


def _expected(modules: list[torch.nn.Module], method: str, weights: list[float] | None = None) -> dict[str, np.ndarray]:
    spec = gt.spec_from_module(modules[0], torch.randn(2, 12))
    arrays = [{k: v.numpy() for k, v in gt.to_arrays(m).items()} for m in modules]
    return gamfsolve.fuse(arrays, spec, method=method, weights=weights, seed=0)


def _close(state: dict, expected: dict[str, np.ndarray]) -> None:
    assert set(state) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(state[name]), value, rtol=1e-5, atol=1e-6)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# --- help and dispatch ---------------------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "fuse", "bench"):
        assert command in out


def test_fuse_help_documents_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fuse", "--help"])
    out = capsys.readouterr().out
    assert "exit status" in out and "--model" in out and "safe mode" in out


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "gamfsolve", "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and gamfsolve.__version__ in done.stdout


def test_cli_help_imports_no_framework() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from gamfsolve.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['fuse', '--help'])\n"
        "heavy = [m for m in ('torch', 'keras', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_bench_forwards_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = pytest.importorskip("gamfsolve.bench")
    seen: list[list[str]] = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--json", "--quick"]) == 0
    assert seen == [["--json", "--quick"]]


def test_bench_quick_cases_and_progress(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--quick runs the smaller case lists, logs each case's start on stderr and each section's time."""
    bench = pytest.importorskip("gamfsolve.bench")
    started: list[dict] = []
    real_run = subprocess.run

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        if cmd[1:3] not in (["-m", "gamfsolve.bench._models"], ["-m", "gamfsolve.bench._real"]):
            return real_run(cmd, **kwargs)  # e.g. platform's own probes
        started.append(json.loads(cmd[-1]))
        return subprocess.CompletedProcess(cmd, 1, "", "case not run in this test")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    assert bench.main(["--quick", "--json", "--sections", "e2e,many,real"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [len(report[k]) for k in ("e2e", "many", "real")] == [9, 6, 2]
    assert {c["n_models"] for c in report["many"]} == {2, 4, 8}
    assert all(c["options"].get("affinity") != "node" for c in report["e2e"])
    assert [(c["arch"], c["kind"]) for c in report["real"]] == [("resnet18", "planted")] * 2
    assert all(r["status"].startswith("error") for r in report["e2e"])
    assert captured.err.count(" running ") == len(started) == 17
    assert set(report["section_s"]) == {"e2e", "many", "real"}


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_fuse_state_dicts(work: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    modules = [_module(s) for s in range(3)]
    for k, m in enumerate(modules):
        gt.save_state(m, work / f"m{k}{suffix}")
    args = ["fuse", *(f"m{k}{suffix}" for k in range(3)), "-o", f"out{suffix}", "--model", FACTORY]
    status, out, err = _run(capsys, *args, "--input-shape", "12", "--method", "weight_matching", "--seed", "0")
    assert status == 0, err
    assert "weight_matching" in out and "iterations" in out and "permuted groups" in out
    fused = gt.load_state(work / f"out{suffix}", FACTORY)
    _close(gt.to_arrays(fused), _expected(modules, "weight_matching"))
    assert not [p for p in work.iterdir() if ".tmp" in p.name]


def test_fuse_state_dicts_with_weights_and_gamf(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    modules = [_module(s) for s in range(2)]
    for k, m in enumerate(modules):
        gt.save_state(m, work / f"m{k}.pt")
    args = ["fuse", "m0.pt", "m1.pt", "-o", "out.pt", "--model", FACTORY, "--input-shape", "12", "--seed", "0"]
    status, out, err = _run(capsys, *args, "--weights", "3", "1")
    assert status == 0, err
    assert "with gamf" in out
    fused = gt.load_state(work / "out.pt", FACTORY)
    result = gamfsolve.match(
        [{k: v.numpy() for k, v in gt.to_arrays(m).items()} for m in modules],
        gt.spec_from_module(modules[0], torch.randn(2, 12)),
        method="gamf",
        seed=0,
    )
    assert result.n_models == 2
    assert set(gt.to_arrays(fused)) == set(gt.to_arrays(modules[0]))


def test_fuse_finds_a_factory_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # as the console script runs: the working folder is not on sys.path
    name = "gamfsolve_cli_cwd_models"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    sys.modules.pop(name, None)
    for k in range(2):
        gt.save_state(_module(k), tmp_path / f"m{k}.pt")
    args = ["fuse", "m0.pt", "m1.pt", "-o", "out.pt", "--model", f"{name}:small", "--input-shape", "12"]
    status, out, err = _run(capsys, *args, "--method", "weight_matching")
    sys.modules.pop(name, None)
    assert status == 0, err
    assert "with weight_matching" in out and (tmp_path / "out.pt").is_file()


def test_fuse_passes_method_options(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    modules = [_module(s) for s in range(2)]
    for k, m in enumerate(modules):
        gt.save_state(m, work / f"m{k}.pt")
    args = ["fuse", "m0.pt", "m1.pt", "-o", "out.pt", "--model", FACTORY, "--input-shape", "12", "--seed", "0"]
    status, out, err = _run(capsys, *args, "--option", "balance=sqrt", "--option", "max_iter=80")
    assert status == 0, err
    spec = gt.spec_from_module(modules[0], torch.randn(2, 12))
    arrays = [{k: v.numpy() for k, v in gt.to_arrays(m).items()} for m in modules]
    _close(gt.to_arrays(gt.load_state(work / "out.pt", FACTORY)),
           gamfsolve.fuse(arrays, spec, method="gamf", seed=0, balance="sqrt", max_iter=80))
    # a value only the method can judge is still a usage error, and nothing is written
    status, out, err = _run(capsys, *args[:4], "bad.pt", *args[5:], "--option", "balance=unit")
    assert status == 2 and "balance must be one of" in err and out == ""
    assert not (work / "bad.pt").exists()


def test_fuse_export_programs(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    modules = [_module(s) for s in range(2)]
    for k, m in enumerate(modules):
        torch.export.save(torch.export.export(m.eval(), (torch.randn(2, 12),)), str(work / f"m{k}.pt2"))
    status, _, err = _run(capsys, "fuse", "m0.pt2", "m1.pt2", "-o", "out.pt2", "--method", "ot", "--seed", "0")
    assert status == 0, err
    program = torch.export.load(str(work / "out.pt2"))
    expected = _expected(modules, "ot")
    _close({k: v.detach() for k, v in program.state_dict.items()}, expected)
    x = torch.randn(2, 12)  # exported with a static batch of 2
    reference = gt.from_arrays(modules[0], expected)
    torch.testing.assert_close(program.module()(x), reference(x), rtol=1e-5, atol=1e-5)


# Keras 3 saving converts variables with np.array(copy=False) semantics; NumPy 2 warns about it.
KERAS_SAVE_WARNING = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def _keras_mlp(seed: int, width: int = 16, out: int = 3):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((12,)),
            layers.Dense(width, activation="relu"),
            layers.Dense(8, activation="relu"),
            layers.Dense(out),
        ]
    )


@KERAS_SAVE_WARNING
def test_fuse_keras_files(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gk = pytest.importorskip("gamfsolve.adapters.keras")
    models = [_keras_mlp(s) for s in range(2)]
    for k, m in enumerate(models):
        gk.save_model(m, work / f"k{k}.keras")
    status, _, err = _run(
        capsys, "fuse", "k0.keras", "k1.keras", "-o", "out.keras", "--method", "weight_matching", "--seed", "0"
    )
    assert status == 0, err
    fused = gk.load_model(work / "out.keras")
    loaded = [gk.load_model(work / f"k{k}.keras") for k in range(2)]
    expected = gk.fuse_models(loaded, method="weight_matching", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 12)).astype("float32")
    np.testing.assert_allclose(np.asarray(fused(x).detach()), np.asarray(expected(x).detach()), rtol=1e-5, atol=1e-5)


# --- failures ------------------------------------------------------------------------------


@pytest.fixture
def files(work: Path) -> Path:
    """Two good state dicts, programs and Keras files, plus bad ones of each kind."""
    for k in range(2):
        gt.save_state(_module(k), work / f"m{k}.pt")
        torch.export.save(torch.export.export(_module(k).eval(), (torch.randn(2, 12),)), str(work / f"m{k}.pt2"))
    gt.save_state(_module(5, "wide"), work / "wide.pt")
    torch.export.save(torch.export.export(_module(5, "wide").eval(), (torch.randn(2, 12),)), str(work / "wide.pt2"))
    torch.export.save(torch.export.export(_module(6, "four").eval(), (torch.randn(2, 12),)), str(work / "four.pt2"))
    torch.save(_module(0), work / "pickled.pt")
    for name in ("junk.pt", "junk.pt2", "junk.keras", "junk.safetensors"):
        (work / name).write_bytes(b"this is not a model")
    (work / "model.onnx").write_bytes(b"x")
    return work


SD = ["--model", FACTORY, "--input-shape", "12"]

FAILURES = {
    "unknown format": (["m0.pt", "model.onnx", "-o", "o.pt", *SD], 2, "unknown model format"),
    "mixed formats": (["m0.pt", "m1.pt2", "-o", "o.pt", *SD], 2, "one format"),
    "output is an input": (["m0.pt", "m1.pt", "-o", "m1.pt", *SD], 2, "is one of the inputs"),
    "output in another format": (["m0.pt2", "m1.pt2", "-o", "o.pt"], 2, "inputs' format"),
    "one input": (["m0.pt", "-o", "o.pt", *SD], 2, "at least two"),
    "weights count": (["m0.pt", "m1.pt", "-o", "o.pt", *SD, "--weights", "1"], 2, "--weights"),
    "no factory": (["m0.pt", "m1.pt", "-o", "o.pt"], 2, "--model"),
    "bad factory": (["m0.pt", "m1.pt", "-o", "o.pt", "--model", "no_such_mod:f", "--input-shape", "12"], 2, "import"),
    "factory not callable": (["m0.pt", "m1.pt", "-o", "o.pt", "--model", f"{FACTORY_MODULE}:not_callable"], 2, "call"),
    "no input shape": (["m0.pt", "m1.pt", "-o", "o.pt", "--model", FACTORY], 2, "--input-shape"),
    "bad input shape": (["m0.pt", "m1.pt", "-o", "o.pt", "--model", FACTORY, "--input-shape", "a,b"], 2, "shape"),
    "factory for a program": (["m0.pt2", "m1.pt2", "-o", "o.pt2", "--model", FACTORY], 2, "only for state dicts"),
    "missing file": (["m0.pt", "nope.pt", "-o", "o.pt", *SD], 3, "no such file"),
    "corrupt state dict": (["m0.pt", "junk.pt", "-o", "o.pt", *SD], 3, "junk.pt"),
    "pickled module": (["m0.pt", "pickled.pt", "-o", "o.pt", *SD], 3, "unpickling"),
    "corrupt safetensors": (["junk.safetensors", "junk.safetensors", "-o", "o.safetensors", *SD], 3, "junk"),
    "corrupt program": (["m0.pt2", "junk.pt2", "-o", "o.pt2"], 3, "junk.pt2"),
    "corrupt keras": (["junk.keras", "junk.keras", "-o", "o.keras"], 3, "junk.keras"),
    "state dict of another architecture": (["m0.pt", "wide.pt", "-o", "o.pt", *SD], 4, "architecture"),
    "program of another architecture": (["m0.pt2", "four.pt2", "-o", "o.pt2"], 4, "only along permuted axes"),
    "no output folder": (["m0.pt", "m1.pt", "-o", "no/such/dir/o.pt", *SD], 5, "does not exist"),
    "option the method lacks": (["m0.pt", "m1.pt", "-o", "o.pt", *SD, "--option", "balance=sqrt"], 2, "unknown option"),
    "option without a value": (["m0.pt", "m1.pt", "-o", "o.pt", *SD, "--option", "balance"], 2, "KEY=VALUE"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_fuse_failures(files: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected_status, fragment = FAILURES[case]
    if "keras" in case:
        pytest.importorskip("keras")
    before = sorted(p.name for p in files.iterdir())
    status, out, err = _run(capsys, "fuse", *argv, "--method", "average")
    assert status == expected_status, err
    assert fragment in err and err.startswith("gamfsolve fuse: error:")
    assert out == ""
    assert sorted(p.name for p in files.iterdir() if p.name != "__pycache__") == [
        b for b in before if b != "__pycache__"
    ]


@KERAS_SAVE_WARNING
def test_fuse_keras_architecture_mismatch(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gk = pytest.importorskip("gamfsolve.adapters.keras")
    gk.save_model(_keras_mlp(0), work / "a.keras")
    gk.save_model(_keras_mlp(1, out=4), work / "b.keras")
    status, _, err = _run(capsys, "fuse", "a.keras", "b.keras", "-o", "o.keras", "--method", "average")
    assert status == 4 and "b.keras" in err and "only along permuted axes" in err
    assert not (work / "o.keras").exists()


@KERAS_SAVE_WARNING
def test_fuse_files_of_different_widths(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The widest input receives the result, in every format that stores its architecture."""
    gk = pytest.importorskip("gamfsolve.adapters.keras")
    status, out, err = _run(capsys, "fuse", "m0.pt2", "wide.pt2", "-o", "o.pt2", "--method", "ot")
    assert status == 0, err
    assert "0     20" in out  # the report gives the universe's unit counts
    program = torch.export.load(str(files / "o.pt2"))
    assert tuple(program.state_dict["0.weight"].shape) == (20, 12)
    expected = _expected([_module(0), _module(5, "wide")], "ot")
    _close({k: v.detach() for k, v in program.state_dict.items()}, expected)
    gk.save_model(_keras_mlp(0), files / "a.keras")
    gk.save_model(_keras_mlp(1, width=20), files / "b.keras")
    status, _, err = _run(capsys, "fuse", "a.keras", "b.keras", "-o", "o.keras", "--method", "gamf")
    assert status == 0, err
    fused = gk.load_model(files / "o.keras")
    assert tuple(fused.layers[0].kernel.shape) == (12, 20)
    loaded = [gk.load_model(files / n) for n in ("a.keras", "b.keras")]
    want = gk.fuse_models(loaded, method="gamf", seed=None)
    x = np.random.default_rng(0).standard_normal((4, 12)).astype("float32")
    np.testing.assert_allclose(np.asarray(fused(x).detach()), np.asarray(want(x).detach()), rtol=1e-5, atol=1e-5)


def test_fuse_refuses_to_replace_without_force(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (files / "o.pt").write_bytes(b"keep me")
    args = ["fuse", "m0.pt", "m1.pt", "-o", "o.pt", *SD, "--method", "average"]
    status, _, err = _run(capsys, *args)
    assert status == 2 and "--force" in err and (files / "o.pt").read_bytes() == b"keep me"
    status, _, err = _run(capsys, *args, "--force")
    assert status == 0, err
    assert (files / "o.pt").read_bytes() != b"keep me"


class _Payload:
    """A pickle that would create a marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_fuse_never_unpickles_code(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = files / "pwned"
    torch.save({"layer": _Payload(marker)}, files / "evil.pt")
    status, _, err = _run(capsys, "fuse", "m0.pt", "evil.pt", "-o", "o.pt", *SD)
    assert status == 3, err
    assert not marker.exists()


def test_bench_backends_plumbing() -> None:
    """--backend: arrays converted to the library asked for, a clear exit for an unknown or absent one,
    and an end-to-end case on torch that recovers the planted permutation."""
    torch = pytest.importorskip("torch")
    from gamfsolve.bench import backend_tools
    from gamfsolve.bench._models import run_case

    convert, sync = backend_tools("torch")
    assert isinstance(convert(np.zeros(3)), torch.Tensor)
    sync()
    with pytest.raises(SystemExit, match="unknown backend 'jax'"):
        backend_tools("jax")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="torch_cuda needs a CUDA device"):
            backend_tools("torch_cuda")
    case = {"arch": "mlp", "n_models": 2, "scale": 32, "method": "gamf", "options": {}, "seed": 0, "backend": "torch"}
    out = run_case(case)
    assert out["status"] == "ok" and out["align_err"] < 0.02


def test_bench_plot_draws_the_measured_curves(tmp_path: Path) -> None:
    """--plot: one panel per section measured, written atomically; a clear error when there is nothing to draw."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from gamfsolve.bench import bench_gemm_floor
    from gamfsolve.bench._models import run_case
    from gamfsolve.bench._plot import plot_report

    many = [run_case({"arch": "mlp", "n_models": n, "scale": 32, "method": "gamf", "options": {"universe": True},
                      "seed": 0}) for n in (2, 4)]
    assert all(r["status"] == "ok" for r in many)
    report = {"machine": {"cpu": "test", "cores": 1}, "many": many}
    one = plot_report(report, str(tmp_path / "one.png"))
    floor = bench_gemm_floor(True, lambda line: None)
    two = plot_report({**report, "gemm_floor": floor}, str(tmp_path / "two.png"))
    h1, w1 = imread(one).shape[:2]
    h2, w2 = imread(two).shape[:2]
    assert h1 == h2 and w2 > 1.8 * w1  # a second panel beside the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png", "two.png"]  # no temporary left behind
    with pytest.raises(ValueError, match="no section to plot"):
        plot_report({"machine": {}}, str(tmp_path / "none.png"))


@pytest.mark.slow
def test_bench_quick_kernels_with_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The kernels section at --quick size, as a user runs it, with its figure."""
    pytest.importorskip("matplotlib")
    from gamfsolve.bench import main as bench_main

    out = tmp_path / "bench.png"
    assert bench_main(["--quick", "--sections", "kernels", "--json", "--plot", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kernels"] and report["gemm_floor"] and out.stat().st_size > 10_000
