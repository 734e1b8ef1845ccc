"""Arrays in and out of modules, state files, exported programs, fuse_modules errors, BN reset."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from gamfsolve.adapters import torch as gt  # noqa: E402
from gamfsolve.adapters import torch_zoo as zoo  # noqa: E402
from torch import nn  # noqa: E402

from gamfsolve import FusionError  # noqa: E402

from .torch_helpers import make, outputs_close  # noqa: E402

FACTORY = "gamfsolve.adapters.torch_zoo:resnet20"


def test_to_arrays_is_zero_copy_and_float_only() -> None:
    model, _ = make("resnet20")
    arrays = gt.to_arrays(model)
    assert "bn1.running_mean" in arrays
    assert not any(k.endswith("num_batches_tracked") for k in arrays)
    assert arrays["conv1.weight"].data_ptr() == model.conv1.weight.data_ptr()
    assert not arrays["conv1.weight"].requires_grad


def test_from_arrays_copies_and_leaves_input_untouched() -> None:
    model, _ = make("resnet20")
    model.bn1.num_batches_tracked.fill_(7)
    arrays = {k: v * 0 for k, v in gt.to_arrays(model).items()}
    new = gt.from_arrays(model, arrays)
    assert new is not model
    assert float(new.conv1.weight.detach().abs().sum()) == 0.0
    assert float(model.conv1.weight.detach().abs().sum()) > 0.0
    assert int(new.bn1.num_batches_tracked) == 7


def test_from_arrays_rejects_wrong_names_and_shapes() -> None:
    model, _ = make("mlp")
    arrays = gt.to_arrays(model)
    with pytest.raises(FusionError, match="missing"):
        gt.from_arrays(model, {k: v for k, v in arrays.items() if k != "layers.0.weight"})
    with pytest.raises(FusionError, match=r"layers.0.weight"):
        gt.from_arrays(model, {**arrays, "layers.0.weight": torch.zeros(3, 3)})


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_files_round_trip(tmp_path: Path, suffix: str) -> None:
    model, x = make("resnet20")
    path = tmp_path / f"model{suffix}"
    gt.save_state(model, path)
    loaded = gt.load_state(path, FACTORY).eval()
    assert outputs_close(loaded, model, x, atol=0)


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    model, _ = make("mlp")
    path = tmp_path / "whole.pt"
    torch.save(model, path)  # a whole pickled module, not a state dict
    with pytest.raises(FusionError, match="unpickling"):
        gt.load_state(path, "gamfsolve.adapters.torch_zoo:mlp")


def test_load_state_errors(tmp_path: Path) -> None:
    model, _ = make("mlp")
    path = tmp_path / "m.pt"
    gt.save_state(model, path)
    with pytest.raises(FusionError, match="factory"):
        gt.load_state(path)
    with pytest.raises(FusionError, match="does not fit"):
        gt.load_state(path, FACTORY)
    with pytest.raises(FusionError, match="no such file"):
        gt.load_state(tmp_path / "missing.pt", FACTORY)


def test_exported_program_carries_its_graph(tmp_path: Path) -> None:
    model, x = make("resnet20")
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    program = gt.load_program(path)
    spec = gt.spec_from_module(program)
    assert spec == gt.spec_from_module(model, x)
    loaded = gt.load_state(path)
    assert outputs_close(loaded, model, x)
    assert set(gt.to_arrays(loaded)) == set(spec.axes)


def test_fuse_modules_rejects_different_classes_and_shapes() -> None:
    a, x = make("mlp")
    with pytest.raises(FusionError, match=r"LeNet.*MLP"):
        gt.fuse_modules([a, zoo.lenet()], x, method="average")
    with pytest.raises(FusionError, match=r"shape.*only along permuted axes"):  # 10 vs 11 classes
        gt.fuse_modules([zoo.mlp(hidden=(24, 16)), zoo.mlp(hidden=(24, 16), out_features=11)], x, method="average")
    # hidden widths may differ: the result has the widest
    fused = gt.fuse_modules([zoo.mlp(hidden=(24, 16)), zoo.mlp(hidden=(24, 17))], x, method="average")
    assert fused.layers[1].weight.shape == (17, 24)
    with pytest.raises(FusionError, match="at least two"):
        gt.fuse_modules([a], x, method="average")


def test_fuse_modules_rejects_device_mismatch() -> None:
    a = nn.Linear(3, 2, device="meta")
    b = nn.Linear(3, 2, device="meta")
    with pytest.raises(FusionError, match="device"):
        gt.fuse_modules([a, b], torch.randn(2, 3), method="average")


def test_fuse_modules_leaves_inputs_untouched() -> None:
    a, x = make("vgg11", seed=0)
    b, _ = make("vgg11", seed=1)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    fused = gt.fuse_modules([a, b], x, method="weight_matching", seed=0)
    assert isinstance(fused, type(a))
    for m, state in zip((a, b), before, strict=True):
        assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def test_reset_bn_stats_returns_a_new_module() -> None:
    model, _ = make("resnet20")
    data = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    new = gt.reset_bn_stats(model, data, n_batches=2)
    assert not torch.equal(new.bn1.running_mean, model.bn1.running_mean)
    assert not new.training and new.bn1.momentum == model.bn1.momentum
    # running statistics now match the data: train-mode and eval-mode outputs agree on it
    batch = torch.cat(data[:2])
    with torch.no_grad():
        mean = new.conv1(batch).mean((0, 2, 3))
    assert torch.allclose(new.bn1.running_mean, mean, atol=1e-4)
    with pytest.raises(FusionError, match="no batches"):
        gt.reset_bn_stats(model, [])
