"""python -m cnnfast.train: train the MNIST convnet and save it.

    python -m cnnfast.train                       # the default model, Adam, saves mnist_cnn.npz
    python -m cnnfast.train --epochs 1 --limit 5000 --data-dir ../shared/data/mnist
    python -m cnnfast.train --plot curves.png         # also draw loss and accuracy per epoch

The per-epoch metrics are also written beside the model as a CSV (mnist_cnn.npz -> mnist_cnn.csv).

The loop is the textbook one: for each batch, forward, loss, backward, optimizer step.

Nothing is lost when a run stops early. Ctrl-C (SIGINT) or SIGTERM asks training to stop: the
step in progress finishes, a checkpoint is written atomically (default: next to --out, e.g.
mnist_cnn.ckpt.npz), and the process exits with 130 (SIGINT) or 143 (SIGTERM); press Ctrl-C a
second time to quit at once without one. `--resume CHECKPOINT` with the same settings continues
and ends with the same weights, bit for bit, as a run that was never interrupted. A loss that
becomes NaN or infinite stops training at once; an existing model file or checkpoint is left
untouched. (A signal during the last epoch's evaluation lets the run finish: it saves the model.)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time

import numpy as np

from . import checkpoint as ckpt
from . import functional as F
from . import get_num_threads, plots, set_num_threads
from ._terminal import Progress
from .checkpoint import CheckpointError, EpochState
from .datasets import DatasetError, load_mnist
from .nn import Sequential, as_model_input, mnist_cnn
from .optim import SGD, Adam

DEFAULT_EPOCHS = 15


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """Training stopped between two steps because a signal asked it to; `state` says where."""

    def __init__(self, state: EpochState):
        super().__init__(f"interrupted after step {state.step}")
        self.state = state


class StopRequest:
    """SIGINT and SIGTERM handlers that only record the signal: the training loop checks
    `requested()` between steps (never inside a kernel) and stops there. A second SIGINT
    raises KeyboardInterrupt at once. Handlers are installed only in the main thread and the
    previous ones are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self) -> bool:
        return self.signum is not None


def evaluate(model: Sequential, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000):
    """Mean cross-entropy loss and accuracy of `model` (in eval mode) on uint8 images."""
    total_loss, correct = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = as_model_input(images[i:i + batch_size])
        y = labels[i:i + batch_size].astype(np.int64)
        logits = model.infer(x)
        loss, _ = F.softmax_cross_entropy(logits, y)
        total_loss += loss * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
    n = max(len(images), 1)
    return total_loss / n, correct / n


