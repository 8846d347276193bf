"""Export a trained model as a standard ONNX graph, to run it anywhere ONNX runs.

    python -m cnnfast.export --model mnist_cnn.npz --onnx model.onnx
    python -m cnnfast.export --model mnist_cnn.npz --onnx model.onnx --check   # compare in onnxruntime

    import cnnfast
    cnnfast.export_onnx(cnnfast.load_model("mnist_cnn.npz"), "model.onnx")

The graph maps the layers one to one onto ONNX operators (opset 13, IR version 7, which every
onnxruntime since 1.7 reads): Conv2d -> Conv (its stride and padding; no bias input without a
bias), ReLU -> Relu, LeakyReLU -> LeakyRelu, Tanh -> Tanh, Sigmoid -> Sigmoid, MaxPool2d ->
MaxPool and AvgPool2d -> AveragePool (their stride and padding, floor), GlobalAvgPool2d and
AdaptiveAvgPool2d(1) -> GlobalAveragePool, Residual -> its branches' nodes and an Add, Flatten ->
Flatten (axis 1), Linear -> Gemm (transB = 1), BatchNorm2d and BatchNorm1d -> BatchNormalization (with
the running statistics, as at inference); Dropout, the identity at inference, is left out.

Input ``input``: float32 [batch, *the model's input shape]: the shape given (input_shape=, or
--input-shape), else the one the model was trained on (Sequential.input_shape, kept in model
files), else [channels of the first layer, 28, 28] (MNIST: pixels in [0, 1], uint8 / 255, as
cnnfast.mnist.as_model_input makes them). Output ``logits``: float32 [batch, classes] (apply a
softmax for probabilities). The batch dimension is dynamic. Needs ``pip install cnnfast[onnx]``
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
from .nn import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sequential,
    ShapeError,
    Sigmoid,
    Tanh,
)

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


EXPORTED = (Conv2d, Linear, ReLU, MaxPool2d, Flatten, Dropout, LeakyReLU, Tanh, Sigmoid, AvgPool2d, GlobalAvgPool2d)
EXPORTED += (BatchNorm1d, BatchNorm2d)  # (issue 15)


def _batch_norm_node(helper, numpy_helper, layer, inputs: list, name: str, prefix: str, weights: list):
    """BatchNormalization (inference) of a BatchNorm layer whose weight and bias are `inputs`
    already: its running statistics follow as initializers ("<prefix>.running_mean", ...)."""
    for kind, array in layer.named_buffers():
        weights.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), f"{prefix}.{kind}"))
        inputs.append(f"{prefix}.{kind}")
    return helper.make_node("BatchNormalization", inputs, [name], name=name, epsilon=layer.eps)


def _check_layers(layers, prefix: str = "") -> None:
    for i, layer in enumerate(layers):
        if isinstance(layer, Residual):
            _check_layers(layer.block.layers, f"{prefix}{i}.block.")
            if layer.shortcut is not None:
                _check_layers(layer.shortcut.layers, f"{prefix}{i}.shortcut.")
        elif not isinstance(layer, EXPORTED):
            raise ExportError(f"layer {prefix}{i} ({type(layer).__name__}) has no ONNX translation")


def model_input_shape(model: Sequential, input_shape=None, image_size: int | None = None) -> tuple:
    """The input the graph declares (one sample, no batch): `input_shape` if given, else
    (channels, image_size, image_size) if image_size is given, else the model's own
    (model.input_shape: given to Sequential, or the shape it was trained on), else MNIST's
    (channels of the first layer, 28, 28)."""
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if not shape or min(shape) < 1:
            raise ExportError(f"input_shape must be positive sizes, got {input_shape!r}")
        return shape
    sample = model.sample_shape()
    channels = sample[0] if sample and len(sample) == 3 and sample[0] is not None else 1
    if image_size is not None:
        return (channels, int(image_size), int(image_size))
    if getattr(model, "input_shape", None) is not None:
        return tuple(model.input_shape)
    return model.default_input_shape()


def _trace(model: Sequential, shape: tuple):
    """The output shape without the batch, following `shape` through the layers; an ExportError
    naming the first layer (nested: "3.block.1") whose input does not fit it."""
    _check_layers(model.layers)
    try:
        out = model.output_shape(shape)
    except ShapeError as error:
        hint = ""
        if getattr(model, "input_shape", None) is None:
            hint = (
                f" (the model does not say its input shape, so {list(shape)} was assumed: give it with "
                "input_shape=(channels, height, width) or --input-shape C,H,W)"
            )
        raise ExportError(f"{error}{hint}") from None
    if out is None:
        raise ExportError("some layer does not tell its output shape")
    return out


def _nodes(layers, current: str, prefix: str, nodes: list, weights: list) -> str:
    """Append the ONNX nodes and weights of `layers` (names prefixed as their parameters are
    named: "3.block.0.weight") reading `current`; returns the name of the last output."""
    from onnx import helper, numpy_helper

    for i, layer in enumerate(layers):
        if isinstance(layer, Dropout):
            continue  # the identity at inference
        name = f"{prefix}{i}_{type(layer).__name__.lower()}"
        if isinstance(layer, Residual):
            a = _nodes(layer.block.layers, current, f"{prefix}{i}.block.", nodes, weights)
            b = (
                current
                if layer.shortcut is None
                else _nodes(layer.shortcut.layers, current, f"{prefix}{i}.shortcut.", nodes, weights)
            )
            nodes.append(helper.make_node("Add", [a, b], [name], name=name))
            current = name
            continue
        inputs = [current]
        for kind, p in layer.named_parameters():
            weights.append(numpy_helper.from_array(np.ascontiguousarray(p.data, np.float32), f"{prefix}{i}.{kind}"))
            inputs.append(f"{prefix}{i}.{kind}")
        if isinstance(layer, Conv2d):
            top, bottom, left, right = layer.pads
            node = helper.make_node(
                "Conv",
                inputs,
                [name],
                name=name,
                kernel_shape=list(layer.kernel_size),
                pads=[top, left, bottom, right],
                strides=[layer.stride, layer.stride],
                dilations=[1, 1],
                group=1,
            )
        elif isinstance(layer, ReLU):
            node = helper.make_node("Relu", inputs, [name], name=name)
        elif isinstance(layer, LeakyReLU):
            node = helper.make_node("LeakyRelu", inputs, [name], name=name, alpha=layer.negative_slope)
        elif isinstance(layer, Tanh):
            node = helper.make_node("Tanh", inputs, [name], name=name)
        elif isinstance(layer, Sigmoid):
            node = helper.make_node("Sigmoid", inputs, [name], name=name)
        elif isinstance(layer, (MaxPool2d, AvgPool2d)):
            k, stride, pad = layer.kernel_size, layer.stride, layer.padding
            window = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, ceil_mode=0)
            if isinstance(layer, MaxPool2d):
                node = helper.make_node("MaxPool", inputs, [name], name=name, **window)
            else:
                count = int(layer.count_include_pad)
                node = helper.make_node("AveragePool", inputs, [name], name=name, count_include_pad=count, **window)
        elif isinstance(layer, GlobalAvgPool2d):
            node = helper.make_node("GlobalAveragePool", inputs, [name], name=name)
        elif isinstance(layer, Flatten):
            node = helper.make_node("Flatten", inputs, [name], name=name, axis=1)
        elif isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            node = _batch_norm_node(helper, numpy_helper, layer, inputs, name, f"{prefix}{i}", weights)
        else:  # Linear: y = x @ W.T + b
            node = helper.make_node("Gemm", inputs, [name], name=name, alpha=1.0, beta=1.0, transA=0, transB=1)
        nodes.append(node)
        current = name
    return current


def to_onnx(model: Sequential, image_size: int | None = None, input_shape=None):
    """The model as an onnx.ModelProto (checked with onnx.checker), its input declared as
    [batch, *shape] with the shape `input_shape` (see model_input_shape). Raises
    ImportError without onnx, ExportError for a model the graph cannot express."""
    onnx = _onnx()
    from onnx import TensorProto, helper

    if not isinstance(model, Sequential):
        raise ExportError(f"expected a cnnfast.nn.Sequential model, got {type(model).__name__}")
    if not model.layers:
        raise ExportError("the model has no layers")
    shape = model_input_shape(model, input_shape, image_size)
    out_shape = _trace(model, shape)
    nodes, weights = [], []
    last = _nodes(model.layers, INPUT, "", nodes, weights)
    if not nodes or last == INPUT:
        nodes.append(helper.make_node("Identity", [last], [OUTPUT], name="identity"))
    else:
        for node in nodes:  # (the last node's output; a Residual's Add may also read it)
            node.input[:] = [OUTPUT if name == last else name for name in node.input]
            node.output[:] = [OUTPUT if name == last else name for name in node.output]
    text = ", ".join(map(str, shape))
    graph = helper.make_graph(
        nodes,
        "cnnfast",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=weights,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="cnnfast",
        producer_version=__version__,
        doc_string=f"{INPUT}: float32 [batch, {text}]"
        + (", pixels in [0, 1]" if shape == (1, IMAGE_SIZE, IMAGE_SIZE) else "")
        + f"; {OUTPUT}: float32 [batch, {', '.join(map(str, out_shape))}] (before softmax)",
    )
    proto.ir_version = IR_VERSION
    helper.set_model_props(proto, {"cnnfast_architecture": json.dumps(model.architecture())})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, image_size: int | None = None, input_shape=None) -> str:
    """Write `model` (a cnnfast Sequential, or the path of a saved model) to `path` as an ONNX
    file: input 'input' float32 [batch, *input shape] (the model's own: see the function
    input_shape; MNIST's [batch, 1, 28, 28] in [0, 1]), output 'logits' [batch, classes]. Returns
    path. Raises ImportError (with the pip command) without onnx, ExportError for a model the
    graph cannot express, ModelFormatError for a bad model file."""
    if isinstance(model, (str, os.PathLike)):
        model = nn.load_model(model)
    proto = to_onnx(model, image_size, input_shape)
    path = os.fspath(path)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return path


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    """Logits of the ONNX file at `path` for float32 x [N, *input shape], computed by onnxruntime (CPU)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(ORT_MISSING) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, np.float32)})[0]


