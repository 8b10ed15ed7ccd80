"""Fashion-MNIST, read from Debian's ``dataset-fashion-mnist`` package (nothing is downloaded).

Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms" (2017): 70,000 grey 28x28 images of Zalando articles in 10 classes, MIT licence. The
package installs the four original gzip-compressed IDX files under :data:`FASHION_MNIST_DIR`; their
SHA-256 digests are pinned in :data:`FASHION_MNIST_FILES` and checked before the data are used.

Splits: ``test`` is the official 10,000-image test set; the official 60,000 training images are cut
into ``val`` (:data:`FASHION_VAL_SIZE` images drawn with ``mlsafety.core.generator(0, "fashion-mnist-split")``,
kept in file order) and ``train`` (the other 55,000, in file order); ``all`` is the 60,000 training
images. The paper has no validation split; this one is ours and fixed.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from mlsafety.core import ArrayDataset, InputError, generator
from mlsafety.zoo._idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` puts the files (``$MLSAFETY_FASHION_MNIST`` overrides it)."""

FASHION_MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
"""The package's files and their SHA-256 digests (Debian ``dataset-fashion-mnist=0.0~git20200523.55506a9-1``)."""

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""The class names, in label order (0..9)."""

FASHION_SHAPE = (1, 28, 28)
FASHION_VAL_SIZE = 5000
"""Training images held out as the fixed validation split."""

_INSTALL = "install it with `make debs` (or `sudo apt-get install dataset-fashion-mnist`)"


def fashion_mnist_dir() -> Path:
    """The folder holding the Fashion-MNIST files: ``$MLSAFETY_FASHION_MNIST`` or :data:`FASHION_MNIST_DIR`."""
    env = os.environ.get("MLSAFETY_FASHION_MNIST")
    return Path(env) if env else FASHION_MNIST_DIR


@lru_cache(maxsize=8)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_fashion_mnist(folder: Path | None = None) -> Path:
    """The folder of the Fashion-MNIST files, each present and with its pinned SHA-256.

    Raises:
        InputError: a missing file (the package is not installed) or a file whose digest differs.
    """
    folder = folder or fashion_mnist_dir()
    missing = [name for name in FASHION_MNIST_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"Fashion-MNIST is not installed ({folder / missing[0]} is missing); {_INSTALL}")
    for name, expected in FASHION_MNIST_FILES.items():
        path = folder / name
        stat = path.stat()
        found = _digest(path, stat.st_size, stat.st_mtime_ns)
        if found != expected:
            raise InputError(
                f"{path} has SHA-256 {found[:16]}..., not the pinned {expected[:16]}...; reinstall it "
                "(`sudo apt-get install --reinstall dataset-fashion-mnist`)"
            )
    return folder


def read_fashion_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (N, 28, 28) uint8 and labels (N,) uint8 from two IDX files, checked against each other.

    Raises:
        InputError: a bad IDX file, images that are not 28x28, labels outside 0..9, or counts that differ.
    """
    x = read_idx(images, dtype="uint8", ndim=3)
    y = read_idx(labels, dtype="uint8", ndim=1)
    if x.shape[1:] != FASHION_SHAPE[1:]:
        raise InputError(f"{images} holds {x.shape[1]}x{x.shape[2]} images; Fashion-MNIST's are 28x28")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels")
    if y.size and int(y.max()) >= len(FASHION_CLASSES):
        raise InputError(f"{labels} holds the label {int(y.max())}; Fashion-MNIST's are 0..9")
    return x, y


@lru_cache(maxsize=2)
def _files(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    check_fashion_mnist(folder)
    return {
        part: read_fashion_pair(folder / f"{part}-images-idx3-ubyte.gz", folder / f"{part}-labels-idx1-ubyte.gz")
        for part in ("train", "t10k")
    }


def fashion_split_indices(n_train: int = 60000) -> dict[str, torch.Tensor]:
    """Indices into the official training set of the ``train`` and ``val`` splits (each in file order)."""
    perm = torch.randperm(n_train, generator=generator(0, "fashion-mnist-split"))
    return {"val": perm[:FASHION_VAL_SIZE].sort().values, "train": perm[FASHION_VAL_SIZE:].sort().values}


def load_fashion_mnist(
    split: str = "test", shape: tuple[int, int, int] | None = None, description: str = ""
) -> ArrayDataset:
    """A split of Fashion-MNIST as an :class:`~mlsafety.core.ArrayDataset` (images in [0, 1], 1x28x28).

    Args:
        split: ``train`` (55,000), ``val`` (5,000), ``test`` (10,000) or ``all`` (the 60,000 official
            training images).
        shape: must be None or (1, 28, 28).
        description: the dataset's one-line description.

    Raises:
        InputError: another split or shape, the package missing, or a file that fails its check.
    """
    if shape not in (None, FASHION_SHAPE):
        raise InputError(
            f"fashion-mnist exists only at shape (1, 28, 28), not {shape}; use it beside data of that shape"
        )
    if split not in ("train", "val", "test", "all"):
        raise InputError(f"fashion-mnist has splits train, val, test and all, not {split!r}")
    files = _files(fashion_mnist_dir())
    images, labels = files["t10k" if split == "test" else "train"]
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels.astype(np.int64))
    if split in ("train", "val"):
        idx = fashion_split_indices(int(x.shape[0]))[split]
        x, y = x[idx], y[idx]
    x = (x.to(torch.float32) / 255.0)[:, None].contiguous()
    return ArrayDataset(x, y, name="fashion-mnist", kind="in", description=description)
