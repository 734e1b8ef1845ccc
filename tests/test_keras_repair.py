"""Keras adapter: BatchNorm reset, REPAIR and aligned models, on BatchNorm CNNs and MLPs."""

from __future__ import annotations

import os
import tempfile

os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="gamfsolve-keras-"))

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from gamfsolve.adapters import keras as gk  # noqa: E402
from keras import layers  # noqa: E402

from gamfsolve import FusionError, FusionTypeError  # noqa: E402


def bn_cnn(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            layers.Conv2D(6, 3, padding="same", name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.ReLU(),
            layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2"),
            layers.BatchNormalization(name="bn2"),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(12, activation="relu", name="fc"),
            layers.Dense(3, name="out"),
        ],
        name="bn_cnn",
    )


def mlp(seed: int, bias: bool = True) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((10,)),
            layers.Dense(16, activation="relu", use_bias=bias, name="fc1"),
            layers.Dense(12, activation="relu", use_bias=bias, name="fc2"),
            layers.Dense(3, name="out"),
        ],
        name="mlp",
    )


def npy(x: object) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)  # type: ignore[union-attr]


def batches(shape: tuple[int, ...], n: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((16, *shape)) + 0.5).astype(np.float32) for _ in range(n)]


def layer_input(model: keras.Model, name: str, xs: list[np.ndarray]) -> np.ndarray:
    sub = keras.Model(model.inputs[0], model.get_layer(name).input)
    return np.concatenate([npy(sub(x, training=False)) for x in xs]).astype(np.float64)


def pre_activation(model: keras.Model, name: str, xs: list[np.ndarray]) -> np.ndarray:
    layer = model.get_layer(name)
    h = layer_input(model, name, xs)
    kernel = npy(layer.kernel.value).astype(np.float64)
    z = h.reshape(-1, kernel.shape[0]) @ kernel
    return z + npy(layer.bias.value) if layer.use_bias else z


def with_bad_stats(model: keras.Model) -> keras.Model:
    arrays = gk.to_arrays(model)
    for name in arrays:
        if name.endswith("moving_mean"):
            arrays[name] = arrays[name] + 3.0
        elif name.endswith("moving_variance"):
            arrays[name] = arrays[name] * 10.0
    return gk.from_arrays(model, arrays)


