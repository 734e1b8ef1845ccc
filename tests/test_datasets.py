"""The local data readers: Fashion-MNIST from Debian's package or a path, MNIST's IDX parser."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from gamfsolve import datasets
from gamfsolve._errors import FusionError

needs_fashion = pytest.mark.skipif(
    datasets.fashion_mnist_dir() is None,
    reason="Fashion-MNIST is absent: apt-get install -y dataset-fashion-mnist (or set GAMFSOLVE_FASHION_MNIST)",
)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(folder, n_train: int = 6, n_test: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))


def test_fashion_from_path(tmp_path) -> None:
    _fake_fashion(tmp_path)
    train = datasets.load_fashion_mnist("train", path=tmp_path)
    test = datasets.load_fashion_mnist("test", path=tmp_path)
    assert train.x.shape == (6, 28, 28) and test.x.shape == (4, 28, 28)
    assert train.x.dtype == np.float32 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    assert train.y.dtype == np.int64 and train.name == "fashion-mnist-train"


def test_fashion_from_environment(tmp_path, monkeypatch) -> None:
    _fake_fashion(tmp_path)
    monkeypatch.setenv("GAMFSOLVE_FASHION_MNIST", str(tmp_path))
    assert datasets.fashion_mnist_dir() is not None
    assert len(datasets.load_fashion_mnist("test").y) in (4, 10_000)  # the env var, or the Debian folder first


def test_fashion_missing_names_the_package(tmp_path, monkeypatch) -> None:
    with pytest.raises(FusionError, match="no Fashion-MNIST IDX files"):
        datasets.load_fashion_mnist(path=tmp_path)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DEBIAN", tmp_path / "absent")
    monkeypatch.delenv("GAMFSOLVE_FASHION_MNIST", raising=False)
    with pytest.raises(FusionError, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist()


def test_fashion_bad_split(tmp_path) -> None:
    _fake_fashion(tmp_path)
    with pytest.raises(FusionError, match="split must be one of"):
        datasets.load_fashion_mnist("validation", path=tmp_path)


def test_truncated_idx_is_refused(tmp_path) -> None:
    _fake_fashion(tmp_path)
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(FusionError, match="truncated"):
        datasets.load_fashion_mnist("test", path=tmp_path)


@needs_fashion
def test_fashion_full_sets() -> None:
    train, test = datasets.load_fashion_mnist("train"), datasets.load_fashion_mnist("test")
    assert train.x.shape == (60_000, 28, 28) and test.x.shape == (10_000, 28, 28)
    assert np.bincount(test.y).tolist() == [1000] * 10
