"""MNIST as a model sees it, and the scores the commands report on it.

A model from cnnfast.nn takes float32 input of any shape its first layer accepts; MNIST's
digits are uint8 [N, 28, 28] (0..255) and ten classes. This module is the bridge:
:func:`as_model_input` scales digits to float32 [N, 1, 28, 28] in [0, 1], :func:`probabilities`
runs a model over a whole split a batch at a time, and :func:`scores` gives the mean
cross-entropy loss and the accuracy from class probabilities (train, evaluate and
sum_challenge all report these, computed here once).
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 28
CLASSES = 10
BATCH = 1000  # digits converted and predicted at a time: 60,000 at once would be 188 MB of float32


def as_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] (0..255) -> float32 [N, 1, 28, 28] in [0, 1]; float32 [N, 1, 28, 28] as is."""
    images = np.asarray(images)
    if images.dtype == np.uint8 and images.ndim == 3:
        return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    if images.dtype == np.float32 and images.ndim == 4 and images.shape[1] == 1:
        return np.ascontiguousarray(images)
    raise ValueError(
        f"images must be uint8 [N, 28, 28] or float32 [N, 1, 28, 28], got {images.dtype} {list(images.shape)}"
    )


def probabilities(model, images: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
    """float64 [N, 10]: `model.predict_proba` of uint8 digits [N, 28, 28], converted
    `batch_size` at a time. A ValueError if the model does not take 28x28 digits or does not
    give 10 probabilities per digit (its message says which)."""
    chunks = [
        np.asarray(model.predict_proba(as_model_input(images[i : i + batch_size])), np.float64)
        for i in range(0, len(images), batch_size)
    ]
    proba = np.concatenate(chunks) if chunks else np.zeros((0, CLASSES))
    if proba.shape != (len(images), CLASSES):
        raise ValueError(
            f"it gives {list(proba.shape)} probabilities for {len(images)} images, not {CLASSES} per image"
        )
    return proba


def scores(labels: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) from class probabilities [N, classes] and true labels [N]."""
    labels = np.asarray(labels, np.int64)
    p_true = proba[np.arange(len(labels)), labels]
    loss = -np.log(np.maximum(p_true, np.finfo(np.float64).tiny)).mean()
    return float(loss), float((proba.argmax(axis=1) == labels).mean())


def evaluate(model, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of `model` on uint8 digits and their labels."""
    return scores(labels, probabilities(model, images))