def model_logits(model: Sequential, x: np.ndarray) -> np.ndarray:
    """cnnfast's own logits for float32 x [N, *input shape] (eval mode: no dropout)."""
    return model.infer(x)


# ----------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(
        prog="python -m cnnfast.export",
        description="Export a trained model as a standard ONNX graph (Conv, Relu, MaxPool, Flatten, Gemm; "
        "LeakyRelu, Tanh, Sigmoid, AveragePool, GlobalAveragePool, Add, BatchNormalization for other layers; "
        f"opset {OPSET}) to run it with onnxruntime or any other ONNX runtime. Input "
        f"'{INPUT}': float32 [batch, *the model's input shape] as its file records it (MNIST's "
        f"[batch, 1, 28, 28], pixels in [0, 1]: uint8 / 255); output "
        f"'{OUTPUT}': float32 [batch, classes], before softmax.",
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
    p.add_argument(
        "--input-shape",
        metavar="C,H,W",
        type=_shape_argument,
        help="the input of one sample, e.g. 3,32,32 (default: the shape the model file records, "
        "the one it was trained on; 1,28,28 for a file that records none)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def _shape_argument(text: str) -> tuple:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not sizes such as 3,32,32") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the sizes must be positive, such as 3,32,32")
    return shape


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
        export_onnx(model, args.onnx, input_shape=args.input_shape)
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
