"""Small models the tests build."""

import numpy as np

from cnnfast import nn


def small_model(seed=0):
    """Every kind of layer, on 2-channel 6x6 input, 5 classes."""
    r = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=r),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2, rng=r),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.3, rng=r),
        nn.Linear(4 * 2 * 2, 5, rng=r),
    )
