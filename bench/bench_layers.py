#!/usr/bin/env python3
"""Layer suite: cnnfast's kernels against PyTorch's on the layer shapes users build, not only the
default model's, on the same arrays, threads and instruction set.

    pip install . torch                        # cnnfast and the peer in one environment
    python bench/bench_layers.py               # every shape, batch 1, 32, 128, threads 1 and 2
    python bench/bench_layers.py --batch 32 --threads 1 --only conv
    python bench/bench_layers.py --layer s2         # the strided layers only
    python bench/bench_layers.py --more --only conv # the second set of convolution shapes
    python bench/bench_layers.py --json out.json

Every row times one call (median of --repeat calls after a warm-up) of the cnnfast kernel and of
its PyTorch counterpart on the same float32 arrays, alternately, and reports the ratio PyTorch
time / cnnfast time (above 1: cnnfast is faster). conv2d rows: forward (F.conv2d) and backward
(dx and dw and db, as torch.ops.aten.convolution_backward computes them; a first layer, with 1-3
input channels, without dx, as a network's first layer is trained). max_pool2d and linear rows
likewise. A summary gives each kind's geometric mean and lists the rows below 1.0x.

To compare an instruction set fairly on a machine that has wider ones, restrict both sides:
CNNFAST_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2.
The header states the CPU, cnnfast's ISA and PyTorch's CPU capability in use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

try:
    import cnnfast
    import cnnfast.functional as F
    from cnnfast import _core
except ImportError as error:  # pragma: no cover - a set-up problem
    sys.exit(f"bench_layers: cannot import cnnfast ({error}); pip install . first")
try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - a set-up problem
    sys.exit("bench_layers: PyTorch is the peer here: pip install torch (bench/run_peers.sh makes a venv with it)")

from bench_train import cpu_model  # (beside this script)

# (name, C, H, W, K, R, S, padding[, stride]): first layers (1-3 channels, 3x3/5x5/7x7, 28x28 to 64x64),
# middle layers (16-256 channels, 3x3 pad 1, 32x32 down to 4x4), 1x1 convolutions.
CONV_SHAPES = [
    ("mnist conv1 1->32 3x3", 1, 28, 28, 32, 3, 3, 0),
    ("lenet c1 1->6 5x5", 1, 32, 32, 6, 5, 5, 0),
    ("cifar first 3->32 3x3 p1", 3, 32, 32, 32, 3, 3, 1),
    ("first 3->16 7x7 p3 64x64", 3, 64, 64, 16, 7, 7, 3),
    ("first 3->64 5x5 p2 48x48", 3, 48, 48, 64, 5, 5, 2),
    ("mnist conv2 32->64 3x3", 32, 13, 13, 64, 3, 3, 0),
    ("lenet c3 6->16 5x5", 6, 14, 14, 16, 5, 5, 0),
    ("mid 16->32 3x3 p1 32x32", 16, 32, 32, 32, 3, 3, 1),
    ("mid 32->64 3x3 p1 16x16", 32, 16, 16, 64, 3, 3, 1),
    ("mid 64->128 3x3 p1 8x8", 64, 8, 8, 128, 3, 3, 1),
    ("mid 128->256 3x3 p1 4x4", 128, 4, 4, 256, 3, 3, 1),
    ("mid 96->96 3x3 p1 12x12", 96, 12, 12, 96, 3, 3, 1),
    ("1x1 64->128 16x16", 64, 16, 16, 128, 1, 1, 0),
    ("1x1 256->64 8x8", 256, 8, 8, 64, 1, 1, 0),
    # strided (a ninth field, the stride): a ResNet's downsampling (3x3 and its 1x1 shortcut) and stems
    ("s2 16->32 3x3 p1 32x32", 16, 32, 32, 32, 3, 3, 1, 2),
    ("s2 1x1 16->32 32x32", 16, 32, 32, 32, 1, 1, 0, 2),
    ("s2 32->64 3x3 p1 16x16", 32, 16, 16, 64, 3, 3, 1, 2),
    ("s2 64->128 3x3 p1 8x8", 64, 8, 8, 128, 3, 3, 1, 2),
    ("s2 first 3->64 7x7 p3 64x64", 3, 64, 64, 64, 7, 7, 3, 2),
    ("s2 first 3->32 3x3 p1 32x32", 3, 32, 32, 32, 3, 3, 1, 2),
]
# --more: a second set, picked after the first (2026-12-06) in the same families: deeper middle layers
# on small images (odd sizes, 4x4 to 15x15 outputs), 1x1 layers from 16 to 512 channels, first layers
# on 1-3 channels up to 56x56. It found rows the first set had hidden, and the changes that followed
# were measured on it: it is no longer unseen either, only more.
MORE_CONV_SHAPES = [
    ("first 1->8 3x3 28x28", 1, 28, 28, 8, 3, 3, 0),
    ("first 1->16 5x5 p2 28x28", 1, 28, 28, 16, 5, 5, 2),
    ("first 1->32 7x7 p3 28x28", 1, 28, 28, 32, 7, 7, 3),
    ("first 3->24 3x3 p1 40x40", 3, 40, 40, 24, 3, 3, 1),
    ("first 3->32 5x5 32x32", 3, 32, 32, 32, 5, 5, 0),
    ("first 3->48 7x7 p3 56x56", 3, 56, 56, 48, 7, 7, 3),
    ("first 2->16 3x3 p1 48x48", 2, 48, 48, 16, 3, 3, 1),
    ("first 3->64 3x3 p1 64x64", 3, 64, 64, 64, 3, 3, 1),
    ("s2 first 3->32 5x5 p2 64x64", 3, 64, 64, 32, 5, 5, 2, 2),
    ("s2 first 1->16 3x3 p1 28x28", 1, 28, 28, 16, 3, 3, 1, 2),
    ("mid 16->16 3x3 p1 32x32", 16, 32, 32, 16, 3, 3, 1),
    ("mid 24->48 3x3 p1 24x24", 24, 24, 24, 48, 3, 3, 1),
    ("mid 32->32 3x3 p1 28x28", 32, 28, 28, 32, 3, 3, 1),
    ("mid 48->96 3x3 p1 12x12", 48, 12, 12, 96, 3, 3, 1),
    ("mid 64->64 3x3 p1 16x16", 64, 16, 16, 64, 3, 3, 1),
    ("mid 64->128 3x3 p1 14x14", 64, 14, 14, 128, 3, 3, 1),
    ("mid 96->192 3x3 p1 7x7", 96, 7, 7, 192, 3, 3, 1),
    ("mid 128->128 3x3 p1 8x8", 128, 8, 8, 128, 3, 3, 1),
    ("mid 160->160 3x3 p1 6x6", 160, 6, 6, 160, 3, 3, 1),
    ("mid 256->256 3x3 p1 4x4", 256, 4, 4, 256, 3, 3, 1),
    ("mid 32->64 3x3 20x20", 32, 20, 20, 64, 3, 3, 0),
    ("1x1 32->64 32x32", 32, 32, 32, 64, 1, 1, 0),
    ("1x1 128->32 16x16", 128, 16, 16, 32, 1, 1, 0),
    ("1x1 256->256 4x4", 256, 4, 4, 256, 1, 1, 0),
    ("1x1 16->64 28x28", 16, 28, 28, 64, 1, 1, 0),
    ("1x1 512->128 7x7", 512, 7, 7, 128, 1, 1, 0),
    ("s2 32->64 3x3 p1 32x32", 32, 32, 32, 64, 3, 3, 1, 2),
    ("s2 128->256 3x3 p1 8x8", 128, 8, 8, 256, 3, 3, 1, 2),
]
POOL_SHAPES = [("pool2 32x26x26", 32, 26, 26, 2), ("pool2 64x16x16", 64, 16, 16, 2), ("pool3 32x27x27", 32, 27, 27, 3)]
DENSE_SHAPES = [
    ("dense 1600->10", 1600, 10),
    ("dense 2048->10", 2048, 10),
    ("dense 400->120", 400, 120),
    ("dense 512->4096", 512, 4096),
    ("dense 4096->1000", 4096, 1000),
]


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (allocations, first-touch, oneDNN primitive creation)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def side_by_side(ours, theirs, repeat: int):
    """Median seconds of each, measured in alternating rounds so both see the same machine load."""
    a, b = [], []
    rounds = 3
    for _ in range(rounds):
        a.append(median_seconds(ours, max(1, repeat // rounds)))
        b.append(median_seconds(theirs, max(1, repeat // rounds)))
    return min(a), min(b)


def conv_rows(batch: int, repeat: int, rng, match: str = "", shapes=CONV_SHAPES):
    for name, C, H, W, K, R, S, pad, *rest in shapes:
        if match not in name:
            continue
        st = rest[0] if rest else 1
        x = rng.standard_normal((batch, C, H, W), dtype=np.float32)
        w = (rng.standard_normal((K, C, R, S), dtype=np.float32) * (2.0 / (C * R * S)) ** 0.5).astype(np.float32)
        b = rng.standard_normal(K, dtype=np.float32)
        y = F.conv2d(x, w, b, padding=pad, stride=st)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        first = C <= 3  # a first layer: no input gradient
        flops = 2.0 * batch * K * y.shape[2] * y.shape[3] * C * R * S
        with torch.no_grad():
            ours, theirs = side_by_side(
                lambda: F.conv2d(x, w, b, padding=pad, stride=st),
                lambda: TF.conv2d(tx, tw, tb, padding=pad, stride=st),
                repeat,
            )
        yield {
            "kind": "conv2d forward",
            "layer": name,
            "shape": [batch, C, H, W, K, R, S, pad, st],
            "path": _core.conv2d_path(x.shape, w.shape, pad, stride=st),
            "cnnfast_ms": 1e3 * ours,
            "torch_ms": 1e3 * theirs,
            "gflops": flops / ours / 1e9,
        }
        mask = [not first, True, True]
        ours, theirs = side_by_side(
            lambda: F.conv2d_backward(x, w, dy, padding=pad, input_grad=not first, stride=st),
            lambda: torch.ops.aten.convolution_backward(
                tdy, tx, tw, [K], [st, st], [pad, pad], [1, 1], False, [0, 0], 1, mask
            ),
            repeat,
        )
        yield {
            "kind": "conv2d backward",
            "layer": name + (" (no dx)" if first else ""),
            "shape": [batch, C, H, W, K, R, S, pad, st],
            "path": _core.conv2d_path(x.shape, w.shape, pad, 0, True, not first, stride=st),
            "cnnfast_ms": 1e3 * ours,
            "torch_ms": 1e3 * theirs,
            "gflops": (2 if not first else 1) * flops / ours / 1e9,
        }


def pool_rows(batch: int, repeat: int, rng, match: str = ""):
    for name, C, H, W, k in POOL_SHAPES:
        if match not in name:
            continue
        x = rng.standard_normal((batch, C, H, W), dtype=np.float32)
        tx = torch.from_numpy(x)
        with torch.no_grad():
            ours, theirs = side_by_side(lambda: F.max_pool2d(x, k), lambda: TF.max_pool2d_with_indices(tx, k), repeat)
        yield {
            "kind": "max_pool2d forward",
            "layer": name,
            "shape": [batch, C, H, W, k],
            "cnnfast_ms": 1e3 * ours,
            "torch_ms": 1e3 * theirs,
        }


def dense_rows(batch: int, repeat: int, rng, match: str = ""):
    for name, I, O in DENSE_SHAPES:
        if match not in name:
            continue
        x = rng.standard_normal((batch, I), dtype=np.float32)
        w = rng.standard_normal((O, I), dtype=np.float32) * 0.01
        b = rng.standard_normal(O, dtype=np.float32)
        dy = rng.standard_normal((batch, O), dtype=np.float32)
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        with torch.no_grad():
            ours, theirs = side_by_side(lambda: F.linear(x, w, b), lambda: TF.linear(tx, tw, tb), repeat)
            yield {
                "kind": "linear forward",
                "layer": name,
                "shape": [batch, I, O],
                "cnnfast_ms": 1e3 * ours,
                "torch_ms": 1e3 * theirs,
                "gflops": 2.0 * batch * I * O / ours / 1e9,
            }
            ours, theirs = side_by_side(
                lambda: F.linear_backward(x, w, dy), lambda: (tdy @ tw, tdy.t() @ tx, tdy.sum(0)), repeat
            )
            yield {
                "kind": "linear backward",
                "layer": name,
                "shape": [batch, I, O],
                "cnnfast_ms": 1e3 * ours,
                "torch_ms": 1e3 * theirs,
                "gflops": 4.0 * batch * I * O / ours / 1e9,
            }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bench_layers.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128], help="batch sizes (default 1 32 128)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument("--only", choices=["conv", "pool", "dense"], help="one kind of layer only")
    p.add_argument("--layer", default="", metavar="TEXT", help="only the layers whose name contains TEXT (e.g. s2)")
    p.add_argument("--repeat", type=int, default=15, help="timed calls per row and framework (default 15)")
    p.add_argument("--json", metavar="FILE", help="also write every row as JSON to FILE")
    p.add_argument(
        "--more",
        action="store_true",
        help="the second set of convolution shapes instead of the first (MORE_CONV_SHAPES: picked after the first, "
        "in the same families)",
    )
    args = p.parse_args(argv)
    if any(b < 1 for b in args.batch) or any(t < 1 for t in args.threads) or args.repeat < 1:
        p.error("--batch, --threads and --repeat need positive values")

    info = cnnfast.build_info()
    cpu = cpu_model()
    header = {
        "cpu": cpu,
        "cnnfast_isa": info["isa"],
        "torch": torch.__version__,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg": os.getloadavg(),
        "conv_shapes": "more" if args.more else "first",
    }
    print(
        f"bench_layers: {cpu}; cnnfast {info['isa']} ({info['compiler']}); PyTorch {torch.__version__} "
        f"({header['torch_capability']}); ratio = PyTorch time / cnnfast time"
        + ("; the second set of convolution shapes (--more)" if args.more else "")
    )
    cnnfast.reuse_freed_memory()  # as python -m cnnfast.train and the other benchmarks do
    rng = np.random.default_rng(0)
    rows = []
    conv_shapes = MORE_CONV_SHAPES if args.more else CONV_SHAPES
    kinds = {"conv": lambda *a: conv_rows(*a, shapes=conv_shapes), "pool": pool_rows, "dense": dense_rows}
    for threads in args.threads:
        cnnfast.set_num_threads(threads)
        torch.set_num_threads(threads)
        for batch in args.batch:
            for kind, make in kinds.items():
                if args.only and kind != args.only:
                    continue
                for row in make(batch, args.repeat, rng, args.layer):
                    row.update(batch=batch, threads=threads, ratio=row["torch_ms"] / row["cnnfast_ms"])
                    rows.append(row)
                    gf = f"{row['gflops']:8.1f}" if "gflops" in row else " " * 8
                    print(
                        f"{threads}t b{batch:<4} {row['kind']:<19} {row['layer']:<34} "
                        f"cnnfast {row['cnnfast_ms']:9.3f} ms {gf} GFLOP/s   "
                        f"torch {row['torch_ms']:9.3f} ms   {row['ratio']:5.2f}x"
                        + (f"   ({row['path']})" if "path" in row else ""),
                        flush=True,
                    )
    print("\nsummary (geometric mean of PyTorch time / cnnfast time; rows below 1.0x listed)")
    summary = {}
    for kind in sorted({r["kind"] for r in rows}):
        for threads in args.threads:
            sel = [r for r in rows if r["kind"] == kind and r["threads"] == threads]
            if not sel:
                continue
            geo = math.exp(sum(math.log(r["ratio"]) for r in sel) / len(sel))
            slow = [
                f"{r['layer']} b{r['batch']} {r['ratio']:.2f}x" + (f" ({r['path']})" if "path" in r else "")
                for r in sel
                if r["ratio"] < 1.0
            ]
            summary[f"{kind}, {threads} thread(s)"] = {"geomean": geo, "below_1x": slow}
            print(
                f"  {kind:<19} {threads} thread(s): {geo:5.2f}x over {len(sel)} rows"
                + (f"; below 1.0x: {', '.join(slow)}" if slow else "")
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"benchmark": "cnnfast bench_layers", "machine": header, "rows": rows, "summary": summary}, f, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
