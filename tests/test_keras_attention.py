"""Keras ``MultiHeadAttention``: heads and within-head dimensions in the derived spec."""

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


def encoder(seed: int = 0) -> keras.Model:
    """Embedding, one post-norm encoder block (attention with 4 heads, MLP), readout."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5, 3))
    h = layers.Dense(16, name="embed")(inp)
    a = layers.MultiHeadAttention(4, 4, value_dim=3, name="att")(h, h)
    h = layers.LayerNormalization(name="norm1")(layers.Add()([h, a]))
    f = layers.Dense(16, name="fc2")(layers.Dense(32, activation="relu", name="fc1")(h))
    h = layers.LayerNormalization(name="norm2")(layers.Add()([h, f]))
    return keras.Model(inp, layers.Dense(2, name="out")(h))


def test_spec_has_heads_and_dimension_groups() -> None:
    model = encoder()
    spec = gk.spec_from_model(model)  # checked: random permutations keep the outputs (1e-5)
    att = "att"
    stream, heads, qk = spec.axes[f"{att}.query.kernel"]
    assert stream is not None and heads is not None and qk is not None
    assert spec.axes[f"{att}.key.kernel"] == (stream, heads, qk)
    v = spec.axes[f"{att}.value.kernel"]
    assert v[:2] == (stream, heads) and v[2] not in (None, qk)
    assert spec.axes[f"{att}.attention_output.kernel"] == (heads, v[2], stream)


def _run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model(x, training=False).detach().cpu().numpy()


def test_permuted_copy_is_recovered() -> None:
    # (weight_matching's coordinate descent stops in a local optimum on this encoder, seed 0)
    model = encoder()
    spec = gk.spec_from_model(model)
    arrays = gk.to_arrays(model)
    sizes = spec.group_sizes({k: v.shape for k, v in arrays.items()})
    rng = np.random.default_rng(1)
    copy = gk.from_arrays(encoder(), gamfsolve.permute(arrays, spec, {g: rng.permutation(n) for g, n in sizes.items()}))
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    np.testing.assert_allclose(_run(copy, x), _run(model, x), atol=1e-5)
    fused = gk.fuse_models([model, copy], method="gamf", seed=0)
    for name, value in gk.to_arrays(fused).items():
        np.testing.assert_allclose(value, arrays[name], atol=1e-5)
