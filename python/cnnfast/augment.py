"""Data augmentation: random affine transforms and elastic distortions of training batches.

    from cnnfast.augment import Augment

    augment = Augment()                          # MNIST defaults, see below
    x = augment(batch, step)                     # float32 [N, C, H, W] -> the same shape
    Augment(rotation=15, elastic_alpha=0)        # affine only

Each image of a batch gets its own random transform (every channel alike), drawn uniformly:
a rotation in [-rotation, rotation] degrees, a scale in [scale[0], scale[1]] and a horizontal
shear in [-shear, shear] degrees about the image centre, a translation in [-translate,
translate] times the image size; then an elastic distortion (Simard, Steinkraus and Platt,
"Best practices for convolutional neural networks applied to visual document analysis",
ICDAR 2003): a random displacement field, uniform in [-1, 1) per pixel, smoothed by a Gaussian
of elastic_sigma pixels and scaled by elastic_alpha pixels. Both are applied in one pass, each
output pixel read from the input by bilinear interpolation (`fill`, 0 = black, outside it).
The work is C++ on all threads (cnnfast.functional.augment).

The defaults are for 28 x 28 digits: Simard et al.'s elastic distortion for MNIST (sigma 4,
alpha 34) with mild affine changes (+-10 degrees, 10% in scale, 1.4 pixels of shift, no shear;
Ciresan et al. 2010 use up to 15 degrees and 15% with a larger network). They are meant for
larger networks and longer schedules, where distortions pay (Simard et al.: 99.6%): the small
default model at a constant learning rate gains nothing from them in 15 epochs (measured on
MNIST: 98.40% after 3 epochs, 99.0-99.1% in epochs 11-14, 98.95% after 15, against 98.49% and
99.2% without).

Randomness: the transform of image n of the batch of `step` depends on (seed, step, n) only,
never on the thread count, so a run is reproducible and `python -m cnnfast.train --resume`
continues it bit for bit (the training loop numbers its batches across epochs).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import functional as F

# the parameters a training run stores in its checkpoint (the seed is the run's --seed)
PARAMETERS = ("rotation", "scale", "shear", "translate", "elastic_alpha", "elastic_sigma")


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random affine transform plus elastic distortion per image; see the module's docstring.

    rotation, shear: degrees (the range is symmetric about 0); scale: (low, high); translate:
    a fraction of the image's width and height; elastic_alpha, elastic_sigma: pixels (alpha 0:
    no elastic distortion); seed: an integer in [0, 2**64); fill: the value outside the image.
    A bad value raises ValueError naming it. All zeros (scale (1, 1)) change nothing.
    """

    rotation: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 0.0
    translate: float = 0.05
    elastic_alpha: float = 34.0
    elastic_sigma: float = 4.0
    seed: int = 0
    fill: float = 0.0

    def __post_init__(self):
        try:
            low, high = self.scale
        except (TypeError, ValueError):
            raise ValueError(f"scale must be a pair (low, high), got {self.scale!r}") from None
        object.__setattr__(self, "scale", (float(low), float(high)))
        for name in ("rotation", "shear", "translate", "elastic_alpha", "elastic_sigma", "fill"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if not np.isfinite(self.fill):
            raise ValueError(f"fill must be a finite number, got {self.fill}")
        F.augment_params(0, 1, 1, 0, 0, **self.parameters())  # the kernel's own checks of the ranges

    def parameters(self) -> dict:
        """The ranges as keyword arguments of cnnfast.functional.augment (PARAMETERS)."""
        return {name: getattr(self, name) for name in PARAMETERS}

    def __call__(self, batch: np.ndarray, step: int) -> np.ndarray:
        """The batch float32 [N, C, H, W] transformed, a new array. `step` (an integer in
        [0, 2**64)) numbers the batch: give every batch of a run its own."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < 2**64:
            raise ValueError(f"step must be an integer in [0, 2**64), got {step!r}")
        return F.augment(batch, self.seed, int(step), fill=self.fill, **self.parameters())

    def draw(self, n: int, height: int, width: int, step: int):
        """The transforms __call__ applies to a batch of n images of height x width at `step`:
        (affine [n, 2, 3], field [n, 2, height, width] or None), see F.augment_params."""
        return F.augment_params(n, height, width, self.seed, int(step), **self.parameters())

    def settings(self) -> dict:
        """The parameters as JSON-friendly values (a checkpoint stores them; from_settings reads them)."""
        values = self.parameters()
        values["scale"] = list(values["scale"])
        return values

    @classmethod
    def from_settings(cls, settings: dict, seed: int = 0) -> Augment:
        """The Augment that `settings()` describes, with `seed`. ValueError if they are not such."""
        if not isinstance(settings, dict) or set(settings) != set(PARAMETERS):
            keys = sorted(settings) if isinstance(settings, dict) else settings
            raise ValueError(f"augmentation settings must have the keys {list(PARAMETERS)}, got {keys!r}")
        return cls(seed=seed, **settings)

    def describe(self) -> str:
        """One line for logs: the ranges in words."""
        parts = []
        if self.rotation:
            parts.append(f"rotation +-{self.rotation:g} deg")
        if self.scale != (1.0, 1.0):
            parts.append(f"scale {self.scale[0]:g}-{self.scale[1]:g}")
        if self.shear:
            parts.append(f"shear +-{self.shear:g} deg")
        if self.translate:
            parts.append(f"shift +-{self.translate:g} of the size")
        if self.elastic_alpha:
            parts.append(f"elastic alpha {self.elastic_alpha:g} sigma {self.elastic_sigma:g} px")
        return ", ".join(parts) if parts else "none (identity)"
