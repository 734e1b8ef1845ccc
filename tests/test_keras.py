"""Keras adapter: derived specs, array round trips, .keras files, fusion of permuted copies."""

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

import gamfsolve  # noqa: E402
from gamfsolve import Blocks, Concat, FusionError, FusionTypeError  # noqa: E402


def mlp(prefix: str = "m") -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((12,)),
            layers.Dense(16, activation="relu", name=f"{prefix}_fc1"),
            layers.Dropout(0.1),
            layers.Dense(8, activation="relu", name=f"{prefix}_fc2"),
            layers.Dense(3, name=f"{prefix}_out"),
        ],
        name=f"{prefix}_mlp",
    )


def cnn(prefix: str = "c") -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            layers.Conv2D(4, 3, padding="same", name=f"{prefix}_conv1"),
            layers.BatchNormalization(name=f"{prefix}_bn1"),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Conv2D(6, 3, padding="same", activation="relu", name=f"{prefix}_conv2"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10, activation="relu", name=f"{prefix}_fc"),
            layers.Dense(3, name=f"{prefix}_out"),
        ],
        name=f"{prefix}_cnn",
    )


def residual(prefix: str = "r") -> keras.Model:
    x = keras.Input((10,))
    h = layers.Dense(8, name=f"{prefix}_embed")(x)
    for i in range(2):
        z = layers.LayerNormalization(name=f"{prefix}_ln{i}")(h)
        z = layers.Dense(12, activation="gelu", name=f"{prefix}_up{i}")(z)
        z = layers.Dense(8, name=f"{prefix}_down{i}")(z)
        h = layers.Add(name=f"{prefix}_add{i}")([h, z])
    side = layers.Dense(4, activation="relu", name=f"{prefix}_side")(h)
    h = layers.Concatenate(name=f"{prefix}_cat")([h, side])
    y = layers.Dense(3, name=f"{prefix}_out")(h)
    return keras.Model(x, y, name=f"{prefix}_res")


BUILDERS = {"mlp": mlp, "cnn": cnn, "residual": residual}


def noisy(model: keras.Model, seed: int = 0) -> keras.Model:
    """The model with random, non-trivial weights (non-zero biases, BN statistics)."""
    rng = np.random.default_rng(seed)
    arrays = gk.to_arrays(model)
    return gk.from_arrays(
        model, gk._perturbed({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in arrays.items()}, rng)
    )


def outputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model(x, training=False).detach().cpu().numpy()


