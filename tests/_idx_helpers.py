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
