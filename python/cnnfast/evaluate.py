"""python -m cnnfast.evaluate: look inside a trained model's results on MNIST.

    python -m cnnfast.evaluate                              # mnist_cnn.npz on the test set
    python -m cnnfast.evaluate --model other.npz --mistakes 16 --plot evaluation.png
    python -m cnnfast.evaluate --json > metrics.json

Prints the accuracy and mean cross-entropy loss, each digit's precision and recall, the 10x10
confusion matrix, and the model's most confident mistakes (the wrong answers it gave the
highest probability) drawn in the terminal. The pieces are pure functions on labels and
class probabilities, so they work for any object with `predict_proba`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

import numpy as np

from . import mnist, plots
from ._cli import (
    add_data_arguments,
    add_model_argument,
    argument_parser,
    can_plot,
    check_model_arg,
    check_plot_arg,
    load_mnist,
    load_model,
)
from ._terminal import digit_picture, picture_grid
from .mnist import CLASSES, scores

MAX_MISTAKES = 1000


def confusion_matrix(labels: np.ndarray, pred: np.ndarray, classes: int = CLASSES) -> np.ndarray:
    """int64 [classes, classes]: entry [t, p] counts the images of true class t predicted as p."""
    labels, pred = np.asarray(labels, np.int64), np.asarray(pred, np.int64)
    return np.bincount(labels * classes + pred, minlength=classes * classes).reshape(classes, classes)


def per_class(confusion: np.ndarray) -> list[dict]:
    """For each class: images (support), predicted (how often it was the answer), correct,
    precision = correct / predicted and recall = correct / images (None where undefined: a
    class never predicted has no precision, a class with no images no recall)."""
    confusion = np.asarray(confusion)
    out = []
    for d in range(len(confusion)):
        correct, images, predicted = int(confusion[d, d]), int(confusion[d].sum()), int(confusion[:, d].sum())
        out.append(
            {
                "digit": d,
                "images": images,
                "predicted": predicted,
                "correct": correct,
                "precision": correct / predicted if predicted else None,
                "recall": correct / images if images else None,
            }
        )
    return out


def confident_mistakes(labels: np.ndarray, proba: np.ndarray, n: int) -> np.ndarray:
    """Indices of the (up to) n wrongly classified images whose wrong answer had the highest
    probability, most confident first (ties: lower index first)."""
    labels = np.asarray(labels, np.int64)
    pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    confidence = proba[wrong, pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")[:n]].astype(np.int64)


def summarize(labels: np.ndarray, proba: np.ndarray, mistakes: int = 8) -> dict:
    """Everything the report shows, as plain numbers and lists (the --json output, less the
    model and split)."""
    labels = np.asarray(labels, np.int64)
    pred = proba.argmax(axis=1)
    loss, accuracy = scores(labels, proba)
    confusion = confusion_matrix(labels, pred)
    worst = confident_mistakes(labels, proba, mistakes)
    right = int((pred == labels).sum())
    return {
        "images": len(labels),
        "accuracy": accuracy,
        "loss": loss,
        "correct": right,
        "wrong": len(labels) - right,
        "per_class": per_class(confusion),
        "confusion_matrix": confusion.tolist(),
        "mistakes": [
            {
                "index": int(i),
                "true": int(labels[i]),
                "predicted": int(pred[i]),
                "probability": float(proba[i, pred[i]]),
                "true_probability": float(proba[i, labels[i]]),
            }
            for i in worst
        ],
    }


# ----------------------------------------------------------------------------- text


def _percent(value) -> str:
    return "      -" if value is None else f"{100 * value:6.2f}%"


def render_per_class(rows: list[dict]) -> list[str]:
    lines = ["digit   precision   recall    images  predicted"]
    for r in rows:
        lines.append(
            f"  {r['digit']}      {_percent(r['precision'])}  {_percent(r['recall'])}  "
            f"{r['images']:>8,}  {r['predicted']:>9,}"
        )
    return lines


def render_confusion(confusion) -> list[str]:
    """The matrix as a table: rows true digit, columns predicted; off-diagonal zeros as '.'."""
    confusion = np.asarray(confusion)
    width = max(5, len(f"{int(confusion.max(initial=0)):,}") + 1)
    head = "true\\pred " + "".join(f"{p:>{width}}" for p in range(len(confusion))) + f"{'images':>{width + 3}}"
    lines = [head]
    for t, row in enumerate(confusion):
        cells = "".join(f"{'.' if n == 0 and p != t else f'{int(n):,}':>{width}}" for p, n in enumerate(row))
        lines.append(f"{t:>9} {cells}{int(row.sum()):>{width + 3},}")
    lines.append(f"{'predicted':>9} " + "".join(f"{int(n):>{width},}" for n in confusion.sum(axis=0)))
    return lines


def render_mistakes(images: np.ndarray, mistakes: list[dict], columns: int = 120, stream=None) -> list[str]:
    """The mistakes as 28x28 pictures side by side (as many as fit in `columns`), each with its
    index, true digit, predicted digit and that prediction's probability."""
    blocks = [
        digit_picture(images[m["index"]], stream)
        + [
            f"#{m['index']}",
            f"true {m['true']}  pred {m['predicted']}",
            f"p({m['predicted']}) = {m['probability']:.3f}",
        ]
        for m in mistakes
    ]
    return picture_grid(blocks, columns)


