"""Every zoo model: the derived spec passes the check, and fusing with a permuted copy is exact."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from gamfsolve.adapters import torch as gt

import gamfsolve

from .torch_helpers import ZOO, make, outputs_close, permuted_copy

CASES = [(name, w, bn) for name in ZOO for w in (1, 2) for bn in (True, False)]
IDS = [f"{n}-w{w}-{'bn' if bn else 'nobn'}" for n, w, bn in CASES]
# gamf is slower on the widest convolutional cases: those run with the slow marker
SLOW_GAMF = {("resnet20", 2), ("lenet", 2), ("lenet32", 2)}


@pytest.mark.parametrize(("name", "width", "bn"), CASES, ids=IDS)
def test_spec_passes_check(name: str, width: int, bn: bool) -> None:
    model, x = make(name, width, bn)
    spec = gt.spec_from_module(model, x, check=False)
    gt.check_spec(model, spec, x, atol=1e-5)
    assert spec.groups, "at least one permutable group"


@pytest.mark.parametrize(("name", "width", "bn"), CASES, ids=IDS)
def test_weight_matching_recovers_permuted_copy(name: str, width: int, bn: bool) -> None:
    model, x = make(name, width, bn)
    spec = gt.spec_from_module(model, x)
    other = permuted_copy(model, spec)
    fused = gt.fuse_modules([model, other], x, method="weight_matching", spec=spec, seed=0)
    assert outputs_close(fused, model, x)


def _gamf_cases() -> list:
    out = []
    for name, w, bn in CASES:
        marks = [pytest.mark.slow] if (name, w) in SLOW_GAMF else []
        out.append(pytest.param(name, w, bn, marks=marks, id=f"{name}-w{w}-{'bn' if bn else 'nobn'}"))
    return out


@pytest.mark.parametrize(("name", "width", "bn"), _gamf_cases())
def test_gamf_recovers_permuted_copy(name: str, width: int, bn: bool) -> None:
    if "gamf" not in gamfsolve.METHODS:
        pytest.skip("gamf not registered")
    model, x = make(name, width, bn)
    spec = gt.spec_from_module(model, x)
    other = permuted_copy(model, spec)
    fused = gt.fuse_modules([model, other], x, method="gamf", spec=spec, seed=0)
    assert outputs_close(fused, model, x)


def test_average_of_identical_models_is_the_model() -> None:
    model, x = make("resnet20")
    fused = gt.fuse_modules([model, model], x, method="average")
    assert outputs_close(fused, model, x)


def test_resnet_residual_stream_is_one_group() -> None:
    model, x = make("resnet20")
    spec = gt.spec_from_module(model, x)
    stem = spec.axes["conv1.weight"][0]
    # the stem, every first-stage block output and the first block's norms share the stream
    assert spec.axes["blocks.0.bn2.weight"][0] == stem
    assert spec.axes["blocks.2.conv2.weight"][0] == stem
    assert spec.axes["blocks.3.conv1.weight"][1] == stem
    # a downsampling shortcut opens the next stream, joined with that block's conv2
    assert spec.axes["blocks.3.shortcut.0.weight"][0] == spec.axes["blocks.3.conv2.weight"][0]
    assert spec.axes["fc.weight"][0] is None
    assert len(spec.groups) == 1 + 9 + 2


def test_flatten_gives_blocks() -> None:
    model, x = make("lenet")
    spec = gt.spec_from_module(model, x)
    assert spec.axes["fc1.weight"][1] == gamfsolve.Blocks("conv2", inner=25)


def test_transformer_permutes_heads_stream_and_mlp() -> None:
    model, x = make("transformer")
    spec = gt.spec_from_module(model, x, strict=True)
    stream = spec.axes["embed.weight"][0]
    assert stream is not None
    assert spec.axes["pos"] == (None, stream)
    heads = spec.axes["proj.weight"][1]
    assert isinstance(heads, gamfsolve.Split) and None not in heads.groups  # heads and their dimensions
    assert spec.axes["proj.weight"][0] == stream
    # the fused projection (q, k, v) x heads x dimensions: one heads and one dimension order
    assert spec.axes["qkv.weight"] == (gamfsolve.Split((None, *heads.groups), (3, 4, -1)), stream)
    assert spec.axes["fc1.weight"][0] is not None
    assert spec.axes["head.weight"] == (None, stream)
