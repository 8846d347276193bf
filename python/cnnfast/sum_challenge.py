"""python -m cnnfast.sum_challenge: add up the digits a model reads, a playful end-to-end check.

Take one random MNIST image of each digit 0, 1, ..., 9, classify the ten, and add up the
predicted digits: a perfect classifier always gets 0+1+...+9 = 45. The challenge reads a sum
above 45 as overfitting and below 45 as underfitting. That reading is a heuristic, not a
diagnosis (a 3 read as 8 adds 5, an 8 read as 3 takes 5 away: the sign says which digits get
confused, not how the model generalises), so the command prints the real evidence beside it:
accuracy and loss on the training and test sets, and their gap.

    python -m cnnfast.sum_challenge                      # mnist_cnn.npz; trained first if missing
    python -m cnnfast.sum_challenge --trials 5000 --mode by-prediction --json

The work is split into pure functions on plain arrays, so any object with `predict_proba`
(or precomputed predictions) can be checked: :func:`draw_trials` picks the images of every
trial (as dataset indices) from the labels and predictions of a whole split,
:func:`statistics` and :func:`evidence` turn them into numbers, :func:`render_trial` and
:func:`report` into text. The split is predicted once; the trials only index into it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

import numpy as np

from . import mnist, plots, train
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
from ._terminal import digit_picture, histogram, picture_grid

TARGET = 45  # 0 + 1 + ... + 9
GAP_POINTS = 2.0  # train accuracy more than this many percentage points above test: overfitting?
LOW_ACCURACY = 0.97  # both accuracies below this: underfitting?
SAMPLES = 100  # trials listed in --json
MAX_TRIALS = 1_000_000

MODES = {
    "per-class": "one random {split} image of each true digit 0..9; the ten predicted digits are "
    "added up. A perfect classifier always gets 0+1+...+9 = 45.",
    "by-prediction": "for each digit d, one random {split} image that the model classifies as d; "
    "the ten true labels are added up. A perfect classifier always gets 45.",
    "random": "ten distinct random {split} images, any labels; the predicted digits are added up "
    "and compared with the sum of their true labels.",
}
SUM_NAMES = {
    "per-class": ("predicted sum", "45"),
    "by-prediction": ("true-label sum", "45"),
    "random": ("predicted sum", "true sum"),
}
TRIAL_NAMES = {
    "per-class": ("predicted digits", "true sum"),
    "random": ("predicted digits", "true sum"),
    "by-prediction": ("true labels", "sum of the predicted digits"),
}
EXPECTED = {
    "per-class": "product over digits of the per-class accuracy (recall)",
    "by-prediction": "product over digits of the precision (share of the images classified as d that are d)",
    "random": "chance that ten distinct random images are all right: "
    "product over k = 0..9 of (right - k) / (images - k), about accuracy^10",
}
CAVEAT = (
    "The sum is a heuristic, not a diagnosis: above or below 45 only says whether the wrong "
    "digits were read as larger or smaller ones (a 3 read as 8 adds 5), which is about which "
    "digits get confused, not about overfitting (fitting the training images better than "
    "unseen ones: a train-test gap) or underfitting (low accuracy on both)."
)


class NoTrials(ValueError):
    """No trial can be formed (a digit has no image to pick)."""


def draw_trials(
    mode: str, labels: np.ndarray, pred: np.ndarray, trials: int, rng: np.random.Generator, split: str = "test"
) -> dict:
    """Pick the images of `trials` trials from a split with true `labels` and predictions `pred`.

    Returns int64 arrays: indices, true, pred [trials, 10] (dataset indices and their labels),
    sum and target [trials]. per-class and random add the predicted digits (target: the true
    sum); by-prediction adds the true labels (target: the predicted digits, 45). Raises
    NoTrials if a digit has no image to pick."""
    labels, pred = np.asarray(labels, np.int64), np.asarray(pred, np.int64)
    if mode == "random":
        if len(labels) < 10:
            raise NoTrials(f"the {split} split has {len(labels)} images; a random trial needs 10")
        indices = np.stack([rng.choice(len(labels), 10, replace=False) for _ in range(trials)])
    elif mode in ("per-class", "by-prediction"):
        key = labels if mode == "per-class" else pred
        pools = [np.flatnonzero(key == d) for d in range(10)]
        missing = [d for d, pool in enumerate(pools) if len(pool) == 0]
        if missing and mode == "per-class":
            raise NoTrials(
                f"the {split} split has no image labelled {_digits(missing)}; a per-class trial needs one of each digit"
            )
        if missing:
            raise NoTrials(
                f"the model classifies none of the {len(labels):,} {split} images as "
                f"{_digits(missing)}, so no by-prediction trial can be formed: "
                "this model can never pass that version of the challenge"
            )
        picks = rng.integers(0, [len(pool) for pool in pools], size=(trials, 10))
        indices = np.stack([pools[d][picks[:, d]] for d in range(10)], axis=1)
    else:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    indices = indices.astype(np.int64)
    true, guess = labels[indices], pred[indices]
    added, target = (true, guess) if mode == "by-prediction" else (guess, true)
    return {"indices": indices, "true": true, "pred": guess, "sum": added.sum(axis=1), "target": target.sum(axis=1)}


def _digits(ds) -> str:
    return ", ".join(map(str, ds[:-1])) + (" or " if len(ds) > 1 else "") + str(ds[-1])


def expected_pass_rate(mode: str, labels: np.ndarray, pred: np.ndarray) -> float:
    """The pass rate if errors never cancelled, i.e. the chance that all ten digits are right."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    right = labels == pred
    if mode == "random":
        correct, n = int(right.sum()), len(labels)
        return float(np.prod([max(correct - k, 0) / (n - k) for k in range(10)])) if n >= 10 else 0.0
    key = labels if mode == "per-class" else pred
    rates = [right[key == d].mean() if (key == d).any() else 0.0 for d in range(10)]
    return float(np.prod(rates))


