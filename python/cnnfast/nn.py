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

import copy
import json
import math
import os

import numpy as np

from . import functional as F
from ._files import atomic_write, read_npz

# Model files (.npz) carry one of two markers. v1: the architecture and the arrays, which every
# cnnfast reads. v2: the same plus "input_shape", one sample's shape; written only when that
# shape is not the one a file without it stands for (default_input_shape: (channels, 28, 28)), so
# MNIST models stay v1 and readable by older versions, which refuse a v2 file by its marker.
# Both are read (and v1 files holding input_shape, as cnnfast wrote them for a while).
FORMAT = "cnnfast-model-v1"
FORMAT_V2 = "cnnfast-model-v2"
FORMATS = (FORMAT, FORMAT_V2)
DEFAULT_IMAGE_SIZE = 28  # a model file that records no input shape: (channels, 28, 28), MNIST's

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


class ShapeError(ValueError):
    """A layer given an input it does not take. A layer raises it with what it needs; Sequential
    adds which layer (its index, nested as "3.block.1" in a Residual) and what it got:
    "layer 7 (Linear(in_features=3136, out_features=10)) gets input [batch, 3136], needs [batch, 4096]"."""

    def __init__(self, needs: str, path: str = "", layer=None, got: tuple | None = None):
        self.needs, self.path, self.layer, self.got = needs, path, layer, got
        if layer is None:
            super().__init__(needs)
        else:
            super().__init__(f"layer {path} ({layer!r}) gets input [batch, {', '.join(map(str, got))}], {needs}")

    def located(self, index, layer, got) -> ShapeError:
        """The error as seen from the container that holds `layer` at `index`."""
        if self.layer is None:
            return ShapeError(self.needs, str(index), layer, tuple(got))
        return ShapeError(self.needs, f"{index}.{self.path}", self.layer, self.got)


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

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """(name, parameter) pairs, names relative to the layer ("weight", "bias", "block.0.weight")."""
        return list(zip(("weight", "bias"), self.parameters()))

    def named_buffers(self) -> list[tuple[str, np.ndarray]]:
        """(name, array) of the state that gradients do not train but the model file keeps
        (BatchNorm's running statistics), names relative to the layer; updated in place, never
        replaced."""
        return []

    def output_shape(self, shape: tuple) -> tuple | None:
        """The shape of one output sample for one input sample of `shape` (no batch axis); a
        ShapeError saying what the layer needs if it does not take such input; None if the layer
        does not say (Sequential then checks no further)."""
        return None

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


