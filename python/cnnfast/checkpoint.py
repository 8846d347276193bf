"""Training checkpoints: what `python -m cnnfast.train --resume` needs to continue a run exactly
where it stopped, so that the resumed run ends with the same weights, bit for bit, as a run that
was never interrupted (same seed, same settings).

A checkpoint is one .npz file (written atomically: a temporary file, then a rename) holding

- the weights (``param.<i>``, in `model.parameters()` order), the buffers (``buffer.<i>``, in
  `model.named_buffers()` order: BatchNorm's running statistics) and the optimizer's state
  (``optim.<name>``: Adam's t, m.i, v.i or SGD's velocity.i);
- a JSON document (``meta``): the settings the run was started with (all of them, so that
  ``--resume`` alone continues it) and a fingerprint of its training data, the position (the epoch to
  continue and how many of its steps are done), the running totals of that epoch, the history
  of finished epochs, the shuffling generator's state as of the START of that epoch (its
  permutation is drawn again from it), the state of every layer's own generator (Dropout's) and
  the learning-rate schedule's step count.

Nothing is pickled: generator states are plain dicts of ints and strings, stored as JSON, and
files are read with allow_pickle=False. A checkpoint is not a model file (`load_model` rejects
it): only `--resume` reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from ._files import atomic_write, read_npz
from .augment import Augment
from .nn import FORMATS as MODEL_FORMATS
from .presets import PRESETS

FORMAT = "cnnfast-checkpoint-v2"
OLD_FORMATS = ("cnnfast-checkpoint-v1",)  # did not hold the run's settings: cannot be resumed alone

# The settings of the run, which a resumed run takes from the checkpoint: those that decide its
# result (a different value given with --resume is an error), and where it reads and writes
# (taken unless given). train_images and train_data_sha256 identify the training data.
RUN_SETTINGS = ("epochs", "batch_size", "optimizer", "lr", "seed", "limit")
# The learning-rate schedule and training options (train.add_schedule_arguments): settings that
# decide the result too. A checkpoint written before they existed had their defaults.
SCHEDULE_SETTINGS = {
    "schedule": "constant",
    "warmup_epochs": None,
    "min_lr": None,
    "step_size": None,
    "gamma": None,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
}
RUN_SETTINGS += tuple(SCHEDULE_SETTINGS)
# The recipe (train --preset; cnnfast.presets): a setting that decides the result too. A checkpoint
# written before the presets trained the classic model. Its network is stored beside the settings
# ("architecture", Sequential.architecture()): a resumed run builds the model from it.
PRESET_SETTINGS = {"preset": "classic"}
RUN_SETTINGS += tuple(PRESET_SETTINGS)
RUN_DEFAULTS = ("out", "plot", "data_dir", "no_verify")
SETTINGS = RUN_SETTINGS + RUN_DEFAULTS + ("train_images", "train_data_sha256")
HISTORY_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"}


class CheckpointError(ValueError):
    """A file that is not a readable cnnfast checkpoint, or one that does not fit this run."""


@dataclasses.dataclass
class EpochState:
    """Where training stands inside an epoch: steps done and the running totals so far."""

    step: int = 0
    total_loss: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


@dataclasses.dataclass
class Checkpoint:
    settings: dict  # SETTINGS: the run's settings and its training data
    epoch: int  # the epoch to continue, from 1 (epochs + 1: training is done)
    position: EpochState  # steps of `epoch` already done, and their totals
    shuffle_rng: dict  # the shuffling Generator's state at the start of `epoch`
    layer_rngs: dict  # layer index -> its Generator's state now (Dropout)
    history: list  # one dict of metrics per finished epoch
    train_seconds: float  # training time of the finished epochs
    trained_images: int
    params: list  # float32 arrays, in model.parameters() order
    optimizer: dict  # name -> array, as optimizer.state() returns it
    first_loss: float | None = None  # the run's first loss and the steps in a row far above it
    high_steps: int = 0  # (train.DivergenceWatch)
    schedule: dict | None = None  # the learning-rate schedule's state ({"step": n}), None: constant
    buffers: list = dataclasses.field(default_factory=list)  # float32 arrays, in model.named_buffers() order


def default_path(model_path: str) -> str:
    """The checkpoint next to the model file: mnist_cnn.npz -> mnist_cnn.ckpt.npz."""
    base = model_path[:-4] if model_path.endswith(".npz") else model_path
    return base + ".ckpt.npz"


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the training images and labels: a resumed run must train on the same data."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def capture(
    model,
    optimizer,
    *,
    settings,
    epoch,
    position,
    shuffle_rng,
    history,
    train_seconds,
    trained_images,
    first_loss=None,
    high_steps=0,
    schedule=None,
) -> Checkpoint:
    """A snapshot (copies) of everything a resumed run needs; call it between steps."""
    layer_rngs = {
        i: layer.rng.bit_generator.state
        for i, layer in enumerate(model.layers)
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    }
    return Checkpoint(
        settings=dict(settings),
        epoch=int(epoch),
        position=dataclasses.replace(position),
        shuffle_rng=shuffle_rng,
        layer_rngs=layer_rngs,
        history=list(history),
        train_seconds=float(train_seconds),
        trained_images=int(trained_images),
        params=[p.data.copy() for p in model.parameters()],
        optimizer={k: np.array(v, copy=True) for k, v in optimizer.state().items()},
        first_loss=first_loss,
        high_steps=int(high_steps),
        schedule=dict(schedule) if schedule is not None else None,
        buffers=[array.copy() for _, array in model.named_buffers()],
    )


def save(checkpoint: Checkpoint, path) -> str:
    """Write `checkpoint` to `path` atomically: a temporary file in the same directory, flushed
    to disk, then renamed over `path`. On any error the temporary file is removed and a previous
    file at `path` is left as it was."""
    path = os.fspath(path)
    meta = {
        "settings": checkpoint.settings,
        "epoch": checkpoint.epoch,
        "position": dataclasses.asdict(checkpoint.position),
        "shuffle_rng": checkpoint.shuffle_rng,
        "layer_rngs": {str(i): s for i, s in checkpoint.layer_rngs.items()},
        "history": checkpoint.history,
        "train_seconds": checkpoint.train_seconds,
        "trained_images": checkpoint.trained_images,
        "params": len(checkpoint.params),
        "optimizer": sorted(checkpoint.optimizer),
        "divergence": {"first_loss": checkpoint.first_loss, "high_steps": checkpoint.high_steps},
        "schedule": checkpoint.schedule,
        "buffers": len(checkpoint.buffers),
    }
    arrays = {"format": np.array(FORMAT), "meta": np.array(json.dumps(meta))}
    arrays.update({f"param.{i}": p for i, p in enumerate(checkpoint.params)})
    arrays.update({f"optim.{k}": np.asarray(v) for k, v in checkpoint.optimizer.items()})
    arrays.update({f"buffer.{i}": b for i, b in enumerate(checkpoint.buffers)})
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def load(path) -> Checkpoint:
    """Read a checkpoint written by `save`; a CheckpointError naming the file if it is not one.
    Never unpickles. (FileNotFoundError and other errors opening the file pass through.)"""
    return read_npz(path, _from_npz, CheckpointError, "checkpoint", "an interrupted python -m cnnfast.train")


def _from_npz(f) -> Checkpoint:
    files = set(f.files)
    if "format" not in files:
        raise CheckpointError(f"not a cnnfast checkpoint (no '{FORMAT}' marker)")
    marker = str(_array(f, "format"))
    if marker in MODEL_FORMATS:  # (v1 and v2 model files alike)
        raise CheckpointError("this is a saved model, not a training checkpoint")
    if marker in OLD_FORMATS:
        raise CheckpointError(
            "written by an earlier cnnfast that did not store the run's settings; "
            "it cannot be resumed: start the run again"
        )
    if marker != FORMAT:
        raise CheckpointError(f"not a cnnfast checkpoint (format {marker[:40]!r}, expected '{FORMAT}')")
    meta = json.loads(str(_array(f, "meta")))
    _expect(isinstance(meta, dict), "meta is not a JSON object")
    settings = meta.get("settings")
    if isinstance(settings, dict):  # a checkpoint from before the schedules: their defaults
        settings = {**SCHEDULE_SETTINGS, **PRESET_SETTINGS, **settings}
    _expect(isinstance(settings, dict) and all(k in settings for k in SETTINGS), "settings are missing")
    _check_schedule_settings(settings)
    _expect(
        all(
            isinstance(settings[k], int) and not isinstance(settings[k], bool) and settings[k] >= 1
            for k in ("epochs", "batch_size", "train_images")
        )
        and settings["optimizer"] in ("adam", "adamw", "sgd")
        and isinstance(settings["lr"], (int, float))
        and (settings["limit"] is None or isinstance(settings["limit"], int)),
        "bad settings",
    )
    _expect(_valid_augment(settings.get("augment")), "bad augmentation settings")
    _expect(settings["preset"] in PRESETS, "bad preset")
    _expect(isinstance(settings.get("architecture", []), list), "bad architecture")
    divergence = meta.get("divergence", {})
    _expect(
        isinstance(divergence, dict)
        and isinstance(divergence.get("first_loss"), (int, float, type(None)))
        and isinstance(divergence.get("high_steps", 0), int),
        "bad divergence state",
    )
    position = meta.get("position")
    _expect(isinstance(position, dict), "position is missing")
    try:
        position = EpochState(**position)
    except TypeError as error:
        raise CheckpointError(f"bad position: {error}") from None
    _expect(
        all(
            isinstance(getattr(position, k), int)
            and not isinstance(getattr(position, k), bool)
            and getattr(position, k) >= 0
            for k in ("step", "correct", "seen")
        )
        and all(isinstance(getattr(position, k), (int, float)) for k in ("total_loss", "seconds")),
        "bad position",
    )
    epoch = meta.get("epoch")
    _expect(isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1, "bad epoch")
    layer_rngs = meta.get("layer_rngs")
    _expect(
        isinstance(layer_rngs, dict)
        and all(k.isascii() and k.isdigit() and isinstance(v, dict) for k, v in layer_rngs.items()),
        "bad layer generator states",
    )
    _expect(isinstance(meta.get("shuffle_rng"), dict), "bad shuffling generator state")
    history = meta.get("history")
    _expect(
        isinstance(history, list) and all(isinstance(h, dict) and HISTORY_KEYS <= set(h) for h in history),
        "bad history",
    )
    n_params, optim_keys = meta.get("params"), meta.get("optimizer")
    _expect(
        isinstance(n_params, int)
        and 0 <= n_params <= len(files)
        and isinstance(optim_keys, list)
        and len(optim_keys) <= len(files)
        and all(isinstance(k, str) for k in optim_keys),
        "bad array list",
    )
    n_buffers = meta.get("buffers", 0)  # (none before BatchNorm)
    _expect(isinstance(n_buffers, int) and 0 <= n_buffers <= len(files), "bad array list")
    expected = {"format", "meta"} | {f"param.{i}" for i in range(n_params)} | {f"optim.{k}" for k in optim_keys}
    expected |= {f"buffer.{i}" for i in range(n_buffers)}
    _expect(files == expected, f"arrays {sorted(files ^ expected)[:5]} missing or unexpected")
    params = [_array(f, f"param.{i}") for i in range(n_params)]
    _expect(all(p.dtype == np.float32 for p in params), "weights are not float32")
    buffers = [_array(f, f"buffer.{i}") for i in range(n_buffers)]
    _expect(all(b.dtype == np.float32 for b in buffers), "buffers are not float32")
    optimizer = {k: _array(f, f"optim.{k}") for k in optim_keys}
    _expect(all(v.dtype.kind in "fiu" for v in optimizer.values()), "optimizer state is not numeric")
    return Checkpoint(
        settings=settings,
        epoch=epoch,
        position=position,
        shuffle_rng=meta["shuffle_rng"],
        layer_rngs={int(k): v for k, v in layer_rngs.items()},
        history=meta["history"],
        train_seconds=float(meta.get("train_seconds", 0.0)),
        trained_images=int(meta.get("trained_images", 0)),
        params=params,
        optimizer=optimizer,
        first_loss=divergence.get("first_loss"),
        high_steps=divergence.get("high_steps", 0),
        schedule=_schedule_state(meta.get("schedule")),
        buffers=buffers,
    )


def _check_schedule_settings(settings: dict) -> None:
    def number(key, optional=True):
        value = settings[key]
        return (optional and value is None) or (isinstance(value, (int, float)) and not isinstance(value, bool))

    _expect(
        settings["schedule"] in ("constant", "onecycle", "cosine", "step")
        and all(number(k) for k in ("warmup_epochs", "min_lr", "gamma"))
        and all(number(k, optional=False) for k in ("weight_decay", "label_smoothing"))
        and (settings["step_size"] is None or (isinstance(settings["step_size"], int) and settings["step_size"] >= 1)),
        "bad schedule settings",
    )


def _schedule_state(state) -> dict | None:
    _expect(
        state is None
        or (
            isinstance(state, dict)
            and isinstance(state.get("step"), int)
            and not isinstance(state["step"], bool)
            and state["step"] >= 0
        ),
        "bad schedule state",
    )
    return state


def _valid_augment(settings) -> bool:
    """The "augment" setting: None (no augmentation; absent in checkpoints of earlier versions)
    or the parameters cnnfast.augment.Augment.settings() gives."""
    if settings is None:
        return True
    try:
        Augment.from_settings(settings)
    except (TypeError, ValueError):
        return False
    return True


def _array(f, key: str) -> np.ndarray:
    value = f[key]  # np.load gives the raw bytes of a member that is not an .npy file
    _expect(isinstance(value, np.ndarray), f"'{key}' is not an array")
    return value


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise CheckpointError(f"corrupt checkpoint: {message}")


def restore(checkpoint: Checkpoint, model, optimizer, shuffle_rng: np.random.Generator, scheduler=None) -> None:
    """Put the checkpoint's weights, optimizer state, generator states and schedule state into a
    freshly built model, optimizer, shuffling generator and learning-rate schedule (None: a
    constant rate) (in place). A CheckpointError, before anything is changed, if they do not fit."""
    if (scheduler is None) != (checkpoint.schedule is None):
        raise CheckpointError("its learning-rate schedule does not fit this run's")
    params = model.parameters()
    if len(params) != len(checkpoint.params) or any(p.data.shape != q.shape for p, q in zip(params, checkpoint.params)):
        raise CheckpointError(f"its weights do not fit the model ({[list(q.shape) for q in checkpoint.params][:4]}...)")
    buffers = [array for _, array in model.named_buffers()]
    if len(buffers) != len(checkpoint.buffers) or any(b.shape != q.shape for b, q in zip(buffers, checkpoint.buffers)):
        raise CheckpointError("its buffers (BatchNorm's running statistics) do not fit the model")
    current = {k: np.asarray(v) for k, v in optimizer.state().items()}
    saved = checkpoint.optimizer
    if set(current) != set(saved) or any(
        current[k].shape != saved[k].shape
        or current[k].dtype.kind != saved[k].dtype.kind
        or (saved[k].dtype.kind in "iu" and (saved[k] < 0).any())
        for k in current
    ):
        raise CheckpointError("its optimizer state does not fit this optimizer")
    rngs = {
        i: layer.rng
        for i, layer in enumerate(model.layers)
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    }
    if set(rngs) != set(checkpoint.layer_rngs):
        raise CheckpointError("its random generators do not fit the model's layers")
    try:  # validate every generator state on scratch generators first, then apply
        for state in [checkpoint.shuffle_rng, *checkpoint.layer_rngs.values()]:
            np.random.default_rng().bit_generator.state = state
    except Exception as error:  # noqa: BLE001 - numpy's setter raises several types
        raise CheckpointError(f"corrupt checkpoint: bad generator state ({type(error).__name__}: {error})") from None
    for p, q in zip(params, checkpoint.params):
        p.data[...] = q
    for b, q in zip(buffers, checkpoint.buffers):
        b[...] = q
    optimizer.load_state(checkpoint.optimizer)
    if scheduler is not None:
        scheduler.load_state(checkpoint.schedule)
    shuffle_rng.bit_generator.state = checkpoint.shuffle_rng
    for i, rng in rngs.items():
        rng.bit_generator.state = checkpoint.layer_rngs[i]