def inputs_for(model: keras.Model, n: int = 5, seed: int = 1) -> np.ndarray:
    shape = (n, *model.inputs[0].shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_mlp_spec_names_and_groups() -> None:
    spec = gk.spec_from_model(mlp())
    assert dict(spec.axes) == {
        "m_fc1.kernel": (None, "m_fc1"),
        "m_fc1.bias": ("m_fc1",),
        "m_fc2.kernel": ("m_fc1", "m_fc2"),
        "m_fc2.bias": ("m_fc2",),
        "m_out.kernel": ("m_fc2", None),
        "m_out.bias": (None,),
    }


def test_cnn_spec_batchnorm_and_channels_last_flatten() -> None:
    spec = gk.spec_from_model(cnn())
    assert spec.axes["c_conv1.kernel"] == (None, None, None, "c_conv1")
    for key in ("gamma", "beta", "moving_mean", "moving_variance"):
        assert spec.axes[f"c_bn1.{key}"] == ("c_conv1",)
    assert spec.axes["c_conv2.kernel"] == (None, None, "c_conv1", "c_conv2")
    assert spec.axes["c_fc.kernel"] == (Blocks("c_conv2", outer=2 * 2), "c_fc")


def test_residual_spec_shares_one_stream_and_concatenates() -> None:
    spec = gk.spec_from_model(residual())
    stream = "r_embed"
    assert spec.axes["r_embed.kernel"] == (None, stream)
    assert spec.axes["r_down1.kernel"] == ("r_up1", stream)
    assert spec.axes["r_ln0.gamma"] == (stream,)
    assert spec.axes["r_out.kernel"] == (Concat(stream, "r_side"), None)


@keras.saving.register_keras_serializable(package="gamfsolve_tests")
def _reverse(t):
    return keras.ops.flip(t, axis=-1)


def test_unsupported_layers_are_fixed_not_wrong() -> None:
    x = keras.Input((6,))
    h = layers.Dense(6, name="u_a")(x)
    h = layers.Reshape((3, 2))(h)  # mixes units across axes: not a channel-wise layer
    h = layers.Flatten()(h)
    h = layers.Dense(5, activation=_reverse, name="u_b")(h)  # a custom activation may mix units
    h = layers.Dense(4, activation="relu", name="u_c")(h)
    y = layers.Dense(2, name="u_d")(h)
    model = keras.Model(x, y)
    spec = gk.spec_from_model(model)
    assert spec.axes["u_a.kernel"] == (None, None)
    assert spec.axes["u_b.kernel"] == (None, None)
    assert spec.axes["u_c.kernel"] == (None, "u_c")
    assert "u_b" in gk.graph_info(model).fixed_layers


def test_check_spec_names_the_broken_group() -> None:
    model = noisy(cnn())
    axes = dict(gk.spec_from_model(model).axes)
    axes["c_bn1.moving_variance"] = (None,)
    with pytest.raises(FusionError, match="c_conv1"):
        gk.check_spec(model, gamfsolve.PermutationSpec(axes))


def test_keras_ops_and_shared_layers() -> None:
    x = keras.Input((5,))
    shared = layers.Dense(7, name="s_shared")
    a = layers.Dense(5, name="s_a")(x)
    h = keras.ops.relu(shared(x)) + shared(a) * 2.0
    h = keras.ops.concatenate([h, layers.Dense(3, name="s_b")(x)], axis=-1)
    y = layers.Dense(2, name="s_out")(h)
    spec = gk.spec_from_model(noisy(keras.Model(x, y)))
    assert spec.axes["s_out.kernel"] == (Concat("s_shared", "s_b"), None)
    assert spec.axes["s_shared.kernel"] == (None, "s_shared")  # its inputs: x (fixed) and a (united)


def test_to_from_arrays_round_trip_leaves_input_untouched() -> None:
    model = noisy(cnn())
    arrays = gk.to_arrays(model)
    assert arrays["c_conv1.kernel"].shape == (3, 3, 2, 4)
    assert arrays["c_fc.kernel"].shape == (2 * 2 * 6, 10)
    before = {k: v.copy() for k, v in arrays.items()}
    changed = {k: v * 2 for k, v in arrays.items()}
    clone = gk.from_arrays(model, changed)
    for k, v in gk.to_arrays(model).items():
        np.testing.assert_array_equal(v, before[k])
    for k, v in gk.to_arrays(clone).items():
        np.testing.assert_array_equal(v, changed[k])
    x = inputs_for(model)
    np.testing.assert_allclose(outputs(gk.from_arrays(model, arrays), x), outputs(model, x), rtol=0, atol=0)


def test_from_arrays_errors_name_the_problem() -> None:
    model = mlp()
    arrays = gk.to_arrays(model)
    with pytest.raises(FusionError, match=r"missing names \['m_out\.bias'\]"):
        gk.from_arrays(model, {k: v for k, v in arrays.items() if k != "m_out.bias"})
    with pytest.raises(FusionError, match="layer 'm_fc1'"):
        gk.from_arrays(model, {**arrays, "m_fc1.kernel": np.zeros((3, 3), np.float32)})
    with pytest.raises(FusionTypeError, match=r"keras\.Model"):
        gk.to_arrays(object())


def test_subclassed_model_is_refused() -> None:
    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.fc = layers.Dense(3)

        def call(self, x):
            return self.fc(x)

    net = Net()
    net(np.zeros((1, 4), np.float32))
    with pytest.raises(FusionError, match="functional"):
        gk.spec_from_model(net)


# keras' own saving converts torch tensors with np.array(), which newer NumPy flags
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_save_and_load_keras_file(tmp_path) -> None:
    model = noisy(residual())
    path = tmp_path / "model.keras"
    gk.save_model(model, path)
    loaded = gk.load_model(path)
    x = inputs_for(model)
    np.testing.assert_allclose(outputs(loaded, x), outputs(model, x), rtol=0, atol=1e-6)
    with pytest.raises(FusionError, match=r"\.keras"):
        gk.save_model(model, tmp_path / "model.h5")


@pytest.mark.parametrize("method", ["gamf", "weight_matching"])
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_fusing_a_permuted_copy_returns_the_model(arch: str, method: str) -> None:
    # Keras draws initial weights from its global generator: seed it so the model does not depend
    # on the tests that ran before
    keras.utils.set_random_seed(3)
    model = noisy(BUILDERS[arch](), seed=3)
    spec = gk.spec_from_model(model)
    arrays = gk.to_arrays(model)
    rng = np.random.default_rng(4)
    perms = {g: rng.permutation(n) for g, n in spec.group_sizes({k: v.shape for k, v in arrays.items()}).items()}
    other = BUILDERS[arch](f"{arch[0]}2")  # same architecture, other layer names
    permuted = gamfsolve.permute(arrays, spec, perms)
    twin = gk.from_arrays(other, dict(zip(gk.to_arrays(other), permuted.values(), strict=True)))
    fused = gk.fuse_models([model, twin], method=method, seed=0)
    x = inputs_for(model)
    assert fused is not model
    assert [layer.name for layer in fused.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(outputs(fused, x), outputs(model, x), rtol=1e-5, atol=1e-5)


def test_fuse_models_checks_architectures() -> None:
    with pytest.raises(FusionError, match="at least two"):
        gk.fuse_models([mlp()])
    with pytest.raises(FusionError, match="not the same architecture"):
        gk.fuse_models([mlp(), cnn()], method="average")
    ln = keras.Sequential([keras.Input((12,)), layers.Dense(16), layers.LayerNormalization(), layers.Dense(3)])
    with pytest.raises(FusionError, match=r"does not match models\[0\] weight 'm_fc2\.kernel'"):
        gk.fuse_models([mlp(), ln], method="average")
    four = keras.Sequential([keras.Input((12,)), layers.Dense(17), layers.Dense(8), layers.Dense(4)])
    with pytest.raises(FusionError, match=r"only along permuted axes"):  # 3 vs 4 outputs
        gk.fuse_models([mlp(), four], method="average")


def _mlp(h1: int, h2: int, prefix: str) -> keras.Model:
    return keras.Sequential([keras.Input((12,)), layers.Dense(h1, activation="relu", name=f"{prefix}_fc1"),
                             layers.Dense(h2, activation="relu", name=f"{prefix}_fc2"), layers.Dense(3, name=f"{prefix}_out")])


@pytest.mark.parametrize("method", ["gamf", "ot"])
def test_models_of_different_widths_fuse_into_the_widest(method: str) -> None:
    from nets import keep_units, pruned_copy

    wide = noisy(_mlp(16, 8, "w"), seed=5)
    spec = gk.spec_from_model(wide)
    rng = np.random.default_rng(6)
    keep = {"w_fc1": keep_units(16, 11, rng), "w_fc2": keep_units(8, 5, rng)}
    small = pruned_copy(gk.to_arrays(wide), spec, keep, rng)
    narrow = _mlp(11, 5, "n")
    narrow = gk.from_arrays(narrow, dict(zip(gk.to_arrays(narrow), small.values(), strict=True)))
    fused = gk.fuse_models([narrow, wide], method=method, seed=0)  # the widest is models[1]
    assert [layer.name for layer in fused.layers] == [layer.name for layer in wide.layers]
    x = inputs_for(wide)
    np.testing.assert_allclose(outputs(fused, x), outputs(wide, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(FusionError, match="template="):
        gk.fuse_models([_mlp(16, 5, "a"), _mlp(11, 8, "b")], method="average")
    fused = gk.fuse_models([_mlp(16, 5, "a"), _mlp(11, 8, "b")], method="average", template=_mlp(16, 8, "t"))
    assert tuple(fused.layers[1].kernel.shape) == (16, 8)


def test_other_backend_gives_a_clear_error(monkeypatch) -> None:
    # only the torch backend is installed here, so report another one
    model = mlp()
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(FusionError, match=r"active backend is 'jax'.*KERAS_BACKEND=torch"):
        gk.to_arrays(model)
