"""Pictures and tables of training and evaluation: matplotlib helpers and the metrics CSV.

matplotlib is optional (``pip install cnnfast[plot]``): it is imported inside the functions
that draw, never at import time, and only its object-oriented API is used (a
``matplotlib.figure.Figure`` saved straight to a file), so no GUI backend is involved and
nothing changes pyplot's global state. Without it, drawing raises :class:`PlotUnavailable`
(an ImportError) whose message says what to install. The CSV functions need only the
standard library.

``history`` everywhere is the list of per-epoch dicts python -m cnnfast.train builds:
epoch, train_loss, train_accuracy, test_loss, test_accuracy, seconds, images_per_second.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from ._files import atomic_write

PLOT_MISSING = "--plot needs matplotlib: pip install cnnfast[plot]"
FIELDS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "images_per_second")
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def figure_class():
    """matplotlib.figure.Figure, or PlotUnavailable with the pip command if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(PLOT_MISSING) from None
    return Figure


def plot_path_problem(path) -> str | None:
    """Why `path` cannot take a plot (a message for parser.error), or None if it can."""
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() not in PLOT_SUFFIXES:
        return f"{path}: give a .png, .pdf or .svg file name"
    if os.path.isdir(path):
        return f"{path} is a directory"
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return f"{path}: no such directory"
    return None


def save_figure(fig, path) -> str:
    """Save a matplotlib Figure to `path` (.png, .pdf or .svg, from the name) atomically, like
    every file cnnfast writes (cnnfast._files). Returns path."""
    path = os.fspath(path)
    with atomic_write(path) as f:
        fig.savefig(f, format=os.path.splitext(path)[1][1:].lower())
    return path


# ----------------------------------------------------------------------------- training


def history_csv_path(model_path) -> str:
    """Where the metrics of a model go: beside it, same name, .csv (mnist_cnn.npz -> mnist_cnn.csv)."""
    root, _ = os.path.splitext(os.fspath(model_path))
    return root + ".csv"


def write_history_csv(history: list[dict], path) -> str:
    """Write the per-epoch metrics as CSV, one row per epoch, columns FIELDS (then any other
    keys the dicts have, in order of appearance); floats at full precision, so reading the file
    back gives the same numbers. Written atomically (a temp file, then rename). Returns path."""
    path = os.fspath(path)
    fields = list(FIELDS)
    for row in history:
        fields += [key for key in row if key not in fields]
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({key: _cell(value) for key, value in row.items()})
    return path


def _cell(value):
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest string that reads back as the same float
    return value


def read_history_csv(path) -> list[dict]:
    """The rows of a metrics CSV as dicts: integers as int, other numbers as float, the rest
    (and empty cells) as strings."""
    with open(os.fspath(path), newline="", encoding="utf-8") as f:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(f)]


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def plot_training_curves(history: list[dict], path) -> str:
    """Loss (left) and accuracy (right) per epoch, train and test, saved to `path` (.png, .pdf or
    .svg). Raises PlotUnavailable without matplotlib, ValueError for an empty history."""
    return save_figure(training_curves_figure(history), path)


def training_curves_figure(history: list[dict]):
    """The matplotlib Figure plot_training_curves saves."""
    Figure = figure_class()
    if not history:
        raise ValueError("no epochs to plot: the training history is empty")
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    marker = "o" if len(epochs) <= 30 else None
    names = {"train": "train (during the epoch, with dropout)", "test": "test (after the epoch)"}
    for split, style in (("train", "-"), ("test", "--")):
        loss_ax.plot(epochs, [row[f"{split}_loss"] for row in history], style, marker=marker, label=names[split])
        acc_ax.plot(
            epochs, [100 * row[f"{split}_accuracy"] for row in history], style, marker=marker, label=names[split]
        )
    loss_ax.set(title="loss (mean cross-entropy)", xlabel="epoch", ylabel="loss")
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    losses = [row[f"{split}_loss"] for row in history for split in ("train", "test")]
    if min(losses) > 0 and max(losses) > 10 * min(losses):  # spans more than a factor 10
        loss_ax.set_yscale("log")
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        ax.legend()
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    last = history[-1]
    fig.suptitle(
        f"{len(history)} epoch{'s' if len(history) != 1 else ''}: test accuracy "
        f"{100 * last['test_accuracy']:.2f}%, test loss {last['test_loss']:.4f}"
    )
    return fig


