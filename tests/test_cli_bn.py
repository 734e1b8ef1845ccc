"""``gamfsolve fuse --reset-bn DATA`` / ``--repair DATA`` and the BatchNorm hint of the summary."""

from __future__ import annotations

import os
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

MODULE = "gamfsolve_cli_bn_models"
SOURCE = """
from torch import nn

def bn_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3),
    )

def mlp():
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
"""


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(MODULE, None)
    return tmp_path


def _models(work: Path, factory: str, n: int = 2) -> list[torch.nn.Module]:
    module = __import__(MODULE)
    out = []
    for k in range(n):
        torch.manual_seed(k)
        m = getattr(module, factory)()
        for layer in m.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):  # distinct statistics, far from the data's
                layer.running_mean.uniform_(-2, 2)
                layer.running_var.uniform_(0.5, 4)
        torch.save(m.state_dict(), work / f"m{k}.pt")
        out.append(m)
    return out


def _inputs(seed: int = 0, n: int = 300) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32) + 0.3


def _batches(x: np.ndarray) -> list[torch.Tensor]:
    return [torch.as_tensor(x[i : i + 256]) for i in range(0, len(x), 256)]


def _fused(models: list[torch.nn.Module], method: str = "weight_matching") -> tuple[torch.nn.Module, list]:
    spec = gt.spec_from_module(models[0], torch.randn(2, 1, 8, 8))
    arrays = [{k: v.numpy() for k, v in gt.to_arrays(m).items()} for m in models]
    result = gamfsolve.match(arrays, spec, method=method, seed=0)
    aligned = [gt.from_arrays(models[0], gamfsolve.permute(a, spec, result.model_perms(k))) for k, a in enumerate(arrays)]
    return gt.from_arrays(models[0], gamfsolve.merge(arrays, spec, result)), aligned


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _fuse(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["fuse", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def _close(state: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    ref = module.state_dict()
    assert set(state) == set(ref)
    for name in ref:
        if not ref[name].is_floating_point():
            continue  # num_batches_tracked: integer buffers come from the first input
        torch.testing.assert_close(state[name].double(), ref[name].double(), rtol=1e-4, atol=1e-5)


def test_fuse_hints_at_bn_reset_when_the_model_has_batchnorm(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _models(work, "bn_cnn")
    status, out, _ = _fuse(capsys, "m0.pt", "m1.pt", "-o", "f.pt", "--model", f"{MODULE}:bn_cnn",
                           "--input-shape", "1,8,8", "--method", "weight_matching", "--seed", "0")
    assert status == 0
    assert "BatchNorm" in out and "--reset-bn DATA" in out


def test_fuse_gives_no_hint_without_batchnorm(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _models(work, "mlp")
    status, out, _ = _fuse(capsys, "m0.pt", "m1.pt", "-o", "f.pt", "--model", f"{MODULE}:mlp", "--input-shape", "12")
    assert status == 0 and "--reset-bn" not in out


def test_fuse_reset_bn_from_an_npz_with_labels(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = _models(work, "bn_cnn")
    x = _inputs()
    np.savez(work / "data.npz", x=x, y=np.arange(len(x)))
    status, out, err = _fuse(capsys, "m0.pt", "m1.pt", "-o", "f.pt", "--model", f"{MODULE}:bn_cnn",
                             "--input-shape", "1,8,8", "--method", "weight_matching", "--seed", "0", "--reset-bn", "data.npz")
    assert status == 0, err
    assert "BatchNorm reset on 300 inputs" in out and "--reset-bn DATA" not in out
    fused, _ = _fused(models)
    expected = gt.reset_bn_stats(fused, _batches(x))
    _close(_state(work / "f.pt"), expected)
    assert not torch.allclose(expected.state_dict()["1.running_mean"], fused.state_dict()["1.running_mean"])


def test_fuse_repair_from_a_folder_of_npy(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = _models(work, "bn_cnn")
    x = _inputs(1, 200)
    (work / "data").mkdir()
    np.save(work / "data" / "a.npy", x[:120])
    np.save(work / "data" / "b.npy", x[120:])
    status, out, err = _fuse(capsys, "m0.pt", "m1.pt", "-o", "f.pt", "--model", f"{MODULE}:bn_cnn",
                             "--input-shape", "1,8,8", "--method", "weight_matching", "--seed", "0", "--repair", "data")
    assert status == 0, err
    assert "REPAIR" in out
    fused, aligned = _fused(models)
    expected = gt.repair(fused, aligned, [torch.as_tensor(x[:120]), torch.as_tensor(x[120:])])
    _close(_state(work / "f.pt"), expected)
    assert not torch.allclose(expected.state_dict()["5.weight"], fused.state_dict()["5.weight"])


@pytest.mark.filterwarnings(  # Keras' .keras writer converts torch variables the deprecated way
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
def test_fuse_reset_bn_on_keras_files(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keras = pytest.importorskip("keras")
    from gamfsolve.adapters import keras as gk

    models = []
    for k in range(2):
        keras.utils.set_random_seed(k)
        m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(5, 3, name="c"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(), keras.layers.Flatten(),
                              keras.layers.Dense(3, name="out")])
        gk.save_model(m, work / f"k{k}.keras")
        models.append(m)
    x = np.moveaxis(_inputs(2, 100), 1, -1)
    np.savez(work / "data.npz", inputs=x)
    status, _, err = _fuse(capsys, "k0.keras", "k1.keras", "-o", "f.keras", "--method", "weight_matching",
                             "--seed", "0", "--reset-bn", "data.npz")
    assert status == 0, err
    fused = gk.fuse_models(models, method="weight_matching", seed=0)
    expected = gk.to_arrays(gk.reset_bn_stats(fused, x))
    got = gk.to_arrays(gk.load_model(work / "f.keras"))
    for (name, value), ref in zip(got.items(), expected.values(), strict=True):
        np.testing.assert_allclose(value, ref, rtol=1e-4, atol=1e-5, err_msg=name)


def test_fuse_statistics_failures(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _models(work, "bn_cnn")
    base = ["m0.pt", "m1.pt", "-o", "f.pt", "--model", f"{MODULE}:bn_cnn", "--input-shape", "1,8,8"]
    np.save(work / "objects.npy", np.array([{"a": 1}], dtype=object))
    (work / "objs").mkdir()
    np.save(work / "objs" / "o.npy", np.array([{"a": 1}], dtype=object))
    np.savez(work / "wrong.npz", x=np.zeros((4, 3), dtype=np.float32))
    (work / "empty").mkdir()
    cases = {
        "objs": 3, "objects.npy": 2, "wrong.npz": 3, "empty": 3, "missing.npz": 3,
    }
    for data, code in cases.items():
        status, _, err = _fuse(capsys, *base, "--reset-bn", data)
        assert status == code, (data, err)
        assert "--reset-bn" in err or "DATA" in err, err
        assert not (work / "f.pt").exists()
    with pytest.raises(SystemExit):
        main(["fuse", *base, "--reset-bn", "empty", "--repair", "empty"])
