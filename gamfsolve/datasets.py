"""Small local data for demos, examples and tests: MNIST, Fashion-MNIST, digits.

Nothing is downloaded. MNIST (the 10,000 test images) is read from, in order: the ``path``
argument, the ``GAMFSOLVE_MNIST`` environment variable, ``../shared/data/mnist`` (from the
working directory or the source checkout). Without it, scikit-learn's bundled 8x8 digits stand in.

Fashion-MNIST (Xiao et al. 2017, MIT licence; 60,000 training and 10,000 test images) is read
from the ``path`` argument, the ``GAMFSOLVE_FASHION_MNIST`` environment variable, or
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist`` package:
``apt-get install -y dataset-fashion-mnist``). Files are IDX, gzip-compressed, as MNIST's.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._errors import FusionError

__all__ = [
    "FASHION_MNIST_DEBIAN",
    "Dataset",
    "dirichlet_split",
    "equal_split",
    "fashion_mnist_dir",
    "load_digits",
    "load_fashion_mnist",
    "load_images",
    "load_mnist",
    "mnist_dir",
]

_IMAGES = "t10k-images-idx3-ubyte.gz"
_LABELS = "t10k-labels-idx1-ubyte.gz"
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": (_IMAGES, _LABELS),
}
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


@dataclass(frozen=True)
class Dataset:
    """Images ``x`` of shape ``(N, H, W)``, float32 in [0, 1], and integer labels ``y`` ``(N,)``."""

    x: np.ndarray
    y: np.ndarray
    name: str

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1

    def subset(self, index: np.ndarray) -> Dataset:
        """The examples at ``index``."""
        return Dataset(self.x[index], self.y[index], self.name)

    def split(self, n_train: int, n_test: int, *, seed: int = 0) -> tuple[Dataset, Dataset]:
        """A fixed random split into ``n_train`` training and ``n_test`` held-out examples."""
        if n_train + n_test > len(self.y):
            raise FusionError(f"n_train + n_test = {n_train + n_test} exceeds the {len(self.y)} examples")
        order = np.random.default_rng(seed).permutation(len(self.y))
        return self.subset(order[:n_train]), self.subset(order[n_train : n_train + n_test])


def mnist_dir(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder holding the MNIST idx files, or None."""
    candidates: list[str | os.PathLike[str] | None] = [path]
    if path is None:
        candidates += [os.environ.get("GAMFSOLVE_MNIST"), Path.cwd().parent / "shared/data/mnist"]
        candidates.append(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    for c in candidates:
        if c and (Path(c) / _IMAGES).is_file() and (Path(c) / _LABELS).is_file():
            return Path(c)
    if path is not None:
        raise FusionError(f"no MNIST idx files ({_IMAGES}, {_LABELS}) in {path}")
    return None


def _read_idx(file: Path) -> np.ndarray:
    with gzip.open(file, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise FusionError(f"{file} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def load_mnist(path: str | os.PathLike[str] | None = None) -> Dataset:
    """The MNIST test set (10,000 images, 28x28) from a local folder; see the module docstring."""
    folder = mnist_dir(path)
    if folder is None:
        raise FusionError("MNIST not found: pass path=, set GAMFSOLVE_MNIST, or use load_images()")
    x = _read_idx(folder / _IMAGES).astype(np.float32) / 255.0
    y = _read_idx(folder / _LABELS).astype(np.int64)
    return Dataset(x, y, "mnist")


def fashion_mnist_dir(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder holding all four Fashion-MNIST IDX files, or None (see the module docstring)."""
    candidates: list[str | os.PathLike[str] | None] = [path]
    if path is None:
        candidates += [os.environ.get("GAMFSOLVE_FASHION_MNIST"), FASHION_MNIST_DEBIAN]
    files = [f for pair in _SPLIT_FILES.values() for f in pair]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in files):
            return Path(c)
    if path is not None:
        raise FusionError(f"no Fashion-MNIST IDX files ({', '.join(files)}) in {path}")
    return None


def load_fashion_mnist(split: str = "train", path: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST's ``split`` ("train": 60,000 images, "test": 10,000), 28x28 in [0, 1].

    Raises :class:`FusionError` naming where it looked when the files are absent.
    """
    if split not in _SPLIT_FILES:
        raise FusionError(f"split must be one of {sorted(_SPLIT_FILES)}, got {split!r}")
    folder = fashion_mnist_dir(path)
    if folder is None:
        raise FusionError(
            f"Fashion-MNIST not found: pass path=, set GAMFSOLVE_FASHION_MNIST, or install Debian's "
            f"dataset-fashion-mnist package (files in {FASHION_MNIST_DEBIAN})"
        )
    images, labels = _SPLIT_FILES[split]
    x = _read_idx(folder / images).astype(np.float32) / 255.0
    y = _read_idx(folder / labels).astype(np.int64)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise FusionError(f"{folder}: images {x.shape} and labels {y.shape} do not pair up")
    return Dataset(x, y, f"fashion-mnist-{split}")


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    return Dataset(x, bunch.target.astype(np.int64), "digits")


def load_images(path: str | os.PathLike[str] | None = None) -> Dataset:
    """MNIST when it can be found, else the bundled digits."""
    return load_mnist(path) if mnist_dir(path) is not None else load_digits()


def equal_split(n: int, n_parts: int, *, seed: int = 0) -> list[np.ndarray]:
    """Indices ``0..n-1`` shuffled and cut into ``n_parts`` near-equal shares (homogeneous)."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, n_parts)]


def dirichlet_split(y: np.ndarray, n_parts: int, alpha: float, *, seed: int = 0, min_size: int = 10) -> list[np.ndarray]:
    """Heterogeneous shares: each class spread over parts by Dirichlet(``alpha``) proportions.

    Redraws until every part has at least ``min_size`` examples (the usual FL protocol).
    """
    if alpha <= 0:
        raise FusionError(f"alpha must be positive, got {alpha}")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_parts)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(n_parts, alpha))) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise FusionError(f"could not draw {n_parts} parts of at least {min_size} examples with alpha={alpha}")
