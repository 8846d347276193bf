#!/usr/bin/env python3
"""A ResNet-8-style network built with cnnfast.nn: training images/s on random 3x32x32 data beside
the same network in PyTorch eager, and its ONNX export checked in onnxruntime.

    pip install . torch onnx onnxruntime
    python bench/bench_resnet8.py                          # 1 and 2 threads, batch 128, then the export
    python bench/bench_resnet8.py --threads 2 --json out.json
    python bench/bench_resnet8.py --onnx-only              # only the export check (no PyTorch needed)

The network (the same layers and PyTorch's default initialisation on both sides; 77,610 parameters):
  Conv2d(3,16,3,padding=1) ReLU
  Residual[Conv2d(16,16,3,p=1) ReLU Conv2d(16,16,3,p=1)] ReLU                       32x32, 16 channels
  Residual[Conv2d(16,32,3,p=1,stride=2) ReLU Conv2d(32,32,3,p=1)],
      shortcut Conv2d(16,32,1,stride=2,bias=False)] ReLU                               16x16, 32 channels
  Residual[Conv2d(32,64,3,p=1,stride=2) ReLU Conv2d(64,64,3,p=1)],
      shortcut Conv2d(32,64,1,stride=2,bias=False)] ReLU                               8x8, 64 channels
  GlobalAvgPool2d Flatten Linear(64,10)
seven 3x3 convolutions and the dense layer: ResNet-8's layout (He et al.'s CIFAR ResNets with n=1),
without BatchNorm (cnnfast gains BatchNorm2d separately; with it, both sides would add the same
normalisation after each convolution). A training step is forward, softmax cross-entropy,
backward (no input gradient for the first layer) and an Adam update, timed as bench_nets.py times
its nets (alternating rounds, the best round's images/s, the ratio cnnfast / PyTorch). Then the
cnnfast model is exported (cnnfast.export_onnx, its input shape [batch, 3, 32, 32] recorded from
training) and onnxruntime's logits compared with cnnfast's on 256 random images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

try:
    import cnnfast
    import cnnfast.functional
    from cnnfast import nn
    from cnnfast.optim import Adam
except ImportError as error:  # pragma: no cover - a set-up problem
    sys.exit(f"bench_resnet8: cannot import cnnfast ({error}); pip install . first")

SHAPE = (3, 32, 32)


def resnet8(rng) -> nn.Sequential:
    def stage(c_in, c_out, stride):
        block = [
            nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride, rng=rng),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, rng=rng),
        ]
        shortcut = None if stride == 1 else [nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False, rng=rng)]
        return [nn.Residual(block, shortcut), nn.ReLU()]

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, rng=rng),
        nn.ReLU(),
        *stage(16, 16, 1),
        *stage(16, 32, 2),
        *stage(32, 64, 2),
        nn.GlobalAvgPool2d(),
        nn.Flatten(),
        nn.Linear(64, 10, rng=rng),
    )


def torch_resnet8():
    import torch

    t = torch.nn

    class Block(t.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.block = t.Sequential(
                t.Conv2d(c_in, c_out, 3, padding=1, stride=stride), t.ReLU(), t.Conv2d(c_out, c_out, 3, padding=1)
            )
            self.shortcut = t.Identity() if stride == 1 else t.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

        def forward(self, x):
            return torch.relu(self.block(x) + self.shortcut(x))

    return t.Sequential(
        t.Conv2d(3, 16, 3, padding=1),
        t.ReLU(),
        Block(16, 16, 1),
        Block(16, 32, 2),
        Block(32, 64, 2),
        t.AdaptiveAvgPool2d(1),
        t.Flatten(),
        t.Linear(64, 10),
    )


def check_export(model, images: int = 256) -> dict:
    """Export `model` to ONNX and compare onnxruntime's logits with cnnfast's on random images."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return {"skipped": "needs onnx and onnxruntime: pip install cnnfast[onnx]"}
    from cnnfast.export import run_onnx

    model.eval()
    x = np.random.default_rng(1).standard_normal((images, *SHAPE)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = cnnfast.export_onnx(model, os.path.join(tmp, "resnet8.onnx"))
        import onnx

        ops = [node.op_type for node in onnx.load(path).graph.node]
        difference = float(np.abs(run_onnx(path, x) - model.infer(x)).max())
        size = os.path.getsize(path)
    model.train()
    return {
        "input_shape": ["batch", *model.input_shape],
        "operators": {op: ops.count(op) for op in dict.fromkeys(ops)},
        "bytes": size,
        "images": images,
        "max_abs_difference": difference,
        "passed": difference < 1e-4,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bench_resnet8.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per round (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per framework (default 3)")
    p.add_argument("--onnx-only", action="store_true", help="train a few steps, then only the export check")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export check")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)
    if min(args.threads + [args.batch, args.steps, args.rounds]) < 1 or args.warmup < 0:
        p.error("--threads, --batch, --steps and --rounds need positive values")
    torch = None
    if args.onnx_only:
        args.threads, args.rounds, args.steps, args.warmup = args.threads[:1], 0, 1, 1
        cpu = "(not timed)"

        def cnnfast_steps(model, optimizer, batches):  # (bench_nets.py's, which needs PyTorch)
            for xb, yb in batches:
                _, dlogits = cnnfast.functional.softmax_cross_entropy(model.forward(xb), yb)
                model.backward(dlogits, input_grad=False)
                optimizer.step()
    else:
        try:
            import torch
        except ImportError:
            p.error("PyTorch is the peer here: pip install torch (or pass --onnx-only)")
        from bench_nets import cnnfast_steps, images_per_second, torch_steps
        from bench_train import cpu_model  # (beside this script)

        cpu = cpu_model()
    cnnfast.reuse_freed_memory()  # as python -m cnnfast.train does
    info = cnnfast.build_info()
    peer = f"PyTorch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})" if torch else "no peer"
    print(
        f"bench_resnet8: {cpu}; cnnfast {info['isa']}; {peer}; batch {args.batch}, {args.steps} steps a round; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.steps, args.batch, *SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, (args.steps, args.batch))
    ours_batches = [(x[i], y[i]) for i in range(args.steps)]
    results, model = [], None
    for threads in args.threads:
        cnnfast.set_num_threads(threads)
        model = resnet8(np.random.default_rng(0))
        opt = Adam(model.parameters())
        cnnfast_steps(model, opt, ours_batches[: args.warmup])
        if torch:
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            tmodel = torch_resnet8()
            topt = torch.optim.Adam(tmodel.parameters())
            torch_batches = [(torch.from_numpy(x[i]), torch.from_numpy(y[i])) for i in range(args.steps)]
            torch_steps(tmodel, topt, torch_batches[: args.warmup])
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(images_per_second(lambda b: cnnfast_steps(model, opt, b), ours_batches, args.batch))
            if torch:
                theirs.append(images_per_second(lambda b: torch_steps(tmodel, topt, b), torch_batches, args.batch))
        if args.onnx_only:
            break
        row = {"net": "resnet8", "threads": threads, "batch": args.batch, "cnnfast_img_s": max(ours)}
        if torch:
            row.update(torch_img_s=max(theirs), ratio=max(ours) / max(theirs))
        results.append(row)
        peer_text = f"   PyTorch {row['torch_img_s']:7,.0f} img/s   {row['ratio']:5.2f}x" if torch else ""
        print(f"resnet8 {threads} thread(s): cnnfast {row['cnnfast_img_s']:7,.0f} img/s{peer_text}", flush=True)
    export = {"skipped": "--no-onnx"} if args.no_onnx else check_export(model)
    if "skipped" in export:
        print(f"ONNX export: skipped ({export['skipped']})")
    else:
        ops = ", ".join(f"{op} x{n}" for op, n in export["operators"].items())
        print(
            f"ONNX export: input {export['input_shape']}, {export['bytes']:,} bytes ({ops}); onnxruntime and "
            f"cnnfast agree on {export['images']} random images to {export['max_abs_difference']:.1e} "
            f"({'passed' if export['passed'] else 'FAILED'}: below 1e-4)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "benchmark": "cnnfast bench_resnet8",
                    "cpu": cpu,
                    "cnnfast_isa": info["isa"],
                    "torch_capability": torch.backends.cpu.get_cpu_capability() if torch else None,
                    "parameters": model.num_parameters(),
                    "loadavg": os.getloadavg(),
                    "results": results,
                    "onnx_export": export,
                },
                f,
                indent=1,
            )
    return 0 if export.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