class Conv2d(Layer):
    """x [N, in, H, W] -> [N, out, (H + 2 ph - kh) // stride + 1, (W + 2 pw - kw) // stride + 1];
    weight [out, in, kh, kw], bias [out] (none with bias=False).

    kernel_size is k (square) or (kh, kw); `self.kernel_size` is always the pair. padding is an
    int (all four sides), a pair (ph, pw) (top and bottom, left and right), "valid" (0) or "same"
    (stride 1 only: the output as large as the input, as PyTorch pads it: (k - 1) // 2 before and
    the rest after, so an even kernel pads one more pixel after than before). The kernel pads all
    four sides by one amount; any other padding (a pair of two sizes, "same" with a non-square or
    even kernel) pads the input with the difference first (a copy of the input, each step).
    Initialised as PyTorch does by default (Kaiming-uniform with a=sqrt(5): weights and bias
    uniform in +-1/sqrt(fan_in), fan_in = in * kh * kw).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        padding: int | tuple[int, int] | str = 0,
        rng: np.random.Generator | None = None,
        *,
        stride: int = 1,
        bias: bool = True,
    ):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = F._pair(kernel_size, "kernel_size")
        self.stride = int(stride)
        if self.stride < 1:
            raise ValueError(f"Conv2d stride must be at least 1, got {stride}")
        kh, kw = self.kernel_size
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Conv2d padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != 1:
                raise ValueError("Conv2d padding='same' needs stride 1 (as in PyTorch); give the padding as numbers")
            self.padding = padding
            pads = (0, 0, 0, 0) if padding == "valid" else ((kh - 1) // 2, kh // 2, (kw - 1) // 2, kw // 2)
        else:
            ph, pw = F._pair(padding, "padding")
            if ph < 0 or pw < 0:
                raise ValueError(f"Conv2d padding must not be negative, got {padding!r}")
            self.padding = ph if ph == pw else (ph, pw)
            pads = (ph, ph, pw, pw)
        # (top, bottom, left, right); the kernel pads all four by `kernel_padding`, np.pad the rest
        self.pads = pads
        self.kernel_padding = min(pads)
        self.extra_pads = tuple(p - self.kernel_padding for p in pads)
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(self.in_channels * kh * kw)
        self.weight = Parameter(_uniform(rng, (self.out_channels, self.in_channels, kh, kw), bound))
        self.bias = Parameter(_uniform(rng, (self.out_channels,), bound)) if bias else None
        self._zero_bias = None if bias else np.zeros(self.out_channels, np.float32)

    @property
    def bias_data(self) -> np.ndarray:
        """The bias the kernels add: the parameter's, or zeros without a bias."""
        return self.bias.data if self.bias is not None else self._zero_bias

    def _padded(self, x):
        if not any(self.extra_pads):
            return x
        top, bottom, left, right = self.extra_pads
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))

    def forward(self, x):
        self.x = x
        return self.infer(x)

    def infer(self, x):
        return F.conv2d(self._padded(x), self.weight.data, self.bias_data, self.kernel_padding, self.stride)

    def backward(self, dy, input_grad=True):
        x = self._padded(self.x)
        dx, self.weight.grad, db = F.conv2d_backward(
            x, self.weight.data, dy, self.kernel_padding, input_grad, self.stride
        )
        if self.bias is not None:
            self.bias.grad = db
        if dx is not None and any(self.extra_pads):
            top, bottom, left, right = self.extra_pads
            dx = np.ascontiguousarray(dx[:, :, top : dx.shape[2] - bottom, left : dx.shape[3] - right])
        return dx

    def parameters(self):
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ShapeError(f"needs images [batch, {self.in_channels}, height, width]")
        if shape[0] != self.in_channels:
            plural = "s" if self.in_channels != 1 else ""
            raise ShapeError(f"needs {self.in_channels} channel{plural}: [batch, {self.in_channels}, height, width]")
        top, bottom, left, right = self.pads
        (kh, kw), s = self.kernel_size, self.stride
        h, w = shape[1] + top + bottom, shape[2] + left + right
        if h < kh or w < kw:
            raise ShapeError(f"but the kernel is larger than the padded image (kernel {kh}x{kw}, image {h}x{w})")
        return (self.out_channels, (h - kh) // s + 1, (w - kw) // s + 1)

    def config(self):
        kh, kw = self.kernel_size
        config = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": kh if kh == kw else [kh, kw],  # a square kernel as one int, as files always had it
            "padding": list(self.padding) if isinstance(self.padding, tuple) else self.padding,
        }
        if self.stride != 1:  # (written only when not the default: older files stay as they were)
            config["stride"] = self.stride
        if self.bias is None:
            config["bias"] = False
        return config


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

    def output_shape(self, shape):
        if len(shape) != 1 or shape[0] != self.in_features:
            raise ShapeError(f"needs [batch, {self.in_features}]")
        return (self.out_features,)

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

    def output_shape(self, shape):
        return shape


