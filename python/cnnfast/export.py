"""Export a trained model as a standard ONNX graph, to run it anywhere ONNX runs.

    python -m cnnfast.export --model mnist_cnn.npz --onnx model.onnx
    python -m cnnfast.export --model mnist_cnn.npz --onnx model.onnx --check   # compare in onnxruntime

    import cnnfast
    cnnfast.export_onnx(cnnfast.load_model("mnist_cnn.npz"), "model.onnx")

The graph maps the layers one to one onto ONNX operators (opset 13, IR version 7, which every
onnxruntime since 1.7 reads): Conv2d -> Conv, ReLU -> Relu, MaxPool2d -> MaxPool (stride = kernel,
floor), Flatten -> Flatten (axis 1), Linear -> Gemm (transB = 1); Dropout, the identity at
inference, is left out. Input ``input``: float32 [batch, 1, 28, 28], pixels in [0, 1] (uint8 / 255,
as cnnfast.mnist.as_model_input makes them); output ``logits``: float32 [batch, 10] (apply a softmax
for probabilities). The batch dimension is dynamic. Needs ``pip install cnnfast[onnx]``
(onnx to build the graph, onnxruntime for --check).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from . import __version__, nn
from ._cli import add_model_argument, argument_parser, check_model_arg, load_model
from ._files import atomic_write
from .nn import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential

OPSET = 13
IR_VERSION = 7
INPUT, OUTPUT = "input", "logits"
IMAGE_SIZE = 28
ONNX_MISSING = "exporting to ONNX needs the onnx package: pip install cnnfast[onnx]  (or: pip install onnx)"
ORT_MISSING = "running an ONNX file needs onnxruntime: pip install cnnfast[onnx]  (or: pip install onnxruntime)"


class ExportError(ValueError):
    """A model that cannot be expressed as the ONNX graph (an unknown layer, shapes that do not fit)."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError(ONNX_MISSING) from None
    return onnx


def _trace(model: Sequential, image_size: int):
    """(input channels, output shape without the batch), following the shapes through the layers;
    an ExportError naming the first layer whose input does not fit it."""
    first = next((layer for layer in model.layers if isinstance(layer, (Conv2d, Linear))), None)
    channels = first.in_channels if isinstance(first, Conv2d) else 1
    shape = (channels, image_size, image_size)
    for i, layer in enumerate(model.layers):
        where = f"layer {i} ({layer!r}) gets input [batch, {', '.join(map(str, shape))}]"
        if isinstance(layer, Conv2d):
            if len(shape) != 3 or shape[0] != layer.in_channels:
                raise ExportError(f"{where}, needs {layer.in_channels} channels")
            size = [s + 2 * layer.padding - k + 1 for s, k in zip(shape[1:], layer.kernel_size)]
            if min(size) < 1:
                raise ExportError(f"{where}: the kernel is larger than the padded image")
            shape = (layer.out_channels, *size)
        elif isinstance(layer, MaxPool2d):
            if len(shape) != 3 or min(shape[1:]) < layer.kernel_size:
                raise ExportError(f"{where}: needs an image at least {layer.kernel_size} pixels wide")
            shape = (shape[0], shape[1] // layer.kernel_size, shape[2] // layer.kernel_size)
        elif isinstance(layer, Flatten):
            shape = (int(np.prod(shape)),)
        elif isinstance(layer, Linear):
            if len(shape) != 1 or shape[0] != layer.in_features:
                raise ExportError(f"{where}, needs [batch, {layer.in_features}]")
            shape = (layer.out_features,)
        elif not isinstance(layer, (ReLU, Dropout)):
            raise ExportError(f"layer {i} ({type(layer).__name__}) has no ONNX translation")
    return channels, shape


def to_onnx(model: Sequential, image_size: int = IMAGE_SIZE):
    """The model as an onnx.ModelProto (checked with onnx.checker). Raises ImportError without
    onnx, ExportError for a model the graph cannot express."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    if not isinstance(model, Sequential):
        raise ExportError(f"expected a cnnfast.nn.Sequential model, got {type(model).__name__}")
    if not model.layers:
        raise ExportError("the model has no layers")
    channels, out_shape = _trace(model, image_size)
    nodes, weights, current = [], [], INPUT
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dropout):
            continue  # the identity at inference
        name = f"{i}_{type(layer).__name__.lower()}"
        inputs = [current]
        for kind, p in zip(("weight", "bias"), layer.parameters()):
            weights.append(numpy_helper.from_array(np.ascontiguousarray(p.data, np.float32), f"{i}.{kind}"))
            inputs.append(f"{i}.{kind}")
        if isinstance(layer, Conv2d):
            pad = layer.padding
            node = helper.make_node(
                "Conv",
                inputs,
                [name],
                name=name,
                kernel_shape=list(layer.kernel_size),
                pads=[pad, pad, pad, pad],
                strides=[1, 1],
                dilations=[1, 1],
                group=1,
            )
        elif isinstance(layer, ReLU):
            node = helper.make_node("Relu", inputs, [name], name=name)
        elif isinstance(layer, MaxPool2d):
            k = layer.kernel_size
            node = helper.make_node(
                "MaxPool",
                inputs,
                [name],
                name=name,
                kernel_shape=[k, k],
                strides=[k, k],
                pads=[0, 0, 0, 0],
                ceil_mode=0,
            )
        elif isinstance(layer, Flatten):
            node = helper.make_node("Flatten", inputs, [name], name=name, axis=1)
        else:  # Linear: y = x @ W.T + b
            node = helper.make_node("Gemm", inputs, [name], name=name, alpha=1.0, beta=1.0, transA=0, transB=1)
        nodes.append(node)
        current = name
    if not nodes:
        nodes.append(helper.make_node("Identity", [INPUT], [OUTPUT], name="identity"))
    else:
        nodes[-1].output[0] = OUTPUT
    graph = helper.make_graph(
        nodes,
        "cnnfast",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", channels, image_size, image_size])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=weights,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cnnfast",
        producer_version=__version__,
        doc_string=f"{INPUT}: float32 [batch, {channels}, {image_size}, {image_size}], "
        f"pixels in [0, 1]; {OUTPUT}: float32 [batch, "
        f"{', '.join(map(str, out_shape))}] (before softmax)",
    )
    proto.ir_version = IR_VERSION
    helper.set_model_props(proto, {"cnnfast_architecture": json.dumps(model.architecture())})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, image_size: int = IMAGE_SIZE) -> str:
    """Write `model` (a cnnfast Sequential, or the path of a saved model) to `path` as an ONNX
    file: input 'input' float32 [batch, 1, 28, 28] in [0, 1], output 'logits' [batch, 10]. Returns
    path. Raises ImportError (with the pip command) without onnx, ExportError for a model the
    graph cannot express, ModelFormatError for a bad model file."""
    if isinstance(model, (str, os.PathLike)):
        model = nn.load_model(model)
    proto = to_onnx(model, image_size)
    path = os.fspath(path)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return path


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    """Logits of the ONNX file at `path` for float32 x [N, 1, 28, 28], computed by onnxruntime (CPU)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(ORT_MISSING) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, np.float32)})[0]