def test_reset_bn_stats_sets_each_layer_to_its_input_statistics() -> None:
    model = with_bad_stats(bn_cnn(0))
    before = gk.to_arrays(model)
    xs = batches((8, 8, 2))
    new = gk.reset_bn_stats(model, xs)
    for name in ("bn1", "bn2"):
        h = layer_input(new, name, xs).reshape(-1, new.get_layer(name).moving_mean.shape[0])
        np.testing.assert_allclose(npy(new.get_layer(name).moving_mean.value), h.mean(0), atol=1e-5)
        np.testing.assert_allclose(npy(new.get_layer(name).moving_variance.value), h.var(0),
                                   rtol=1e-4, atol=1e-6)
    after = gk.to_arrays(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "the input model was modified"


def test_reset_bn_stats_normalises_the_bn_outputs_and_reads_pairs() -> None:
    model = with_bad_stats(bn_cnn(1))
    xs = batches((8, 8, 2), seed=1)
    new = gk.reset_bn_stats(model, [(x, np.zeros(len(x))) for x in xs])
    bn = new.get_layer("bn2")
    sub = keras.Model(new.inputs[0], bn.output)
    y = np.concatenate([npy(sub(x, training=False)) for x in xs]).reshape(-1, 8)
    beta = npy(bn.beta.value)
    np.testing.assert_allclose(y.mean(0), beta, atol=1e-4)


def test_reset_bn_stats_n_batches_and_errors() -> None:
    model = bn_cnn(2)
    xs = batches((8, 8, 2), n=4)
    one = gk.reset_bn_stats(model, xs, n_batches=1)
    ref = gk.reset_bn_stats(model, xs[0])
    np.testing.assert_allclose(gk.to_arrays(one)["bn1.moving_mean"], gk.to_arrays(ref)["bn1.moving_mean"], atol=1e-6)
    with pytest.raises(FusionError, match="n_batches"):
        gk.reset_bn_stats(model, xs, n_batches=0)
    with pytest.raises(FusionError, match="no batches"):
        gk.reset_bn_stats(model, [])
    with pytest.raises(FusionTypeError, match="data"):
        gk.reset_bn_stats(model, 3)


def test_reset_bn_stats_without_bn_is_an_unchanged_copy() -> None:
    model = mlp(0)
    new = gk.reset_bn_stats(model, batches((10,)))
    assert new is not model
    a, b = gk.to_arrays(model), gk.to_arrays(new)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_align_models_keeps_each_function_and_averages_to_fuse() -> None:
    models = [bn_cnn(3), bn_cnn(4)]
    x = batches((8, 8, 2), n=1)[0]
    aligned = gk.align_models(models, method="gamf", seed=0)
    for m, a in zip(models, aligned, strict=True):
        np.testing.assert_allclose(npy(a(x, training=False)),
                                   npy(m(x, training=False)), atol=1e-4)
    fused = gk.to_arrays(gk.fuse_models(models, method="gamf", seed=0))
    mean = [gk.to_arrays(a) for a in aligned]
    for name in fused:
        np.testing.assert_allclose(fused[name], (mean[0][name] + mean[1][name]) / 2, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_repair_gives_each_hidden_layer_the_sources_average_statistics(bias: bool) -> None:
    models = [mlp(5, bias), mlp(6, bias)]
    xs = batches((10,))
    aligned = gk.align_models(models, method="weight_matching", seed=0)
    fused = gk.fuse_models(models, method="weight_matching", seed=0)
    weights = [0.7, 0.3]
    fixed = gk.repair(fused, aligned, xs, weights=weights)
    for name in ("fc1", "fc2"):
        z = pre_activation(fixed, name, xs)
        src = [pre_activation(a, name, xs) for a in aligned]
        target_mean = sum(w * s.mean(0) for w, s in zip(weights, src, strict=True))
        target_std = sum(w * s.std(0) for w, s in zip(weights, src, strict=True))
        if bias:
            np.testing.assert_allclose(z.mean(0), target_mean, atol=1e-4)
            np.testing.assert_allclose(z.std(0), target_std, rtol=1e-3, atol=1e-5)
        else:
            rms = np.sqrt(target_mean**2 + target_std**2)
            np.testing.assert_allclose(np.sqrt((z * z).mean(0)), rms, rtol=1e-3, atol=1e-5)
        before = pre_activation(fused, name, xs)
        assert not np.allclose(before.std(0), target_std, rtol=1e-2), "the fused model already matched: no test"
    np.testing.assert_array_equal(gk.to_arrays(fixed)["out.kernel"], gk.to_arrays(fused)["out.kernel"])


def test_repair_on_a_bn_cnn_resets_bn_and_leaves_layers_that_feed_bn() -> None:
    models = [bn_cnn(7), bn_cnn(8)]
    xs = batches((8, 8, 2), seed=2)
    aligned = gk.align_models(models, method="gamf", seed=0)
    fused = with_bad_stats(gk.fuse_models(models, method="gamf", seed=0))
    fixed = gk.repair(fused, aligned, xs)
    a, b = gk.to_arrays(fused), gk.to_arrays(fixed)
    for name in ("conv1.kernel", "conv1.bias", "conv2.kernel", "out.kernel"):
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.allclose(a["fc.kernel"], b["fc.kernel"]), "fc is hidden and not followed by BN: REPAIR rescales it"
    h = layer_input(fixed, "bn1", xs).reshape(-1, 6)
    np.testing.assert_allclose(b["bn1.moving_mean"], h.mean(0), atol=1e-5)


def test_repair_checks_its_inputs() -> None:
    model = mlp(9)
    xs = batches((10,))
    with pytest.raises(FusionTypeError, match="aligned"):
        gk.repair(model, model, xs)
    with pytest.raises(FusionError, match="aligned\\[0\\]"):
        gk.repair(model, [bn_cnn(0)], xs)