class _Pool2d(Layer):
    """The settings of a pooling layer over k x k windows, as PyTorch's (kernel_size,
    stride=None, padding=0): stride defaults to the kernel size, padding is at most k // 2;
    [N, C, H, W] -> [N, C, (H + 2p - k) // stride + 1, (W + 2p - k) // stride + 1] (floor)."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        self.kernel_size = int(kernel_size)
        self.stride = self.kernel_size if stride is None else int(stride)
        self.padding = int(padding)
        if self.kernel_size < 1 or self.stride < 1 or not 0 <= self.padding <= self.kernel_size // 2:
            raise ValueError(
                f"{type(self).__name__} needs kernel_size >= 1, stride >= 1 and padding between 0 and "
                f"kernel_size // 2, got kernel_size={kernel_size}, stride={stride}, padding={padding}"
            )

    def output_shape(self, shape):
        return _pooled_shape(shape, self.kernel_size, self.stride, self.padding)


class MaxPool2d(_Pool2d):
    """Max over k x k windows, as PyTorch's MaxPool2d(kernel_size, stride=None, padding=0):
    [N, C, H, W] -> [N, C, (H + 2p - k) // stride + 1, (W + 2p - k) // stride + 1] (floor);
    stride defaults to the kernel size; the padding (at most k // 2) counts as -inf.
    Non-overlapping unpadded windows (stride = k, padding 0) take the fastest kernels, and fuse
    with a ReLU or Conv2d + ReLU before them (see `fuse`); other settings a general kernel."""

    @property
    def simple(self) -> bool:
        """Windows side by side (stride = kernel size), unpadded: the fast kernels' case."""
        return self.stride == self.kernel_size and self.padding == 0

    def _pool(self, x):
        if self.simple:
            return F.max_pool2d(x, self.kernel_size)
        return F.max_pool2d_window(x, self.kernel_size, self.stride, self.padding)

    def forward(self, x):
        self.x_shape = x.shape
        y, self.argmax = self._pool(x)
        return y

    def infer(self, x):
        return self._pool(x)[0]

    def backward(self, dy, input_grad=True):
        if self.simple:
            return F.max_pool2d_backward(dy, self.argmax, self.x_shape)
        return F.max_pool2d_window_backward(dy, self.argmax, self.x_shape)

    def config(self):
        config = {"kernel_size": self.kernel_size}
        if not self.simple:  # (written only when not the default: older files stay as they were)
            config.update(stride=self.stride, padding=self.padding)
        return config


def _pooled_shape(shape, k, stride, padding):
    if len(shape) != 3:
        raise ShapeError("needs [batch, channels, height, width]")
    if min(shape[1:]) < 1:
        raise ShapeError("needs [batch, channels, height, width] with at least one pixel")
    h, w = shape[1] + 2 * padding, shape[2] + 2 * padding
    if h < k or w < k:
        raise ShapeError(f"needs an image at least {k} pixels wide and high (with its padding), got {h}x{w}")
    return (shape[0], (h - k) // stride + 1, (w - k) // stride + 1)


class Flatten(Layer):
    """[N, ...] -> [N, prod(...)] (a view: the arrays are C-contiguous)."""

    def forward(self, x):
        self.x_shape = x.shape
        return self.infer(x)

    def infer(self, x):
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (not -1: an empty batch has no size to infer)

    def backward(self, dy, input_grad=True):
        return dy.reshape(self.x_shape)

    def output_shape(self, shape):
        return (math.prod(shape),)


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

    def output_shape(self, shape):
        return shape

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
            x,
            self.conv.weight.data,
            self.conv.bias_data,
            self.pool.kernel_size,
            self.conv.kernel_padding,
            stride=self.conv.stride,
        )
        return y

    def infer(self, x):
        return F.conv2d_relu_max_pool2d(
            x,
            self.conv.weight.data,
            self.conv.bias_data,
            self.pool.kernel_size,
            self.conv.kernel_padding,
            return_argmax=False,
            stride=self.conv.stride,
        )

    def backward(self, dy, input_grad=True):
        dx, self.conv.weight.grad, db = F.conv2d_relu_max_pool2d_backward(
            self.x,
            self.conv.weight.data,
            dy,
            self.argmax,
            self.pool.kernel_size,
            self.conv.kernel_padding,
            input_grad,
            stride=self.conv.stride,
        )
        if self.conv.bias is not None:
            self.conv.bias.grad = db
        return dx


def _fusable_conv(conv: Conv2d) -> bool:
    """The fused kernel's convolution: one padding on all four sides (any stride, bias or none)."""
    return not any(conv.extra_pads)


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
            and _fusable_conv(layers[i])
            and layers[i + 2].simple
        ):
            steps.append(Conv2dReLUMaxPool2d(layers[i], layers[i + 2]))
            i += 3
        elif (
            isinstance(layers[i], ReLU)
            and i + 1 < len(layers)
            and isinstance(layers[i + 1], MaxPool2d)
            and layers[i + 1].simple
        ):
            steps.append(ReLUMaxPool2d(layers[i + 1]))
            i += 2
        else:
            steps.append(layers[i])
            i += 1
    return steps


# ---------------------------------------------------------------- more layers (issue 17)
# Activations, average pooling, global average pooling and residual connections: each calls its
# C++ kernels (cnnfast.functional); the residual add is NumPy's.


class LeakyReLU(Layer):
    """x where x > 0, else negative_slope * x (PyTorch's LeakyReLU, default slope 0.01)."""

    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = float(negative_slope)
        with np.errstate(over="ignore"):  # (the kernels take it as a float32: 1e39 would be inf)
            finite = np.isfinite(np.float32(self.negative_slope))
        if not finite:
            raise ValueError(
                f"LeakyReLU negative_slope must be a finite number in float32 (|slope| < 3.4e38), got {negative_slope}"
            )

    def forward(self, x):
        self.x = x
        return self.infer(x)

    def infer(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def backward(self, dy, input_grad=True):
        return F.leaky_relu_backward(self.x, dy, self.negative_slope)

    def output_shape(self, shape):
        return shape

    def config(self):
        return {"negative_slope": self.negative_slope}


class _OutputActivation(Layer):
    """An elementwise activation whose gradient is computed from its output y (as PyTorch keeps
    it): a subclass names its `function` and `gradient(y, dy)` (cnnfast.functional's kernels)."""

    @staticmethod
    def function(x):
        raise NotImplementedError

    @staticmethod
    def gradient(y, dy):
        raise NotImplementedError

    def forward(self, x):
        self.y = self.infer(x)
        return self.y

    def infer(self, x):
        return self.function(x)

    def backward(self, dy, input_grad=True):
        return self.gradient(self.y, dy)

    def output_shape(self, shape):
        return shape


class Tanh(_OutputActivation):
    """tanh(x) elementwise; backward from the output: dy * (1 - y^2)."""

    function, gradient = staticmethod(F.tanh), staticmethod(F.tanh_backward)


class Sigmoid(_OutputActivation):
    """1 / (1 + exp(-x)) elementwise (no overflow for any x); backward from the output: dy * y * (1 - y)."""

    function, gradient = staticmethod(F.sigmoid), staticmethod(F.sigmoid_backward)


class AvgPool2d(_Pool2d):
    """The mean over k x k windows, as PyTorch's AvgPool2d(kernel_size, stride=None, padding=0,
    count_include_pad=True): [N, C, H, W] -> [N, C, (H + 2p - k) // stride + 1, ...] (floor);
    stride defaults to the kernel size; zero padding of at most k // 2, counted in each window's
    divisor (count_include_pad) or not."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0, count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def _window(self):
        return self.kernel_size, self.stride, self.padding, self.count_include_pad

    def forward(self, x):
        self.x_shape = x.shape
        return self.infer(x)

    def infer(self, x):
        return F.avg_pool2d(x, *self._window())

    def backward(self, dy, input_grad=True):
        return F.avg_pool2d_backward(dy, self.x_shape, *self._window())

    def config(self):
        return {
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "count_include_pad": self.count_include_pad,
        }


class GlobalAvgPool2d(Layer):
    """Global average pooling: the mean of each channel's plane, [N, C, H, W] -> [N, C, 1, 1]
    (PyTorch's AdaptiveAvgPool2d(1); a Flatten after it gives [N, C]). The head of most small
    modern CNNs: it takes images of any size."""

    def forward(self, x):
        self.x_shape = x.shape
        return self.infer(x)

    def infer(self, x):
        return F.global_avg_pool2d(x)

    def backward(self, dy, input_grad=True):
        return F.global_avg_pool2d_backward(dy, self.x_shape)

    def output_shape(self, shape):
        if len(shape) != 3 or min(shape[1:]) < 1:
            raise ShapeError("needs [batch, channels, height, width] with at least one pixel")
        return (shape[0], 1, 1)


class AdaptiveAvgPool2d(GlobalAvgPool2d):
    """PyTorch's AdaptiveAvgPool2d, for output_size 1 (or (1, 1)) only: global average pooling
    (GlobalAvgPool2d). Other output sizes raise a ValueError."""

    def __init__(self, output_size=1):
        if F._pair(output_size, "output_size") != (1, 1):
            raise ValueError(
                f"AdaptiveAvgPool2d supports output_size 1 (global average pooling) only, got {output_size!r}"
            )
        self.output_size = 1

    def config(self):
        return {"output_size": 1}


class Residual(Layer):
    """A residual connection: block(x) + shortcut(x), the shortcut the identity when none is
    given (ResNet's basic block: `Residual([Conv2d(c, c, 3, padding=1), ReLU(), Conv2d(c, c, 3,
    padding=1)])`; to change the shape, a shortcut such as `[Conv2d(c, 2 * c, 1, stride=2)]`
    beside a block that starts with a stride-2 convolution). Backward sums the two branches'
    input gradients. `block` and `shortcut` are Sequentials or lists of layers; their
    parameters are named "block.<i>.weight" and "shortcut.<i>.weight" inside the layer."""

    def __init__(self, block, shortcut=None):
        self.block = block if isinstance(block, Sequential) else Sequential(*block)
        if shortcut is not None and not isinstance(shortcut, Sequential):
            shortcut = Sequential(*shortcut)
        self.shortcut = shortcut if shortcut is not None and shortcut.layers else None
        if not self.block.layers:
            raise ValueError("Residual needs a block of at least one layer")

    @property
    def training(self):
        return self.block.training

    @training.setter
    def training(self, mode):
        self.block.train(mode)
        if self.shortcut is not None:
            self.shortcut.train(mode)

    def _branches(self):
        return [self.block] if self.shortcut is None else [self.block, self.shortcut]

    def _add(self, a, b):
        if a.shape != b.shape:  # (Sequential checks shapes first: this is for a Residual used alone)
            raise ValueError(
                f"Residual: its block gives {list(a.shape)} and its shortcut {list(b.shape)}; they must match"
            )
        return a + b

    def forward(self, x):
        a = self.block.forward(x)
        return self._add(a, x if self.shortcut is None else self.shortcut.forward(x))

    def infer(self, x):
        a = x
        for step in self.block.inference_steps():
            a = step.infer(a)
        b = x
        for step in self.shortcut.inference_steps() if self.shortcut is not None else ():
            b = step.infer(b)
        return self._add(a, b)

    def backward(self, dy, input_grad=True):
        dx = self.block.backward(dy, input_grad)
        if not input_grad:
            if self.shortcut is not None:
                self.shortcut.backward(dy, False)
            return None
        dx_short = dy if self.shortcut is None else self.shortcut.backward(dy, True)
        return dx + dx_short

    def parameters(self):
        return [p for branch in self._branches() for p in branch.parameters()]

    def named_parameters(self):
        named = [(f"block.{name}", p) for name, p in self.block.named_parameters()]
        if self.shortcut is not None:
            named += [(f"shortcut.{name}", p) for name, p in self.shortcut.named_parameters()]
        return named

    def named_buffers(self):
        named = [(f"block.{name}", b) for name, b in self.block.named_buffers()]
        if self.shortcut is not None:
            named += [(f"shortcut.{name}", b) for name, b in self.shortcut.named_buffers()]
        return named

    def output_shape(self, shape):
        try:
            a = self.block.output_shape(shape)
        except ShapeError as error:
            raise ShapeError(error.needs, f"block.{error.path}", error.layer, error.got) from None
        if self.shortcut is None:
            b = tuple(shape)
        else:
            try:
                b = self.shortcut.output_shape(shape)
            except ShapeError as error:
                raise ShapeError(error.needs, f"shortcut.{error.path}", error.layer, error.got) from None
        if a is not None and b is not None and a != b:
            what = "its shortcut" if self.shortcut is not None else "its input (the identity shortcut)"
            raise ShapeError(
                f"but its block gives [batch, {', '.join(map(str, a))}] and {what} "
                f"[batch, {', '.join(map(str, b))}]: they must have one shape to be added"
            )
        return a if a is not None else b

    def config(self):
        config = {"block": self.block.architecture()}
        if self.shortcut is not None:
            config["shortcut"] = self.shortcut.architecture()
        return config

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.block.layers)
        short = "" if self.shortcut is None else ", shortcut=[" + ", ".join(map(repr, self.shortcut.layers)) + "]"
        return f"Residual([{inner}]{short})"


NEW_LAYERS = (LeakyReLU, Tanh, Sigmoid, AvgPool2d, GlobalAvgPool2d, AdaptiveAvgPool2d, Residual)


LAYERS = {cls.__name__: cls for cls in (Conv2d, Linear, ReLU, MaxPool2d, Flatten, Dropout)}
LAYERS.update((cls.__name__, cls) for cls in NEW_LAYERS)


# ---------------------------------------------------------------- batch normalisation


class _BatchNorm(Layer):
    """Batch normalisation (PyTorch's BatchNorm): in training, each channel is normalised with the
    batch's mean and (biased) variance, then scaled by `weight` and shifted by `bias` (initialised
    to 1 and 0), and the running statistics move towards the batch's, r = (1 - momentum) r +
    momentum * batch value (the variance unbiased); in eval mode (and in Sequential.infer) the
    running statistics take the batch's place. running_mean and running_var are buffers: saved
    in model files and state_dict, not trained by gradients."""

    ndims: tuple = ()
    layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be > 0, got {eps}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.weight = Parameter(np.ones(self.num_features, np.float32))
        self.bias = Parameter(np.zeros(self.num_features, np.float32))
        self.running_mean = np.zeros(self.num_features, np.float32)
        self.running_var = np.ones(self.num_features, np.float32)

    def _check(self, x):
        if np.ndim(x) not in self.ndims:
            raise ValueError(f"{type(self).__name__} takes {self.layout}, got shape {list(np.shape(x))}")

    def forward(self, x):
        self._check(x)
        self.x = x
        if not self.training:
            self.mean = None
            return self.infer(x)
        y, self.mean, self.invstd = F.batch_norm_train(
            x, self.weight.data, self.bias.data, self.running_mean, self.running_var, self.momentum, self.eps
        )
        return y

    def infer(self, x):
        self._check(x)
        return F.batch_norm_eval(x, self.weight.data, self.bias.data, self.running_mean, self.running_var, self.eps)

    def backward(self, dy, input_grad=True):
        if self.mean is not None:
            dx, self.weight.grad, self.bias.grad = F.batch_norm_backward(
                self.x, self.weight.data, dy, self.mean, self.invstd, input_grad
            )
            return dx
        # after an eval-mode forward: an affine map per channel with the running statistics
        shape = (1, -1) + (1,) * (self.x.ndim - 2)
        axes = tuple(d for d in range(self.x.ndim) if d != 1)
        invstd = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
        xhat = (self.x - self.running_mean.reshape(shape)) * invstd.reshape(shape)
        self.weight.grad = (dy * xhat).sum(axis=axes).astype(np.float32)
        self.bias.grad = dy.sum(axis=axes, dtype=np.float64).astype(np.float32)
        return (dy * (self.weight.data * invstd).reshape(shape)).astype(np.float32) if input_grad else None

    def parameters(self):
        return [self.weight, self.bias]

    def named_buffers(self):
        return [("running_mean", self.running_mean), ("running_var", self.running_var)]

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of [N, C, H, W] per channel, over the batch and the pixels (see _BatchNorm).
    In Sequential.infer, a Conv2d directly before it is fused with it (fold_batch_norm)."""

    ndims = (4,)
    layout = "[N, C, H, W]"

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.num_features:
            raise ShapeError(f"needs [batch, {self.num_features}, height, width]")
        return shape


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of [N, C] (after a Linear) or [N, C, L] per channel (see _BatchNorm)."""

    ndims = (2, 3)
    layout = "[N, C] or [N, C, L]"

    def output_shape(self, shape):
        if len(shape) not in (1, 2) or shape[0] != self.num_features:
            raise ShapeError(f"needs [batch, {self.num_features}] or [batch, {self.num_features}, length]")
        return shape


def fold_batch_norm(conv: Conv2d, bn: BatchNorm2d) -> Conv2d:
    """One Conv2d computing bn.infer(conv.infer(x)): the convolution's weights scaled per output
    channel by s = gamma / sqrt(running_var + eps), its bias (b - running_mean) * s + beta (in
    float64, then rounded to float32). For inference only: a new layer, the two are unchanged."""
    scale = bn.weight.data.astype(np.float64) / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    folded = copy.copy(conv)  # (every setting of the convolution: stride, padding; new parameters below)
    folded.weight = Parameter(conv.weight.data * scale[:, None, None, None])
    folded.bias = Parameter((conv.bias_data.astype(np.float64) - bn.running_mean) * scale + bn.bias.data)
    return folded


def fold_batch_norms(layers: list[Layer]) -> list[Layer] | None:
    """The layers with each Conv2d directly followed by a BatchNorm2d (of as many channels)
    replaced by their fold_batch_norm; None if there is no such pair."""
    out, i = [], 0
    while i < len(layers):
        a, b = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(a, Conv2d) and isinstance(b, BatchNorm2d) and b.num_features == a.out_channels:
            out.append(fold_batch_norm(a, b))
            i += 2
        else:
            out.append(a)
            i += 1
    return out if len(out) < len(layers) else None


LAYERS.update({cls.__name__: cls for cls in (BatchNorm2d, BatchNorm1d)})


class Sequential:
    """Layers applied in order; backward runs them in reverse (the chain rule).

    `layers` is the architecture; `steps` is what runs: the same layers, except that each
    Conv2d + ReLU + MaxPool2d runs as one Conv2dReLUMaxPool2d and any other ReLU + MaxPool2d
    pair as one ReLUMaxPool2d (identical results, fewer passes over memory).
    """

    def __init__(self, *layers: Layer, input_shape: tuple | None = None):
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes layers (cnnfast.nn.Layer); item {i} is {type(layer).__name__}")
        self.steps = fuse(self.layers)
        # (infer() folds BatchNorm2d afresh each call, from the current statistics; without one,
        # it runs `steps` as they are: the scan took a microsecond of a 42-microsecond image)
        self._has_batch_norm = any(isinstance(layer, BatchNorm2d) for layer in self.layers)
        self.training = True
        # One sample's shape, e.g. (3, 32, 32): given here, or that of the first batch forward()
        # sees; saved in model files, and the input the ONNX export declares.
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        self._checked_shapes = set()

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.check_input(x)
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        for step in self.steps:
            x = step.forward(x)
        return x

    def output_shape(self, shape: tuple) -> tuple | None:
        """One output sample's shape for one input sample of `shape` (no batch axis), following it
        through the layers; a ShapeError (a ValueError) naming the first layer that does not take
        its input: "layer 7 (Linear(...)) gets input [batch, 3136], needs [batch, 4096]". None if
        some layer does not tell its output shape."""
        shape = tuple(int(d) for d in shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ShapeError as error:
                raise error.located(i, layer, shape) from None
            if shape is None:
                return None
            shape = tuple(shape)
        return shape

    def check_input(self, x: np.ndarray) -> None:
        """A ShapeError naming the first layer that would not take a batch `x` (checked once per
        sample shape)."""
        shape = tuple(np.shape(x)[1:])
        if shape not in self._checked_shapes:
            self.output_shape(shape)
            self._checked_shapes.add(shape)

    __call__ = forward

    # Images per block in infer(): a block's activations stay in cache from one layer to the
    # next, where a 1,000-image batch's go to memory and back between every two kernels.
    # Measured on 2 cores with the default model: 128 -> 1.27x the images/s of one
    # 1,000-image pass (64: 1.19x, 256: 1.21x, 32: 1.15x).
    infer_block = 128

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Eval-mode outputs for a batch (dropout off, whatever `training` says), keeping
        nothing for backward: the same numbers as forward() in eval mode, computed
        `infer_block` images at a time so that each block's activations stay in cache. (Each
        Conv2d + BatchNorm2d pair runs as one convolution with the normalisation folded into its
        weights, and then fuses with a ReLU + MaxPool2d after it: the same numbers up to float
        rounding.)"""
        x = np.asarray(x)
        self.check_input(x)
        steps = self.inference_steps()
        out = None
        for i in range(0, len(x), self.infer_block):
            y = np.ascontiguousarray(x[i : i + self.infer_block])
            for step in steps:
                y = step.infer(y)
            if out is None:
                out = np.empty((len(x),) + y.shape[1:], y.dtype)
            out[i : i + len(y)] = y
        if out is None:  # an empty batch: the shapes still come from the layers
            y = np.ascontiguousarray(x)
            for step in steps:
                y = step.infer(y)
            out = y
        return out

    def inference_steps(self) -> list[Layer]:
        """What infer() runs: `steps`, but with BatchNorm2d folded into the Conv2d before it
        (fold_batch_norms, from the current weights and running statistics) and fused again."""
        folded = fold_batch_norms(self.layers) if self._has_batch_norm else None
        return self.steps if folded is None else fuse(folded)

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
        return [(f"{i}.{name}", p) for i, layer in enumerate(self.layers) for name, p in layer.named_parameters()]

    def named_buffers(self) -> list[tuple[str, np.ndarray]]:
        """("<layer index>.<name>", array) of every layer's buffers (BatchNorm's "1.running_mean",
        "1.running_var"; nested: "3.block.1.running_mean"): state saved with the model that
        gradients do not train."""
        return [(f"{i}.{name}", array) for i, layer in enumerate(self.layers) for name, array in layer.named_buffers()]

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter and buffer, by name ("0.weight", "0.bias", "1.running_mean", ...)."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update((name, array.copy()) for name, array in self.named_buffers())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Set every parameter and buffer from a copy of `state` (as state_dict() gives it): the same
        names and shapes, or a ValueError naming what differs, and then nothing is changed."""
        params = {name: p.data for name, p in self.named_parameters()}
        params.update(self.named_buffers())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        arrays = {}
        for name, p in params.items():
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, the model's is {p.shape}")
            if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
                raise ValueError(f"load_state_dict: {name} is not numeric ({value.dtype})")
            arrays[name] = value
        for name, p in params.items():  # (into the parameters' own arrays: references to them stay valid)
            np.copyto(p, arrays[name], casting="unsafe")

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
    def default_input_shape(self) -> tuple:
        """The input a model that records none stands for: (in_features,) for one that starts
        with a Linear, else (channels of the first Conv2d, or 1, 28, 28), MNIST's size."""
        sample = self.sample_shape()
        if sample is not None and len(sample) == 1:
            return tuple(sample)
        channels = sample[0] if sample and len(sample) == 3 and sample[0] is not None else 1
        return (channels, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)

    def sample_shape(self) -> tuple | None:
        """The shape of one input sample as the first layer that fixes it says: (in_channels,
        None, None) before a Conv2d (any height and width), (None, None, None) before a
        MaxPool2d, (in_features,) before a Linear; None if no layer fixes it."""
        for layer in self.layers:
            if isinstance(layer, Conv2d):
                return (layer.in_channels, None, None)
            if isinstance(layer, (MaxPool2d, AvgPool2d, GlobalAvgPool2d)):
                return (None, None, None)
            if isinstance(layer, Residual):
                return layer.block.sample_shape()
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
        """Write weights and architecture to one .npz (atomically: a temp file, then rename): a
        v1 file, or v2 with the input shape when it is not default_input_shape() (see FORMAT)."""
        path = os.fspath(path)
        arrays = {"format": np.array(FORMAT), "architecture": np.array(json.dumps(self.architecture()))}
        if self.input_shape is not None and tuple(self.input_shape) != self.default_input_shape():
            arrays.update(format=np.array(FORMAT_V2), input_shape=np.array(self.input_shape, np.int64))
        arrays.update((name, p.data) for name, p in self.named_parameters())
        arrays.update(self.named_buffers())
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
    return _layers_from_architecture(architecture, np.random.default_rng(seed), "", 0)


_SIZES = ("in_channels", "out_channels", "in_features", "out_features", "stride", "output_size", "num_features")
_NESTING_LIMIT = 32


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _setting_ok(key: str, v) -> bool:
    """A layer setting as model files hold it: sizes 1..2**20, paddings 0..2**16 (or "same" and
    "valid"), finite numbers, booleans."""
    if key in _SIZES:
        return _is_int(v) and 1 <= v <= 1 << 20
    if key == "kernel_size":
        pair = v if isinstance(v, list) and len(v) == 2 else [v]
        return all(_is_int(k) and 1 <= k <= 1 << 20 for k in pair)
    if key == "padding":
        if v in ("same", "valid"):
            return True
        pair = v if isinstance(v, list) and len(v) == 2 else [v]
        return all(_is_int(k) and 0 <= k <= 1 << 16 for k in pair)
    if key in ("p", "negative_slope", "eps", "momentum"):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if key in ("bias", "count_include_pad"):
        return isinstance(v, bool)
    return False  # (an unknown setting)


def _layers_from_architecture(architecture, rng, prefix: str, depth: int) -> Sequential:
    if not isinstance(architecture, list):
        raise ModelFormatError("architecture must be a list of layers")
    if depth > _NESTING_LIMIT:
        raise ModelFormatError(f"layer {prefix.rstrip('.')} nests Residual layers more than {_NESTING_LIMIT} deep")
    layers = []
    for i, spec in enumerate(architecture):
        where = f"{prefix}{i}"
        if not isinstance(spec, dict) or spec.get("type") not in LAYERS:
            raise ModelFormatError(f"layer {where} is not a known layer: {spec!r:.200}")
        args = {k: v for k, v in spec.items() if k != "type"}
        cls = LAYERS[spec["type"]]
        if cls is Residual:
            if set(args) - {"block", "shortcut"} or "block" not in args:
                raise ModelFormatError(
                    f"layer {where} (Residual) needs a block (and at most a shortcut): {spec!r:.200}"
                )
            args = {
                name: _layers_from_architecture(value, rng, f"{where}.{name}.", depth + 1)
                for name, value in args.items()
            }
        else:
            bad = [k for k, v in args.items() if not _setting_ok(k, v)]
            if bad:
                raise ModelFormatError(
                    f"layer {where} has settings out of range or of the wrong kind {bad}: {spec!r:.200}"
                )
            for key in ("kernel_size", "padding"):
                if isinstance(args.get(key), list):
                    args[key] = tuple(args[key])
        try:
            layer = cls(**args, rng=rng) if cls in (Conv2d, Linear, Dropout) else cls(**args)
        except (TypeError, ValueError, MemoryError) as error:
            raise ModelFormatError(f"layer {where} ({spec['type']}) cannot be built: {error}") from None
        layers.append(layer)
    return Sequential(*layers)


def load_model(path) -> Sequential:
    """Load a model written by `Sequential.save`. Never unpickles; a ModelFormatError (a
    ValueError) naming the file if it is not a cnnfast model or its weights do not fit."""
    return read_npz(path, _model_from_npz, ModelFormatError, "model", "python -m cnnfast.train or model.save")


def _model_from_npz(f) -> Sequential:
    files = set(f.files)
    if "format" not in files:
        raise ModelFormatError(f"not a cnnfast model (no '{FORMAT}' marker)")
    marker = str(f["format"])
    if marker.startswith("cnnfast-model-v") and marker not in FORMATS:
        raise ModelFormatError(
            f"written by a newer cnnfast (format {marker[:40]!r}; this one reads {' and '.join(FORMATS)}): "
            "upgrade cnnfast"
        )
    if marker not in FORMATS:
        raise ModelFormatError(f"not a cnnfast model (format {marker[:40]!r}, expected '{FORMAT}' or '{FORMAT_V2}')")
    model = from_architecture(json.loads(str(f["architecture"])))
    expected = {"format", "architecture", "input_shape"}
    if "input_shape" in files:
        shape = f["input_shape"]
        if not (
            isinstance(shape, np.ndarray)
            and shape.ndim == 1
            and 1 <= shape.size <= 8
            and shape.dtype.kind in "iu"
            and (shape >= 1).all()
            and (shape <= 1 << 20).all()
        ):
            raise ModelFormatError("'input_shape' is not a list of 1 to 8 sizes")
        model.input_shape = tuple(int(d) for d in shape)
    for i, layer in enumerate(model.layers):
        for name, p in layer.named_parameters():
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
        for name, array in layer.named_buffers():
            key = f"{i}.{name}"
            expected.add(key)
            if key not in files:
                raise ModelFormatError(f"missing array '{key}' for layer {i} ({layer!r})")
            data = f[key]
            if not isinstance(data, np.ndarray) or data.shape != array.shape or data.dtype != np.float32:
                raise ModelFormatError(
                    f"'{key}' is {getattr(data, 'dtype', type(data).__name__)} {list(np.shape(data))}, "
                    f"layer {i} ({layer!r}) needs float32 {list(array.shape)}"
                )
            array[...] = data  # (in place: the layer's buffer stays the same array)
    if files - expected:
        raise ModelFormatError(f"unexpected arrays {sorted(files - expected)[:5]}")
    return model.eval()
