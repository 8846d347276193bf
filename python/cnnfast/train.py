"""python -m cnnfast.train: train the MNIST convnet and save it.

    python -m cnnfast.train                       # the default model, Adam, saves mnist_cnn.npz
    python -m cnnfast.train --epochs 1 --limit 5000 --data-dir ../shared/data/mnist

The loop is the textbook one: for each batch, forward, loss, backward, optimizer step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from . import functional as F
from . import get_num_threads, set_num_threads
from ._terminal import Progress
from .datasets import DatasetError, load_mnist
from .nn import Sequential, as_model_input, mnist_cnn
from .optim import SGD, Adam

DEFAULT_EPOCHS = 15


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def evaluate(model: Sequential, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000):
    """Mean cross-entropy loss and accuracy of `model` (in eval mode) on uint8 images."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        for i in range(0, len(images), batch_size):
            x = as_model_input(images[i:i + batch_size])
            y = labels[i:i + batch_size].astype(np.int64)
            logits = model.forward(x)
            loss, _ = F.softmax_cross_entropy(logits, y)
            total_loss += loss * len(y)
            correct += int((logits.argmax(axis=1) == y).sum())
    finally:
        model.train(was_training)
    n = max(len(images), 1)
    return total_loss / n, correct / n


def train_epoch(model, optimizer, images, labels, batch_size, rng, progress=None):
    """One pass over the shuffled training set. Returns (mean loss, accuracy, seconds)."""
    model.train()
    order = rng.permutation(len(images))
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for step, i in enumerate(range(0, len(images), batch_size)):
        batch = order[i:i + batch_size]
        x = as_model_input(images[batch])
        y = labels[batch].astype(np.int64)
        logits = model.forward(x)
        loss, dlogits = F.softmax_cross_entropy(logits, y)
        if not np.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {step + 1}")
        model.backward(dlogits, input_grad=False)
        optimizer.step()
        total_loss += loss * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
        seen += len(y)
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress.update(seen, f"loss {total_loss / seen:.4f}  {seen / max(elapsed, 1e-9):,.0f} img/s")
    return total_loss / max(seen, 1), correct / max(seen, 1), time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cnnfast.train",
        description="Train the classic Keras MNIST convnet (Conv2d(1,32,3) ReLU MaxPool2d(2) "
                    "Conv2d(32,64,3) ReLU MaxPool2d(2) Flatten Dropout(0.5) Linear(1600,10)) "
                    "on the 60,000 MNIST training images, evaluate on the 10,000 test images "
                    "after each epoch, and save the model.",
        epilog="MNIST is looked for in --data-dir, then $CNNFAST_DATA, then ~/.cache/cnnfast/mnist, "
               "and downloaded there if missing.")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"passes over the training set (default {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for adam, 0.01 for sgd)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="adam, or sgd with momentum 0.9 (default adam)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and dropout (default 0)")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: all cores, or $OMP_NUM_THREADS)")
    p.add_argument("--data-dir", default=None, help="directory holding the four MNIST IDX files (plain or .gz)")
    p.add_argument("--no-verify", action="store_true", help="accept IDX files whose SHA-256 differs from the official MNIST")
    p.add_argument("--out", default="mnist_cnn.npz", help="where to save the model (default mnist_cnn.npz)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="train on the first N training images only (quick runs)")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON object on stdout")
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every bad argument is an error (exit 2) before any work starts."""
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.lr is not None and not (np.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        parser.error(f"--out {args.out} is a directory; give a file name such as {os.path.join(args.out, 'mnist_cnn.npz')}")
    directory = os.path.dirname(out)
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".cnnfast-write-test-"):
            pass
    except OSError as error:
        parser.error(f"--out {args.out} cannot be written: {error.strerror or error}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    log = sys.stderr if args.json else sys.stdout

    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        x_train, y_train, x_test, y_test = load_mnist(args.data_dir, verify=not args.no_verify)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.limit is not None:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]

    model = mnist_cnn(args.seed)
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.01)
    optimizer = Adam(model.parameters(), lr=lr) if args.optimizer == "adam" else SGD(model.parameters(), lr=lr, momentum=0.9)
    rng = np.random.default_rng(args.seed)
    print(f"cnnfast: {model.num_parameters():,} parameters, {args.optimizer} lr {lr:g}, batch {args.batch_size}, "
          f"{len(x_train):,} training images, {get_num_threads()} threads", file=log)

    history, train_seconds, trained_images = [], 0.0, 0
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        progress = Progress(len(x_train), f"epoch {epoch}/{args.epochs}", stream=log)
        try:
            train_loss, train_acc, seconds = train_epoch(model, optimizer, x_train, y_train, args.batch_size, rng, progress)
        except TrainingDiverged as error:
            progress.close()
            print(f"error: training diverged in epoch {epoch}: {error}. Try a lower learning rate "
                  f"(--lr {lr / 10:g}). Nothing was saved.", file=sys.stderr)
            return 1
        progress.close()
        train_seconds += seconds
        trained_images += len(x_train)
        test_loss, test_acc = evaluate(model, x_test, y_test)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                        "test_loss": test_loss, "test_accuracy": test_acc, "seconds": seconds,
                        "images_per_second": len(x_train) / seconds})
        print(f"epoch {epoch:>2}/{args.epochs}  train loss {train_loss:.4f} acc {100 * train_acc:6.2f}%  "
              f"test loss {test_loss:.4f} acc {100 * test_acc:6.2f}%  {seconds:5.1f} s  "
              f"{len(x_train) / seconds:,.0f} img/s", file=log, flush=True)

    path = model.save(args.out)
    print(f"saved the model to {os.path.abspath(path)}", file=log)
    if args.json:
        last = history[-1]
        print(json.dumps({
            "test_accuracy": last["test_accuracy"], "train_accuracy": last["train_accuracy"],
            "test_loss": last["test_loss"], "train_loss": last["train_loss"],
            "epochs": args.epochs, "seconds": time.perf_counter() - start,
            "train_seconds": train_seconds, "images_per_second": trained_images / train_seconds,
            "threads": get_num_threads(), "model_path": os.path.abspath(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