def statistics(mode: str, trials: dict, labels: np.ndarray, pred: np.ndarray) -> dict:
    """Pass rate, lucky passes, mean/sd of the sum, histogram of sum - target, expected pass rate."""
    passed = trials["sum"] == trials["target"]
    wrong = (trials["true"] != trials["pred"]).any(axis=1)
    difference = trials["sum"] - trials["target"]
    values, counts = np.unique(difference, return_counts=True)
    return {
        "trials": len(passed),
        "passes": int(passed.sum()),
        "pass_rate": float(passed.mean()),
        "lucky_passes": int((passed & wrong).sum()),
        "all_right": int((~wrong).sum()),
        "mean_sum": float(trials["sum"].mean()),
        "sd_sum": float(trials["sum"].std()),
        "mean_difference": float(difference.mean()),
        "histogram": {int(v): int(c) for v, c in zip(values, counts)},
        "expected_pass_rate": expected_pass_rate(mode, labels, pred),
    }


def evidence(train_scores: tuple[float, float], test_scores: tuple[float, float]) -> dict:
    """Train/test loss and accuracy, their gap, and a one-line reading (thresholds above)."""
    (train_loss, train_acc), (test_loss, test_acc) = train_scores, test_scores
    gap = 100 * (train_acc - test_acc)
    over, under = gap > GAP_POINTS, max(train_acc, test_acc) < LOW_ACCURACY
    low = f"accuracy is below {100 * LOW_ACCURACY:g}% on both sets"
    wide = f"train accuracy is {gap:.2f} points above test (more than {GAP_POINTS:g})"
    if over and under:
        reading = f"{wide}: suggests overfitting; and {low}: suggests underfitting too"
    elif over:
        reading = f"{wide}: suggests overfitting"
    elif under:
        reading = f"{low}: suggests underfitting"
    else:
        reading = (
            f"the gap is within {GAP_POINTS:g} points and accuracy reaches {100 * LOW_ACCURACY:g}%: "
            "no sign of over- or underfitting"
        )
    return {
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "accuracy_gap": train_acc - test_acc,
        "reading": reading,
    }


