"""Bad input gets a clear exception, never a wrong answer; inputs are never mutated."""

from __future__ import annotations

import numpy as np
import pytest
from nets import mlp

import gamfsolve as g
from gamfsolve import FusionError, FusionTypeError


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return [mlp([4, 6, 3], rng)[0] for _ in range(2)], g.mlp_spec(2)


def test_fewer_than_two_models(pair):
    models, spec = pair
    with pytest.raises(FusionError, match="at least two models"):
        g.fuse(models[:1], spec)
    with pytest.raises(FusionTypeError, match="sequence of parameter mappings"):
        g.fuse(models[0], spec)


def test_names_and_shapes_must_agree(pair):
    models, spec = pair
    bad = dict(models[1])
    bad["extra"] = np.zeros(3)
    with pytest.raises(FusionError, match=r"models\[1\] has different parameter names.*extra"):
        g.fuse([models[0], bad], spec)
    bad = dict(models[1], **{"layers.0.weight": np.zeros((7, 4))})
    with pytest.raises(FusionError, match=r"models\[1\]: group 'h0' has 7 units on 'layers.0.weight'.* but 6"):
        g.fuse([models[0], bad], spec)
    # widths may differ, fixed axes (inputs, outputs) may not
    bad = dict(models[1], **{"layers.0.weight": np.zeros((6, 5))})
    with pytest.raises(FusionError, match=r"'layers.0.weight' has shape \(6, 5\) in models\[1\].*only along permuted"):
        g.fuse([models[0], bad], spec)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite(pair, value):
    models, spec = pair
    bad = {k: v.copy() for k, v in models[1].items()}
    bad["layers.1.bias"][0] = value
    with pytest.raises(FusionError, match=r"'layers.1.bias' of models\[1\] contains NaN or Inf"):
        g.fuse([models[0], bad], spec, method="average")


def test_integer_arrays(pair):
    models, spec = pair
    bad = dict(models[1], **{"layers.1.bias": np.arange(3)})
    with pytest.raises(FusionTypeError, match="expected floating point"):
        g.fuse([models[0], bad], spec)


def test_mixed_libraries(pair):
    torch = pytest.importorskip("torch")
    models, spec = pair
    mixed = {k: torch.from_numpy(v) for k, v in models[1].items()}
    with pytest.raises(FusionTypeError, match="one array library"):
        g.fuse([models[0], mixed], spec)


def test_not_arrays(pair):
    models, spec = pair
    bad = dict(models[1], **{"layers.1.bias": [0.0, 1.0, 2.0]})
    with pytest.raises(FusionTypeError, match="expected arrays"):
        g.fuse([models[0], bad], spec)


def test_spec_must_cover_parameters(pair):
    models, _ = pair
    partial = g.PermutationSpec({"layers.0.weight": ("h0", None), "layers.1.weight": (None, "h0")})
    with pytest.raises(FusionError, match="does not cover parameters"):
        g.fuse(models, partial)
    with pytest.raises(FusionTypeError, match="PermutationSpec"):
        g.fuse(models, {"layers.0.weight": ("h0", None)})  # type: ignore[arg-type]


@pytest.mark.parametrize(("weights", "match"), [([1.0], "2 models"), ([-1.0, 2.0], "non-negative"),
                                                ([0.0, 0.0], "positive"), ([np.nan, 1.0], "finite"),
                                                (["a", 1.0], "numbers")])
def test_bad_weights(pair, weights, match):
    models, spec = pair
    with pytest.raises(FusionError, match=match):
        g.fuse(models, spec, weights=weights)


@pytest.mark.parametrize("method", ["gamf", "weight_matching", "ot", "average"])
def test_inputs_are_not_mutated(pair, method):
    models, spec = pair
    before = [{k: v.copy() for k, v in m.items()} for m in models]
    g.fuse(models, spec, method=method, seed=0)
    for m, b in zip(models, before, strict=True):
        for k in m:
            np.testing.assert_array_equal(m[k], b[k])


def test_bad_schedule(pair):
    models, spec = pair
    with pytest.raises(g.OptionError, match="gamma"):
        g.match(models, spec, method="gamf", gamma=1.5)
    with pytest.raises(g.OptionError, match="init"):
        g.match(models, spec, method="gamf", init="zeros")
    with pytest.raises(g.OptionError, match=r"unknown option\(s\) \['temperature'\]"):
        g.match(models, spec, method="gamf", temperature=0.1)
    assert issubclass(g.OptionError, FusionError)  # code that catches FusionError still does
