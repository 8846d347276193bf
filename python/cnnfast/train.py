"""python -m cnnfast.train: train the MNIST convnet and save it.

    python -m cnnfast.train                       # the fast preset (2 epochs, >= 99%), saves mnist_cnn.npz
    python -m cnnfast.train --preset best         # the most accurate recipe (99.66%, 6-10 minutes)
    python -m cnnfast.train --epochs 1 --limit 5000 --data-dir ../shared/data/mnist
    python -m cnnfast.train --plot curves.png         # also draw loss and accuracy per epoch

The per-epoch metrics are also written beside the model as a CSV (mnist_cnn.npz -> mnist_cnn.csv).

The loop is the textbook one: for each batch, forward, loss, backward, optimizer step.

Nothing is lost when a run stops early. Ctrl-C (SIGINT) or SIGTERM asks training to stop: the
step in progress finishes, a checkpoint is written atomically (default: next to --out, e.g.
mnist_cnn.ckpt.npz), and the process exits with 130 (SIGINT) or 143 (SIGTERM); press Ctrl-C a
second time to quit at once without one. The checkpoint holds the run's settings:
`--resume CHECKPOINT` alone continues the run and ends with the same weights, bit for bit, as a
run that was never interrupted (a setting given with it that contradicts the checkpoint is an
error), and removes the checkpoint once the run is finished. A loss that becomes NaN or
infinite, or stays far above its first value, stops training at once; an existing model file
or checkpoint is left untouched. (A signal during the last epoch's evaluation lets the run
finish: it saves the model.)
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
from tqdm import tqdm

from . import checkpoint as ckpt
from . import functional as F
from . import get_num_threads, plots, presets, reuse_freed_memory, set_num_threads
from ._cli import Interrupted as CommandInterrupted
from ._cli import add_data_arguments, argument_parser, can_plot, check_plot_arg
from ._cli import load_mnist as load_data
from .augment import Augment
from .checkpoint import CheckpointError, EpochState
from .mnist import as_model_input
from .mnist import evaluate as evaluate
from .nn import ModelFormatError, Sequential, from_architecture
from .optim import SGD, Adam, AdamW, CosineAnnealing, LRScheduler, OneCycleLR, StepLR

DEFAULT_EPOCHS = 15
DEFAULT_BATCH_SIZE = 128
DEFAULT_OUT = "mnist_cnn.npz"
# A finite loss that stays far above where it started has diverged as surely as a NaN: more
# than DIVERGED_FACTOR times the run's first loss for DIVERGED_STEPS steps in a row. (The first
# loss of an untrained model is about ln 10 = 2.3; a healthy run never comes back near 23.)
DIVERGED_FACTOR = 10.0
DIVERGED_STEPS = 10


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or stayed far above its first value (DivergenceWatch)."""


class DivergenceWatch:
    """Follows the loss of every step of a run: TrainingDiverged when it is not finite, or when
    it has been above DIVERGED_FACTOR times the run's first loss for DIVERGED_STEPS steps in a
    row. Its state (the first loss, the steps above) goes into checkpoints."""

    def __init__(self, first_loss: float | None = None, high_steps: int = 0):
        self.first_loss, self.high_steps = first_loss, high_steps

    def check(self, loss: float, where: str) -> None:
        if not np.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at {where}")
        if self.first_loss is None:
            self.first_loss = float(loss)
        self.high_steps = self.high_steps + 1 if loss > DIVERGED_FACTOR * self.first_loss else 0
        if self.high_steps >= DIVERGED_STEPS:
            raise TrainingDiverged(
                f"the loss has stayed above {DIVERGED_FACTOR:g} times its first value "
                f"({self.first_loss:.3g}) for {self.high_steps} steps; it is {loss:.3g} at {where}"
            )


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
            raise CommandInterrupted(signum, " a second time, so at once, without a checkpoint")
        self.signum = signum

    def requested(self) -> bool:
        return self.signum is not None


