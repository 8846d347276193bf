"""What every peer program shares: the settings, the MNIST arrays, the timer and the result line.

The peers measure one thing the same way in every framework: the default cnnfast model
(Conv2d(1,32,3) ReLU MaxPool2d(2) Conv2d(32,64,3) ReLU MaxPool2d(2) Flatten Dropout(0.5)
Linear(1600,10)), trained with Adam (lr 1e-3) and softmax cross-entropy at batch 128 on the first
LIMIT MNIST training images, in shuffled order, one epoch at a time; then inference on the 10,000
test images at batch 1,000. Compilation and warm-up are excluded from the timings (and reported).
Only numpy and the framework itself are needed: each peer runs in its own virtual environment.

Settings (environment variables, as bench/run_peers.sh sets them):
  MNIST_DIR  directory with the four IDX files, plain or .gz (default ../../../shared/data/mnist)
  THREADS    threads the framework may use (default 2)
  LIMIT      training images (default 60000)     EPOCHS  epochs (default 1)     BS  batch (default 128)

Each epoch prints one JSON line on stdout: framework, epoch, train_s, train_img_s, infer_img_s,
test_acc, compile_s, threads, bs, limit and the versions of what ran (run_peers.sh adds the
peer's name and the load average, and tabulates train_img_s, infer_img_s and test_acc).
"""

import gzip
import json
import os
import platform
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {
    "mnist_dir": os.environ.get("MNIST_DIR", os.path.join(HERE, "..", "..", "..", "shared", "data", "mnist")),
    "threads": int(os.environ.get("THREADS", "2")),
    "limit": int(os.environ.get("LIMIT", "60000")),
    "epochs": int(os.environ.get("EPOCHS", "1")),
    "bs": int(os.environ.get("BS", "128")),
}
LR = 1e-3
INFER_BATCH = 1000


def _idx(name):
    """One IDX file (name or name.gz) of MNIST_DIR as a uint8 array of its declared shape."""
    directory = SETTINGS["mnist_dir"]
    for path, opener in ((os.path.join(directory, name), open), (os.path.join(directory, name + ".gz"), gzip.open)):
        if os.path.exists(path):
            with opener(path, "rb") as f:
                data = f.read()
            ndim = data[3]
            shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    raise SystemExit(f"peer: no {name}[.gz] in {directory} (set MNIST_DIR)")


def mnist(layout="NCHW"):
    """float32 images in [0, 1] (NCHW or NHWC) and int64 labels: the first LIMIT training images,
    and the 10,000 test images."""

    def images(name):
        x = _idx(name).astype(np.float32) / np.float32(255)
        return x[:, None, :, :] if layout == "NCHW" else x[:, :, :, None]

    x_train, y_train = images("train-images-idx3-ubyte"), _idx("train-labels-idx1-ubyte").astype(np.int64)
    x_test, y_test = images("t10k-images-idx3-ubyte"), _idx("t10k-labels-idx1-ubyte").astype(np.int64)
    limit = SETTINGS["limit"]
    return x_train[:limit], y_train[:limit], x_test, y_test


def epoch_order(epoch, n):
    """The shuffled order of an epoch (the same in every peer)."""
    return np.random.default_rng(epoch).permutation(n)


def batches(order, bs):
    return [order[i : i + bs] for i in range(0, len(order), bs)]


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def report(framework, *, epoch, train_s, infer_s, test_acc, compile_s, versions, **extra):
    print(
        json.dumps(
            {
                "framework": framework,
                "epoch": epoch,
                "train_s": round(train_s, 3),
                "train_img_s": round(SETTINGS["limit"] / train_s),
                "infer_img_s": round(10000 / infer_s),
                "test_acc": test_acc,
                "compile_s": round(compile_s, 2),
                "threads": SETTINGS["threads"],
                "bs": SETTINGS["bs"],
                "limit": SETTINGS["limit"],
                "python": platform.python_version(),
                "numpy": np.__version__,
                **versions,
                **extra,
            }
        ),
        flush=True,
    )
