"""Helpers for writing synthetic IDX / MNIST-like files in tests (and fuzzers)."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_header(dims, magic=None) -> bytes:
    """IDX header for uint8 data of shape ``dims`` (magic 0x0800 | ndim unless given)."""
    if magic is None:
        magic = 0x0800 | len(dims)
    return struct.pack(f">I{len(dims)}I", magic, *dims)


def idx_bytes(arr) -> bytes:
    """The uncompressed IDX encoding of a uint8 array."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return idx_header(arr.shape) + arr.tobytes()


def gz(data: bytes) -> bytes:
    """Deterministic gzip of ``data``."""
    return gzip.compress(data, mtime=0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes(path, data: bytes, compress: bool = False) -> Path:
    path = Path(path)
    path.write_bytes(gz(data) if compress else data)
    return path


def synthetic_mnist(n_train: int = 6, n_test: int = 4, seed: int = 0, size=(28, 28)) -> dict:
    """Random MNIST-shaped arrays keyed by the standard file names."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        out[f"{split}-images-idx3-ubyte"] = rng.integers(0, 256, (n, *size), dtype=np.uint8)
        out[f"{split}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    return out


def write_mnist_dir(directory, arrays: dict, compress: bool = True) -> dict:
    """Write ``arrays`` as IDX files (``name.gz`` if ``compress``); return name -> SHA-256."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        write_bytes(directory / (name + ".gz" if compress else name), data, compress)
        hashes[name] = sha256(data)
    return hashes


def bar_digits(n, seed):
    """Learnable synthetic MNIST: digit d is a bright band at rows 4+2d..5+2d, over faint noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, d in enumerate(labels):
        images[i, 4 + 2 * d : 6 + 2 * d, 4:24] = 255
    return images, labels


def write_bar_mnist(directory):
    """bar_digits as an MNIST directory (640 training, 200 test images): (x_train, y_train, x_test, y_test)."""
    x_train, y_train = bar_digits(640, seed=1)
    x_test, y_test = bar_digits(200, seed=2)
    write_mnist_dir(
        directory,
        {
            "train-images-idx3-ubyte": x_train,
            "train-labels-idx1-ubyte": y_train,
            "t10k-images-idx3-ubyte": x_test,
            "t10k-labels-idx1-ubyte": y_test,
        },
    )
    return x_train, y_train, x_test, y_test