def train_epoch(
    model,
    optimizer,
    images,
    labels,
    batch_size,
    rng,
    progress=None,
    *,
    start=None,
    stop=None,
    watch=None,
    scheduler=None,
    label_smoothing=0.0,
    augment=None,
):
    """One pass over the shuffled training set. Returns (mean loss, accuracy, seconds).

    `progress` (a tqdm bar, or None) advances by each batch and shows the running loss.
    `start` (an EpochState) continues an epoch whose first `start.step` steps are done: the
    order is drawn from `rng` as always, so `rng` must be in its state from the epoch's start.
    `stop()` is checked before each step and after the last: if true, Interrupted(state) is
    raised with the steps done so far. `watch` (a DivergenceWatch; default: a new one) sees
    every step's loss and raises TrainingDiverged. `scheduler` (an optim.LRScheduler, or None
    for a constant learning rate) steps after every optimizer step; `label_smoothing` goes to
    the loss (F.softmax_cross_entropy). `augment(x, step)` (or None) transforms each batch x
    (float32 [N, 1, 28, 28]) of the epoch's `step` before the forward pass.
    """
    watch = DivergenceWatch() if watch is None else watch
    model.train()
    order = rng.permutation(len(images))
    state = dataclasses.replace(start) if start is not None else EpochState()
    start_time = time.perf_counter() - state.seconds
    n_steps = -(-len(images) // batch_size)

    for step in range(state.step, n_steps + 1):
        if stop is not None and stop():
            state.seconds = time.perf_counter() - start_time
            raise Interrupted(state)
        if step == n_steps:
            break
        batch = order[step * batch_size : (step + 1) * batch_size]
        x = as_model_input(images[batch])
        if augment is not None:
            x = augment(x, step)
        y = labels[batch].astype(np.int64)
        logits = model.forward(x)
        loss, dlogits = F.softmax_cross_entropy(logits, y, label_smoothing)
        watch.check(loss, f"step {step + 1} of {n_steps}")
        model.backward(dlogits, input_grad=False)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        state.step += 1
        state.total_loss += loss * len(y)
        state.correct += int((logits.argmax(axis=1) == y).sum())
        state.seen += len(y)
        if progress is not None:
            progress.set_postfix_str(f"loss {state.total_loss / state.seen:.4f}", refresh=False)
            progress.update(len(y))
    seen = max(state.seen, 1)
    return state.total_loss / seen, state.correct / seen, time.perf_counter() - start_time


# ---------------------------------------------------------------- schedules and training options
# --schedule and its parameters, --weight-decay, --label-smoothing: settings of the run (saved in
# checkpoints, see checkpoint.SCHEDULE_SETTINGS). Without them a run is what it always was:
# a constant learning rate, no weight decay, plain cross-entropy.
SCHEDULES = ("constant", "onecycle", "cosine", "step")
ONECYCLE_WARMUP = 0.3  # PyTorch's pct_start: the rising part, as a fraction of the run
COSINE_WARMUP = 0.1  # the linear warm-up, as a fraction of the run
ADAMW_WEIGHT_DECAY = 1e-2  # PyTorch's AdamW default
STEP_GAMMA = 0.1


def add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=None,
        help="learning-rate schedule over the run, stepped after every batch (default: the preset's): constant keeps "
        "--lr; onecycle rises from --lr/25 to --lr over --warmup-epochs, then falls along a cosine to "
        "--lr/250000 (PyTorch's OneCycleLR, cycling the momentum, or Adam's beta1, between 0.95 and "
        "0.85); cosine warms up linearly to --lr over --warmup-epochs, then falls along a cosine to "
        "--min-lr; step multiplies the learning rate by --gamma every --step-size epochs",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        metavar="E",
        help=f"onecycle and cosine: epochs (may be fractional) of rising learning rate (default: "
        f"{ONECYCLE_WARMUP:g} of the run for onecycle, {COSINE_WARMUP:g} of the run for cosine)",
    )
    p.add_argument("--min-lr", type=float, default=None, help="cosine: the learning rate it ends at (default 0)")
    p.add_argument(
        "--step-size",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="step: epochs between two decays (default: a third of --epochs, at least 1)",
    )
    p.add_argument("--gamma", type=float, default=None, help=f"step: the factor of each decay (default {STEP_GAMMA:g})")
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help=f"adamw: decoupled weight decay, each step p *= 1 - lr*wd (default: the preset's, else "
        f"{ADAMW_WEIGHT_DECAY:g}); adam and sgd: L2 penalty wd*p added to the gradient (default 0)",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=None,
        metavar="EPS",
        help="train against the target (1-EPS)*onehot + EPS/10 instead of the one-hot label (PyTorch's "
        "label_smoothing; default: the preset's)",
    )


def check_schedule_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The schedule's and options' values, as given (exit 2 if one is bad)."""
    for flag, value in (
        ("--warmup-epochs", args.warmup_epochs),
        ("--min-lr", args.min_lr),
        ("--weight-decay", args.weight_decay),
    ):
        if value is not None and not (np.isfinite(value) and value >= 0):
            parser.error(f"{flag} must be a number >= 0, got {value}")
    if args.step_size is not None and args.step_size < 1:
        parser.error(f"--step-size must be at least 1, got {args.step_size}")
    if args.gamma is not None and not (np.isfinite(args.gamma) and args.gamma > 0):
        parser.error(f"--gamma must be a positive number, got {args.gamma}")
    if args.label_smoothing is not None and not 0.0 <= args.label_smoothing <= 1.0:
        parser.error(f"--label-smoothing must be in [0, 1], got {args.label_smoothing}")


SCHEDULE_FLAGS = {"warmup_epochs": ("onecycle", "cosine"), "min_lr": ("cosine",), "step_size": ("step",),
                  "gamma": ("step",)}  # fmt: skip


def fill_in_schedule_defaults(args: argparse.Namespace) -> None:
    """Defaults of the schedule's parameters (None for those the schedule does not use), the
    weight decay and the label smoothing."""
    if args.schedule is None:
        args.schedule = "constant"
    if args.warmup_epochs is None and args.schedule in ("onecycle", "cosine"):
        fraction = ONECYCLE_WARMUP if args.schedule == "onecycle" else COSINE_WARMUP
        args.warmup_epochs = round(fraction * args.epochs, 6)  # (0.1 * 15 is 1.5, not 1.5000000000000002)
    if args.min_lr is None and args.schedule == "cosine":
        args.min_lr = 0.0
    if args.step_size is None and args.schedule == "step":
        args.step_size = max(1, args.epochs // 3)
    if args.gamma is None and args.schedule == "step":
        args.gamma = STEP_GAMMA
    if args.weight_decay is None:
        args.weight_decay = ADAMW_WEIGHT_DECAY if args.optimizer == "adamw" else 0.0
    if args.label_smoothing is None:
        args.label_smoothing = 0.0


def check_schedule_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The schedule's parameters fit the schedule and the run (defaults filled in; exit 2 if not)."""
    for key, schedules in SCHEDULE_FLAGS.items():
        if getattr(args, key) is not None and args.schedule not in schedules:
            parser.error(
                f"{_flag(key)} is a setting of --schedule {' or '.join(schedules)}, not of --schedule {args.schedule}"
            )
    if args.schedule == "onecycle" and args.warmup_epochs > args.epochs:
        parser.error(f"--warmup-epochs {args.warmup_epochs:g} must not exceed --epochs {args.epochs}")
    if args.schedule == "cosine" and args.warmup_epochs >= args.epochs:  # (it must leave steps to fall)
        parser.error(f"--warmup-epochs {args.warmup_epochs:g} must be less than --epochs {args.epochs}")
    if args.min_lr is not None and args.min_lr > args.lr:
        parser.error(f"--min-lr {args.min_lr:g} must not exceed --lr {args.lr:g}")


