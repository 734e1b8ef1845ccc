"""The PyTorch and Keras adapters on bad input: a correct result or a FusionError naming the cause."""

from __future__ import annotations

import logging
import warnings

import pytest

torch = pytest.importorskip("torch")
from gamfsolve.adapters import torch as gt  # noqa: E402
from torch import nn  # noqa: E402

import gamfsolve as g  # noqa: E402
from gamfsolve import FusionError, FusionTypeError, OptionError  # noqa: E402


def mlp(act: type[nn.Module] = nn.ReLU, seed: int = 0, width: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), act(), nn.Linear(width, 2))


X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))


def test_different_activations_refused():
    with pytest.raises(FusionError, match=r"modules\[1\].*Tanh.*ReLU"):
        gt.fuse_modules([mlp(), mlp(nn.Tanh, 1)], X)


def test_inplace_flag_is_the_same_function():
    a = mlp()
    b = nn.Sequential(nn.Linear(3, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    assert isinstance(gt.fuse_modules([a, b], X), nn.Sequential)


def test_leaky_slopes_differ():
    a = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.1), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(3, 8), nn.LeakyReLU(0.3), nn.Linear(8, 2))
    with pytest.raises(FusionError, match="negative_slope"):
        gt.fuse_modules([a, b], X)


@pytest.mark.parametrize(
    ("inputs", "named"),
    [(torch.randn(4, 5), r"shape \(4, 5\)"), (torch.arange(12).reshape(4, 3), "int64"), (torch.randn(4, 3, 2), "shape")],
)
def test_example_inputs_the_model_cannot_take(inputs, named, caplog):
    with caplog.at_level(logging.WARNING):
        with pytest.raises(FusionError, match=named) as info:
            gt.fuse_modules([mlp(), mlp(seed=1)], inputs)
    assert "example_inputs" in str(info.value) and "by hand" not in str(info.value)
    assert len(caplog.records) < 3  # no pages of torch logging


def test_meta_tensors():
    with torch.device("meta"):
        a, b = mlp(), mlp(seed=1)
    with pytest.raises(FusionError, match="meta"):
        gt.fuse_modules([a, b], X)
    with pytest.raises(FusionError, match="meta"):
        gt.fuse_modules([mlp(), mlp(seed=1)], X.to("meta"))
    with pytest.raises(FusionError, match="meta"):
        spec = g.PermutationSpec({"0.weight": ("h", None), "0.bias": ("h",), "2.weight": (None, "h"), "2.bias": (None,)})
        g.fuse([gt.to_arrays(a), gt.to_arrays(b)], spec)


