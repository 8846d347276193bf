"""Training recipes: `python -m cnnfast.train --preset NAME`.

A preset is a whole recipe held as data: the network (an architecture list, as
`Sequential.architecture()` gives it and `nn.from_architecture` builds it), the optimizer and its
learning rate, the schedule, the batch size, the epochs, the label smoothing and the data
augmentation. `python -m cnnfast.train --preset best` runs it; each flag given with it
overrides that one setting of the recipe (`--preset best --epochs 5` is the best recipe cut to 5
epochs, its schedule fitted to 5 epochs). Without --preset the run is `fast`.

    fast     the Keras convnet (dropout 0.25 instead of 0.5) trained by a better recipe (AdamW,
             one-cycle schedule, batch 64, label smoothing), 2 epochs: >= 99.0% on MNIST's test set
             (every seed 0-4); the classic model's FLOPs per image
    best     a VGG-style net (32-32-pool-64-64-pool-128, BatchNorm, dropout) on randomly rotated,
             scaled and shifted digits: >= 99.6% in at most 15 minutes on 2 cores
    classic  the Keras convnet, Adam at 1e-3 for 15 epochs: what `python -m cnnfast.train` ran before
             the presets existed (about 99.2%)

The figures, seeds and commands are in the README ("Presets"); bench/time_to_accuracy.py times
each recipe to 99.0% and 99.5% against the same recipe in PyTorch.
"""

from __future__ import annotations

import dataclasses

from . import nn
from .augment import Augment


def _conv(cin: int, cout: int, padding=0) -> dict:
    return {"type": "Conv2d", "in_channels": cin, "out_channels": cout, "kernel_size": 3, "padding": padding}


def _bn2d(n: int) -> dict:
    return {"type": "BatchNorm2d", "num_features": n, "eps": 1e-5, "momentum": 0.1}


def _bn1d(n: int) -> dict:
    return {"type": "BatchNorm1d", "num_features": n, "eps": 1e-5, "momentum": 0.1}


def _linear(n_in: int, n_out: int) -> dict:
    return {"type": "Linear", "in_features": n_in, "out_features": n_out}


_RELU, _FLATTEN = {"type": "ReLU"}, {"type": "Flatten"}
_POOL = {"type": "MaxPool2d", "kernel_size": 2}


def _dropout(p: float) -> dict:
    return {"type": "Dropout", "p": p}


@dataclasses.dataclass(frozen=True)
class Preset:
    """One recipe. `settings` holds the values of train's flags (dest names: epochs,
    batch_size, optimizer, lr, schedule, warmup_epochs, weight_decay, label_smoothing);
    `augment` is Augment.settings() or None; `architecture` is None for the classic model
    (nn.mnist_cnn, built as it always was, so classic runs keep their weights bit for bit)."""

    name: str
    summary: str
    architecture: list | None
    settings: dict
    augment: dict | None = None

    def model(self, seed: int = 0) -> nn.Sequential:
        """The untrained network of the recipe, initialised from `seed`."""
        if self.architecture is None:
            return nn.mnist_cnn(seed)
        return nn.from_architecture(self.architecture, seed)


PRESETS = {
    "fast": Preset(
        name="fast",
        summary="the Keras convnet (dropout 0.25), AdamW one-cycle to lr 0.01, batch 64, 2 epochs",
        architecture=[
            *(_conv(1, 32), _RELU, _POOL, _conv(32, 64), _RELU, _POOL),
            *(_FLATTEN, _dropout(0.25), _linear(1600, 10)),
        ],
        settings={
            "epochs": 2,
            "batch_size": 64,
            "optimizer": "adamw",
            "lr": 1e-2,
            "schedule": "onecycle",
            "weight_decay": 1e-2,
            "label_smoothing": 0.1,
        },
    ),
    "best": Preset(
        name="best",
        summary="32-32-64-64 VGG-style net + BatchNorm, random affine distortions, AdamW one-cycle, 15 epochs",
        architecture=[
            *(_conv(1, 32), _bn2d(32), _RELU, _conv(32, 32), _bn2d(32), _RELU, _POOL),
            *(_conv(32, 64), _bn2d(64), _RELU, _conv(64, 64), _bn2d(64), _RELU, _POOL),
            *(_FLATTEN, _linear(1024, 128), _bn1d(128), _RELU, _dropout(0.4), _linear(128, 10)),
        ],
        settings={
            "epochs": 15,
            "batch_size": 128,
            "optimizer": "adamw",
            "lr": 3e-3,
            "schedule": "onecycle",
            "weight_decay": 1e-2,
            "label_smoothing": 0.1,
        },
        augment=Augment(translate=0.1, elastic_alpha=0.0).settings(),  # (affine only: see the README)
    ),
    "classic": Preset(
        name="classic",
        summary="the Keras MNIST convnet, Adam 1e-3, 15 epochs",
        architecture=None,
        settings={"epochs": 15, "batch_size": 128, "optimizer": "adam", "lr": 1e-3},
    ),
}
DEFAULT_PRESET = "fast"


def get(name: str) -> Preset:
    """The preset called `name`; ValueError naming the choices if there is none."""
    if name not in PRESETS:
        raise ValueError(f"no preset {name!r}; the presets are {', '.join(PRESETS)}")
    return PRESETS[name]


def forward_flops(model: nn.Sequential, input_shape=(1, 28, 28)) -> int:
    """Floating-point operations of one image's forward pass through the convolutions and dense
    layers (2 per multiply-add; BatchNorm folds into the convolutions at inference, and the
    activations and pooling are not counted): the measure the presets' size limits use."""
    total = 0
    shape = tuple(input_shape)
    for layer in model.layers:
        out = layer.output_shape(shape)
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += 2 * layer.in_channels * kh * kw * out[0] * out[1] * out[2]
        elif isinstance(layer, nn.Linear):
            total += 2 * layer.in_features * layer.out_features
        shape = out
    return total
