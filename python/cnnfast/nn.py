"""Layers, a Sequential container, the default MNIST model, and model files.

A layer holds its parameters and calls the C++ kernels (cnnfast.functional); `forward` keeps
what `backward` needs, and `backward(dy, input_grad=True)` sets each parameter's `.grad`
(overwriting it) and returns the gradient with respect to the layer's input; with
input_grad=False (the first layer of a network: training needs no gradient of the images) a
layer may skip that work and return None, as Conv2d does. Everything is float32, NCHW.

Nothing here knows about MNIST but `mnist_cnn`, the default model: a Sequential predicts on
whatever input its first layer takes and gives as many classes as its last layer has outputs.
Turning MNIST's uint8 digits into model input is cnnfast.mnist's job.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from . import functional as F
from ._files import atomic_write, read_npz

FORMAT = "cnnfast-model-v1"

# The generator of layers built without rng= (weights, dropout masks): unseeded until
# cnnfast.manual_seed(s), then every model built in the same order is the same (as torch.manual_seed).
_default_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that layers built without `rng=` draw from (initial weights, dropout)."""
    global _default_rng
    _default_rng = np.random.default_rng(int(seed))


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else _default_rng


class ModelFormatError(ValueError):
    """A file that is not a cnnfast model, or whose contents do not fit its architecture."""


class Parameter:
    """A float32 array and the gradient the last backward pass wrote for it."""

    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape


class Layer:
    training = True

    def backward(self, dy, input_grad: bool = True):
        """dL/d(input) from dL/d(output) `dy`, setting the parameters' .grad; a layer may return
        None instead when `input_grad` is False."""
        raise NotImplementedError

    def parameters(self) -> list[Parameter]:
        return []

    def config(self) -> dict:
        """The constructor arguments: with the class name, enough to rebuild the layer."""
        return {}

    def infer(self, x):
        """The eval-mode output, keeping nothing for a backward pass."""
        return self.forward(x)

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def kernel_pair(kernel_size) -> tuple[int, int]:
    """(height, width) of a kernel given as one int (square) or a pair (kh, kw), as PyTorch takes it."""
    if isinstance(kernel_size, (tuple, list)):
        if len(kernel_size) != 2:
            raise ValueError(f"kernel_size must be an int or a pair (height, width), got {kernel_size!r}")
        return int(kernel_size[0]), int(kernel_size[1])
    return int(kernel_size), int(kernel_size)


class Conv2d(Layer):
    """x [N, in, H, W] -> [N, out, H+2p-kh+1, W+2p-kw+1]; weight [out, in, kh, kw], bias [out].

    kernel_size is k (square) or (kh, kw); `self.kernel_size` is always the pair. Initialised as
    PyTorch does by default (Kaiming-uniform with a=sqrt(5): weights and bias uniform in
    +-1/sqrt(fan_in), fan_in = in * kh * kw).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        padding: int = 0,
        rng: np.random.Generator | None = None,
    ):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.padding = kernel_pair(kernel_size), int(padding)
        rng = _rng(rng)
        kh, kw = self.kernel_size
        bound = 1.0 / math.sqrt(self.in_channels * kh * kw)
        self.weight = Parameter(_uniform(rng, (self.out_channels, self.in_channels, kh, kw), bound))
        self.bias = Parameter(_uniform(rng, (self.out_channels,), bound))

    def forward(self, x):
        self.x = x
        return self.infer(x)

    def infer(self, x):
        return F.conv2d(x, self.weight.data, self.bias.data, self.padding)

    def backward(self, dy, input_grad=True):
        dx, self.weight.grad, self.bias.grad = F.conv2d_backward(self.x, self.weight.data, dy, self.padding, input_grad)
        return dx

    def parameters(self):
        return [self.weight, self.bias]

    def config(self):
        kh, kw = self.kernel_size
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": kh if kh == kw else [kh, kw],  # a square kernel as one int, as files always had it
            "padding": self.padding,
        }


class Linear(Layer):
    """x [N, in] -> [N, out]; weight [out, in], bias [out]; PyTorch's default initialisation."""

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator | None = None):
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(_uniform(rng, (self.out_features, self.in_features), bound))
        self.bias = Parameter(_uniform(rng, (self.out_features,), bound))

    def forward(self, x):
        self.x = x
        return self.infer(x)

    def infer(self, x):
        return F.linear(x, self.weight.data, self.bias.data)

    def backward(self, dy, input_grad=True):
        dx, self.weight.grad, self.bias.grad = F.linear_backward(self.x, self.weight.data, dy)
        return dx

    def parameters(self):
        return [self.weight, self.bias]

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features}