def verdict(total: int, target: int) -> str:
    """The challenge's own words."""
    if total == target:
        return f"= {target}: pass"
    side = "above" if total > target else "below"
    return f"{side} {target}: the challenge reads this as {'over' if total > target else 'under'}fitting"


def render_trial(images: np.ndarray, trial: dict, proba: np.ndarray, columns: int = 120, stream=None) -> list[str]:
    """The ten images of one trial drawn as evaluate draws digits (half-block pictures, or ASCII
    where `stream` cannot print them), as many per row as fit in `columns`, each with its true
    and predicted digit and the predicted digit's probability; wrong ones are marked WRONG."""
    blocks = []
    for i, index in enumerate(trial["indices"]):
        t, p = int(trial["true"][i]), int(trial["pred"][i])
        blocks.append(
            digit_picture(images[index], stream)
            + [f"true {t}", f"pred {p}", f"p {proba[index, p]:.3f}", "" if t == p else "WRONG"]
        )
    return picture_grid(blocks, columns)


def report(args, stats: dict, trials: dict, picture: list[str], evid: dict) -> list[str]:
    """The terminal report: the first trial, the many-trial statistics, the evidence, the caveat."""

    def wrap(text, indent="", hang=0):
        return textwrap.wrap(text, args.width, initial_indent=indent, subsequent_indent=indent + " " * hang)

    sum_name, target_name = SUM_NAMES[args.mode]
    added_name, total_name = TRIAL_NAMES[args.mode]
    total, target = int(trials["sum"][0]), int(trials["target"][0])
    added = trials["true" if args.mode == "by-prediction" else "pred"][0]
    lines = [
        f"Sum challenge: model {args.model}, {args.split} split ({evid[args.split + '_images']:,} images), "
        f"seed {args.seed}"
    ]
    lines += wrap(f"Mode {args.mode}: " + MODES[args.mode].format(split=args.split)) + ["", "Trial 1"] + picture + [""]
    lines += wrap(f"{added_name} {'+'.join(map(str, added))} = {total}   ({total_name} {target})")
    lines += [f"verdict: {verdict(total, target)}", "", f"{stats['trials']:,} trials, mode {args.mode}"]
    rows = [
        (
            "pass rate",
            f"{100 * stats['pass_rate']:.2f}%",
            f"{stats['passes']:,} of {stats['trials']:,} with {sum_name} = {target_name}",
        ),
        ("passed by luck", f"{stats['lucky_passes']:,}", "right sum although a digit was wrong (errors cancelled)"),
        (
            "expected pass rate",
            f"{100 * stats['expected_pass_rate']:.2f}%",
            f"if errors never cancelled: {EXPECTED[args.mode]}",
        ),
        (f"{sum_name} mean", f"{stats['mean_sum']:.2f}", f"standard deviation {stats['sd_sum']:.2f}"),
    ]
    for name, value, note in rows:
        lines += wrap(f"{name:<20}{value:>8}   {note}", "  ", 31)
    counts = dict(stats["histogram"])
    if max(counts) - min(counts) <= 40:  # show the empty bins in between too
        counts = {k: counts.get(k, 0) for k in range(min(counts), max(counts) + 1)}
    lines += [f"  {sum_name} - {target_name}:"] + ["    " + line for line in histogram(counts, width=50)]
    loss_gap = evid["train_loss"] - evid["test_loss"]
    lines += [
        "",
        "The real evidence: loss and accuracy on the full training and test sets",
        "                  images   accuracy      loss",
        *[
            f"  {split:<12}{evid[split + '_images']:>10,}   {100 * evid[split + '_accuracy']:7.2f}%   "
            f"{evid[split + '_loss']:7.4f}"
            for split in ("train", "test")
        ],
        f"  train - test              {100 * evid['accuracy_gap']:+7.2f}pp  {loss_gap:+7.4f}",
    ]
    lines += wrap(f"reading: {evid['reading']}", "  ", 9) + [""] + wrap(CAVEAT)
    return lines


def plot(path: str, images, trials: dict, proba, stats: dict, mode: str, figure_class=None) -> None:
    """The ten digits of the first trial with their predictions, and the histogram, in one picture."""
    plots.save_figure(figure(images, trials, proba, stats, mode, figure_class), path)