def make_optimizer(args, params):
    """The optimizer of `args` (--optimizer, --lr, --weight-decay)."""
    if args.optimizer == "adam":
        return Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)


def make_scheduler(args, optimizer, steps_per_epoch: int) -> LRScheduler | None:
    """The learning-rate schedule of `args` over the run (every schedule steps once a batch), or
    None for --schedule constant."""
    total = args.epochs * steps_per_epoch
    if args.schedule == "onecycle":
        return OneCycleLR(optimizer, max_lr=args.lr, total_steps=total, pct_start=args.warmup_epochs / args.epochs)
    if args.schedule == "cosine":
        warmup = min(round(args.warmup_epochs * steps_per_epoch), total - 1)
        return CosineAnnealing(optimizer, total_steps=total, warmup_steps=warmup, min_lr=args.min_lr)
    if args.schedule == "step":
        return StepLR(optimizer, step_size=args.step_size * steps_per_epoch, gamma=args.gamma)
    return None


def options_text(args) -> str:
    """The schedule and options of a run, for its first line ("" for the defaults)."""
    text = ""
    if args.schedule == "onecycle":
        text += f", onecycle schedule (peak after {args.warmup_epochs:g} epochs)"
    elif args.schedule == "cosine":
        text += f", cosine schedule (warm-up {args.warmup_epochs:g} epochs, down to {args.min_lr:g})"
    elif args.schedule == "step":
        text += f", step schedule (x{args.gamma:g} every {args.step_size} epochs)"
    if args.weight_decay:
        text += f", weight decay {args.weight_decay:g}"
    if args.label_smoothing:
        text += f", label smoothing {args.label_smoothing:g}"
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(
        prog="python -m cnnfast.train",
        description="Train a convnet by a recipe (--preset: fast, the default; best; classic, the Keras "
        "MNIST convnet) on the 60,000 MNIST training images, evaluate on the 10,000 test images "
        "after each epoch, and save the model.",
        epilog="MNIST is read from --data-dir if it is given (it must hold the four files), otherwise "
        "from $CNNFAST_DATA or ~/.cache/cnnfast/mnist, downloaded there if missing. Ctrl-C or "
        "SIGTERM stops training after the current step and writes a checkpoint (exit code 130 "
        "or 143); --resume CHECKPOINT alone continues that run. A loss that becomes NaN or "
        f"infinite, or stays above {DIVERGED_FACTOR:g} times its first value for {DIVERGED_STEPS} "
        "steps, stops the run (exit code 1) and saves nothing.",
    )
    add_preset_arguments(p)
    p.add_argument("--epochs", type=int, default=None, help="passes over the training set (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: the preset's)")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate, the peak of a onecycle or cosine schedule (default: the preset's; with another "
        "optimizer than the preset's, 1e-3 for adam and adamw, 0.01 for sgd)",
    )
    p.add_argument(
        "--optimizer",
        choices=["adam", "adamw", "sgd"],
        default=None,
        help="adam, adamw (Adam with decoupled weight decay, see --weight-decay), or sgd with momentum 0.9 "
        "(default: the preset's)",
    )
    add_schedule_arguments(p)
    p.add_argument("--seed", type=int, default=None, help="seed for initialisation, shuffling and dropout (default 0)")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: all cores, or $OMP_NUM_THREADS)")
    add_data_arguments(p, default=None)
    p.add_argument(
        "--out",
        default=None,
        help=f"where to save the model (default {DEFAULT_OUT}); the per-epoch metrics go beside it "
        "as a CSV (mnist_cnn.csv)",
    )
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="train on the first N training images only (quick runs)"
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw train and test loss and accuracy per epoch (.png, .pdf or .svg; "
        "needs matplotlib: pip install cnnfast[plot])",
    )
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON object on stdout")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="where an interrupted run writes its checkpoint (default: next to --out, e.g. "
        "mnist_cnn.ckpt.npz; when resuming, the --resume file)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="CHECKPOINT",
        help="continue the interrupted run saved in CHECKPOINT, with the settings it was started "
        "with (--preset, --epochs, --batch-size, --lr, --optimizer, --seed, --limit, the schedule, --weight-decay, "
        "--label-smoothing: giving one that "
        "differs is an error) and its --out, --plot, --data-dir and --no-verify unless given; "
        "the checkpoint is removed once the run is finished",
    )
    add_augment_arguments(p)
    return p


def default_lr(optimizer: str) -> float:
    return 0.01 if optimizer == "sgd" else 1e-3


DEFAULTS = {
    "epochs": DEFAULT_EPOCHS,
    "batch_size": DEFAULT_BATCH_SIZE,
    "optimizer": "adam",
    "seed": 0,
    "limit": None,
    "out": DEFAULT_OUT,
    "plot": None,
    "data_dir": None,
    "no_verify": False,
}


