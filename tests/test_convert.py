"""Keras <-> PyTorch weight conversion and cross-framework fusion."""

from __future__ import annotations

import os
import tempfile

os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="gamfsolve-keras-"))

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import torch  # noqa: E402
from gamfsolve.adapters import convert  # noqa: E402
from gamfsolve.adapters import keras as gk  # noqa: E402
from keras import layers  # noqa: E402
from torch import nn  # noqa: E402

from gamfsolve import FusionError, FusionTypeError  # noqa: E402
from gamfsolve.datasets import Dataset, load_images  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def keras_cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            layers.Conv2D(4, 3, padding="same"),
            layers.BatchNormalization(epsilon=1e-5),
            layers.ReLU(),
            layers.MaxPooling2D(),
            layers.Conv2D(6, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(10),
            layers.LayerNormalization(epsilon=1e-5),
            layers.ReLU(),
            layers.Dense(3),
        ]
    )


def torch_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(24, 10), nn.LayerNorm(10), nn.ReLU(), nn.Linear(10, 3),
    )  # fmt: skip


def noisy(model: keras.Model, seed: int = 0) -> keras.Model:
    rng = np.random.default_rng(seed)
    return gk.from_arrays(model, gk._perturbed(gk.to_arrays(model), rng))


def k_out(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model(x, training=False).detach().cpu().numpy()


def t_out(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """PyTorch output for channels-last ``x`` (moved to channels first for images)."""
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1) if x.ndim == 4 else x))
    was = module.training
    module.eval()
    with torch.no_grad():
        y = module(xt).numpy()
    module.train(was)
    return y


def test_keras_to_torch_cnn_same_function() -> None:
    km, tm = noisy(keras_cnn()), torch_cnn()
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    moved = convert.keras_to_torch(km, tm)
    x = np.random.default_rng(1).standard_normal((5, 8, 8, 2)).astype(np.float32)
    np.testing.assert_allclose(t_out(moved, x), k_out(km, x), rtol=1e-5, atol=1e-5)
    for k, v in tm.state_dict().items():  # the template is untouched
        assert torch.equal(v, before[k])
    back = convert.torch_to_keras(moved, keras_cnn())
    for v, w in zip(gk.to_arrays(back).values(), gk.to_arrays(km).values(), strict=True):
        np.testing.assert_array_equal(v, w)


def test_layer_pairs_follow_call_order() -> None:
    class Net(nn.Module):  # registered in another order than called
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.body = nn.Linear(4, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(x)))

    km = keras.Sequential([keras.Input((4,)), layers.Dense(8, activation="relu"), layers.Dense(3)])
    with pytest.raises(FusionError, match="converts to shape"):
        convert.layer_pairs(km, Net())
    pairs = convert.layer_pairs(km, Net(), example_inputs=torch.zeros(2, 4))
    assert [p.torch_name for p in pairs] == ["body", "head"]


def test_mismatches_name_the_layers() -> None:
    km = keras.Sequential(
        [keras.Input((4,)), layers.Dense(8, name="k_fc"), layers.BatchNormalization(), layers.Dense(3)]
    )
    with pytest.raises(FusionError, match="Keras Dense 'k_fc' and PyTorch Conv1d '0'"):
        convert.layer_pairs(km, nn.Sequential(nn.Conv1d(4, 8, 1), nn.BatchNorm1d(8), nn.Linear(8, 3)))
    with pytest.raises(FusionError, match=r"epsilon 0\.001 vs eps 1e-05"):
        convert.layer_pairs(km, nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)))
    with pytest.raises(FusionError, match="3 layers with weights, the PyTorch module 2"):
        convert.layer_pairs(km, nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, eps=1e-3)))
    with pytest.raises(FusionTypeError, match="like must be"):
        convert.fuse_cross([km, km], like=object())
    with pytest.raises(FusionError, match="needs a Keras model"):
        convert.fuse_cross([nn.Linear(2, 2), nn.Linear(2, 2)], like=nn.Linear(2, 2))


def test_fuse_cross_of_a_model_with_its_permuted_torch_twin() -> None:
    km = noisy(keras_cnn(), seed=2)
    spec = gk.spec_from_model(km)
    rng = np.random.default_rng(3)
    arrays = gk.to_arrays(km)
    perms = {g: rng.permutation(n) for g, n in spec.group_sizes({k: v.shape for k, v in arrays.items()}).items()}
    import gamfsolve

    twin = convert.keras_to_torch(gk.from_arrays(km, gamfsolve.permute(arrays, spec, perms)), torch_cnn())
    x = np.random.default_rng(4).standard_normal((5, 8, 8, 2)).astype(np.float32)
    for like in (km, torch_cnn()):
        fused = convert.fuse_cross([km, twin], like=like, method="weight_matching", seed=0)
        out = k_out(fused, x) if isinstance(fused, keras.Model) else t_out(fused, x)
        np.testing.assert_allclose(out, k_out(km, x), rtol=1e-5, atol=1e-5)


def train_keras_mlp(data: Dataset, seed: int, width: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            layers.Dense(width, activation="relu"),
            layers.Dense(width, activation="relu"),
            layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(data.x.reshape(-1, 784), data.y, epochs=3, batch_size=100, verbose=0)
    return model


def torch_mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def train_torch_mlp(data: Dataset, seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    model = torch_mlp(width)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(data.x.reshape(-1, 784)), torch.from_numpy(data.y)
    for _ in range(3):
        for idx in torch.randperm(len(y)).split(100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


@pytest.mark.slow
def test_keras_and_torch_mlps_fuse_across_frameworks() -> None:
    width = 64
    train, test = load_images().split(2000, 2000, seed=0)
    xt = test.x.reshape(-1, 784)
    km, tm = train_keras_mlp(train, 0, width), train_torch_mlp(train, 1, width)
    acc = {
        "keras parent": np.mean(k_out(km, xt).argmax(1) == test.y),
        "torch parent": np.mean(t_out(tm, xt).argmax(1) == test.y),
    }
    as_keras = convert.fuse_cross([km, tm], like=km, method="gamf", seed=0)
    as_torch = convert.fuse_cross([km, tm], like=torch_mlp(width), method="gamf", seed=0)
    yk, yt = k_out(as_keras, xt), t_out(as_torch, xt)
    np.testing.assert_allclose(yt, yk, rtol=1e-5, atol=1e-5)
    acc["fused (gamf)"] = np.mean(yk.argmax(1) == test.y)
    avg = convert.fuse_cross([km, tm], like=km, method="average")
    acc["fused (average)"] = np.mean(k_out(avg, xt).argmax(1) == test.y)
    print("cross-framework MNIST accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    assert np.array_equal(yk.argmax(1), yt.argmax(1))
    assert acc["fused (gamf)"] > acc["fused (average)"]
