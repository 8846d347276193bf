#!/usr/bin/env python3
"""Time to accuracy: how many seconds of training a preset's recipe needs to first reach 99.0% and
99.5% on MNIST's test set, in cnnfast and in the same recipe written in PyTorch.

    PYTHONPATH=python /work/peers-new/bin/python bench/time_to_accuracy.py --preset fast
    python bench/time_to_accuracy.py --preset fast --no-torch          # cnnfast alone
    python bench/time_to_accuracy.py --preset best --json best.json     # the table, and the JSON in best.json
    python bench/time_to_accuracy.py --from-json fast.json --plot docs/time-to-accuracy-fast.png

(Both frameworks in one run need a Python that imports cnnfast and torch; --plot needs matplotlib,
and can be drawn afterwards from the JSON with --from-json by another Python.)

What is run, for each framework, on the same data, seed and threads (default 2):
- the recipe of `python -m cnnfast.train --preset NAME` (cnnfast.presets): its network, optimizer,
  learning rate, schedule (stepped every batch), batch size, epochs, label smoothing and data
  augmentation. cnnfast runs it with the objects python -m cnnfast.train builds (the preset's
  model, train.make_optimizer, train.make_scheduler, cnnfast.augment.Augment); PyTorch runs the
  same layers (torch.nn, built from the preset's architecture list), torch.optim.AdamW / Adam /
  SGD(momentum 0.9), torch.optim.lr_scheduler.OneCycleLR (cnnfast's OneCycleLR is its twin; a
  cosine or step schedule goes through LambdaLR with cnnfast's formula), F.cross_entropy with
  label_smoothing, and the same augmentation written with torch ops (torchvision is not needed):
  per image a random rotation, scale, shear and shift drawn from the same ranges, built into an
  affine_grid, plus Simard's elastic field (uniform noise in [-1, 1) per pixel, smoothed by a
  Gaussian of sigma pixels, radius 4 sigma, zeros beyond the image, times alpha pixels) added to
  the grid, sampled by grid_sample (bilinear, zeros outside): what torchvision's RandomAffine and
  ElasticTransform do, in one pass as cnnfast does. The random draws differ between the two (each
  framework's own generator); the shuffled order of the batches is the same.
- the training clock runs over the training steps only (batch gathering, augmentation, forward,
  loss, backward, update, schedule); every 1/--evals-per-epoch of an epoch it stops, the model
  is evaluated on the 10,000 test images (eval mode: BatchNorm's running statistics, no
  dropout), and it starts again. Each evaluation gives a point (training seconds, test accuracy).
Reported per framework: the training seconds to the first evaluation at or above 99.0% and 99.5%
("-" if never), the final accuracy and the total training seconds, and the ratio PyTorch / cnnfast
of each time (above 1: cnnfast gets there sooner). The figures depend on the CPU, its ISA and the
machine's load (printed, with the load average).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

from bench_train import cpu_model  # (beside this script)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")
TARGETS = (0.99, 0.995)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="time_to_accuracy.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["fast", "best", "classic"], default="fast", help="the recipe (default fast)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (its schedule follows)")
    p.add_argument("--seed", type=int, default=0, help="seed of both runs (default 0)")
    p.add_argument("--threads", type=int, default=2, help="threads of both frameworks (default 2)")
    p.add_argument("--evals-per-epoch", type=int, default=4, help="test-set evaluations per epoch (default 4)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="train on the first N images (quick checks)")
    p.add_argument("--no-torch", action="store_true", help="cnnfast alone")
    p.add_argument("--no-cnnfast", action="store_true", help="PyTorch alone")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: $CNNFAST_DATA, ../shared/data/mnist)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-': stdout only)")
    p.add_argument("--plot", metavar="FILE.png", help="draw test accuracy against training seconds (matplotlib)")
    p.add_argument("--from-json", metavar="FILE", help="no training: read the results of an earlier run (to --plot)")
    return p


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def recipe(args):
    """The training settings of the preset as python -m cnnfast.train fills them in."""
    from cnnfast import presets, train

    given = {"preset": args.preset, "seed": args.seed}
    if args.epochs is not None:
        given["epochs"] = args.epochs
    settings = train.default_settings(**given)
    return presets.get(args.preset), settings


def eval_points(steps_per_epoch: int, epochs: int, per_epoch: int) -> set:
    """The global step counts after which the test set is evaluated."""
    points = set()
    for e in range(epochs):
        for k in range(1, per_epoch + 1):
            points.add(e * steps_per_epoch + round(k * steps_per_epoch / per_epoch))
    return points


def first_reaching(curve, target):
    for seconds, accuracy in zip(curve["seconds"], curve["accuracy"]):
        if accuracy >= target:
            return seconds
    return None


# ------------------------------------------------------------------------------------------ cnnfast


def timed_curve(framework: str, s, n_train: int, per_epoch: int, train_step, accuracy, log) -> dict:
    """The training loop both frameworks share: s.epochs shuffled passes of s.batch_size images,
    train_step(batch_indices, step) for each batch, accuracy() at the evaluation points with the
    clock stopped (it leaves the model in training mode)."""
    steps = -(-n_train // s.batch_size)
    points = eval_points(steps, s.epochs, per_epoch)
    rng = np.random.default_rng(s.seed)
    curve = {"seconds": [], "epochs": [], "accuracy": []}
    clock, step = 0.0, 0
    for _ in range(s.epochs):
        order = rng.permutation(n_train)
        start = time.perf_counter()
        for i in range(steps):
            train_step(order[i * s.batch_size : (i + 1) * s.batch_size], step)
            step += 1
            if step in points:
                clock += time.perf_counter() - start
                record(curve, framework, step / steps, clock, accuracy(), log)
                start = time.perf_counter()
        clock += time.perf_counter() - start
    return curve


def cnnfast_run(data, preset, s, per_epoch: int, log) -> dict:
    import cnnfast.functional as F
    from cnnfast import train
    from cnnfast.augment import Augment
    from cnnfast.mnist import as_model_input, evaluate

    x_train, y_train, x_test, y_test = data
    model = preset.model(s.seed)
    optimizer = train.make_optimizer(s, model.parameters())
    scheduler = train.make_scheduler(s, optimizer, -(-len(x_train) // s.batch_size))
    augment = Augment.from_settings(s.augment, s.seed) if s.augment is not None else None

    def train_step(batch, step):
        x = as_model_input(x_train[batch])
        if augment is not None:
            x = augment(x, step)
        logits = model.forward(x)
        _, dlogits = F.softmax_cross_entropy(logits, y_train[batch].astype(np.int64), s.label_smoothing)
        model.backward(dlogits, input_grad=False)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

    def accuracy():
        _, test_accuracy = evaluate(model, x_test, y_test)
        model.train()
        return test_accuracy

    model.train()
    return timed_curve("cnnfast", s, len(x_train), per_epoch, train_step, accuracy, log)


def record(curve: dict, framework: str, epochs: float, seconds: float, accuracy: float, log) -> None:
    """One evaluation: appended to the curve and printed."""
    curve["seconds"].append(seconds)
    curve["epochs"].append(epochs)
    curve["accuracy"].append(accuracy)
    print(f"  {framework:<7}  {epochs:5.2f} epochs  {seconds:7.1f} s  {100 * accuracy:6.2f}%", file=log, flush=True)


# ------------------------------------------------------------------------------------------ PyTorch


def torch_layers(torch, architecture, seed):
    """torch.nn layers for a cnnfast architecture list (the preset's)."""
    torch.manual_seed(seed)
    nn = torch.nn
    layers = []
    for spec in architecture:
        kind, a = spec["type"], {k: v for k, v in spec.items() if k != "type"}
        if kind == "Conv2d":
            layers.append(nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"], padding=a.get("padding", 0)))
        elif kind in ("BatchNorm2d", "BatchNorm1d"):
            layers.append(getattr(nn, kind)(a["num_features"], eps=a["eps"], momentum=a["momentum"]))
        elif kind == "ReLU":
            layers.append(nn.ReLU())
        elif kind == "MaxPool2d":
            layers.append(nn.MaxPool2d(a["kernel_size"], a.get("stride"), a.get("padding", 0)))
        elif kind == "Flatten":
            layers.append(nn.Flatten())
        elif kind == "Dropout":
            layers.append(nn.Dropout(a["p"]))
        elif kind == "Linear":
            layers.append(nn.Linear(a["in_features"], a["out_features"]))
        else:
            raise ValueError(f"no PyTorch twin for the layer {kind}")
    return nn.Sequential(*layers)


def torch_optimizer(torch, s, params):
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr, momentum=0.9, weight_decay=s.weight_decay)


def torch_scheduler(torch, s, optimizer, steps_per_epoch: int):
    """The schedule of the recipe, stepped every batch as cnnfast's."""
    total = s.epochs * steps_per_epoch
    if s.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=s.lr, total_steps=total, pct_start=s.warmup_epochs / s.epochs
        )
    if s.schedule == "cosine":
        warmup = min(round(s.warmup_epochs * steps_per_epoch), total - 1)
        floor = s.min_lr / s.lr

        def factor(t):
            if t < warmup:
                return (t + 1) / warmup
            p = min(1.0, (t - warmup) / (total - warmup))
            return floor + (1.0 - floor) * (1.0 + math.cos(math.pi * p)) / 2.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if s.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, s.step_size * steps_per_epoch, s.gamma)
    return None