def check_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every bad value given is an error (exit 2) before any work starts."""
    for flag, value, minimum in (
        ("--epochs", args.epochs, 1),
        ("--batch-size", args.batch_size, 1),
        ("--threads", args.threads, 1),
        ("--limit", args.limit, 1),
    ):
        if value is not None and value < minimum:
            parser.error(f"{flag} must be at least {minimum}, got {value}")
    if args.lr is not None and not (np.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a positive number, got {args.lr}")
    check_schedule_values(parser, args)


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--plot, --out and --checkpoint (defaults filled in) can be written (exit 2 if not)."""
    check_plot_arg(parser, args.plot)
    for flag, path in (("--out", args.out), ("--checkpoint", args.checkpoint)):
        full = os.path.abspath(path)
        if os.path.isdir(full):
            parser.error(
                f"{flag} {path} is a directory; give a file name such as {os.path.join(path, 'mnist_cnn.npz')}"
            )
        try:
            with tempfile.NamedTemporaryFile(dir=os.path.dirname(full), prefix=".cnnfast-write-test-"):
                pass
        except OSError as error:
            parser.error(f"{flag} {path} cannot be written: {error.strerror or error}")
    if os.path.abspath(args.checkpoint) == os.path.abspath(args.out):
        parser.error(f"--checkpoint must differ from --out ({args.out})")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def take_settings_from(parser, args, checkpoint: ckpt.Checkpoint) -> None:
    """Fill in the settings of the run `checkpoint` came from; a setting given explicitly that
    contradicts it is an error (exit 2) naming both values."""
    stored = checkpoint.settings
    for key in ckpt.RUN_SETTINGS:
        given = getattr(args, key)
        if given is not None and given != stored[key]:
            theirs = (
                f"{_flag(key)} {stored[key]:g}"
                if key == "lr"
                else (f"{_flag(key)} {stored[key]}" if stored[key] is not None else f"run without {_flag(key)}")
            )
            mine = f"{given:g}" if key == "lr" else given
            parser.error(
                f"{_flag(key)} {mine} contradicts the checkpoint's {theirs} ({args.resume}); "
                f"leave {_flag(key)} out to continue that run, or start a new run without --resume"
            )
        setattr(args, key, stored[key])
    for key in ckpt.RUN_DEFAULTS:
        if getattr(args, key) is None:
            setattr(args, key, stored[key])
    if args.checkpoint is None:
        args.checkpoint = args.resume


def load_resume(parser, path) -> ckpt.Checkpoint:
    """The checkpoint named by --resume (exit 2 if it cannot be read)."""
    try:
        checkpoint = ckpt.load(path)
    except (OSError, CheckpointError) as error:
        parser.error(f"--resume: {error}")
    epochs = checkpoint.settings["epochs"]
    if checkpoint.epoch > epochs + 1 or (checkpoint.epoch == epochs + 1 and checkpoint.position.step):
        parser.error(f"--resume {path}: corrupt checkpoint: it stopped in epoch {checkpoint.epoch} of {epochs}")
    return checkpoint


def resume_command(checkpoint_path) -> str:
    """The command line that continues a run from `checkpoint_path` (it holds the run's settings)."""
    return shlex.join(["python", "-m", "cnnfast.train", "--resume", checkpoint_path])


