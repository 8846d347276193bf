"""What every command (python -m cnnfast.<command>) shares: its argument parser, reading MNIST,
and how it ends.

- `argument_parser`: argparse with abbreviations off (`--epoch 3` is an error, not `--epochs 3`).
- `add_model_argument`, `add_data_arguments`: the flags every command that reads a model or
  MNIST has, spelled and explained once.
- `check_plot_arg`, `can_plot`: --plot checked before any work (a bad name is exit 2, no
  matplotlib exit 1).
- `check_model_arg` and `load_model`: --model, checked before any work (a directory is a bad
  argument, exit 2), then loaded with one message for a missing or unreadable file (exit 1).
- `load_mnist`: MNIST for a command's --data-dir / --no-verify; one line on stderr says which
  directory it read, and a data problem is printed in the command's words (flags, not arguments).
- `run_command`: runs a command's main() for `python -m`; Ctrl-C (SIGINT) or SIGTERM anywhere
  stops it with one line on stderr and exit status 130 or 143, never a traceback. Files being
  written are written atomically (cnnfast._files), so an interruption leaves them as they were.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from . import datasets, nn, plots


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT or SIGTERM) asked the command to stop now; `note` says more, if anything."""

    def __init__(self, signum: int, note: str = ""):
        super().__init__(signum, note)
        self.signum, self.note = signum, note


def argument_parser(**kwargs) -> argparse.ArgumentParser:
    """argparse.ArgumentParser for a command: unambiguous flags only (no abbreviations)."""
    return argparse.ArgumentParser(allow_abbrev=False, **kwargs)


DEFAULT_MODEL = "mnist_cnn.npz"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model FILE, the model a command reads (default mnist_cnn.npz)."""
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"the model file from python -m cnnfast.train (default {DEFAULT_MODEL})"
    )


def add_data_arguments(parser: argparse.ArgumentParser, default=False) -> None:
    """--data-dir and --no-verify, for a command that reads MNIST (`default`: --no-verify's
    value when not given; train uses None, to tell "not given" from a resumed run's setting)."""
    parser.add_argument(
        "--data-dir", default=None, help="directory holding the four MNIST IDX files (plain or .gz); it must hold them"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        default=default,
        help="accept IDX files whose SHA-256 differs from the official MNIST",
    )


def check_plot_arg(parser: argparse.ArgumentParser, path) -> None:
    """--plot, when given, names a .png, .pdf or .svg file in an existing directory (exit 2 if not)."""
    if path is not None and plots.plot_path_problem(path):
        parser.error(f"--plot {plots.plot_path_problem(path)}")


def can_plot(path) -> bool:
    """True without --plot (`path` None) or with matplotlib; else False after saying on stderr
    what to install (the command then exits with status 1, before any work)."""
    if path is None:
        return True
    try:
        plots.figure_class()
    except plots.PlotUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    return True


def check_model_arg(parser: argparse.ArgumentParser, path) -> None:
    """--model names a file, not a directory (parser.error, exit 2, if it does not)."""
    if os.path.isdir(path):
        parser.error(f"--model {path} is a directory; give a model file such as {os.path.join(path, DEFAULT_MODEL)}")


def load_model(path):
    """The model in `path` (a file python -m cnnfast.train or model.save wrote); None after
    printing why on stderr if there is none there or it cannot be read (the command then exits
    with status 1)."""
    if not os.path.exists(path):
        print(
            f"error: no model file {path}: train one with python -m cnnfast.train (or give --model FILE)",
            file=sys.stderr,
        )
        return None
    try:
        return nn.load_model(path)
    except (OSError, nn.ModelFormatError) as error:
        print(f"error: cannot load the model: {error}", file=sys.stderr)
        return None


PLACES = {"root": "--data-dir", "$CNNFAST_DATA": "$CNNFAST_DATA", "cache": "the cache"}


def load_mnist(data_dir, no_verify: bool):
    """(x_train, y_train, x_test, y_test) from --data-dir (which must hold them) or, without it,
    from the search order; says on stderr which directory is read. None after printing the
    error if the data cannot be had (the command then exits with status 1)."""
    found = datasets.find_mnist(data_dir)
    if found is not None:
        place, directory = found
        print(f"cnnfast: MNIST from {os.path.abspath(directory)} ({PLACES[place]})", file=sys.stderr, flush=True)
    try:
        return datasets.load_mnist(data_dir, verify=not no_verify)
    except datasets.DatasetError as error:
        print(f"error: {error.command_message}", file=sys.stderr)
        return None


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def run_command(main) -> int:
    """Run a command's main() for `python -m`: its exit status; a quiet exit when the reader of
    stdout goes away (`python -m cnnfast.backprop | head`); and for SIGINT or SIGTERM one line
    on stderr and status 128 + the signal's number."""
    spec = getattr(main, "__globals__", {}).get("__spec__")  # run as __main__, named by its spec
    prog = "python -m " + (
        spec.name.removesuffix(".__main__") if spec is not None else getattr(main, "__module__", "cnnfast")
    )
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in before.items():
        if handler is not signal.SIG_IGN:  # a signal ignored by the parent stays so
            signal.signal(signum, _raise_interrupted)
    try:
        return _run(main, prog)
    finally:  # (called in-process, as the tests do, it leaves the caller's handlers as they were)
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _run(main, prog: str) -> int:
    try:
        status = main()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except KeyboardInterrupt as interruption:
        for other in (signal.SIGINT, signal.SIGTERM):  # a second signal must not interrupt the goodbye
            signal.signal(other, signal.SIG_IGN)
        signum = getattr(interruption, "signum", signal.SIGINT)
        note = getattr(interruption, "note", "")
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            _quiet_stdout()
        print(
            f"{prog}: stopped by {signal.Signals(signum).name}{note}; no file was left half-written",
            file=sys.stderr,
            flush=True,
        )
        return 128 + signum


def _quiet_stdout():
    # Python would complain once more when it flushes stdout at exit: point it at devnull.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
