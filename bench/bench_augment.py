#!/usr/bin/env python3
"""What data augmentation costs: milliseconds per batch of augmentation beside a training step.

    python bench/bench_augment.py                  # batch 128, 1 and 2 threads
    python bench/bench_augment.py --json out.json  # the table on stdout, everything as JSON in out.json

For each thread count, interleaved over --repeats rounds (so both see the same machine load):
- augmentation (cnnfast.augment.Augment, as `python -m cnnfast.train --augment` applies it to
  each batch): the default parameters (affine + elastic), affine only, elastic only; a batch of
  --batch-size float32 [N, 1, 28, 28] digits (the first training images if MNIST is found, else
  random ones: the cost does not depend on the pixels);
- a training step of the default model (forward, softmax cross-entropy, backward, Adam), the
  work `cnnfast.train.train_epoch` does per batch, on the same batch.
Each figure is the median over rounds of the mean of --calls calls. The cost of augmentation is
given as a share of the training step (the budget: below 10%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import cnnfast
from bench_train import cpu_model  # (beside this script)
from cnnfast import functional as F
from cnnfast.augment import Augment
from cnnfast.nn import mnist_cnn
from cnnfast.optim import Adam

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")

VARIANTS = {
    "augment (default: affine + elastic)": Augment(),
    "affine only": Augment(elastic_alpha=0),
    "elastic only": Augment(rotation=0, scale=(1, 1), shear=0, translate=0),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_augment.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds; medians reported (default 7)")
    p.add_argument("--calls", type=int, default=20, help="calls timed together in a round (default 20)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-': stdout only)")
    return p


def batch(n: int) -> tuple[np.ndarray, str]:
    directory = os.environ.get("CNNFAST_DATA") or (SHARED_MNIST if os.path.isdir(SHARED_MNIST) else None)
    if directory:
        try:
            from cnnfast.datasets import load_mnist
            from cnnfast.mnist import as_model_input

            images = load_mnist(directory, verify=False)[0]
            return as_model_input(images[:n]), "MNIST training digits"
        except Exception:  # noqa: BLE001 - any problem with the data: time random digits instead
            pass
    return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32), "random pixels"


def mean_ms(fn, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e3


def measure(threads: int, x: np.ndarray, args) -> dict:
    cnnfast.set_num_threads(threads)
    labels = np.arange(len(x)) % 10
    model = mnist_cnn(0)
    model.train()
    optimizer = Adam(model.parameters(), lr=1e-3)

    def train_step(_):
        logits = model.forward(x)
        _, dlogits = F.softmax_cross_entropy(logits, labels)
        model.backward(dlogits, input_grad=False)
        optimizer.step()

    timers = {"training step (default model, Adam)": train_step}
    for name, augment in VARIANTS.items():
        timers[name] = lambda step, augment=augment: augment(x, step)
    for fn in timers.values():  # warm up: allocations, the OpenMP pool
        for i in range(3):
            fn(i)
    samples = {name: [] for name in timers}
    for _ in range(args.repeats):
        for name, fn in timers.items():
            samples[name].append(mean_ms(fn, args.calls))
    return {name: {"median_ms": statistics.median(s), "min_ms": min(s), "samples_ms": s} for name, s in samples.items()}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    x, source = batch(args.batch_size)
    info = cnnfast.build_info()
    load_start = os.getloadavg()
    results = {str(t): measure(t, x, args) for t in args.threads}
    report = {
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "loadavg_start": load_start},
        "isa": info["isa"],
        "kernels": info["kernels"].get("augment"),
        "batch_size": args.batch_size,
        "images": source,
        "repeats": args.repeats,
        "calls": args.calls,
        "results": results,
    }
    report["machine"]["loadavg_end"] = os.getloadavg()
    out = sys.stderr if args.json == "-" else sys.stdout
    print(
        f"{report['machine']['cpu']}, ISA {info['isa']} (augment: {report['kernels']}); batch {args.batch_size} "
        f"of {source}; load average {load_start[0]:.2f} at start, {report['machine']['loadavg_end'][0]:.2f} at end",
        file=out,
    )
    print(f"{'':40s}" + "".join(f"{t + (' thread' if t == '1' else ' threads'):>22s}" for t in results), file=out)
    step_name = "training step (default model, Adam)"
    for name in results[str(args.threads[0])]:
        cells = []
        for t in results:
            ms = results[t][name]["median_ms"]
            share = "" if name == step_name else f" ({100 * ms / results[t][step_name]['median_ms']:4.1f}%)"
            cells.append(f"{ms:8.3f} ms{share}")
        print(f"{name:40s}" + "".join(f"{c:>22s}" for c in cells), file=out)
    print("(medians; in parentheses: the share of a training step)", file=out)
    if args.json == "-":
        print(json.dumps(report))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