def fill_in_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Every setting left unset (None) gets its default; the checkpoint goes next to --out."""
    apply_preset(args)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.lr is None:
        args.lr = default_lr(args.optimizer)
    fill_in_schedule_defaults(args)
    if args.checkpoint is None:
        args.checkpoint = ckpt.default_path(args.out)
    args.augment = augment_settings(args)
    return args


def default_settings(**given) -> argparse.Namespace:
    """The settings of `python -m cnnfast.train` without flags, but for `given` ones (out=...,
    data_dir=..., preset=...): for another command that trains the default model (the default preset's)."""
    args = build_parser().parse_args([])
    for key, value in given.items():
        if not hasattr(args, key):
            raise TypeError(f"no training setting {key!r}")
        setattr(args, key, value)
    return fill_in_defaults(args)


def parse_args(argv=None) -> tuple[argparse.Namespace, ckpt.Checkpoint | None]:
    """The settings from the command line, and the checkpoint --resume names (its settings taken
    in); every value and path checked before any work (exit 2 if one is bad)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_values(parser, args)
    check_augment_arguments(parser, args)
    check_preset_arguments(parser, args)
    checkpoint = None
    if args.resume is not None:
        checkpoint = load_resume(parser, args.resume)
        take_settings_from(parser, args, checkpoint)
        check_no_augment_on_resume(parser, args, checkpoint)
        take_augment_from(parser, args, checkpoint)
    fill_in_defaults(args)
    check_schedule_settings(parser, args)
    check_paths(parser, args)
    return args, checkpoint


@dataclasses.dataclass
class Run:
    """A training run: the model and what continues it, and what it has done so far (all of
    which a checkpoint holds)."""

    settings: dict  # checkpoint.SETTINGS
    model: Sequential
    optimizer: Adam | AdamW | SGD
    rng: np.random.Generator  # draws each epoch's order
    watch: DivergenceWatch
    epoch: int = 1  # the epoch in progress (epochs + 1 once training is done)
    position: EpochState = dataclasses.field(default_factory=EpochState)  # steps of `epoch` done
    epoch_start: dict | None = None  # rng's state at the start of `epoch`
    history: list = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    trained_images: int = 0
    scheduler: LRScheduler | None = None  # None: a constant learning rate
    augment: Augment | None = None  # transforms each training batch (--augment)

    def checkpoint(self) -> ckpt.Checkpoint:
        return ckpt.capture(
            self.model,
            self.optimizer,
            settings=self.settings,
            epoch=self.epoch,
            position=self.position,
            shuffle_rng=self.epoch_start if self.epoch_start is not None else self.rng.bit_generator.state,
            history=self.history,
            train_seconds=self.train_seconds,
            trained_images=self.trained_images,
            first_loss=self.watch.first_loss,
            high_steps=self.watch.high_steps,
            schedule=self.scheduler.state() if self.scheduler is not None else None,
        )


def start_run(args, x_train, y_train, checkpoint: ckpt.Checkpoint | None = None) -> Run:
    """A new run of the preset's model with `args`, or the run `checkpoint` continues
    (CheckpointError if it was written for other training data)."""
    model = preset_model(args, checkpoint)
    optimizer = make_optimizer(args, model.parameters())
    n_steps = -(-len(x_train) // args.batch_size)
    settings = {key: getattr(args, key) for key in ckpt.RUN_SETTINGS}
    for key in ckpt.RUN_DEFAULTS:  # paths made absolute, so a resumed run finds them from anywhere
        value = getattr(args, key)
        settings[key] = os.path.abspath(value) if key != "no_verify" and value else value
    settings["train_images"] = len(x_train)
    settings["train_data_sha256"] = ckpt.data_fingerprint(x_train, y_train)
    settings["architecture"] = model.architecture()  # (a resumed run builds its model from it)
    run = Run(settings, model, optimizer, np.random.default_rng(args.seed), DivergenceWatch())
    run.scheduler = make_scheduler(args, optimizer, n_steps)
    settings["augment"] = args.augment  # (None: no augmentation)
    run.augment = Augment.from_settings(args.augment, args.seed) if args.augment is not None else None
    if checkpoint is None:
        return run
    if checkpoint.settings["train_images"] != len(x_train):
        raise CheckpointError(
            f"it was written for {checkpoint.settings['train_images']} training images, this run has {len(x_train)}"
        )
    if checkpoint.settings.get("train_data_sha256") != settings["train_data_sha256"]:
        raise CheckpointError("it was written for other training data than this run reads (their SHA-256 differ)")
    if checkpoint.position.step > n_steps:
        raise CheckpointError(f"corrupt checkpoint: step {checkpoint.position.step} of an epoch of {n_steps}")
    ckpt.restore(checkpoint, model, optimizer, run.rng, run.scheduler)
    run.watch = DivergenceWatch(checkpoint.first_loss, checkpoint.high_steps)
    run.epoch, run.position = checkpoint.epoch, checkpoint.position
    run.history, run.train_seconds = checkpoint.history, checkpoint.train_seconds
    run.trained_images = checkpoint.trained_images
    return run


def fit(run: Run, data, epochs: int, batch_size: int, log, stop=None, label_smoothing: float = 0.0) -> None:
    """The textbook loop, from where `run` stands to the last epoch: train an epoch on the
    shuffled training set, evaluate on the test set, record and print the epoch's metrics.
    Raises TrainingDiverged, or Interrupted when `stop()` asks (`run` then says where)."""
    x_train, y_train, x_test, y_test = data
    while run.epoch <= epochs:
        run.epoch_start = run.rng.bit_generator.state  # the epoch's order is drawn from this state
        # a progress bar on a terminal only (tqdm's disable=None), cleared when the epoch's line is printed
        progress = tqdm(total=len(x_train), initial=run.position.seen, desc=f"epoch {run.epoch}/{epochs}",
                        unit="img", file=log, disable=None, leave=False)  # fmt: skip
        try:
            train_loss, train_acc, seconds = train_epoch(
                run.model, run.optimizer, x_train, y_train, batch_size, run.rng, progress,
                start=run.position, stop=stop, watch=run.watch, scheduler=run.scheduler,
                label_smoothing=label_smoothing,
                augment=batch_augment(run, len(x_train), batch_size),
            )  # fmt: skip
        except Interrupted as interruption:
            run.position = interruption.state
            raise
        finally:
            progress.close()
        run.train_seconds += seconds
        run.trained_images += len(x_train)
        test_loss, test_acc = evaluate(run.model, x_test, y_test)
        run.history.append(
            {
                "epoch": run.epoch,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "seconds": seconds,
                "images_per_second": len(x_train) / max(seconds, 1e-9),
            }
        )
        print(
            f"epoch {run.epoch:>2}/{epochs}  train loss {train_loss:.4f} acc {100 * train_acc:6.2f}%  "
            f"test loss {test_loss:.4f} acc {100 * test_acc:6.2f}%  {seconds:5.1f} s  "
            f"{len(x_train) / max(seconds, 1e-9):,.0f} img/s",
            file=log,
            flush=True,
        )
        run.epoch, run.position, run.epoch_start = run.epoch + 1, EpochState(), None
        if stop is not None and stop() and run.epoch <= epochs:  # a signal during the evaluation
            raise Interrupted(run.position)


def write_checkpoint(run: Run, path, signum: int, n_steps: int) -> int:
    """After a signal: the checkpoint of `run` written to `path`, and how to continue (on
    stderr). The exit status, 128 + the signal's number."""
    name = signal.Signals(signum).name
    where = f"epoch {run.epoch}, step {run.position.step}/{n_steps}"
    try:
        path = ckpt.save(run.checkpoint(), path)
    except OSError as error:
        print(
            f"error: interrupted by {name} in {where}, and the checkpoint could not be written to {path}: {error}",
            file=sys.stderr,
        )
        return 128 + signum
    print(
        f"interrupted by {name} in {where}: saved a checkpoint to {os.path.abspath(path)}\n"
        f"continue with: {resume_command(path)}",
        file=sys.stderr,
        flush=True,
    )
    return 128 + signum


def train(args, data, log, checkpoint: ckpt.Checkpoint | None = None) -> tuple[int, Run | None]:
    """Train the preset's model with the settings `args` (see default_settings) on `data`
    (x_train, y_train, x_test, y_test), continuing `checkpoint` if given, and save it to
    args.out with its metrics CSV beside it (and the curves in args.plot). Ctrl-C or SIGTERM
    writes a checkpoint to args.checkpoint. Returns (exit status, the run); progress and
    outcome are printed on `log`, errors on stderr."""
    x_train, y_train, x_test, y_test = data
    if args.limit is not None:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    n_steps = -(-len(x_train) // args.batch_size)
    try:
        run = start_run(args, x_train, y_train, checkpoint)
    except CheckpointError as error:
        print(f"error: --resume {args.resume}: {error}", file=sys.stderr)
        return 1, None
    threads = get_num_threads()
    print(
        f"cnnfast: preset {args.preset}{preset_changes(args)}, {run.model.num_parameters():,} parameters, "
        f"{args.optimizer} lr {args.lr:g}{options_text(args)}, "
        f"batch {args.batch_size}, {len(x_train):,} training images, {threads} thread{'s' if threads != 1 else ''}",
        file=log,
        flush=True,
    )
    if run.augment is not None:
        print(f"augmentation: {run.augment.describe()}", file=log, flush=True)
    if checkpoint is not None and run.epoch > args.epochs:
        print(
            f"resuming from {args.resume}: training had finished (all {args.epochs} epochs); saving the model",
            file=log,
            flush=True,
        )
    elif checkpoint is not None:
        print(
            f"resuming from {args.resume}: epoch {run.epoch}/{args.epochs}, step {run.position.step}/{n_steps}",
            file=log,
            flush=True,
        )
    with StopRequest() as stop:
        try:
            fit(
                run, (x_train, y_train, x_test, y_test), args.epochs, args.batch_size, log, stop.requested,
                label_smoothing=args.label_smoothing,
            )  # fmt: skip
        except TrainingDiverged as error:
            kept = [p for p in (args.out, args.checkpoint) if os.path.exists(p)]
            print(
                f"error: training diverged in epoch {run.epoch}: {error}. Try a lower learning rate "
                f"(--lr {args.lr / 10:g}). Nothing was saved"
                + (f"; {' and '.join(kept)} left unchanged." if kept else "."),
                file=sys.stderr,
            )
            return 1, run
        except Interrupted:
            return write_checkpoint(run, args.checkpoint, stop.signum, n_steps), run
    return save(run, args, log), run


def save(run: Run, args, log) -> int:
    """The trained model to args.out, its metrics beside it, its curves to args.plot; the
    checkpoint it was resumed from removed. If args.out cannot be written, the weights go to a
    checkpoint instead. The exit status."""
    try:
        path = run.model.save(args.out)
    except OSError as error:
        print(
            f"error: could not save the model to {args.out}: {error}. A previous file there, if any, is unchanged.",
            file=sys.stderr,
        )
        try:
            saved = ckpt.save(run.checkpoint(), args.checkpoint)
        except OSError as second:
            print(
                f"error: the trained weights could not be saved to {args.checkpoint} either: {second}",
                file=sys.stderr,
            )
        else:
            print(
                f"the trained weights are in the checkpoint {os.path.abspath(saved)}; once --out can be "
                f"written, save the model with: {resume_command(saved)}",
                file=sys.stderr,
            )
        return 1
    print(f"saved the model to {os.path.abspath(path)}", file=log)
    csv_path = plots.write_history_csv(run.history, plots.history_csv_path(path))
    print(f"wrote the per-epoch metrics to {os.path.abspath(csv_path)}", file=log)
    if args.plot is not None:
        plots.plot_training_curves(run.history, args.plot)
        print(f"wrote the training curves to {os.path.abspath(args.plot)}", file=log)
    if args.resume is not None and os.path.exists(args.resume):
        try:
            os.unlink(args.resume)
        except OSError as error:
            print(
                f"warning: the run is finished but its checkpoint {args.resume} could not be removed: "
                f"{error.strerror or error}",
                file=sys.stderr,
            )
        else:
            print(f"removed the checkpoint {os.path.abspath(args.resume)}: its run is finished", file=log)
    return 0


def main(argv=None) -> int:
    args, checkpoint = parse_args(argv)
    if not can_plot(args.plot):  # before any work: without matplotlib, say so now
        return 1
    log = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON alone
    if args.threads is not None:
        set_num_threads(args.threads)
    reuse_freed_memory()  # (process-wide: the command's choice, not the library's on import)
    if args.show_augment is not None and not can_show_augment():
        return 1
    data = load_data(args.data_dir, args.no_verify)
    if data is None:
        return 1
    if args.show_augment is not None:
        return show_augment(args, data[0], log)
    start = time.perf_counter()
    status, run = train(args, data, log, checkpoint)
    if status != 0 or not args.json:
        return status
    last = run.history[-1]
    print(
        json.dumps(
            {
                "test_accuracy": last["test_accuracy"],
                "train_accuracy": last["train_accuracy"],
                "test_loss": last["test_loss"],
                "train_loss": last["train_loss"],
                "epochs": args.epochs,
                "seconds": time.perf_counter() - start,
                "train_seconds": run.train_seconds,
                "images_per_second": run.trained_images / max(run.train_seconds, 1e-9),
                "threads": get_num_threads(),
                "model_path": os.path.abspath(args.out),
            }
        )
    )
    return 0


# ----------------------------------------------------------------------------- augmentation
# --augment and its parameters: a random affine transform and elastic distortion of every
# training batch (cnnfast.augment). The run's checkpoint stores the parameters (settings
# "augment": None or Augment.settings()); the batches' draws follow from --seed and the step.

AUGMENT_FLAGS = {  # parameter -> (flag, metavar, help)
    "rotation": ("--rotation", "DEG", "rotate each image by up to +-DEG degrees (default {})"),
    "scale": ("--scale", ("LOW", "HIGH"), "scale each image by a factor in [LOW, HIGH] (default {} {})"),
    "shear": ("--shear", "DEG", "shear each image horizontally by up to +-DEG degrees (default {})"),
    "translate": ("--translate", "FRAC", "shift each image by up to +-FRAC of its size (default {})"),
    "elastic_alpha": (
        "--elastic-alpha",
        "PX",
        "strength of the elastic distortion in pixels, 0 for none (default {}, Simard et al. 2003)",
    ),
    "elastic_sigma": ("--elastic-sigma", "PX", "smoothness of the elastic distortion in pixels (default {})"),
}


def add_augment_arguments(p: argparse.ArgumentParser) -> None:
    defaults = Augment()
    group = p.add_argument_group(
        "data augmentation",
        "Each training batch can be transformed afresh: every image by its own random rotation, "
        "scale, shear and shift about its centre, then an elastic distortion (a random displacement "
        "field smoothed by a Gaussian), read back by bilinear interpolation. Off by default, but for "
        "--preset best (--no-augment turns its augmentation off). "
        "--augment turns it on with the defaults below; each parameter flag turns it on too and "
        "sets that parameter (0 turns a part off). The draws follow from --seed and the step; "
        "a resumed run (--resume) takes the augmentation from its checkpoint.",
    )
    group.add_argument("--augment", action="store_true", default=None, help="augment the training batches")
    for name, (flag, metavar, text) in AUGMENT_FLAGS.items():
        default = getattr(defaults, name)
        shown = default if isinstance(default, tuple) else (default,)
        group.add_argument(
            flag,
            dest=f"augment_{name}",
            type=float,
            nargs=2 if name == "scale" else None,
            metavar=metavar,
            default=None,
            help=text.format(*(f"{v:g}" for v in shown)),
        )
    group.add_argument(
        "--show-augment",
        metavar="FILE.png",
        default=None,
        help="draw the first training digits, each beside several augmented copies (with the "
        "parameters given), to FILE (.png, .pdf or .svg; needs matplotlib), and exit without training",
    )


def _given_augment_parameters(args) -> dict:
    given = {}
    for name in AUGMENT_FLAGS:
        value = getattr(args, f"augment_{name}", None)
        if value is not None:
            given[name] = tuple(value) if name == "scale" else value
    return given


def augment_settings(args) -> dict | None:
    """The augmentation of `args`: Augment.settings() of the defaults with the parameters given,
    or None when neither --augment nor a parameter is given (or args.augment already holds them).
    ValueError for a bad parameter."""
    if isinstance(args.augment, dict):
        return args.augment
    given = _given_augment_parameters(args)
    if not args.augment and not given:
        return None
    return Augment(**given).settings()


def check_augment_arguments(parser: argparse.ArgumentParser, args) -> None:
    """Bad augmentation parameters are an error (exit 2) before any work; --show-augment's file too."""
    try:
        augment_settings(args)
    except ValueError as error:
        flag = next((f for n, (f, _, _) in AUGMENT_FLAGS.items() if str(error).startswith(n)), "--augment")
        parser.error(f"{flag}: {error}")
    if args.show_augment is not None and plots.plot_path_problem(args.show_augment):
        parser.error(f"--show-augment {plots.plot_path_problem(args.show_augment)}")


def take_augment_from(parser: argparse.ArgumentParser, args, checkpoint: ckpt.Checkpoint) -> None:
    """The augmentation of the run `checkpoint` came from; --augment or a parameter given with
    --resume that contradicts it is an error (exit 2)."""
    stored = checkpoint.settings.get("augment")  # (absent from checkpoints of earlier versions: none)
    given = _given_augment_parameters(args)
    if stored is None and (args.augment or given):
        flag = "--augment" if args.augment else AUGMENT_FLAGS[next(iter(given))][0]
        parser.error(
            f"{flag} contradicts the checkpoint's run without --augment ({args.resume}); leave it out "
            "to continue that run, or start a new run without --resume"
        )
    for name, value in given.items():
        theirs = tuple(stored[name]) if name == "scale" else stored[name]
        if value != theirs:
            flag = AUGMENT_FLAGS[name][0]
            shown = " ".join(f"{v:g}" for v in (theirs if name == "scale" else (theirs,)))
            mine = " ".join(f"{v:g}" for v in (value if name == "scale" else (value,)))
            parser.error(
                f"{flag} {mine} contradicts the checkpoint's {flag} {shown} ({args.resume}); "
                f"leave {flag} out to continue that run, or start a new run without --resume"
            )
    args.augment = stored


def batch_augment(run: Run, n_images: int, batch_size: int):
    """train_epoch's augment(x, step) for the epoch `run` is in, or None: batches are numbered
    across the run ((epoch - 1) * steps per epoch + step), so each gets its own draws."""
    if run.augment is None:
        return None
    first = (run.epoch - 1) * -(-n_images // batch_size)
    return lambda x, step: run.augment(x, first + step)


SHOW_AUGMENT_DIGITS = 8  # rows: the first training digits
SHOW_AUGMENT_COPIES = 7  # columns after the original: augmented copies


def can_show_augment() -> bool:
    """True with matplotlib; else False after saying on stderr what to install (exit 1, before any work)."""
    try:
        plots.figure_class()
    except plots.PlotUnavailable:
        print("error: --show-augment needs matplotlib: pip install cnnfast[plot]", file=sys.stderr)
        return False
    return True


def show_augment(args, images: np.ndarray, log) -> int:
    """--show-augment FILE: the first training digits, each beside augmented copies drawn with
    the run's parameters (the defaults if none are given); the exit status."""
    settings = args.augment if args.augment is not None else Augment().settings()
    augment = Augment.from_settings(settings, args.seed)
    originals = as_model_input(images[:SHOW_AUGMENT_DIGITS])
    copies = np.stack([augment(originals, step) for step in range(SHOW_AUGMENT_COPIES)], axis=1)
    try:
        path = plots.plot_augment_grid(args.show_augment, originals[:, 0], copies[:, :, 0], augment.describe())
    except OSError as error:
        print(f"error: could not write {args.show_augment}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"wrote {len(originals)} digits and {SHOW_AUGMENT_COPIES} augmented copies of each to "
          f"{os.path.abspath(path)}", file=log)  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- presets
# --preset NAME: a whole recipe (cnnfast.presets: the network, optimizer, learning rate, schedule,
# batch size, epochs, label smoothing, augmentation) filling in every setting not given; a flag
# given overrides that setting alone. The run's checkpoint stores the preset's name (a setting of
# the run, as --epochs) and the network's architecture, from which a resumed run builds its model.


def add_preset_arguments(p: argparse.ArgumentParser) -> None:
    lines = "; ".join(f"{name}: {preset.summary}" for name, preset in presets.PRESETS.items())
    p.add_argument(
        "--preset",
        choices=list(presets.PRESETS),
        default=None,
        help=f"the recipe: network and every training setting below that is not given ({lines}; default "
        f"{presets.DEFAULT_PRESET}). A flag given overrides that setting of the recipe; the learning rate "
        "and weight decay of the recipe go with its optimizer (another --optimizer takes its own defaults)",
    )
    p.add_argument(
        "--no-augment",
        dest="augment",
        action="store_const",
        const=False,
        help="train without the preset's data augmentation (best augments; fast and classic do not)",
    )


def apply_preset(args: argparse.Namespace) -> None:
    """Fill in the settings left unset (None) from the preset (the default one if none is given)."""
    if args.preset is None:
        args.preset = presets.DEFAULT_PRESET
    preset = presets.get(args.preset)
    own_optimizer = args.optimizer in (None, preset.settings.get("optimizer"))
    for key, value in preset.settings.items():
        if key in ("lr", "weight_decay") and not own_optimizer:
            continue  # (the recipe's rate and decay are its optimizer's)
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.resume is None and preset.augment is not None and args.augment in (None, True):
        given = {k: list(v) if k == "scale" else v for k, v in _given_augment_parameters(args).items()}
        args.augment = Augment.from_settings({**preset.augment, **given}).settings()


def check_preset_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--no-augment with an augmentation parameter is an error (exit 2)."""
    given = _given_augment_parameters(args)
    if args.augment is False and given:
        flag = AUGMENT_FLAGS[next(iter(given))][0]
        parser.error(f"--no-augment contradicts {flag}: leave one of them out")


def check_no_augment_on_resume(parser: argparse.ArgumentParser, args, checkpoint: ckpt.Checkpoint) -> None:
    """--no-augment with --resume of an augmented run is an error (exit 2)."""
    if args.augment is False and checkpoint.settings.get("augment") is not None:
        parser.error(
            f"--no-augment contradicts the checkpoint's augmented run ({args.resume}); leave it out "
            "to continue that run, or start a new run without --resume"
        )


def preset_model(args, checkpoint: ckpt.Checkpoint | None = None) -> Sequential:
    """The untrained network of the run: the preset's, or, resuming, the one the checkpoint's
    architecture describes (CheckpointError if it describes none)."""
    stored = checkpoint.settings.get("architecture") if checkpoint is not None else None
    if stored is None:  # (a new run; or a checkpoint from before the presets: the classic model)
        return presets.get(args.preset).model(args.seed)
    try:
        return from_architecture(stored, args.seed)
    except ModelFormatError as error:
        raise CheckpointError(f"corrupt checkpoint: its architecture: {error}") from None


def preset_changes(args) -> str:
    """The flags that changed the preset's settings, for the run's first line ("" if none did)."""
    preset = presets.get(args.preset)
    changed = [
        f"{_flag(key)} {getattr(args, key):g}" if isinstance(value, float) else f"{_flag(key)} {getattr(args, key)}"
        for key, value in preset.settings.items()
        if getattr(args, key) != value
        and (key not in ("lr", "weight_decay") or args.optimizer == preset.settings["optimizer"])
    ]
    if args.augment != preset.augment:
        if args.augment is None:
            changed.append("--no-augment")
        else:
            base = preset.augment
            if base is None:  # (the next line of the run's output says which augmentation)
                changed.append("--augment")
            for name, (flag, _, _) in AUGMENT_FLAGS.items() if base is not None else ():
                value = args.augment[name]
                if base[name] != value:
                    changed.append(f"{flag} {' '.join(f'{v:g}' for v in value) if name == 'scale' else f'{value:g}'}")
    return f" (changed: {' '.join(changed)})" if changed else ""


if __name__ == "__main__":
    from ._cli import run_command

    sys.exit(run_command(main))
