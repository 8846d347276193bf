#!/usr/bin/env python3
"""Inference beside ONNX Runtime: the default MNIST model in cnnfast and the same model exported
by `cnnfast.export` and run by onnxruntime's CPU provider, on the same images and threads.

    pip install '.[onnx]'                      # cnnfast with onnx and onnxruntime
    python bench/bench_onnx.py                 # 2 threads, 5 interleaved rounds
    python bench/bench_onnx.py --model mnist_cnn.npz --threads 1 --json out.json

What is timed, for both, in alternating rounds (the best round's median is reported, the one the
rest of the machine disturbed least):
- one image at a time (someone classifying one drawn digit): 200 different test images, each
  its own call (cnnfast: `model.infer` on [1, 1, 28, 28]; onnxruntime: `session.run`), the
  median milliseconds per call;
- batch 1,000: the first 1,000 test images in one call, images/s.
The model is the default one (`cnnfast.nn.mnist_cnn`), freshly initialised unless --model names a
trained file: the time of a forward pass does not depend on the weights' values. Before timing,
both give the same logits (to 1e-4) on the batch. onnxruntime gets intra_op_num_threads = --threads.

Both on the same instruction set: onnxruntime has no switch like `CNNFAST_ISA`; its kernels (MLAS)
follow what CPUID reports. So where cnnfast runs on AVX2 on a machine with AVX-512
(`CNNFAST_ISA=avx2`), this script compiles bench/cpuid_avx2.c (a C compiler is needed) and runs
itself again under it (LD_PRELOAD): CPUID then reports no AVX-512 to the whole process, onnxruntime
included. That takes the kernel's CPUID faulting (Linux on x86-64, `cpuid_fault` in
/proc/cpuinfo); where it is missing, the script says so and stops, unless --onnxruntime-isa native
lets onnxruntime use every instruction the machine has (and the report says that it did).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_train import SHARED_MNIST, cpu_model, loadavg  # (beside this script)

try:
    import cnnfast
    from cnnfast.datasets import DatasetError, load_mnist
    from cnnfast.export import INPUT, export_onnx
    from cnnfast.mnist import as_model_input
    from cnnfast.nn import load_model, mnist_cnn
except ImportError as error:  # pragma: no cover - a set-up problem
    sys.exit(f"bench_onnx: cannot import cnnfast ({error}); pip install . first")
HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_SOURCE = os.path.join(HERE, "cpuid_avx2.c")
SHIM_LOADED = "CNNFAST_CPUID_AVX2_SHIM"  # (set in the environment of the run under the shim: its path)
NO_CPUID_FAULT = (
    "bench_onnx: this machine cannot hide AVX-512 from onnxruntime (it needs the kernel's CPUID faulting: "
    "`cpuid_fault` in /proc/cpuinfo); run with --onnxruntime-isa native to compare against onnxruntime's own choice"
)


def host_has_avx512() -> bool:
    return "avx512f" in cpu_flags()


def onnxruntime_isa(choice: str) -> str:
    """The instruction set onnxruntime runs on: "avx2" (CPUID masked for the whole process) or "native"; auto: the same
    as cnnfast's where cnnfast is held to AVX2 on a machine with AVX-512, native otherwise."""
    if choice != "auto":
        return choice
    return "avx2" if cnnfast.build_info()["isa"] == "avx2" and host_has_avx512() else "native"


NO_AVX512_IN_GLIBC = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD"


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def run_again_under_the_shim() -> None:
    """Compile bench/cpuid_avx2.c into cnnfast's cache and run this script again with it preloaded (never returns)."""
    if "cpuid_fault" not in cpu_flags():
        sys.exit(NO_CPUID_FAULT)
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        sys.exit("bench_onnx: holding onnxruntime to AVX2 needs a C compiler (cc) for bench/cpuid_avx2.c")
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cnnfast")
    os.makedirs(cache, exist_ok=True)
    shim = os.path.join(cache, "cpuid_avx2.so")
    building = f"{shim}.{os.getpid()}"  # (then renamed: runs side by side never load a half-written file)
    built = subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-o", building, SHIM_SOURCE], capture_output=True, text=True
    )
    if built.returncode != 0:
        sys.exit(f"bench_onnx: could not compile {SHIM_SOURCE}:\n{built.stderr}")
    os.replace(building, shim)
    env = dict(os.environ, **{SHIM_LOADED: shim})
    env["LD_PRELOAD"] = " ".join(filter(None, [shim, os.environ.get("LD_PRELOAD")]))
    # (glibc chose its own functions before the shim loads: its tunables hold them to AVX2 too)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), NO_AVX512_IN_GLIBC]))
    for name in ("PYTHONFAULTHANDLER", "PYTHONDEVMODE"):  # (a SIGSEGV handler of its own would replace the shim's)
        env.pop(name, None)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def shim_counter():
    """The shim's count of CPUIDs answered (None when this process does not run under it); exits when the shim is
    loaded but could not make CPUID fault."""
    if SHIM_LOADED not in os.environ:
        return None
    library = ctypes.CDLL(os.environ[SHIM_LOADED])
    calls = ctypes.c_long.in_dll(library, "cnnfast_cpuid_calls")
    if not ctypes.c_int.in_dll(library, "cnnfast_cpuid_masked").value or calls.value == 0:
        sys.exit(NO_CPUID_FAULT)  # (faulting refused, or the shim loaded after numpy and cnnfast had asked)
    return lambda: calls.value


