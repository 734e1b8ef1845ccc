"""Two Keras MLPs trained here on MNIST from different seeds: one-shot GAMF beats averaging."""

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

from gamfsolve.datasets import Dataset, load_images  # noqa: E402

# keras' optimizer and saving code converts torch tensors with np.array(), which NumPy 2 flags
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def train_mlp(data: Dataset, seed: int, *, width: int = 64, epochs: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(data.x.shape[1:]),
            layers.Flatten(),
            layers.Dense(width, activation="relu", name="fc1"),
            layers.Dense(width, activation="relu", name="fc2"),
            layers.Dense(data.n_classes, name="out"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(data.x, data.y, epochs=epochs, batch_size=100, verbose=0)
    return model


def accuracy(model: keras.Model, data: Dataset) -> float:
    logits = model(data.x, training=False).detach().cpu().numpy()
    return float(np.mean(logits.argmax(axis=1) == data.y))


@pytest.mark.slow
def test_gamf_one_shot_beats_vanilla_averaging() -> None:
    train, test = load_images().split(2000, 2000, seed=0)
    a, b = train_mlp(train, seed=0), train_mlp(train, seed=1)
    scores = {"model 0": accuracy(a, test), "model 1": accuracy(b, test)}
    for method in ("average", "weight_matching", "gamf"):
        scores[method] = accuracy(gk.fuse_models([a, b], method=method, seed=0), test)
    print(
        f"{train.name} one-shot accuracy (2000 train / 2000 test): "
        + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
    )
    assert scores["gamf"] > scores["average"] + 0.02