# ----------------------------------------------------------------------------- evaluation


def plot_evaluation(
    path, confusion: np.ndarray, images: np.ndarray, labels: np.ndarray, proba: np.ndarray, mistakes, title: str = ""
) -> str:
    """The confusion matrix as a heat map (counts, on a log colour scale so that single mistakes
    show; rows true digit, columns predicted) beside a grid of the images `mistakes` (indices
    into images, e.g. the most confident mistakes) with their true and predicted digits, saved
    to `path`. Raises PlotUnavailable without matplotlib."""
    return save_figure(evaluation_figure(confusion, images, labels, proba, mistakes, title), path)


def evaluation_figure(
    confusion: np.ndarray, images: np.ndarray, labels: np.ndarray, proba: np.ndarray, mistakes, title: str = ""
):
    """The matplotlib Figure plot_evaluation saves."""
    Figure = figure_class()
    from matplotlib.colors import LogNorm

    confusion = np.asarray(confusion)
    mistakes = list(mistakes)
    fig = Figure(figsize=(14 if mistakes else 7.5, 6.5), layout="constrained")
    if mistakes:
        left, right = fig.subfigures(1, 2, width_ratios=[1.05, 1])
    else:
        left, right = fig, None
    ax = left.subplots()
    classes = len(confusion)
    shown = np.ma.masked_equal(confusion, 0)
    top = max(int(confusion.max(initial=0)), 2)
    image = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=top))
    ax.set_facecolor("white")
    for t in range(classes):
        for p in range(classes):
            n = int(confusion[t, p])
            if n:
                light = np.log(n) < 0.6 * np.log(top)
                ax.text(p, t, str(n), ha="center", va="center", fontsize=8, color="white" if light else "black")
    ax.set(
        xticks=range(classes),
        yticks=range(classes),
        xlabel="predicted digit",
        ylabel="true digit",
        title="confusion matrix (images; log colour scale)",
    )
    left.colorbar(image, ax=ax, shrink=0.8)
    if right is not None:
        columns = min(len(mistakes), 4 if len(mistakes) <= 16 else 6)
        rows = math.ceil(len(mistakes) / columns)
        axes = np.atleast_1d(right.subplots(rows, columns)).ravel()
        for ax, index in zip(axes, mistakes):
            t, p = int(labels[index]), int(np.argmax(proba[index]))
            ax.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(f"#{index}: true {t}\npred {p} ({proba[index, p]:.3f})", fontsize=8, color="tab:red")
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[len(mistakes) :]:
            ax.set_axis_off()
        right.suptitle(f"the {len(mistakes)} most confident mistakes")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- augmentation


def plot_augment_grid(path, originals: np.ndarray, copies: np.ndarray, description: str = "") -> str:
    """A grid of digits: each row one of `originals` [n, H, W] (values in [0, 1]) followed by its
    augmented `copies` [n, k, H, W], saved to `path` (.png, .pdf or .svg). Raises
    PlotUnavailable without matplotlib."""
    return save_figure(augment_grid_figure(originals, copies, description), path)


def augment_grid_figure(originals: np.ndarray, copies: np.ndarray, description: str = ""):
    """The matplotlib Figure plot_augment_grid saves."""
    Figure = figure_class()
    rows, columns = copies.shape[0], copies.shape[1] + 1
    fig = Figure(figsize=(1.1 * columns, 1.1 * rows + 0.8), layout="constrained")
    axes = np.asarray(fig.subplots(rows, columns, squeeze=False))
    for r in range(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(originals[r] if c == 0 else copies[r, c - 1], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"step {c - 1}", fontsize=8)
        axes[r, 0].spines[:].set_color("tab:blue")
    fig.suptitle("augmented training digits" + (f"\n{description}" if description else ""), fontsize=10)
    return fig