def model_logits(model: Sequential, x: np.ndarray) -> np.ndarray:
    """cnnfast's own logits for float32 x [N, 1, 28, 28] (eval mode: no dropout)."""
    return model.infer(x)


# ----------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(
        prog="python -m cnnfast.export",
        description="Export a trained model as a standard ONNX graph (Conv, Relu, MaxPool, Flatten, Gemm; "
        f"opset {OPSET}) to run it with onnxruntime or any other ONNX runtime. Input "
        f"'{INPUT}': float32 [batch, 1, 28, 28], pixels in [0, 1] (uint8 / 255); output "
        f"'{OUTPUT}': float32 [batch, 10], before softmax.",
        epilog="Needs the onnx package (and onnxruntime for --check): pip install cnnfast[onnx]. "
        "Exit status: 0 done, 1 no or a bad model, onnx missing, or --check found a difference, "
        "2 bad arguments.",
    )
    add_model_argument(p)
    p.add_argument("--onnx", required=True, metavar="FILE.onnx", help="where to write the ONNX graph")
    p.add_argument(
        "--check",
        action="store_true",
        help="run the exported file in onnxruntime on random images and compare its logits "
        "with cnnfast's (fails above a max absolute difference of 1e-4)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


CHECK_IMAGES = 256
TOLERANCE = 1e-4


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_arg(parser, args.model)
    out = os.path.abspath(args.onnx)
    if not args.onnx.lower().endswith(".onnx") and not os.path.isdir(out):
        parser.error(
            f"--onnx {args.onnx}: give a file name ending in .onnx (e.g. "
            f"{os.path.splitext(args.onnx)[0] or 'model'}.onnx)"
        )
    if os.path.isdir(out):
        parser.error(
            f"--onnx {args.onnx} is a directory; give a file name such as {os.path.join(args.onnx, 'model.onnx')}"
        )
    if not os.path.isdir(os.path.dirname(out)):
        parser.error(f"--onnx {args.onnx}: no such directory")
    try:
        _onnx()
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print(f"error: --check: {ORT_MISSING}", file=sys.stderr)
            return 1
    model = load_model(args.model)
    if model is None:
        return 1
    try:
        export_onnx(model, args.onnx)
    except ExportError as error:
        print(f"error: cannot export {args.model}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: cannot write {args.onnx}: {error.strerror or error}", file=sys.stderr)
        return 1
    onnx = _onnx()
    graph = onnx.load(args.onnx).graph
    ops = [node.op_type for node in graph.node]
    result = {
        "onnx": out,
        "model": os.path.abspath(args.model),
        "bytes": os.path.getsize(args.onnx),
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "operators": ops,
        "input": {"name": INPUT, "shape": _shape(graph.input[0])},
        "output": {"name": OUTPUT, "shape": _shape(graph.output[0])},
    }
    log = sys.stderr if args.json else sys.stdout
    print(f"wrote {args.onnx} ({result['bytes']:,} bytes, ONNX opset {OPSET}): {' -> '.join(ops)}", file=log)
    print(
        f"  input  '{INPUT}'  float32 {_text(result['input']['shape'])}, pixels in [0, 1]\n"
        f"  output '{OUTPUT}' float32 {_text(result['output']['shape'])}",
        file=log,
    )
    status = 0
    if args.check:
        x = np.random.default_rng(0).random((CHECK_IMAGES, *result["input"]["shape"][1:]), dtype=np.float32)
        difference = float(np.abs(run_onnx(args.onnx, x) - model_logits(model, x)).max())
        ok = difference < TOLERANCE
        result.update(check_images=CHECK_IMAGES, max_abs_difference=difference, check_passed=ok)
        print(
            f"check: onnxruntime and cnnfast agree on {CHECK_IMAGES} random images to a max absolute "
            f"difference of {difference:.2e} in the logits ({'within' if ok else 'ABOVE'} {TOLERANCE:g})",
            file=log,
        )
        status = 0 if ok else 1
    if args.json:
        print(json.dumps(result))
    return status


def _shape(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _text(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


if __name__ == "__main__":
    from ._cli import run_command

    sys.exit(run_command(main))
