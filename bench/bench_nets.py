#!/usr/bin/env python3
"""Whole networks users build beside the default model: training images/s of LeNet-5 and of a small
CIFAR-style net, built with cnnfast.nn, against the same nets in PyTorch eager, at batch 128.

    pip install . torch
    python bench/bench_nets.py                   # both nets, 1 and 2 threads
    python bench/bench_nets.py --threads 2 --steps 20 --json out.json

The nets (the same layers and initialisation scale in both frameworks):
- LeNet-5: 1x32x32 input, Conv2d(1,6,5) ReLU MaxPool2d(2) Conv2d(6,16,5) ReLU MaxPool2d(2) Flatten
  Linear(400,120) ReLU Linear(120,84) ReLU Linear(84,10);
- CIFAR-style: 3x32x32 input, three blocks Conv2d(3x3, padding 1) ReLU MaxPool2d(2) of 32, 64 and
  128 channels, Flatten, Linear(2048,10).
A training step is the forward pass, softmax cross-entropy, the backward pass (no input gradient
for the first layer, as both frameworks' training loops do) and an Adam update, on random inputs
and labels (the data does not change the work). --steps steps are timed after --warmup steps,
in alternating rounds (cnnfast, PyTorch, cnnfast, ...); the best round's images/s is reported with
the ratio cnnfast / PyTorch (above 1: cnnfast is faster). The header names the CPU and the
instruction sets in use; restrict both sides as bench_layers.py's docstring says to measure a
narrower ISA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from bench_train import cpu_model  # (beside this script)

try:
    import cnnfast
    import cnnfast.functional as F
    from cnnfast import nn
    from cnnfast.optim import Adam
except ImportError as error:  # pragma: no cover - a set-up problem
    sys.exit(f"bench_nets: cannot import cnnfast ({error}); pip install . first")
try:
    import torch
except ImportError:  # pragma: no cover - a set-up problem
    sys.exit("bench_nets: PyTorch is the peer here: pip install torch")


def lenet5(rng):
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120, rng=rng),
        nn.ReLU(),
        nn.Linear(120, 84, rng=rng),
        nn.ReLU(),
        nn.Linear(84, 10, rng=rng),
    )


def cifar_net(rng):
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2048, 10, rng=rng),
    )


def torch_lenet5():
    t = torch.nn
    return t.Sequential(
        t.Conv2d(1, 6, 5),
        t.ReLU(),
        t.MaxPool2d(2),
        t.Conv2d(6, 16, 5),
        t.ReLU(),
        t.MaxPool2d(2),
        t.Flatten(),
        t.Linear(400, 120),
        t.ReLU(),
        t.Linear(120, 84),
        t.ReLU(),
        t.Linear(84, 10),
    )


def torch_cifar_net():
    t = torch.nn
    return t.Sequential(
        t.Conv2d(3, 32, 3, padding=1),
        t.ReLU(),
        t.MaxPool2d(2),
        t.Conv2d(32, 64, 3, padding=1),
        t.ReLU(),
        t.MaxPool2d(2),
        t.Conv2d(64, 128, 3, padding=1),
        t.ReLU(),
        t.MaxPool2d(2),
        t.Flatten(),
        t.Linear(2048, 10),
    )


NETS = {"lenet5": (lenet5, torch_lenet5, (1, 32, 32)), "cifar": (cifar_net, torch_cifar_net, (3, 32, 32))}


def cnnfast_steps(model, optimizer, batches):
    for x, y in batches:
        logits = model.forward(x)
        _, dlogits = F.softmax_cross_entropy(logits, y)
        model.backward(dlogits, input_grad=False)
        optimizer.step()


def torch_steps(model, optimizer, batches):
    loss_fn = torch.nn.CrossEntropyLoss()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()


def images_per_second(run, batches, batch):
    t0 = time.perf_counter()
    run(batches)
    return len(batches) * batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bench_nets.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", nargs="+", choices=sorted(NETS), default=["lenet5", "cifar"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per round (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per framework (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)
    if min(args.threads + [args.batch, args.steps, args.rounds]) < 1 or args.warmup < 0:
        p.error("--threads, --batch, --steps and --rounds need positive values")
    cnnfast.reuse_freed_memory()  # as python -m cnnfast.train does
    info = cnnfast.build_info()
    cpu = cpu_model()
    print(
        f"bench_nets: {cpu}; cnnfast {info['isa']}; PyTorch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}); batch {args.batch}, {args.steps} steps a round"
    )
    rng = np.random.default_rng(0)
    results = []
    for name in args.nets:
        make, make_torch, shape = NETS[name]
        x = rng.standard_normal((args.steps, args.batch) + shape, dtype=np.float32)
        y = rng.integers(0, 10, (args.steps, args.batch))
        ours_batches = [(x[i], y[i]) for i in range(args.steps)]
        torch_batches = [(torch.from_numpy(x[i]), torch.from_numpy(y[i])) for i in range(args.steps)]
        for threads in args.threads:
            cnnfast.set_num_threads(threads)
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            model, tmodel = make(np.random.default_rng(0)), make_torch()
            opt, topt = Adam(model.parameters()), torch.optim.Adam(tmodel.parameters())
            cnnfast_steps(model, opt, ours_batches[: args.warmup])
            torch_steps(tmodel, topt, torch_batches[: args.warmup])
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(images_per_second(lambda b: cnnfast_steps(model, opt, b), ours_batches, args.batch))
                theirs.append(images_per_second(lambda b: torch_steps(tmodel, topt, b), torch_batches, args.batch))
            row = {
                "net": name,
                "threads": threads,
                "batch": args.batch,
                "cnnfast_img_s": max(ours),
                "torch_img_s": max(theirs),
                "ratio": max(ours) / max(theirs),
            }
            results.append(row)
            print(
                f"{name:<8} {threads} thread(s): cnnfast {row['cnnfast_img_s']:9,.0f} img/s   "
                f"PyTorch {row['torch_img_s']:9,.0f} img/s   {row['ratio']:5.2f}x",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "benchmark": "cnnfast bench_nets",
                    "cpu": cpu,
                    "cnnfast_isa": info["isa"],
                    "torch_capability": torch.backends.cpu.get_cpu_capability(),
                    "loadavg": os.getloadavg(),
                    "results": results,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