def train_epoch(model, optimizer, images, labels, batch_size, rng, progress=None, *, start=None,
                stop=None):
    """One pass over the shuffled training set. Returns (mean loss, accuracy, seconds).

    `start` (an EpochState) continues an epoch whose first `start.step` steps are done: the
    order is drawn from `rng` as always, so `rng` must be in its state from the epoch's start.
    `stop()` is checked before each step and after the last: if true, Interrupted(state) is
    raised with the steps done so far.
    """
    model.train()
    order = rng.permutation(len(images))
    state = dataclasses.replace(start) if start is not None else EpochState()
    start_time = time.perf_counter() - state.seconds
    n_steps = -(-len(images) // batch_size)

    def check_stop():
        if stop is not None and stop():
            state.seconds = time.perf_counter() - start_time
            raise Interrupted(state)

    for step in range(state.step, n_steps):
        check_stop()
        batch = order[step * batch_size:(step + 1) * batch_size]
        x = as_model_input(images[batch])
        y = labels[batch].astype(np.int64)
        logits = model.forward(x)
        loss, dlogits = F.softmax_cross_entropy(logits, y)
        if not np.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {step + 1} of {n_steps}")
        model.backward(dlogits, input_grad=False)
        optimizer.step()
        state.step += 1
        state.total_loss += loss * len(y)
        state.correct += int((logits.argmax(axis=1) == y).sum())
        state.seen += len(y)
        if progress is not None:
            elapsed = time.perf_counter() - start_time
            progress.update(state.seen, f"loss {state.total_loss / state.seen:.4f}  "
                                        f"{state.seen / max(elapsed, 1e-9):,.0f} img/s")
    check_stop()
    seen = max(state.seen, 1)
    return state.total_loss / seen, state.correct / seen, time.perf_counter() - start_time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cnnfast.train",
        description="Train the classic Keras MNIST convnet (Conv2d(1,32,3) ReLU MaxPool2d(2) "
                    "Conv2d(32,64,3) ReLU MaxPool2d(2) Flatten Dropout(0.5) Linear(1600,10)) "
                    "on the 60,000 MNIST training images, evaluate on the 10,000 test images "
                    "after each epoch, and save the model.",
        epilog="MNIST is looked for in --data-dir, then $CNNFAST_DATA, then ~/.cache/cnnfast/mnist, "
               "and downloaded there if missing. Ctrl-C or SIGTERM stops training after the current "
               "step and writes a checkpoint (exit code 130 or 143); --resume continues from it.")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"passes over the training set (default {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for adam, 0.01 for sgd)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="adam, or sgd with momentum 0.9 (default adam)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and dropout (default 0)")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: all cores, or $OMP_NUM_THREADS)")
    p.add_argument("--data-dir", default=None, help="directory holding the four MNIST IDX files (plain or .gz)")
    p.add_argument("--no-verify", action="store_true", help="accept IDX files whose SHA-256 differs from the official MNIST")
    p.add_argument("--out", default="mnist_cnn.npz",
                   help="where to save the model (default mnist_cnn.npz); the per-epoch metrics go beside it "
                        "as a CSV (mnist_cnn.csv)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="train on the first N training images only (quick runs)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also draw train and test loss and accuracy per epoch (.png, .pdf or .svg; "
                        "needs matplotlib: pip install cnnfast[plot])")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON object on stdout")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="where an interrupted run writes its checkpoint (default: next to --out, "
                        "e.g. mnist_cnn.ckpt.npz)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue the interrupted run saved in CHECKPOINT; --batch-size, --optimizer, "
                        "--lr, --seed and --limit must be the ones it was started with (--epochs may be larger)")
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
    if args.plot is not None and plots.plot_path_problem(args.plot):
        parser.error(f"--plot {plots.plot_path_problem(args.plot)}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if args.checkpoint is None:
        args.checkpoint = ckpt.default_path(args.out)
    for flag, path in (("--out", args.out), ("--checkpoint", args.checkpoint)):
        full = os.path.abspath(path)
        if os.path.isdir(full):
            parser.error(f"{flag} {path} is a directory; give a file name such as "
                         f"{os.path.join(path, 'mnist_cnn.npz')}")
        try:
            with tempfile.NamedTemporaryFile(dir=os.path.dirname(full), prefix=".cnnfast-write-test-"):
                pass
        except OSError as error:
            parser.error(f"{flag} {path} cannot be written: {error.strerror or error}")
    if os.path.abspath(args.checkpoint) == os.path.abspath(args.out):
        parser.error(f"--checkpoint must differ from --out ({args.out})")


def load_resume(parser, args, settings) -> ckpt.Checkpoint:
    """The checkpoint named by --resume, checked against this run's settings (exit 2 if unfit)."""
    try:
        checkpoint = ckpt.load(args.resume)
    except (OSError, CheckpointError) as error:
        parser.error(f"--resume: {error}")
    different = ckpt.mismatched_settings(checkpoint, settings)
    if different:
        parser.error(f"--resume {args.resume} was written by a run with different settings: " + ", ".join(
            f"--{k.replace('_', '-')} {checkpoint.settings.get(k)} (this run: {settings.get(k)})"
            for k in different) + "; resume with the settings it was started with")
    if checkpoint.epoch > args.epochs + 1 or (checkpoint.epoch == args.epochs + 1 and checkpoint.position.step):
        parser.error(f"--resume {args.resume} stopped in epoch {checkpoint.epoch}, beyond --epochs {args.epochs}")
    return checkpoint


def resume_command(argv, checkpoint_path) -> str:
    """The command line that continues this run from `checkpoint_path`."""
    argv = list(argv)
    for i, arg in enumerate(argv):  # drop an earlier --resume
        if arg == "--resume" and i + 1 < len(argv):
            del argv[i:i + 2]
            break
        if arg.startswith("--resume="):
            del argv[i]
            break
    return shlex.join(["python", "-m", "cnnfast.train", *argv, "--resume", checkpoint_path])


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.plot is not None:
        try:
            plots.figure_class()  # before any work: without matplotlib, say so now
        except plots.PlotUnavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    log = sys.stderr if args.json else sys.stdout
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.01)
    settings = {"batch_size": args.batch_size, "optimizer": args.optimizer, "lr": lr, "seed": args.seed,
                "limit": args.limit}
    checkpoint = load_resume(parser, args, settings) if args.resume is not None else None

    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        x_train, y_train, x_test, y_test = load_mnist(args.data_dir, verify=not args.no_verify)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.limit is not None:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    settings["train_images"] = len(x_train)
    n_steps = -(-len(x_train) // args.batch_size)

    model = mnist_cnn(args.seed)
    optimizer = Adam(model.parameters(), lr=lr) if args.optimizer == "adam" else SGD(model.parameters(), lr=lr, momentum=0.9)
    rng = np.random.default_rng(args.seed)
    history, train_seconds, trained_images = [], 0.0, 0
    first_epoch, position = 1, None
    if checkpoint is not None:
        try:
            if checkpoint.settings.get("train_images") != len(x_train):
                raise CheckpointError(f"it was written for {checkpoint.settings.get('train_images')} training "
                                      f"images, this run has {len(x_train)}")
            if checkpoint.position.step > n_steps:
                raise CheckpointError(f"corrupt checkpoint: step {checkpoint.position.step} of an epoch of {n_steps}")
            ckpt.restore(checkpoint, model, optimizer, rng)
        except CheckpointError as error:
            print(f"error: --resume {args.resume}: {error}", file=sys.stderr)
            return 1
        history, train_seconds, trained_images = checkpoint.history, checkpoint.train_seconds, checkpoint.trained_images
        first_epoch, position = checkpoint.epoch, checkpoint.position
    print(f"cnnfast: {model.num_parameters():,} parameters, {args.optimizer} lr {lr:g}, batch {args.batch_size}, "
          f"{len(x_train):,} training images, {get_num_threads()} threads", file=log, flush=True)
    if checkpoint is not None:
        print(f"resuming from {args.resume}: epoch {checkpoint.epoch}, step {position.step}/{n_steps}",
              file=log, flush=True)

    def write_checkpoint(epoch, state, shuffle_state):
        snapshot = ckpt.capture(model, optimizer, settings=settings, epoch=epoch, position=state,
                                shuffle_rng=shuffle_state, history=history, train_seconds=train_seconds,
                                trained_images=trained_images)
        return ckpt.save(snapshot, args.checkpoint)

    def stop_with_checkpoint(signum, epoch, state, shuffle_state) -> int:
        name = signal.Signals(signum).name
        where = f"epoch {epoch}, step {state.step}/{n_steps}"
        try:
            path = write_checkpoint(epoch, state, shuffle_state)
        except OSError as error:
            print(f"error: interrupted by {name} in {where}, and the checkpoint could not be written "
                  f"to {args.checkpoint}: {error}", file=sys.stderr)
            return 128 + signum
        print(f"interrupted by {name} in {where}: saved a checkpoint to {os.path.abspath(path)}\n"
              f"continue with: {resume_command(argv, path)}", file=sys.stderr, flush=True)
        return 128 + signum

    start = time.perf_counter()
    with StopRequest() as stop:
        for epoch in range(first_epoch, args.epochs + 1):
            shuffle_state = rng.bit_generator.state  # the epoch's order is drawn from this state
            progress = Progress(len(x_train), f"epoch {epoch}/{args.epochs}", stream=log)
            try:
                train_loss, train_acc, seconds = train_epoch(
                    model, optimizer, x_train, y_train, args.batch_size, rng, progress,
                    start=position if epoch == first_epoch else None, stop=stop.requested)
            except TrainingDiverged as error:
                progress.close()
                kept = [p for p in (args.out, args.checkpoint) if os.path.exists(p)]
                print(f"error: training diverged in epoch {epoch}: {error}. Try a lower learning rate "
                      f"(--lr {lr / 10:g}). Nothing was saved"
                      + (f"; {' and '.join(kept)} left unchanged." if kept else "."), file=sys.stderr)
                return 1
            except Interrupted as interruption:
                progress.close()
                return stop_with_checkpoint(stop.signum, epoch, interruption.state, shuffle_state)
            progress.close()
            train_seconds += seconds
            trained_images += len(x_train)
            test_loss, test_acc = evaluate(model, x_test, y_test)
            history.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                            "test_loss": test_loss, "test_accuracy": test_acc, "seconds": seconds,
                            "images_per_second": len(x_train) / max(seconds, 1e-9)})
            print(f"epoch {epoch:>2}/{args.epochs}  train loss {train_loss:.4f} acc {100 * train_acc:6.2f}%  "
                  f"test loss {test_loss:.4f} acc {100 * test_acc:6.2f}%  {seconds:5.1f} s  "
                  f"{len(x_train) / max(seconds, 1e-9):,.0f} img/s", file=log, flush=True)
            if stop.requested() and epoch < args.epochs:  # a signal during the evaluation
                return stop_with_checkpoint(stop.signum, epoch + 1, EpochState(), rng.bit_generator.state)

    try:
        path = model.save(args.out)
    except OSError as error:
        print(f"error: could not save the model to {args.out}: {error}. A previous file there, if any, "
              f"is unchanged.", file=sys.stderr)
        try:
            saved = write_checkpoint(args.epochs + 1, EpochState(), rng.bit_generator.state)
        except OSError as second:
            print(f"error: the trained weights could not be saved to {args.checkpoint} either: {second}",
                  file=sys.stderr)
        else:
            print(f"the trained weights are in the checkpoint {os.path.abspath(saved)}; once --out can be "
                  f"written, save the model with: {resume_command(argv, saved)}", file=sys.stderr)
        return 1
    print(f"saved the model to {os.path.abspath(path)}", file=log)
    csv_path = plots.write_history_csv(history, plots.history_csv_path(path))
    print(f"wrote the per-epoch metrics to {os.path.abspath(csv_path)}", file=log)
    if args.plot is not None:
        plots.plot_training_curves(history, args.plot)
        print(f"wrote the training curves to {os.path.abspath(args.plot)}", file=log)
    if args.json:
        last = history[-1]
        print(json.dumps({
            "test_accuracy": last["test_accuracy"], "train_accuracy": last["train_accuracy"],
            "test_loss": last["test_loss"], "train_loss": last["train_loss"],
            "epochs": args.epochs, "seconds": time.perf_counter() - start,
            "train_seconds": train_seconds, "images_per_second": trained_images / max(train_seconds, 1e-9),
            "threads": get_num_threads(), "model_path": os.path.abspath(path)}))
    return 0


if __name__ == "__main__":
    from ._terminal import run_command
    sys.exit(run_command(main))
