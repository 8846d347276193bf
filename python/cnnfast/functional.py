"""The kernels as NumPy functions: the documented face of cnnfast's C++ core.

Arrays are float32 and C-contiguous (a wrong dtype raises TypeError, anything else that does
not fit raises ValueError naming the argument); activations are NCHW and weights follow
PyTorch's [out, in, ...] layout. Every function returns new arrays, except the optimizer
steps, which update their parameter and state arrays in place. The kernels release the GIL
and use `cnnfast.get_num_threads()` OpenMP threads; results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np

from . import _core

__all__ = [
    "conv2d",
    "conv2d_backward",
    "relu",
    "relu_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "conv2d_relu_max_pool2d",
    "conv2d_relu_max_pool2d_backward",
    "linear",
    "linear_backward",
    "softmax_cross_entropy",
    "dropout",
    "dropout_backward",
    "sgd_step",
    "adam_step",
    # activations and pooling windows (issue 17)
    "leaky_relu",
    "leaky_relu_backward",
    "tanh",
    "tanh_backward",
    "sigmoid",
    "sigmoid_backward",
    "max_pool2d_window",
    "max_pool2d_window_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "adamw_step",
    "batch_norm_train",
    "batch_norm_eval",
    "batch_norm_backward",
    "augment",
    "augment_params",
    "warp_bilinear",
]


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, padding: int = 0, stride: int = 1) -> np.ndarray:
    """2-D convolution (cross-correlation), zero padding on all sides, stride in both directions.

    x [N, C, H, W], w [K, C, R, S], b [K] -> y [N, K, Ho, Wo] with Ho = (H+2p-R)//stride + 1,
    Wo = (W+2p-S)//stride + 1 (PyTorch's rule: rows and columns a stride does not reach are left out).
    """
    return _core.conv2d(x, w, b, padding, stride)


def conv2d_backward(
    x: np.ndarray, w: np.ndarray, dy: np.ndarray, padding: int = 0, input_grad: bool = True, stride: int = 1
):
    """Gradients of `conv2d` given dy = dL/dy [N, K, Ho, Wo]: returns (dx, dw, db).

    With input_grad=False, dx is None and is not computed (a network's first layer needs no dx).
    """
    return _core.conv2d_backward(x, w, dy, padding, bool(input_grad), stride)


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) elementwise, any shape; NaN stays NaN."""
    return _core.relu(x)


def relu_backward(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = dy where x > 0, else 0 (x is relu's input)."""
    return _core.relu_backward(x, dy)


def max_pool2d(x: np.ndarray, k: int, relu: bool = False):
    """Max over k x k windows, stride k: x [N, C, H, W] -> (y [N, C, H//k, W//k], argmax).

    argmax (int32, same shape as y) holds the index h*W + w of each window's maximum in its
    plane: `max_pool2d_backward` routes gradients through it. A NaN in a window wins.
    With relu=True the result is max_pool2d(relu(x)) computed in the same pass (max and ReLU
    commute); windows whose maximum is <= 0 give 0, and those whose maximum is not > 0 (<= 0
    or NaN) get argmax -1, so they pass no gradient,
    exactly as relu_backward would.
    """
    return _core.max_pool2d(x, k, bool(relu))


def max_pool2d_backward(dy: np.ndarray, argmax: np.ndarray, x_shape) -> np.ndarray:
    """Routes each dy to its window's argmax: returns dx of shape x_shape, zero elsewhere
    (an argmax of -1, from a fused ReLU, routes nothing)."""
    return _core.max_pool2d_backward(dy, argmax, [int(s) for s in x_shape])


def conv2d_relu_max_pool2d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, k: int, padding: int = 0, return_argmax: bool = True, stride: int = 1
):
    """A CNN block in one call: max_pool2d(conv2d(x, w, b, padding, stride), k, relu=True) -> (y, argmax).

    The same numbers as the three layers, but the convolution's output (and, backward, its
    gradient) is not written to memory as a whole: it is pooled from cache image by image (short
    patches, such as a first layer's 3x3 on one channel) or chunk by chunk (longer ones, with
    AVX-512). argmax indexes the convolution's output planes, as max_pool2d's would. With
    return_argmax=False only y is returned and no argmax is made (inference: nothing to route
    a gradient back through).
    """
    return _core.conv2d_relu_max_pool2d(x, w, b, k, padding, bool(return_argmax), stride)


def conv2d_relu_max_pool2d_backward(
    x: np.ndarray,
    w: np.ndarray,
    dy: np.ndarray,
    argmax: np.ndarray,
    k: int,
    padding: int = 0,
    input_grad: bool = True,
    stride: int = 1,
):
    """Gradients of `conv2d_relu_max_pool2d` given dy = dL/dy (the pooled shape) and its argmax:
    returns (dx, dw, db), the same as conv2d_backward(x, w, max_pool2d_backward(dy, argmax, ...))
    (dw and db up to float rounding: on AVX-512 the fused kernel sums them in its own order, and
    leaves out the convolution's last rows or columns where no window reads them. Their
    gradient is zero, so this changes nothing, except that an inf or NaN in x or w that only
    those pixels meet does not turn into 0 * inf = NaN as it does in the separate kernels).
    With input_grad=False, dx is None and is not computed.
    """
    return _core.conv2d_relu_max_pool2d_backward(x, w, dy, argmax, k, padding, bool(input_grad), stride)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [N, I], w [O, I], b [O] -> y [N, O] = x @ w.T + b."""
    return _core.linear(x, w, b)


def linear_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray):
    """Gradients of `linear` given dy [N, O]: returns (dx [N, I], dw [O, I], db [O])."""
    return _core.linear_backward(x, w, dy)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    logits [N, K] float32, labels [N] int32 or int64 in 0..K-1 (N >= 1) ->
    (loss: float, dlogits [N, K] = (softmax(logits) - target) / N), target = onehot(labels).
    With label_smoothing e in [0, 1] (PyTorch's definition) the target is
    (1 - e) * onehot(labels) + e / K: loss = mean over n of -sum_k target_nk log softmax_nk.
    Stable for large logits (computed from logits - max).
    """
    return _core.softmax_cross_entropy(logits, labels, float(label_smoothing))


def dropout(x: np.ndarray, p: float, seed: int):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    Returns (y, mask) with mask uint8 (1 = kept). The mask depends only on (seed, index),
    so it is reproducible and the same for any thread count. seed is an integer in [0, 2**64).
    """
    return _core.dropout(x, float(p), int(seed))


def dropout_backward(dy: np.ndarray, mask: np.ndarray, p: float) -> np.ndarray:
    """dx = dy * mask / (1 - p), the gradient of `dropout` with the same mask and p."""
    return _core.dropout_backward(dy, mask, float(p))


def sgd_step(
    param: np.ndarray,
    grad: np.ndarray,
    velocity: np.ndarray,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> None:
    """One SGD step in place (PyTorch's rule, dampening 0, no Nesterov).

    g = grad + weight_decay * param; velocity = momentum * velocity + g (if momentum > 0, and
    then g = velocity); param -= lr * g. Start with velocity = zeros.
    """
    _core.sgd_step(param, grad, velocity, float(lr), float(momentum), float(weight_decay))


def adam_step(
    param: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    step: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> None:
    """One Adam step in place (PyTorch's rule); `step` counts updates from 1.

    m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    param -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps). Start with m = v = 0.
    """
    _core.adam_step(
        param, grad, m, v, int(step), float(lr), float(beta1), float(beta2), float(eps), float(weight_decay)
    )


# ---------------------------------------------------------------- activations and pooling windows


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    """x where x > 0, else negative_slope * x, elementwise, any shape; NaN stays NaN."""
    return _core.leaky_relu(x, float(negative_slope))


def leaky_relu_backward(x: np.ndarray, dy: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    """dx = dy where x > 0, else negative_slope * dy (x is leaky_relu's input)."""
    return _core.leaky_relu_backward(x, dy, float(negative_slope))


def tanh(x: np.ndarray) -> np.ndarray:
    """tanh(x) elementwise, any shape."""
    return _core.tanh(x)


def tanh_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = dy * (1 - y**2), from tanh's OUTPUT y (as PyTorch keeps it)."""
    return _core.tanh_backward(y, dy)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) elementwise, any shape; computed from exp(-|x|), so no overflow (0 and 1
    at the far ends)."""
    return _core.sigmoid(x)


def sigmoid_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = dy * y * (1 - y), from sigmoid's OUTPUT y."""
    return _core.sigmoid_backward(y, dy)


def _pair(value, name: str) -> tuple[int, int]:
    """(height, width) from one int (both) or a pair (h, w), as PyTorch takes kernel sizes,
    strides and paddings; ValueError naming `name` for a sequence of another length.
    (cnnfast.nn's layers take their sizes through it too.)"""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _window(kernel_size, stride, padding) -> tuple[int, int, int, int, int, int]:
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    return kh, kw, sh, sw, ph, pw


def max_pool2d_window(x: np.ndarray, kernel_size, stride=None, padding=0):
    """Max over windows of any size, stride and padding, as PyTorch's max_pool2d (floor; the
    padding counts as -inf and is at most half the window): x [N, C, H, W] ->
    (y [N, C, Ho, Wo], argmax), Ho = (H + 2 ph - kh) // sh + 1 (Wo likewise).

    kernel_size, stride and padding are ints or (height, width) pairs; stride defaults to the
    kernel size. argmax (int32, the shape of y) holds the index h*W + w of each window's first
    maximum in its plane (a NaN wins). Non-overlapping unpadded square windows take the faster
    max_pool2d.
    """
    kh, kw, sh, sw, ph, pw = _window(kernel_size, stride, padding)
    if kh == kw == sh == sw and ph == pw == 0:
        return _core.max_pool2d(x, kh, False)
    return _core.max_pool2d_window(x, kh, kw, sh, sw, ph, pw)


def max_pool2d_window_backward(dy: np.ndarray, argmax: np.ndarray, x_shape) -> np.ndarray:
    """Each dy added at its window's argmax (overlapping windows add up): dx of shape x_shape."""
    return _core.max_pool2d_window_backward(dy, argmax, [int(s) for s in x_shape])


def avg_pool2d(x: np.ndarray, kernel_size, stride=None, padding=0, count_include_pad: bool = True) -> np.ndarray:
    """Mean over windows, as PyTorch's avg_pool2d (floor; zero padding of at most half the window):
    x [N, C, H, W] -> y [N, C, Ho, Wo], Ho = (H + 2 ph - kh) // sh + 1. Each window's sum is divided
    by kh * kw (count_include_pad=True) or by the number of its pixels inside the image."""
    kh, kw, sh, sw, ph, pw = _window(kernel_size, stride, padding)
    return _core.avg_pool2d(x, kh, kw, sh, sw, ph, pw, bool(count_include_pad))


def avg_pool2d_backward(
    dy: np.ndarray, x_shape, kernel_size, stride=None, padding=0, count_include_pad: bool = True
) -> np.ndarray:
    """Gradient of `avg_pool2d` (the same window settings) given dy: dx of shape x_shape."""
    kh, kw, sh, sw, ph, pw = _window(kernel_size, stride, padding)
    return _core.avg_pool2d_backward(dy, [int(s) for s in x_shape], kh, kw, sh, sw, ph, pw, bool(count_include_pad))


def global_avg_pool2d(x: np.ndarray) -> np.ndarray:
    """The mean of each plane: x [N, C, H, W] -> y [N, C, 1, 1] (PyTorch's adaptive_avg_pool2d(x, 1))."""
    return _core.global_avg_pool2d(x)


def global_avg_pool2d_backward(dy: np.ndarray, x_shape) -> np.ndarray:
    """dx [N, C, H, W] = dy [N, C, 1, 1] / (H * W) over each plane."""
    return _core.global_avg_pool2d_backward(dy, [int(s) for s in x_shape])


def adamw_step(
    param: np.ndarray,
    grad: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    step: int,
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> None:
    """One AdamW step in place (PyTorch's rule: weight decay decoupled from the gradient).

    param *= 1 - lr * weight_decay; then `adam_step` with the plain gradient (weight_decay 0).
    """
    _core.adamw_step(
        param, grad, m, v, int(step), float(lr), float(beta1), float(beta2), float(eps), float(weight_decay)
    )


def batch_norm_train(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    momentum: float = 0.1,
    eps: float = 1e-5,
):
    """Batch normalisation in training mode (PyTorch's rule), per channel of x [N, C], [N, C, L]
    or [N, C, H, W]: returns (y, mean [C], invstd [C]) with

    y = (x - mean) * invstd * weight + bias, mean and biased variance var over the batch (and
    the pixels), invstd = 1 / sqrt(var + eps); mean and invstd are what `batch_norm_backward`
    needs. Updates running_mean and running_var [C] in place:
    running = (1 - momentum) * running + momentum * batch value, with the unbiased variance
    var * M / (M - 1), M = values per channel (at least 2).
    """
    return _core.batch_norm_train(x, weight, bias, running_mean, running_var, float(momentum), float(eps))


def batch_norm_eval(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = 1e-5,
) -> np.ndarray:
    """Batch normalisation in eval mode: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
    return _core.batch_norm_eval(x, weight, bias, running_mean, running_var, float(eps))


def batch_norm_backward(
    x: np.ndarray, weight: np.ndarray, dy: np.ndarray, mean: np.ndarray, invstd: np.ndarray, input_grad: bool = True
):
    """Gradients of `batch_norm_train` given dy = dL/dy and its (mean, invstd): returns
    (dx, dweight [C], dbias [C]); with input_grad=False, dx is None and is not computed."""
    return _core.batch_norm_backward(x, weight, dy, mean, invstd, bool(input_grad))


# ----------------------------------------------------------------------------- augmentation


def augment(
    x: np.ndarray,
    seed: int,
    step: int = 0,
    rotation: float = 0.0,
    scale=(1.0, 1.0),
    shear: float = 0.0,
    translate: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
    fill: float = 0.0,
) -> np.ndarray:
    """A random affine transform and elastic distortion of each image: x [N, C, H, W] -> y, same shape.

    Per image (every channel alike), drawn uniformly: a rotation in [-rotation, rotation]
    degrees, a scale in [scale[0], scale[1]], a horizontal shear in [-shear, shear] degrees
    (all about the image centre) and a translation in [-translate, translate] times the width
    and height; then Simard et al.'s (2003) elastic distortion: a displacement field of
    uniform noise in [-1, 1) per pixel, smoothed by a Gaussian of elastic_sigma pixels (zero
    outside the image) and scaled by elastic_alpha pixels (0: none). The output is read from
    the input by bilinear interpolation, `fill` outside it. The defaults change nothing: y is
    x, bit for bit (a sample at an integer position is the pixel itself).

    The draws of image n depend only on (seed, step, n) (seed and step integers in [0, 2**64)),
    not on the thread count nor on the rest of the batch: give each batch its own step.
    The same as warp_bilinear(x, *augment_params(N, H, W, seed, step, ...), fill), faster.
    """
    return _core.augment(
        x, int(seed), int(step), float(rotation), _scale_pair(scale), float(shear), float(translate),
        float(elastic_alpha), float(elastic_sigma), float(fill),
    )  # fmt: skip


def augment_params(
    n: int,
    height: int,
    width: int,
    seed: int,
    step: int = 0,
    rotation: float = 0.0,
    scale=(1.0, 1.0),
    shear: float = 0.0,
    translate: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
):
    """The transforms `augment` draws for a batch of n images of height x width: (affine, field).

    affine [n, 2, 3] float32: each image's inverse map; output pixel (row i, column j) reads the
    input at x = a[0,0] j + a[0,1] i + a[0,2] + dx, y = a[1,0] j + a[1,1] i + a[1,2] + dy.
    field [n, 2, height, width] float32: the elastic displacements (dx, dy) in pixels, or None
    when elastic_alpha is 0.
    """
    return _core.augment_params(
        int(n), int(height), int(width), int(seed), int(step), float(rotation), _scale_pair(scale), float(shear),
        float(translate), float(elastic_alpha), float(elastic_sigma),
    )  # fmt: skip


def warp_bilinear(x: np.ndarray, affine: np.ndarray, field: np.ndarray | None = None, fill: float = 0.0) -> np.ndarray:
    """x [N, C, H, W] resampled through given maps: affine [N, 2, 3] and field [N, 2, H, W] (or
    None) as `augment_params` describes them, bilinear, a neighbour outside the image reading
    `fill`. A sample at an integer position returns the input pixel exactly."""
    return _core.warp_bilinear(x, affine, field, float(fill))


def _scale_pair(scale) -> tuple[float, float]:
    try:
        low, high = scale
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a pair (low, high), got {scale!r}") from None
    return float(low), float(high)