def report(summary: dict, images: np.ndarray, name: str, split: str, columns: int = 120, stream=None) -> list[str]:
    """The terminal report; prose is wrapped to `columns`, the tables are about 70 wide."""

    def wrap(text):
        return textwrap.wrap(text, columns, subsequent_indent="  ")

    lines = wrap(f"Model {name} on the MNIST {split} split ({summary['images']:,} images)")
    lines += [
        f"  accuracy  {100 * summary['accuracy']:.2f}%   ({summary['correct']:,} right, {summary['wrong']:,} wrong)",
        f"  loss      {summary['loss']:.4f}   (mean cross-entropy)",
        "",
    ]
    lines += wrap(
        "Per digit (precision: of the images predicted as the digit, the share that are it; "
        "recall: of the digit's images, the share found)"
    )
    lines += ["  " + line for line in render_per_class(summary["per_class"])]
    lines += [""] + wrap(
        "Confusion matrix (rows: true digit, columns: predicted digit; the diagonal is right, '.' is none)"
    )
    lines += ["  " + line for line in render_confusion(summary["confusion_matrix"])]
    mistakes = summary["mistakes"]
    if mistakes:
        lines += [""] + wrap(
            f"The {len(mistakes)} most confident mistake{'s' if len(mistakes) != 1 else ''} "
            f"(of {summary['wrong']:,}): the wrong answers given the highest probability"
        )
        lines += render_mistakes(images, mistakes, columns, stream)
    elif summary["wrong"] == 0:
        lines += ["", "No mistakes."]
    return lines


# ----------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(
        prog="python -m cnnfast.evaluate",
        description="Evaluate a trained model on MNIST: accuracy and mean cross-entropy loss, each digit's "
        "precision and recall, the 10x10 confusion matrix, and the most confident mistakes "
        "(the wrong answers the model gave the highest probability) drawn as 28x28 pictures.",
        epilog="MNIST is read from --data-dir if it is given (it must hold the four files), otherwise from "
        "$CNNFAST_DATA or ~/.cache/cnnfast/mnist, downloaded there if missing. Exit status: 0 done, "
        "1 no data, no or a bad model, or --plot without matplotlib (pip install cnnfast[plot]), 2 bad arguments.",
    )
    add_model_argument(p)
    p.add_argument(
        "--split",
        choices=["test", "train"],
        default="test",
        help="the 10,000 test images or the 60,000 training images (default test)",
    )
    add_data_arguments(p)
    p.add_argument(
        "--mistakes",
        type=int,
        default=8,
        metavar="N",
        help="how many of the most confident mistakes to show (default 8; 0 for none)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (the report goes to stderr): model, split, images, accuracy, "
        "loss, correct, wrong, per_class, confusion_matrix (rows true, columns predicted), "
        "mistakes",
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the confusion matrix as a heat map and the mistakes in a grid "
        "(.png, .pdf or .svg; needs matplotlib)",
    )
    p.add_argument(
        "--width", type=int, default=120, help="terminal columns for the pictures (default 120, at least 40)"
    )
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.mistakes <= MAX_MISTAKES:
        parser.error(f"--mistakes must be between 0 and {MAX_MISTAKES}, got {args.mistakes}")
    if args.width < 40:
        parser.error(f"--width must be at least 40, got {args.width}")
    check_model_arg(parser, args.model)
    check_plot_arg(parser, args.plot)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if not can_plot(args.plot):
        return 1
    model = load_model(args.model)
    if model is None:
        return 1
    data = load_mnist(args.data_dir, args.no_verify)
    if data is None:
        return 1
    x_train, y_train, x_test, y_test = data
    images, labels = (x_test, y_test) if args.split == "test" else (x_train, y_train)
    labels = labels.astype(np.int64)
    try:
        proba = mnist.probabilities(model, images)
    except ValueError as error:
        print(f"error: the model in {args.model} does not fit 28x28 MNIST digits: {error}", file=sys.stderr)
        return 1

    summary = summarize(labels, proba, args.mistakes)
    log = sys.stderr if args.json else sys.stdout
    print("\n".join(report(summary, images, args.model, args.split, args.width, log)), file=log)
    if args.plot is not None:
        plots.plot_evaluation(
            args.plot,
            np.array(summary["confusion_matrix"]),
            images,
            labels,
            proba,
            [m["index"] for m in summary["mistakes"]],
            f"{os.path.basename(args.model)} on the MNIST {args.split} split: accuracy "
            f"{100 * summary['accuracy']:.2f}%, loss {summary['loss']:.4f}",
        )
        print(f"wrote {args.plot}", file=log)
    if args.json:
        print(json.dumps({"model": os.path.abspath(args.model), "split": args.split, **summary}))
    return 0


if __name__ == "__main__":
    from ._cli import run_command

    sys.exit(run_command(main))
