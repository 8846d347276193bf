"""cnnfast: a small, fast CPU trainer for convolutional networks, C++ kernels under a thin Python API.

Reading order: cpp/ (kernels) -> cpp/bindings.cpp -> cnnfast.functional -> cnnfast.nn -> the
commands (python -m cnnfast.train, cnnfast.evaluate, cnnfast.predict, cnnfast.export,
cnnfast.backprop, cnnfast.sum_challenge).
"""

import importlib.metadata as _metadata
import os as _os
import warnings as _warnings

# OpenMP threads that wait for the next kernel spin before they sleep; libgomp spins 300,000 times
# by default, which on a machine doing other work takes the cores from that work and from our own
# threads. Measured (python -m cnnfast.train --epochs 1 --threads 2, 2-core Xeon, img/s; busy = 1 or
# 2 other processes spinning): default 16,000 quiet / 4,500 / 5,400 busy; GOMP_SPINCOUNT=10000
# 15,900 / 7,500 / 7,000; OMP_WAIT_POLICY=passive 14,700 / 8,900 / 9,000. So 10,000 spins unless
# the user chose (set OMP_WAIT_POLICY=passive for a machine that is always busy). It must be in the
# environment before libgomp loads, that is before _core, and child processes inherit it.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from . import _core  # noqa: E402

# The version is written once, in pyproject.toml; the installed package's metadata carries it.
try:
    __version__ = _metadata.version("cnnfast")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"


_warned_no_openmp = False


def set_num_threads(n: int) -> None:
    """Use `n` OpenMP threads (n >= 1) in every kernel from now on.

    A build without OpenMP (a compiler without it, such as Apple's clang without libomp) runs
    on one thread whatever `n` is, and says so once."""
    global _warned_no_openmp
    _core.set_num_threads(int(n))
    if int(n) > 1 and not _core.build_info()["openmp"] and not _warned_no_openmp:
        _warned_no_openmp = True
        _warnings.warn(
            f"cnnfast was built without OpenMP: set_num_threads({int(n)}) runs on 1 thread "
            "(on macOS: brew install libomp, then reinstall cnnfast)",
            RuntimeWarning,
            stacklevel=2,
        )


def reuse_freed_memory() -> bool:
    """Let this process reuse the memory a training step frees in the next step (glibc: keep large
    freed blocks in the heap instead of giving them back; a step allocates the same arrays, up to
    ~11 MB, each time, and faulting them in afresh cost about a fifth of a step). Process-wide and
    lasting, so it is not done on import: `python -m cnnfast.train` asks for it; a program of yours
    that trains for long may too. Returns False where it does nothing (a C library other than glibc)."""
    return _core.reuse_freed_memory()


def get_num_threads() -> int:
    """The number of OpenMP threads the kernels use (default: OMP_NUM_THREADS or all cores)."""
    return _core.get_num_threads()


def build_info() -> dict:
    """What a bug report needs: the instruction set in use, compiled in and supported by this CPU;
    per operation, the implementation in use ("kernels"; conv2d: its paths in the order tried);
    OpenMP, threads, compiler, flags."""
    info = dict(_core.build_info())
    info["version"] = __version__
    return info


def _apply_isa_override() -> None:
    # CNNFAST_ISA=baseline|avx2|avx512 (x86-64) or baseline|neon (AArch64) forces every kernel to
    # that instruction set's table (cpp/isa.hpp), for testing or measuring a narrower CPU.
    name = _os.environ.get("CNNFAST_ISA", "").strip().lower()
    if not name:
        return
    try:
        _core.set_isa(name)
    except ValueError as error:
        _warnings.warn(f"CNNFAST_ISA={name} ignored: {error}", RuntimeWarning, stacklevel=3)


_apply_isa_override()


def load_model(path):
    """Load a model saved with `model.save(path)` (see cnnfast.nn)."""
    from .nn import load_model as _load

    return _load(path)


def manual_seed(seed: int) -> None:
    """Seed the generator that layers built without `rng=` draw from (initial weights, dropout)."""
    from .nn import manual_seed as _seed

    _seed(seed)


def export_onnx(model, path, input_shape=None):
    """Write `model` (or the path of a saved model) to `path` as a standard ONNX graph: input
    float32 [batch, *input_shape] (default: the model's own, MNIST's [batch, 1, 28, 28] in [0, 1]),
    output logits [batch, classes]. Needs the onnx package (pip install cnnfast[onnx]); see
    cnnfast.export."""
    from .export import export_onnx as _export

    return _export(model, path, input_shape=input_shape)


__all__ = [
    "set_num_threads",
    "get_num_threads",
    "reuse_freed_memory",
    "build_info",
    "load_model",
    "manual_seed",
    "export_onnx",
    "__version__",
]
