"""cnnfast: a small, fast CPU trainer for convolutional networks, C++ kernels under a thin Python API.

Reading order: cpp/ (kernels) -> cpp/bindings.cpp -> cnnfast.functional -> cnnfast.nn -> the
commands (python -m cnnfast.train, cnnfast.evaluate, cnnfast.predict, cnnfast.export,
cnnfast.backprop, cnnfast.sum_challenge).
"""
import os as _os
import warnings as _warnings

from . import _core

__version__ = "0.1.0"


def set_num_threads(n: int) -> None:
    """Use `n` OpenMP threads (n >= 1) in every kernel from now on."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of OpenMP threads the kernels use (default: OMP_NUM_THREADS or all cores)."""
    return _core.get_num_threads()


def build_info() -> dict:
    """What a bug report needs: instruction set in use and compiled in, OpenMP, threads, compiler, flags."""
    info = dict(_core.build_info())
    info["version"] = __version__
    return info


def _apply_isa_override() -> None:
    # CNNFAST_ISA=baseline|avx2|avx512 forces a (lower) instruction set for the GEMM micro-kernel.
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


def export_onnx(model, path):
    """Write `model` (or the path of a saved model) to `path` as a standard ONNX graph: input
    float32 [batch, 1, 28, 28] in [0, 1], output logits [batch, 10]. Needs the onnx package
    (pip install cnnfast[onnx]); see cnnfast.export."""
    from .export import export_onnx as _export

    return _export(model, path)


__all__ = ["set_num_threads", "get_num_threads", "build_info", "load_model", "export_onnx", "__version__"]