try:
    import onnxruntime
except ImportError:  # pragma: no cover - a set-up problem
    sys.exit("bench_onnx: onnxruntime is the peer here: pip install onnx onnxruntime (or '.[onnx]')")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/bench_onnx.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", metavar="FILE.npz", help="a trained model file (default: the default model, untrained)")
    p.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--data-dir", help="MNIST's directory (default: $CNNFAST_DATA, ../shared/data/mnist, the cache)")
    p.add_argument(
        "--onnxruntime-isa",
        choices=("auto", "avx2", "native"),
        default="auto",
        help="avx2: hide AVX-512 from the process (bench/cpuid_avx2.c) so that onnxruntime runs its AVX2 kernels "
        "(and cnnfast too, whatever CNNFAST_ISA says); native: whatever the machine has; auto (default): avx2 where "
        "cnnfast itself is held to AVX2 (CNNFAST_ISA=avx2) on a machine with AVX-512",
    )
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    return p


def test_images(data_dir) -> tuple[np.ndarray, str]:
    """float32 [1000+, 1, 28, 28]: MNIST's test images, or uniform noise when MNIST is not found."""
    try:
        root = data_dir or os.environ.get("CNNFAST_DATA") or (SHARED_MNIST if os.path.isdir(SHARED_MNIST) else None)
        _, _, x_test, _ = load_mnist(root, download=False)
        return as_model_input(x_test), "MNIST's test images"
    except (DatasetError, OSError):
        rng = np.random.default_rng(0)
        return rng.random((1000, 1, 28, 28), dtype=np.float32), "uniform noise (MNIST not found)"


def median_ms(fn, calls) -> float:
    times = []
    for args in calls:
        start = time.perf_counter()
        fn(args)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        sys.exit("bench_onnx: --threads and --rounds must be at least 1")
    peer_isa = onnxruntime_isa(args.onnxruntime_isa)
    if peer_isa == "avx2" and SHIM_LOADED not in os.environ and host_has_avx512():
        run_again_under_the_shim()
    cpuid_calls = shim_counter()
    if peer_isa == "avx2" and cpuid_calls is None:
        peer_isa = "native (no AVX-512 to hide on this machine)"
    cnnfast.set_num_threads(args.threads)
    model = load_model(args.model) if args.model else mnist_cnn(0)
    model.eval()
    x, source = test_images(args.data_dir)
    batch = np.ascontiguousarray(x[:1000])
    singles = [np.ascontiguousarray(x[i : i + 1]) for i in range(200)]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, os.path.join(tmp, "model.onnx"), input_shape=(1, 28, 28))
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def ort(v):
        return session.run(None, {INPUT: v})[0]

    difference = float(np.abs(model.infer(batch) - ort(batch)).max())
    if difference > 1e-4:
        sys.exit(f"bench_onnx: cnnfast's and onnxruntime's logits differ by {difference:.2e} (more than 1e-4)")
    for fn in (model.infer, ort):  # warm-up: threads, buffers, onnxruntime's first run
        fn(batch)
        for v in singles[:20]:
            fn(v)

    calls_before = cpuid_calls() if cpuid_calls else 0
    one = {"cnnfast": [], "onnxruntime": []}
    full = {"cnnfast": [], "onnxruntime": []}
    for _ in range(args.rounds):
        for name, fn in (("cnnfast", model.infer), ("onnxruntime", ort)):
            one[name].append(median_ms(fn, singles))
            full[name].append(median_ms(fn, [batch] * 5))
    calls_timed = cpuid_calls() - calls_before if cpuid_calls else None
    if cpuid_calls:
        peer_isa = f"avx2 (AVX-512 hidden from CPUID by bench/cpuid_avx2.c; {cpuid_calls()} CPUIDs answered)"
    best_one = {k: min(v) for k, v in one.items()}
    best_full = {k: 1000 / (min(v) / 1e3) for k, v in full.items()}
    info = cnnfast.build_info()
    report = {
        "benchmark": "cnnfast bench_onnx",
        "machine": cpu_model(),
        "isa": info["isa"],
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_isa": peer_isa,
        "cpuid_calls_while_timed": calls_timed,
        "threads": args.threads,
        "images": source,
        "model": args.model or "mnist_cnn(0), untrained",
        "max_logit_difference": difference,
        "one_image_ms": best_one,
        "one_image_ms_rounds": one,
        "batch_1000_images_per_s": best_full,
        "batch_1000_ms_rounds": full,
        "loadavg": loadavg(),
    }
    print(
        f"bench_onnx: {report['machine']}; cnnfast {info['isa']}; onnxruntime {report['onnxruntime']} on {peer_isa}; "
        f"{args.threads} thread(s); {source}; logits within {difference:.1e}"
    )
    if calls_timed:  # (each one a trap into the shim: the timings include them)
        print(f"bench_onnx: warning: {calls_timed} CPUIDs ran while timing, each trapped by the shim")
    print(f"{'':12s} {'one image ms':>13s} {'batch 1,000 img/s':>18s}")
    for name in ("cnnfast", "onnxruntime"):
        print(f"{name:12s} {best_one[name]:13.4f} {best_full[name]:18,.0f}")
    print(
        f"{'cnnfast / onnxruntime':12s}  {best_one['onnxruntime'] / best_one['cnnfast']:.2f}x latency, "
        f"{best_full['cnnfast'] / best_full['onnxruntime']:.2f}x throughput (above 1: cnnfast is faster)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