class ReLU(Layer):
    def forward(self, x):
        self.x = x
        return self.infer(x)

    def infer(self, x):
        return F.relu(x)

    def backward(self, dy, input_grad=True):
        return F.relu_backward(self.x, dy)


class MaxPool2d(Layer):
    """Max over k x k windows with stride k: [N, C, H, W] -> [N, C, H//k, W//k]."""

    def __init__(self, kernel_size: int):
        self.kernel_size = int(kernel_size)

    def forward(self, x):
        self.x_shape = x.shape
        y, self.argmax = F.max_pool2d(x, self.kernel_size)
        return y

    def infer(self, x):
        return F.max_pool2d(x, self.kernel_size)[0]

    def backward(self, dy, input_grad=True):
        return F.max_pool2d_backward(dy, self.argmax, self.x_shape)

    def config(self):
        return {"kernel_size": self.kernel_size}


class Flatten(Layer):
    """[N, ...] -> [N, prod(...)] (a view: the arrays are C-contiguous)."""

    def forward(self, x):
        self.x_shape = x.shape
        return self.infer(x)

    def infer(self, x):
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (not -1: an empty batch has no size to infer)

    def backward(self, dy, input_grad=True):
        return dy.reshape(self.x_shape)


class Dropout(Layer):
    """Zeroes each element with probability p while training (scaling the rest by 1/(1-p));
    the identity in eval mode. Masks come from `rng`, so a seeded model drops the same units."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = _rng(rng)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self.mask = None
            return x
        y, self.mask = F.dropout(x, self.p, int(self.rng.integers(0, 2**63)))
        return y

    def infer(self, x):
        return x

    def backward(self, dy, input_grad=True):
        return dy if self.mask is None else F.dropout_backward(dy, self.mask, self.p)

    def config(self):
        return {"p": self.p}


class ReLUMaxPool2d(Layer):
    """ReLU followed by MaxPool2d, in one kernel pass over the input (the same numbers and
    gradients as the two layers: max and ReLU commute). Sequential uses it in place of such a
    pair; it is not part of a model's architecture."""

    def __init__(self, pool: MaxPool2d):
        self.pool = pool

    def forward(self, x):
        self.x_shape = x.shape
        y, self.argmax = F.max_pool2d(x, self.pool.kernel_size, relu=True)
        return y

    def infer(self, x):
        return F.max_pool2d(x, self.pool.kernel_size, relu=True)[0]

    def backward(self, dy, input_grad=True):
        return F.max_pool2d_backward(dy, self.argmax, self.x_shape)


class Conv2dReLUMaxPool2d(Layer):
    """Conv2d, ReLU and MaxPool2d in one kernel (F.conv2d_relu_max_pool2d): the same numbers
    and gradients as the three layers (the weight gradients up to float rounding), without
    storing the convolution's output or computing the pixels no window reads. Sequential
    uses it in place of such a triple; it is not part of a model's architecture."""

    def __init__(self, conv: Conv2d, pool: MaxPool2d):
        self.conv, self.pool = conv, pool

    def forward(self, x):
        self.x = x
        y, self.argmax = F.conv2d_relu_max_pool2d(
            x, self.conv.weight.data, self.conv.bias.data, self.pool.kernel_size, self.conv.padding
        )
        return y

    def infer(self, x):
        return F.conv2d_relu_max_pool2d(
            x, self.conv.weight.data, self.conv.bias.data, self.pool.kernel_size, self.conv.padding, return_argmax=False
        )

    def backward(self, dy, input_grad=True):
        dx, self.conv.weight.grad, self.conv.bias.grad = F.conv2d_relu_max_pool2d_backward(
            self.x, self.conv.weight.data, dy, self.argmax, self.pool.kernel_size, self.conv.padding, input_grad
        )
        return dx