def test_legacy_weight_norm_in_align_modules():
    mods = [mlp(), mlp(seed=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in mods:
            nn.utils.weight_norm(m[0])
    try:
        aligned = gt.align_modules(mods, X)
    except FusionError as exc:
        assert "weight_norm" in str(exc)
    else:
        for a, m in zip(aligned, mods, strict=True):
            torch.testing.assert_close(a(X), m(X))


@pytest.mark.parametrize("bad", [mlp(), "ab", None, 3])
def test_modules_not_a_list(bad):
    with pytest.raises(FusionError):
        gt.fuse_modules(bad, X)


@pytest.mark.parametrize("options", [{"tau0": "1"}, {"max_iter": 2.5}, {"universe": "no"}, {"seed": -1},
                                     {"seed": "abc"}, {"weights": [1e308, -1]}])
def test_options_checked_before_tracing(options, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("traced before the options were checked")

    monkeypatch.setattr(gt, "spec_from_module", fail)
    with pytest.raises(FusionError):
        gt.fuse_modules([mlp(), mlp(seed=1)], X, **options)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_modules(dtype):
    a = mlp().to(dtype)
    b = gt.from_arrays(a, g.permute(gt.to_arrays(a), gt.spec_from_module(a, X.to(dtype), check=False),
                                    {"0": torch.randperm(8, generator=torch.Generator().manual_seed(1))}))
    fused = gt.fuse_modules([a, b], X.to(dtype), check=False)
    for name, value in gt.to_arrays(fused).items():
        assert value.dtype == dtype
        torch.testing.assert_close(value, gt.to_arrays(a)[name])


def test_mixed_precision_modules_fuse_into_the_template():
    a, b = mlp(), mlp(seed=1).double()
    fused = gt.fuse_modules([a, b], X)
    assert all(v.dtype == torch.float32 for v in gt.to_arrays(fused).values())


def test_program_missing_file(tmp_path):
    with pytest.raises(FusionError, match="cannot read"):
        gt.load_program(tmp_path / "none.pt2")


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_bad_inputs():
    import numpy as np

    keras = pytest.importorskip("keras")
    gk = pytest.importorskip("gamfsolve.adapters.keras")

    def model(act: str):
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation=act), keras.layers.Dense(2)])

    a, b = model("relu"), model("relu")
    with pytest.raises(FusionTypeError, match=r"list of keras\.Model"):
        gk.fuse_models(a)
    with pytest.raises(FusionError, match="tanh"):
        gk.fuse_models([a, model("tanh")])
    with pytest.raises(OptionError, match="tau0"):
        gk.fuse_models([a, b], tau0="1")
    with pytest.raises(FusionError, match="seed"):
        gk.fuse_models([a, b], seed=-1)
    with pytest.raises(FusionError, match=r"\.keras"):
        gk.load_model("model.h5")
    with pytest.raises(FusionTypeError):
        gk.load_model(None)
    with pytest.raises(FusionError, match="cannot write"):
        gk.save_model(a, "/nonexistent-folder/m.keras")
    with pytest.raises(FusionTypeError):
        gk.from_arrays(a, None)
    with pytest.raises(FusionTypeError):
        gk.check_spec(a, None)
    with pytest.raises(FusionError, match="atol"):
        gk.spec_from_model(a, atol="x")
    arrays = gk.to_arrays(a)
    name = next(iter(arrays))
    for bad, error in (("x", FusionTypeError), (np.full(arrays[name].shape, np.nan), FusionError),
                       (np.zeros(arrays[name].shape, dtype=complex), FusionTypeError)):
        with pytest.raises(error, match=name):
            gk.from_arrays(a, dict(arrays, **{name: bad}))
    fused = gk.fuse_models([a, b], weights=[1e308, 1e308], method="average")
    for x, y, z in zip(gk.to_arrays(fused).values(), arrays.values(), gk.to_arrays(b).values(), strict=True):
        np.testing.assert_allclose(x, (y + z) / 2, rtol=1e-6)


@pytest.mark.parametrize(
    "value", ["x", None, float("nan"), "complex", "strings"], ids=["text", "none", "nan", "complex", "strings"]
)
def test_from_arrays_refuses_non_numbers(value):
    import numpy as np

    m = mlp()
    arrays = {k: v.clone() for k, v in gt.to_arrays(m).items()}
    arrays["0.weight"] = {
        "complex": np.zeros((8, 3), dtype=complex), "strings": np.full((8, 3), "a"),
        float("nan"): np.full((8, 3), np.nan),
    }.get(value, value)
    with pytest.raises(FusionError, match=r"0\.weight"):
        gt.from_arrays(m, arrays)


def test_io_argument_kinds(tmp_path):
    m = mlp()
    with pytest.raises(FusionTypeError):
        gt.from_arrays(m, None)
    with pytest.raises(FusionTypeError):
        gt.load_state(None)
    with pytest.raises(FusionError, match="cannot write"):
        gt.save_state(m, tmp_path / "missing" / "m.pt")
    with pytest.raises(FusionTypeError):
        gt.check_spec(m, None, X)
    with pytest.raises(FusionError, match="atol"):
        gt.spec_from_module(m, X, atol="x")