def figure(images, trials: dict, proba, stats: dict, mode: str, figure_class=None):
    """The matplotlib Figure `plot` saves. The histogram's counts are on a log scale (the bar
    at 0, most trials, would flatten the others) and written on the bars; its x-ticks are whole."""
    from matplotlib.ticker import MaxNLocator

    figure_class = figure_class if figure_class is not None else plots.figure_class()
    fig = figure_class(figsize=(12, 5), layout="constrained")
    grid = fig.add_gridspec(2, 10, height_ratios=[1, 1.4])
    for i, index in enumerate(trials["indices"][0]):
        t, p = int(trials["true"][0][i]), int(trials["pred"][0][i])
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(images[index], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(
            f"true {t}\npred {p} ({proba[index, p]:.2f})" + ("\nWRONG" if t != p else ""),
            fontsize=9,
            color="black" if t == p else "red",
        )
        ax.set_axis_off()
    total, target = int(trials["sum"][0]), int(trials["target"][0])
    fig.suptitle(f"Trial 1: {SUM_NAMES[mode][0]} {total}, target {target}: {verdict(total, target)}")
    ax = fig.add_subplot(grid[1, :])
    keys = sorted(stats["histogram"])
    counts = [stats["histogram"][k] for k in keys]
    bars = ax.bar(keys, counts, color="tab:blue")
    ax.bar_label(bars, labels=[f"{n:,}" for n in counts], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(counts) * 3)
    if keys[-1] - keys[0] <= 20:
        ax.set_xticks(range(keys[0], keys[-1] + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sum_name, target_name = SUM_NAMES[mode]
    ax.set_xlabel(f"{sum_name} - {target_name}")
    ax.set_ylabel("trials (log scale)")
    ax.set_title(
        f"{mode}: pass rate {100 * stats['pass_rate']:.1f}% over {stats['trials']:,} trials "
        f"(expected without cancelling errors {100 * stats['expected_pass_rate']:.1f}%)"
    )
    return fig


def _help_table(rows: dict, split: str = "") -> str:
    return "\n".join(
        textwrap.fill(text.format(split=split), 96, initial_indent=f"  {name:<15}", subsequent_indent=" " * 17)
        for name, text in rows.items()
    )


def build_parser() -> argparse.ArgumentParser:
    description = (
        textwrap.dedent(f"""\
        The sum challenge: take one random MNIST image of each digit 0..9, classify the ten
        and add up the predicted digits. A perfect classifier always gets 0+1+...+9 = 45.
        The challenge reads a sum above 45 as overfitting and below 45 as underfitting.

        That reading is a heuristic, not a diagnosis: the sign of the error only says whether
        wrong digits were read as larger or smaller ones. So the command also prints the real
        evidence: accuracy and loss on the full training and test sets and their gap, read as
        "suggests overfitting" when train accuracy is more than {GAP_POINTS:g} percentage points above
        test accuracy and "suggests underfitting" when both are below {100 * LOW_ACCURACY:g}%.

        Modes (--mode; images come from the --split):
        """)
        + _help_table(MODES, "MNIST")
        + textwrap.dedent("""

        A trial passes when its sum equals its target; it passes by luck when a digit was wrong
        nevertheless (errors that cancel: a 3 read as 4 and a 4 read as 3). The expected pass
        rate is the pass rate if errors never cancelled, the chance that all ten are right:
        """)
        + _help_table(EXPECTED)
    )
    p = argument_parser(
        prog="python -m cnnfast.sum_challenge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description,
        epilog=textwrap.dedent("""\
            If --model does not exist, the default model is trained first (python -m cnnfast.train
            --out MODEL, with --data-dir and --no-verify passed on). MNIST is read from --data-dir
            if it is given (it must hold the four files), otherwise from $CNNFAST_DATA or
            ~/.cache/cnnfast/mnist, downloaded there if missing. Exit status: 0 done, 1 no data,
            a bad model, no trial possible or no matplotlib, 2 bad arguments; 130 (143) after
            Ctrl-C (SIGTERM)."""),
    )
    add_model_argument(p)
    p.add_argument("--trials", type=int, default=1000, help="number of trials (default 1000)")
    p.add_argument("--mode", choices=list(MODES), default="per-class", help="which sum (default per-class)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="where images come from (default test)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking images (default 0)")
    add_data_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (text goes to stderr)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the first trial and the histogram (needs matplotlib)")
    p.add_argument("--width", type=int, default=120, help="terminal columns for the text (default 120, at least 80)")
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= args.trials <= MAX_TRIALS:
        parser.error(f"--trials must be between 1 and {MAX_TRIALS:,}, got {args.trials}")
    if args.seed < 0:
        parser.error(f"--seed must be at least 0, got {args.seed}")
    if args.width < 80:
        parser.error(f"--width must be at least 80, got {args.width}")
    check_model_arg(parser, args.model)
    if not os.path.exists(args.model) and not os.path.isdir(os.path.dirname(os.path.abspath(args.model))):
        parser.error(f"--model {args.model} does not exist and cannot be trained there: no such directory")
    check_plot_arg(parser, args.plot)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    log = sys.stderr if args.json else sys.stdout
    if not can_plot(args.plot):
        return 1
    data = None
    if not os.path.exists(args.model):
        print(
            f"{args.model} does not exist: training the default model first "
            f"(as python -m cnnfast.train --out {args.model} would)",
            file=log,
            flush=True,
        )
        data = load_mnist(args.data_dir, args.no_verify)
        if data is None:
            return 1
        settings = train.default_settings(out=args.model, data_dir=args.data_dir, no_verify=args.no_verify)
        status, _ = train.train(settings, data, log)
        if status != 0:
            return status
    model = load_model(args.model)
    if model is None:
        return 1
    data = data if data is not None else load_mnist(args.data_dir, args.no_verify)
    if data is None:
        return 1
    x_train, y_train, x_test, y_test = data

    data = {"train": (x_train, y_train.astype(np.int64)), "test": (x_test, y_test.astype(np.int64))}
    other = "train" if args.split == "test" else "test"
    images, labels = data[args.split]
    try:
        proba = {args.split: mnist.probabilities(model, images)}
        pred = proba[args.split].argmax(axis=1)
        # a trial that cannot be formed is reported before the long pass over the other split
        trials = draw_trials(args.mode, labels, pred, args.trials, np.random.default_rng(args.seed), args.split)
        proba[other] = mnist.probabilities(model, data[other][0])
    except NoTrials as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: the model in {args.model} does not fit 28x28 MNIST images: {error}", file=sys.stderr)
        return 1

    stats = statistics(args.mode, trials, labels, pred)
    evid = evidence(mnist.scores(data["train"][1], proba["train"]), mnist.scores(data["test"][1], proba["test"]))
    evid.update(train_images=len(y_train), test_images=len(y_test))
    first = {key: value[0] for key, value in trials.items()}
    lines = report(args, stats, trials, render_trial(images, first, proba[args.split], args.width, log), evid)
    print("\n".join(lines), file=log)
    if args.plot is not None:
        plot(args.plot, images, trials, proba[args.split], stats, args.mode)
        print(f"wrote {args.plot}", file=log)
    if args.json:
        samples = [
            {
                "indices": trials["indices"][t].tolist(),
                "true": trials["true"][t].tolist(),
                "pred": trials["pred"][t].tolist(),
                "sum": int(trials["sum"][t]),
                "target": int(trials["target"][t]),
            }
            for t in range(min(SAMPLES, args.trials))
        ]
        out = {
            "trials": args.trials,
            "mode": args.mode,
            "split": args.split,
            "seed": args.seed,
            "model": os.path.abspath(args.model),
            "target": TARGET if args.mode != "random" else None,
            **{k: v for k, v in stats.items() if k != "trials"},
            "histogram": {str(k): v for k, v in stats["histogram"].items()},
            **evid,
            "samples": samples,
        }
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    from ._cli import run_command

    sys.exit(run_command(main))