def fuse(layers: list[Layer]) -> list[Layer]:
    """The layers to run: each Conv2d, ReLU, MaxPool2d triple becomes one Conv2dReLUMaxPool2d,
    and any other ReLU directly followed by a MaxPool2d one ReLUMaxPool2d."""
    steps, i = [], 0
    while i < len(layers):
        if (
            isinstance(layers[i], Conv2d)
            and i + 2 < len(layers)
            and isinstance(layers[i + 1], ReLU)
            and isinstance(layers[i + 2], MaxPool2d)
        ):
            steps.append(Conv2dReLUMaxPool2d(layers[i], layers[i + 2]))
            i += 3
        elif isinstance(layers[i], ReLU) and i + 1 < len(layers) and isinstance(layers[i + 1], MaxPool2d):
            steps.append(ReLUMaxPool2d(layers[i + 1]))
            i += 2
        else:
            steps.append(layers[i])
            i += 1
    return steps


LAYERS = {cls.__name__: cls for cls in (Conv2d, Linear, ReLU, MaxPool2d, Flatten, Dropout)}


class Sequential:
    """Layers applied in order; backward runs them in reverse (the chain rule).

    `layers` is the architecture; `steps` is what runs: the same layers, except that each
    Conv2d + ReLU + MaxPool2d runs as one Conv2dReLUMaxPool2d and any other ReLU + MaxPool2d
    pair as one ReLUMaxPool2d (identical results, fewer passes over memory).
    """

    def __init__(self, *layers: Layer):
        self.layers = list(layers)
        self.steps = fuse(self.layers)
        self.training = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        for step in self.steps:
            x = step.forward(x)
        return x

    __call__ = forward

    # Images per block in infer(): a block's activations stay in cache from one layer to the
    # next, where a 1,000-image batch's go to memory and back between every two kernels.
    # Measured on 2 cores with the default model: 128 -> 1.27x the images/s of one
    # 1,000-image pass (64: 1.19x, 256: 1.21x, 32: 1.15x).
    infer_block = 128

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode outputs for a batch (dropout off, whatever `training` says), keeping
        nothing for backward: the same numbers as forward() in eval mode, computed
        `infer_block` images at a time so that each block's activations stay in cache."""
        x = np.asarray(x)
        out = None
        for i in range(0, len(x), self.infer_block):
            y = np.ascontiguousarray(x[i : i + self.infer_block])
            for step in self.steps:
                y = step.infer(y)
            if out is None:
                out = np.empty((len(x),) + y.shape[1:], y.dtype)
            out[i : i + len(y)] = y
        if out is None:  # an empty batch: the shapes still come from the layers
            y = np.ascontiguousarray(x)
            for step in self.steps:
                y = step.infer(y)
            out = y
        return out

    def backward(self, dy: np.ndarray, input_grad: bool = True):
        """Backpropagate dL/d(output); returns dL/d(input), or None with input_grad=False
        (training needs only the parameters' gradients, so the first layer may skip its dx)."""
        for i in range(len(self.steps) - 1, -1, -1):
            dy = self.steps[i].backward(dy, input_grad=input_grad or i > 0)
        return dy if input_grad else None

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """("<layer index>.weight" / ".bias", parameter): the names model files use."""
        return [
            (f"{i}.{name}", p)
            for i, layer in enumerate(self.layers)
            for name, p in zip(("weight", "bias"), layer.parameters())
        ]

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, by name ("0.weight", "0.bias", "3.weight", ...)."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Set every parameter from a copy of `state` (as state_dict() gives it): the same names and
        shapes, or a ValueError naming what differs, and then nothing is changed."""
        params = dict(self.named_parameters())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        arrays = {}
        for name, p in params.items():
            value = np.asarray(state[name])
            if value.shape != p.data.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, the model's is {p.data.shape}")
            if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
                raise ValueError(f"load_state_dict: {name} is not numeric ({value.dtype})")
            arrays[name] = value
        for name, p in params.items():  # (into the parameters' own arrays: references to them stay valid)
            np.copyto(p.data, arrays[name], casting="unsafe")

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero."""
        for p in self.parameters():
            p.grad.fill(0.0)

    def train(self, mode: bool = True) -> Sequential:
        self.training = mode
        for layer in self.layers:
            layer.training = mode
        return self

    def eval(self) -> Sequential:
        return self.train(False)

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  {layer!r}\n" for layer in self.layers) + ")"

    # ---------------------------------------------------------------- inference
    def sample_shape(self) -> tuple | None:
        """The shape of one input sample as the first layer that fixes it says: (in_channels,
        None, None) before a Conv2d (any height and width), (None, None, None) before a
        MaxPool2d, (in_features,) before a Linear; None if no layer fixes it."""
        for layer in self.layers:
            if isinstance(layer, Conv2d):
                return (layer.in_channels, None, None)
            if isinstance(layer, MaxPool2d):
                return (None, None, None)
            if isinstance(layer, Linear):
                return (layer.in_features,)
            if isinstance(layer, Flatten):
                return None
        return None

    def predict_proba(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities (the softmax of the outputs, float64) [N, classes] for a batch
        [N, *sample_shape()]; for one sample (an array without the batch axis), its row
        [classes]. The input must be floating-point (it is computed in float32): images stored
        as uint8 are scaled first (for MNIST digits: cnnfast.mnist.as_model_input)."""
        x = np.asarray(x)
        sample = self.sample_shape()
        single = sample is not None and x.ndim == len(sample)
        batch = x[None] if single else x
        if x.dtype.kind != "f":
            raise ValueError(
                f"the model takes floating-point input, got {x.dtype} {list(x.shape)}; scale images stored "
                "as integers first (MNIST's uint8 digits: cnnfast.mnist.as_model_input)"
            )
        if sample is not None and (
            batch.ndim != len(sample) + 1 or any(s not in (None, d) for s, d in zip(sample, batch.shape[1:]))
        ):
            wanted = ", ".join("?" if s is None else str(s) for s in sample)
            raise ValueError(f"the model takes a batch [N, {wanted}] or one sample [{wanted}], got {list(x.shape)}")
        batch = np.ascontiguousarray(batch, np.float32)
        chunks = [self.infer(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)]
        logits = (np.concatenate(chunks) if chunks else self.infer(batch)).astype(np.float64)
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ValueError(f"the model's output is {list(logits.shape)}, not one score per class [N, classes]")
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        proba /= proba.sum(axis=1, keepdims=True)
        return proba[0] if single else proba

    def predict(self, x: np.ndarray, batch_size: int = 1000):
        """The most probable class (int64 [N]) of each sample of a batch, as predict_proba takes
        it; for one sample, its class as an int."""
        proba = self.predict_proba(x, batch_size)
        return int(proba.argmax()) if proba.ndim == 1 else proba.argmax(axis=1).astype(np.int64)

    # ---------------------------------------------------------------- looking inside
    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's eval-mode output for a batch `x`: one array per layer of `layers`, in
        order, each computed by that layer's own kernel (`infer`) from the one before. The
        layers run unfused, so a convolution's own output (before its ReLU and pooling) is
        there to look at; the last array is the model's output (what infer() gives, up to
        float rounding). For teaching and inspection: infer() is the fast path."""
        y = np.ascontiguousarray(x)
        outputs = []
        for layer in self.layers:
            y = np.ascontiguousarray(layer.infer(y))
            outputs.append(y)
        return outputs

    # ---------------------------------------------------------------- files
    def architecture(self) -> list[dict]:
        return [{"type": type(layer).__name__, **layer.config()} for layer in self.layers]

    def save(self, path) -> str:
        """Write weights and architecture to one .npz (atomically: a temp file, then rename)."""
        path = os.fspath(path)
        arrays = {"format": np.array(FORMAT), "architecture": np.array(json.dumps(self.architecture()))}
        arrays.update((name, p.data) for name, p in self.named_parameters())
        with atomic_write(path) as f:
            np.savez(f, **arrays)
        return path


def mnist_cnn(seed: int = 0) -> Sequential:
    """The classic Keras MNIST convnet (34,826 parameters):
    Conv2d(1,32,3) ReLU MaxPool2d(2) Conv2d(32,64,3) ReLU MaxPool2d(2) Flatten Dropout(0.5) Linear(1600,10)."""
    rng = np.random.default_rng(seed)
    return Sequential(
        Conv2d(1, 32, 3, rng=rng),
        ReLU(),
        MaxPool2d(2),
        Conv2d(32, 64, 3, rng=rng),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Dropout(0.5, rng=np.random.default_rng([seed, 1])),
        Linear(1600, 10, rng=rng),
    )


def from_architecture(architecture: list[dict], seed: int = 0) -> Sequential:
    """Build (untrained) layers from `Sequential.architecture()`; a ModelFormatError if it is not one."""
    rng = np.random.default_rng(seed)
    layers = []
    if not isinstance(architecture, list):
        raise ModelFormatError("architecture must be a list of layers")
    for i, spec in enumerate(architecture):
        if not isinstance(spec, dict) or spec.get("type") not in LAYERS:
            raise ModelFormatError(f"layer {i} is not a known layer: {spec!r:.200}")
        args = {k: v for k, v in spec.items() if k != "type"}
        numbers = dict(args)
        kernel = args.get("kernel_size")
        if spec["type"] == "Conv2d" and isinstance(kernel, list) and len(kernel) == 2:  # non-square: [kh, kw]
            del numbers["kernel_size"]
            numbers.update(kernel_height=kernel[0], kernel_width=kernel[1])
            args["kernel_size"] = tuple(kernel)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers.values()):
            raise ModelFormatError(f"layer {i} has non-numeric settings: {spec!r:.200}")
        sizes = {k: v for k, v in numbers.items() if k != "p" and k != "padding"}
        if any(not (isinstance(v, int) and 1 <= v <= 1 << 20) for v in sizes.values()) or not (
            isinstance(args.get("padding", 0), int) and 0 <= args.get("padding", 0) <= 1 << 16
        ):
            raise ModelFormatError(f"layer {i} has sizes out of range: {spec!r:.200}")
        cls = LAYERS[spec["type"]]
        try:
            layer = cls(**args, rng=rng) if cls in (Conv2d, Linear, Dropout) else cls(**args)
        except (TypeError, ValueError, MemoryError) as error:
            raise ModelFormatError(f"layer {i} ({spec['type']}) cannot be built: {error}") from None
        layers.append(layer)
    return Sequential(*layers)


