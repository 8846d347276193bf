"""One small model trained on real MNIST, shared by the evaluate, predict and export tests.

Training runs once per test session, on first use (about 2-15 s: 8,000 images, one epoch,
about 94% test accuracy); without real MNIST (CNNFAST_DATA) the tests that need it skip.
"""

import contextlib
import io

import cnnfast.train
from cnnfast.datasets import load_mnist
from conftest import mnist_dir

# The classic recipe (Adam, plain cross-entropy): the tests' thresholds on the predicted probabilities
# (>= 0.9 for "confident") were set on it; the default fast preset's label smoothing caps them near 0.91.
TRAIN_ARGS = ["--preset", "classic", "--epochs", "1", "--limit", "8000", "--batch-size", "32", "--seed", "0"]
_cache = {}


def trained_model_path(tmp_path_factory):
    """The path of the shared trained model (skips without real MNIST)."""
    if "path" not in _cache:
        data = mnist_dir()
        path = tmp_path_factory.mktemp("trained") / "mnist_cnn.npz"
        with contextlib.redirect_stdout(io.StringIO()) as log:
            status = cnnfast.train.main(TRAIN_ARGS + ["--data-dir", data, "--out", str(path)])
        assert status == 0, log.getvalue()
        _cache["path"] = path
    return _cache["path"]


def real_mnist():
    """(x_train, y_train, x_test, y_test) of real MNIST, loaded once (skips without it)."""
    if "data" not in _cache:
        _cache["data"] = load_mnist(mnist_dir())
    return _cache["data"]