class TorchAugment:
    """cnnfast.augment.Augment's transform in torch ops: per image an affine map (rotation, scale,
    horizontal shear about the centre, shift) and an elastic displacement field, sampled in one
    bilinear pass with zeros outside the image."""

    def __init__(self, torch, settings: dict, seed: int):
        self.torch, self.s = torch, settings
        self.generator = torch.Generator().manual_seed(seed + 12345)
        sigma = settings["elastic_sigma"]
        radius = int(4 * sigma + 0.5)
        taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma * sigma))
        self.taps = taps / taps.sum()
        self.radius = radius

    def uniform(self, n, low, high):
        return low + (high - low) * self.torch.rand(n, generator=self.generator)

    def __call__(self, x):
        torch, s = self.torch, self.s
        F = torch.nn.functional
        n, _, h, w = x.shape
        angle = torch.deg2rad(self.uniform(n, -s["rotation"], s["rotation"]))
        scale = self.uniform(n, s["scale"][0], s["scale"][1])
        shear = torch.tan(torch.deg2rad(self.uniform(n, -s["shear"], s["shear"])))
        shift_x = self.uniform(n, -s["translate"], s["translate"]) * 2  # (normalised coordinates span 2)
        shift_y = self.uniform(n, -s["translate"], s["translate"]) * 2
        # output -> input map in normalised coordinates: inverse of (shift . rotate . shear . scale)
        cos, sin = torch.cos(angle), torch.sin(angle)
        forward = torch.zeros(n, 2, 2)
        forward[:, 0, 0], forward[:, 0, 1] = scale * cos, scale * (cos * shear - sin)
        forward[:, 1, 0], forward[:, 1, 1] = scale * sin, scale * (sin * shear + cos)
        inverse = torch.linalg.inv(forward)
        theta = torch.cat([inverse, -(inverse @ torch.stack([shift_x, shift_y], 1)[:, :, None])], 2)
        grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
        if s["elastic_alpha"] > 0:
            noise = 2 * torch.rand(n * 2, 1, h, w, generator=self.generator) - 1
            k = self.taps
            noise = F.conv2d(noise, k.view(1, 1, -1, 1), padding=(self.radius, 0))
            noise = F.conv2d(noise, k.view(1, 1, 1, -1), padding=(0, self.radius))
            field = noise.view(n, 2, h, w).permute(0, 2, 3, 1) * s["elastic_alpha"]
            grid = grid + field * torch.tensor([2.0 / w, 2.0 / h])
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def torch_run(torch, data, preset, s, per_epoch: int, log) -> dict:
    from cnnfast import presets

    x_train, y_train, x_test, y_test = data
    architecture = preset.architecture or presets.get("classic").model().architecture()
    model = torch_layers(torch, architecture, s.seed)
    optimizer = torch_optimizer(torch, s, model.parameters())
    scheduler = torch_scheduler(torch, s, optimizer, -(-len(x_train) // s.batch_size))
    augment = TorchAugment(torch, s.augment, s.seed) if s.augment is not None else None
    test = torch.from_numpy((x_test.astype(np.float32) / np.float32(255.0))[:, None])
    test_labels = torch.from_numpy(y_test.astype(np.int64))

    def train_step(batch, step):
        x = torch.from_numpy((x_train[batch].astype(np.float32) / np.float32(255.0))[:, None])
        if augment is not None:
            x = augment(x)
        y = torch.from_numpy(y_train[batch].astype(np.int64))
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=s.label_smoothing)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()

    def accuracy():
        model.eval()
        with torch.no_grad():
            correct = sum(
                int((model(test[j : j + 1000]).argmax(1) == test_labels[j : j + 1000]).sum())
                for j in range(0, len(test), 1000)
            )
        model.train()
        return correct / len(test)

    model.train()
    return timed_curve("PyTorch", s, len(x_train), per_epoch, train_step, accuracy, log)


# ------------------------------------------------------------------------------------------ report


def summarise(curve) -> dict:
    return {
        **{f"seconds_to_{100 * t:g}": first_reaching(curve, t) for t in TARGETS},
        "final_accuracy": curve["accuracy"][-1] if curve["accuracy"] else None,
        "train_seconds": curve["seconds"][-1] if curve["seconds"] else None,
    }


def print_table(report: dict, out) -> None:
    cfg = report["config"]
    print(
        f"time to accuracy, preset {cfg['preset']} ({cfg['epochs']} epochs, batch {cfg['batch_size']}, "
        f"seed {cfg['seed']}), "
        f"{cfg['threads']} threads, {cfg['cpu']}, cnnfast ISA {cfg.get('isa')}, load average {cfg['loadavg']}",
        file=out,
    )
    rows = [
        ("cnnfast", report.get("cnnfast")),
        (f"PyTorch {cfg.get('torch_version', '')}".strip(), report.get("torch")),
    ]
    keys = [f"seconds_to_{100 * t:g}" for t in TARGETS]
    print(f"{'':20} {'to 99.0%':>10} {'to 99.5%':>10} {'final acc':>10} {'train s':>9}", file=out)
    for name, r in rows:
        if r is None:
            continue
        s = r["summary"]
        cells = [f"{s[k]:9.1f}s" if s[k] is not None else f"{'-':>10}" for k in keys]
        print(f"{name:20} {cells[0]} {cells[1]} {100 * s['final_accuracy']:9.2f}% {s['train_seconds']:8.1f}s", file=out)
    if report.get("ratio"):
        cells = [f"{v:9.2f}x" if v is not None else f"{'-':>10}" for v in report["ratio"].values()]
        print(f"{'PyTorch / cnnfast':20} {cells[0]} {cells[1]} {'':10} {cells[2]}", file=out)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label, color in (("cnnfast", "cnnfast", "tab:blue"), ("torch", "PyTorch", "tab:orange")):
        r = report.get(key)
        if r is None:
            continue
        c = r["curve"]
        ax.plot(c["seconds"], [100 * a for a in c["accuracy"]], "o-", ms=3, color=color, label=label)
    for t in TARGETS:
        ax.axhline(100 * t, color="gray", lw=0.7, ls="--")
    lows = [min(r["curve"]["accuracy"]) for r in (report.get("cnnfast"), report.get("torch")) if r]
    ax.set_ylim(min(97.0, 100 * min(lows) - 0.3) if lows else 97.0, 100.0)  # (every point shown)
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title(
        f"--preset {cfg['preset']}: {cfg['epochs']} epochs, seed {cfg['seed']}, {cfg['threads']} threads\n"
        f"{cfg['cpu']}, cnnfast ISA {cfg.get('isa')}, load average {cfg['loadavg'][0] if cfg['loadavg'] else '?'}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1 or args.evals_per_epoch < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--threads, --evals-per-epoch and --epochs must be at least 1")
    json_to_stdout = args.json == "-"
    log = sys.stderr if json_to_stdout else sys.stdout
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
    else:
        try:
            import cnnfast
            from cnnfast.datasets import DatasetError, load_mnist
        except ImportError as error:
            sys.exit(f"time_to_accuracy: cannot import cnnfast ({error}); pip install {REPO} or set PYTHONPATH")
        cnnfast.set_num_threads(args.threads)
        cnnfast.reuse_freed_memory()
        directory = args.data_dir
        if directory is None and not os.environ.get("CNNFAST_DATA") and os.path.isdir(SHARED_MNIST):
            directory = SHARED_MNIST
        try:
            data = load_mnist(directory)
            if args.limit is not None:
                data = (data[0][: args.limit], data[1][: args.limit], data[2], data[3])
        except DatasetError as error:
            print(f"time_to_accuracy: {error}", file=sys.stderr)
            return 1
        torch = None
        if not args.no_torch:
            try:
                import torch

                torch.set_num_threads(args.threads)
            except ImportError as error:
                print(f"time_to_accuracy: PyTorch skipped (not importable: {error})", file=log)
        preset, s = recipe(args)
        report = {
            "config": {
                "preset": args.preset,
                "epochs": s.epochs,
                "batch_size": s.batch_size,
                "optimizer": s.optimizer,
                "lr": s.lr,
                "schedule": s.schedule,
                "label_smoothing": s.label_smoothing,
                "augment": s.augment,
                "seed": args.seed,
                "threads": args.threads,
                "evals_per_epoch": args.evals_per_epoch,
                "train_images": len(data[0]),
                "cpu": cpu_model(),
                "isa": cnnfast.build_info().get("isa"),
                "cnnfast_version": cnnfast.__version__,
                "torch_version": torch.__version__ if torch is not None else None,
                "python": platform.python_version(),
                "loadavg": loadavg(),
            }
        }
        print(
            f"time_to_accuracy: preset {args.preset}, {s.epochs} epochs, {args.threads} threads", file=log, flush=True
        )
        if not args.no_cnnfast:
            curve = cnnfast_run(data, preset, s, args.evals_per_epoch, log)
            report["cnnfast"] = {"curve": curve, "summary": summarise(curve)}
        if torch is not None:
            curve = torch_run(torch, data, preset, s, args.evals_per_epoch, log)
            report["torch"] = {"curve": curve, "summary": summarise(curve)}
        report["config"]["loadavg_end"] = loadavg()
        if "cnnfast" in report and "torch" in report:
            a, b = report["cnnfast"]["summary"], report["torch"]["summary"]
            keys = [f"seconds_to_{100 * t:g}" for t in TARGETS] + ["train_seconds"]
            report["ratio"] = {k: (b[k] / a[k] if a[k] and b[k] else None) for k in keys}
    print_table(report, log)
    if json_to_stdout:
        print(json.dumps(report))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}", file=log)
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