def load_model(path) -> Sequential:
    """Load a model written by `Sequential.save`. Never unpickles; a ModelFormatError (a
    ValueError) naming the file if it is not a cnnfast model or its weights do not fit."""
    return read_npz(path, _model_from_npz, ModelFormatError, "model", "python -m cnnfast.train or model.save")


def _model_from_npz(f) -> Sequential:
    files = set(f.files)
    if "format" not in files or str(f["format"]) != FORMAT:
        raise ModelFormatError(f"not a cnnfast model (no '{FORMAT}' marker)")
    model = from_architecture(json.loads(str(f["architecture"])))
    expected = {"format", "architecture"}
    for i, layer in enumerate(model.layers):
        for name, p in zip(("weight", "bias"), layer.parameters()):
            key = f"{i}.{name}"
            expected.add(key)
            if key not in files:
                raise ModelFormatError(f"missing array '{key}' for layer {i} ({layer!r})")
            data = f[key]
            if not isinstance(data, np.ndarray):
                raise ModelFormatError(f"'{key}' is not an array")
            if data.shape != p.shape or data.dtype != np.float32:
                raise ModelFormatError(
                    f"'{key}' is {data.dtype} {list(data.shape)}, layer {i} ({layer!r}) needs float32 {list(p.shape)}"
                )
            p.data = np.ascontiguousarray(data)
    if files - expected:
        raise ModelFormatError(f"unexpected arrays {sorted(files - expected)[:5]}")
    return model.eval()
