#!/usr/bin/env python3
"""End-to-end benchmark: cnnfast training and inference images/s, beside PyTorch when importable.

    pip install .                               # cnnfast itself (this script imports the installed package)
    python bench/bench_train.py                 # 1 epoch of 60,000 images, 3 interleaved repeats, 2 threads
    python bench/bench_train.py --limit 10000 --repeats 1      # a quick check
    python bench/bench_train.py --json          # one JSON object on stdout (the table goes to stderr)
    python bench/bench_train.py --json out.json # the table on stdout, the JSON object in out.json
    python bench/bench_train.py --no-torch --scaling --limit 30000   # cnnfast on 2 threads against 1

What is timed, for both frameworks, on the same data, threads and batch:
- training: the default model (Conv2d(1,32,3) ReLU MaxPool2d(2) Conv2d(32,64,3) ReLU MaxPool2d(2)
  Flatten Dropout(0.5) Linear(1600,10)), Adam lr 1e-3, batch 128, a fresh model from the same seed
  for every run, over --epochs full passes of the shuffled training set. The loop is cnnfast's
  own `cnnfast.train.train_epoch` (gather the batch, uint8 -> float32, forward, loss, backward,
  Adam step, loss and accuracy bookkeeping); the PyTorch loop does the same steps on the same
  NumPy batches. Loading the data and evaluating are not timed.
- inference: the 10,000 test images (converted to float32 beforehand) in batches of 1,000,
  the eval-mode forward pass and argmax, right after training (cnnfast: `model.infer`, which
  runs each 1,000-image batch through the layers 128 images at a time; PyTorch: its forward
  under torch.no_grad at batch 1,000).
Runs are interleaved (cnnfast, torch, cnnfast, torch, ...) so that both see the same machine
load; medians are reported with the ratio cnnfast / PyTorch (above 1: cnnfast is faster).
With --scaling, each repeat also runs cnnfast on one thread (interleaved with the rest, in the same
process), and the table gives --threads' speedup over one thread: the ratio of the medians.
Keras/TensorFlow and JAX are measured by their own scripts in ../shared/peers (bench/run_peers.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")

try:
    import cnnfast
    from cnnfast.datasets import DatasetError, load_mnist
    from cnnfast.mnist import as_model_input
    from cnnfast.nn import mnist_cnn
    from cnnfast.optim import Adam
    from cnnfast.train import train_epoch
except ImportError as error:  # pragma: no cover - a set-up problem, not a benchmark result
    sys.exit(f"bench_train: cannot import cnnfast ({error}); install it first: pip install {REPO}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/bench_train.py",
        description="Training and inference images/s of cnnfast's default MNIST model, and of the same "
        "model in PyTorch when it is importable, run interleaved on the same data and threads.",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory with the four MNIST IDX files (default: $CNNFAST_DATA, then "
        "../shared/data/mnist beside the repository, then cnnfast's cache)",
    )
    p.add_argument("--threads", type=int, default=2, help="threads for both frameworks (default 2)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training set per timed run (default 1)")
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="train on the first N training images only (quick runs)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per framework; medians reported (default 3)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (default 128)")
    p.add_argument("--infer-batch-size", type=int, default=1000, help="inference batch (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and dropout (default 0)")
    p.add_argument("--no-torch", action="store_true", help="time cnnfast only, even if PyTorch is importable")
    p.add_argument(
        "--scaling",
        action="store_true",
        help="also time cnnfast on one thread in every repeat and report --threads' speedup over it",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write one JSON object to FILE, or to stdout without FILE (the table then goes to stderr)",
    )
    return p


def check_args(parser, args):
    for name in ("threads", "epochs", "repeats", "batch_size", "infer_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.scaling and args.threads == 1:
        parser.error("--scaling compares --threads with one thread: give --threads 2 or more")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if args.json not in (None, "-"):
        try:  # fail now, not after minutes of benchmarking
            with open(args.json, "a"):
                pass
        except OSError as error:
            parser.error(f"--json {args.json} cannot be written: {error.strerror or error}")


def data_dir(args):
    if args.data_dir is not None or os.environ.get("CNNFAST_DATA"):
        return args.data_dir
    return SHARED_MNIST if os.path.isdir(SHARED_MNIST) else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------ cnnfast


def cnnfast_run(data, args) -> dict:
    x_train, y_train, x_test_f, y_test = data
    model = mnist_cnn(args.seed)
    optimizer = Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(args.seed)
    train_s, loss, acc = 0.0, 0.0, 0.0
    for _ in range(args.epochs):
        loss, acc, seconds = train_epoch(model, optimizer, x_train, y_train, args.batch_size, rng)
        train_s += seconds
    model.eval()
    bs, correct = args.infer_batch_size, 0
    start = time.perf_counter()
    for i in range(0, len(x_test_f), bs):
        pred = model.infer(x_test_f[i : i + bs]).argmax(axis=1)
        correct += int((pred == y_test[i : i + bs]).sum())
    infer_s = time.perf_counter() - start
    return result(len(x_train) * args.epochs, train_s, len(x_test_f), infer_s, loss, acc, correct)


def cnnfast_warmup(data, args) -> None:
    """A few steps and one inference batch on a throwaway model: thread pool, packing buffers, caches."""
    x_train, y_train, x_test_f, _ = data
    n = min(len(x_train), 3 * args.batch_size)
    model = mnist_cnn(args.seed + 1)
    train_epoch(
        model, Adam(model.parameters(), lr=1e-3), x_train[:n], y_train[:n], args.batch_size, np.random.default_rng(0)
    )
    model.infer(x_test_f[: args.infer_batch_size])


# ------------------------------------------------------------------------------------------ PyTorch


def torch_model(torch, seed):
    nn = torch.nn
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(1600, 10),
    )


def torch_train_epoch(torch, model, optimizer, images, labels, batch_size, rng):
    """cnnfast.train.train_epoch's steps in PyTorch: same batches, same conversion, same bookkeeping."""
    model.train()
    lossf = torch.nn.CrossEntropyLoss()
    order = rng.permutation(len(images))
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        batch = order[i : i + batch_size]
        x = torch.from_numpy(as_model_input(images[batch]))
        y = torch.from_numpy(labels[batch].astype(np.int64))
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = lossf(logits, y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / max(seen, 1), correct / max(seen, 1), time.perf_counter() - start


def torch_run(torch, data, args) -> dict:
    x_train, y_train, x_test_f, y_test = data
    model = torch_model(torch, args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(args.seed)
    train_s, loss, acc = 0.0, 0.0, 0.0
    for _ in range(args.epochs):
        loss, acc, seconds = torch_train_epoch(torch, model, optimizer, x_train, y_train, args.batch_size, rng)
        train_s += seconds
    model.eval()
    xt, yt = torch.from_numpy(x_test_f), torch.from_numpy(y_test)
    bs, correct = args.infer_batch_size, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(xt), bs):
            correct += int((model(xt[i : i + bs]).argmax(1) == yt[i : i + bs]).sum())
    infer_s = time.perf_counter() - start
    return result(len(x_train) * args.epochs, train_s, len(x_test_f), infer_s, loss, acc, correct)


def torch_warmup(torch, data, args) -> None:
    x_train, y_train, x_test_f, _ = data
    n = min(len(x_train), 3 * args.batch_size)
    model = torch_model(torch, args.seed + 1)
    torch_train_epoch(
        torch,
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        x_train[:n],
        y_train[:n],
        args.batch_size,
        np.random.default_rng(0),
    )
    model.eval()
    with torch.inference_mode():
        model(torch.from_numpy(x_test_f[: args.infer_batch_size]))


# ------------------------------------------------------------------------------------------ report


def result(train_images, train_s, test_images, infer_s, loss, acc, correct) -> dict:
    return {
        "train_s": train_s,
        "train_img_s": train_images / train_s,
        "infer_s": infer_s,
        "infer_img_s": test_images / infer_s,
        "train_loss": loss,
        "train_accuracy": acc,
        "test_accuracy": correct / test_images,
    }


def summary(runs: list[dict]) -> dict:
    """Medians (the headline figures) and bests (less hurt by another process taking a core for a while)."""
    return {
        "train_img_s": statistics.median(r["train_img_s"] for r in runs),
        "infer_img_s": statistics.median(r["infer_img_s"] for r in runs),
        "train_img_s_best": max(r["train_img_s"] for r in runs),
        "infer_img_s_best": max(r["infer_img_s"] for r in runs),
        "test_accuracy": runs[-1]["test_accuracy"],
        "runs": runs,
    }


def print_table(report: dict, out) -> None:
    cfg, info = report["config"], report["cnnfast"]["build_info"]
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(
        f"cnnfast {info.get('version')}: isa {info.get('isa')} (compiled: {', '.join(info.get('isa_compiled', []))}), "
        f"{info.get('num_threads')} threads, {info.get('compiler')}, {info.get('build_type')}"
    )
    torch_info = report["torch"]
    if torch_info.get("version"):
        p(f"torch {torch_info['version']}: {torch_info['threads']} threads")
    else:
        p(f"torch: not run ({torch_info.get('skipped')})")
    m = report["machine"]
    p(
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; load average {m['loadavg_start']} at start, "
        f"{m['loadavg_end']} at end"
    )
    p(
        f"data: {cfg['train_images']:,} training images x {cfg['epochs']} epoch(s), batch {cfg['batch_size']}; "
        f"{cfg['test_images']:,} test images, batch {cfg['infer_batch_size']}; {cfg['repeats']} run(s) each"
        f"{', interleaved' if torch_info.get('version') else ''}; {cfg['data_dir']}"
    )
    p("")
    p(
        f"{'':<18} {'train img/s':>12} {'infer img/s':>12} {'test acc':>9}  {'best train':>10} {'best infer':>10}"
        f"   per-run train / infer img/s"
    )
    rows = [("cnnfast", report["cnnfast"])]
    if torch_info.get("version"):
        rows.append(("PyTorch", torch_info))
    if report.get("one_thread"):
        rows.append(("cnnfast, 1 thread", report["one_thread"]))
    for name, s in rows:
        runs = "  ".join(f"{r['train_img_s']:,.0f}/{r['infer_img_s']:,.0f}" for r in s["runs"])
        p(
            f"{name:<18} {s['train_img_s']:>12,.0f} {s['infer_img_s']:>12,.0f} {100 * s['test_accuracy']:>8.2f}%  "
            f"{s['train_img_s_best']:>10,.0f} {s['infer_img_s_best']:>10,.0f}   {runs}"
        )
    if report.get("ratio"):
        r = report["ratio"]
        p(
            f"{'cnnfast / PyTorch':<18} {r['train']:>11.2f}x {r['infer']:>11.2f}x {'':>9}  "
            f"{r['train_best']:>9.2f}x {r['infer_best']:>9.2f}x"
        )
    if report.get("speedup"):
        r, name = report["speedup"], f"{cfg['threads']} threads / 1"
        p(f"{name:<18} {r['train']:>11.2f}x {r['infer']:>11.2f}x")
    p(
        "(medians of the runs; best = the fastest run, less hurt by other processes"
        + ("; ratio above 1: cnnfast is faster" if report.get("ratio") else "")
        + ("; threads / 1: the speedup of cnnfast's medians over one thread" if report.get("speedup") else "")
        + ")"
    )


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    json_to_stdout = args.json == "-"
    log = sys.stderr if json_to_stdout else sys.stdout

    cnnfast.set_num_threads(args.threads)
    cnnfast.reuse_freed_memory()  # as python -m cnnfast.train does
    directory = data_dir(args)
    try:
        x_train, y_train, x_test, y_test = load_mnist(directory)
    except DatasetError as error:
        print(f"bench_train: {error}", file=sys.stderr)
        return 1
    if args.limit is not None:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    data = (x_train, y_train, as_model_input(x_test), y_test.astype(np.int64))

    torch, torch_skipped = None, None
    if args.no_torch:
        torch_skipped = "--no-torch"
    else:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError as error:
            torch_skipped = f"not importable: {error}"

    load_start = loadavg()
    print(
        f"bench_train: warming up, then {args.repeats} run(s) of {len(x_train) * args.epochs:,} training images"
        f"{' per framework, interleaved' if torch else ''} ...",
        file=log,
        flush=True,
    )
    cnnfast_warmup(data, args)
    if torch:
        torch_warmup(torch, data, args)
    cnnfast_runs, torch_runs, one_thread_runs = [], [], []

    def show(label: str, run: dict) -> None:  # (a run's figures, on the repeat's progress line)
        print(
            f"{label} {run['train_img_s']:,.0f} train / {run['infer_img_s']:,.0f} infer img/s",
            end="",
            file=log,
            flush=True,
        )

    for r in range(args.repeats):
        print(f"  run {r + 1}:", end="", file=log)
        cnnfast_runs.append(cnnfast_run(data, args))
        show(" cnnfast", cnnfast_runs[-1])
        if torch:
            torch_runs.append(torch_run(torch, data, args))
            show(";  PyTorch", torch_runs[-1])
        if args.scaling:
            cnnfast.set_num_threads(1)
            one_thread_runs.append(cnnfast_run(data, args))
            cnnfast.set_num_threads(args.threads)
            show(";  cnnfast on 1 thread", one_thread_runs[-1])
        print(file=log, flush=True)

    report = {
        "benchmark": "cnnfast bench_train",
        "config": {
            "threads": args.threads,
            "epochs": args.epochs,
            "train_images": len(x_train),
            "test_images": len(x_test),
            "batch_size": args.batch_size,
            "infer_batch_size": args.infer_batch_size,
            "repeats": args.repeats,
            "seed": args.seed,
            "data_dir": str(directory) if directory else "$CNNFAST_DATA or cnnfast's cache",
        },
        "machine": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "cnnfast": {"version": cnnfast.__version__, "build_info": cnnfast.build_info(), **summary(cnnfast_runs)},
        "torch": (
            {"version": torch.__version__, "threads": torch.get_num_threads(), **summary(torch_runs)}
            if torch
            else {"skipped": torch_skipped}
        ),
        "ratio": None,
        "one_thread": summary(one_thread_runs) if args.scaling else None,
        "speedup": None,
    }
    if args.scaling:  # --threads over one thread, cnnfast's medians
        c, o = report["cnnfast"], report["one_thread"]
        report["speedup"] = {"train": c["train_img_s"] / o["train_img_s"], "infer": c["infer_img_s"] / o["infer_img_s"]}
    if torch:
        c, t = report["cnnfast"], report["torch"]
        report["ratio"] = {
            "train": c["train_img_s"] / t["train_img_s"],
            "infer": c["infer_img_s"] / t["infer_img_s"],
            "train_best": c["train_img_s_best"] / t["train_img_s_best"],
            "infer_best": c["infer_img_s_best"] / t["infer_img_s_best"],
        }
    print(file=log)
    print_table(report, log)
    if args.json is not None:
        text = json.dumps(report, indent=None if json_to_stdout else 2)
        if json_to_stdout:
            print(text, flush=True)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
            print(f"wrote {args.json}", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
