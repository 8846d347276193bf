"""Every bad input raises the documented error at the boundary: TypeError for a wrong dtype or
a non-array, ValueError (naming the argument) for anything else. Never a crash."""

import numpy as np
import pytest

import cnnfast.functional as F


def f32(*shape):
    return np.ones(shape, np.float32)


@pytest.mark.parametrize(
    "call,error,match",
    [
        # conv2d
        (
            lambda: F.conv2d(f32(1, 1, 5, 5).astype(np.float64), f32(1, 1, 3, 3), f32(1)),
            TypeError,
            "x must have dtype float32",
        ),
        (lambda: F.conv2d([[1.0]], f32(1, 1, 3, 3), f32(1)), TypeError, "x must be a numpy.ndarray"),
        (
            lambda: F.conv2d(f32(1, 5, 5), f32(1, 1, 3, 3), f32(1)),
            ValueError,
            r"x must have 4 dimensions \[N, C, H, W\], got shape \(1, 5, 5\)",
        ),
        (lambda: F.conv2d(f32(1, 2, 5, 5), f32(4, 3, 3, 3), f32(4)), ValueError, r"w must have shape \(K, 2, R, S\)"),
        (
            lambda: F.conv2d(f32(1, 1, 5, 5), f32(4, 1, 3, 3), f32(3)),
            ValueError,
            r"b must have shape \(4,\), got \(3,\)",
        ),
        (lambda: F.conv2d(f32(1, 1, 2, 2), f32(1, 1, 3, 3), f32(1)), ValueError, "larger than the padded input"),
        (lambda: F.conv2d(f32(1, 1, 5, 5), f32(1, 1, 3, 3), f32(1), padding=-1), ValueError, "padding must be"),
        (lambda: F.conv2d(f32(1, 1, 5, 5), f32(1, 1, 0, 3), f32(1)), ValueError, "at least 1x1"),
        (
            lambda: F.conv2d(f32(1, 1, 5, 10)[:, :, :, ::2], f32(1, 1, 3, 3), f32(1)),
            ValueError,
            "x must be C-contiguous",
        ),
        (
            lambda: F.conv2d(np.ones((1, 1, 5, 5), ">f4"), f32(1, 1, 3, 3), f32(1)),
            TypeError,
            "x must have dtype float32",
        ),
        (
            lambda: F.conv2d_backward(f32(2, 1, 5, 5), f32(1, 1, 3, 3), f32(2, 1, 4, 4)),
            ValueError,
            r"dy must have the shape of conv2d's output \(2, 1, 3, 3\)",
        ),
        (
            lambda: F.conv2d_backward(f32(2, 1, 5, 5), f32(1, 1, 3, 3), f32(2, 1, 3, 3).astype(np.int32)),
            TypeError,
            "dy must have dtype float32",
        ),
        # relu
        (lambda: F.relu(np.ones(3, np.int64)), TypeError, "x must have dtype float32"),
        (lambda: F.relu_backward(f32(3, 2), f32(2, 3)), ValueError, r"dy must have the shape of x \(3, 2\)"),
        # max_pool2d
        (lambda: F.max_pool2d(f32(1, 1, 4, 4), 0), ValueError, "k must be at least 1"),
        (lambda: F.max_pool2d(f32(1, 1, 3, 3), 4), ValueError, "larger than the input"),
        (lambda: F.max_pool2d(f32(4, 4), 2), ValueError, "x must have 4 dimensions"),
        (
            lambda: F.max_pool2d_backward(f32(1, 1, 2, 2), np.zeros((1, 1, 2, 2), np.int64), (1, 1, 4, 4)),
            TypeError,
            "argmax must have dtype int32",
        ),
        (
            lambda: F.max_pool2d_backward(f32(1, 1, 2, 2), np.full((1, 1, 2, 2), 16, np.int32), (1, 1, 4, 4)),
            ValueError,
            "outside the plane",
        ),
        (
            lambda: F.max_pool2d_backward(f32(1, 1, 2, 2), np.full((1, 1, 2, 2), -2, np.int32), (1, 1, 4, 4)),
            ValueError,
            "outside the plane",
        ),
        (
            lambda: F.max_pool2d_backward(f32(1, 1, 2, 2), np.zeros((1, 1, 2, 2), np.int32), (2, 1, 4, 4)),
            ValueError,
            "does not fit dy",
        ),
        (
            lambda: F.max_pool2d_backward(f32(1, 1, 2, 2), np.zeros((1, 1, 2, 2), np.int32), (1, 1, 4)),
            ValueError,
            "x_shape must have 4 entries",
        ),
        (
            lambda: F.max_pool2d_backward(f32(1, 1, 2, 2), np.zeros((1, 1, 2, 1), np.int32), (1, 1, 4, 4)),
            ValueError,
            "argmax must have the shape of dy",
        ),
        # linear
        (lambda: F.linear(f32(2, 3), f32(4, 5), f32(4)), ValueError, r"w must have shape \(O, 3\)"),
        (lambda: F.linear(f32(2, 3), f32(4, 3), f32(5)), ValueError, r"b must have shape \(4,\)"),
        (lambda: F.linear(f32(2, 3, 1), f32(4, 3), f32(4)), ValueError, "x must have 2 dimensions"),
        (lambda: F.linear_backward(f32(2, 3), f32(4, 3), f32(2, 5)), ValueError, r"dy must have shape \(2, 4\)"),
        # cross-entropy
        (
            lambda: F.softmax_cross_entropy(f32(2, 10), np.array([0, 10])),
            ValueError,
            r"labels\[1\] = 10 is outside 0..9",
        ),
        (lambda: F.softmax_cross_entropy(f32(2, 10), np.array([-1, 0])), ValueError, r"labels\[0\] = -1 is outside"),
        (
            lambda: F.softmax_cross_entropy(f32(2, 10), np.array([0.0, 1.0])),
            TypeError,
            "labels must have dtype int32 or int64",
        ),
        (lambda: F.softmax_cross_entropy(f32(2, 10), [0, 1]), TypeError, "labels must be a numpy.ndarray"),
        (
            lambda: F.softmax_cross_entropy(f32(2, 10), np.array([0, 1, 2])),
            ValueError,
            r"labels must have shape \(2,\)",
        ),
        (lambda: F.softmax_cross_entropy(f32(0, 10), np.zeros(0, np.int64)), ValueError, "empty batch"),
        (lambda: F.softmax_cross_entropy(f32(2, 0), np.zeros(2, np.int64)), ValueError, "at least one class"),
        # dropout
        (lambda: F.dropout(f32(3), 1.5, 0), ValueError, "p must be a probability"),
        (lambda: F.dropout(f32(3), float("nan"), 0), ValueError, "p must be a probability"),
        (lambda: F.dropout_backward(f32(3), np.ones(3, np.bool_), 0.5), TypeError, "mask must have dtype uint8"),
        # optimizers
        (lambda: F.sgd_step(f32(3), f32(4), f32(3), 0.1), ValueError, r"grad must have the shape of param \(3,\)"),
        (lambda: F.sgd_step(f32(3), f32(3), f32(3), 0.1, momentum=-1), ValueError, "momentum must be"),
        (lambda: F.adam_step(f32(3), f32(3), f32(3), f32(3), 0), ValueError, "step must be >= 1"),
        (lambda: F.adam_step(f32(3), f32(3), f32(3), f32(2), 1), ValueError, r"v must have the shape of param"),
        (lambda: F.adam_step(f32(3), f32(3), f32(3), f32(3), 1, beta1=1.0), ValueError, "beta1 must be"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_read_only_parameter_is_rejected():
    param = f32(3)
    param.flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        F.sgd_step(param, f32(3), f32(3), 0.1)


def test_read_only_inputs_are_fine():
    x = f32(1, 1, 4, 4)
    x.flags.writeable = False
    assert F.max_pool2d(x, 2)[0].shape == (1, 1, 2, 2)


def test_nan_inputs_propagate_without_crashing():
    x = np.full((2, 1, 6, 6), np.nan, np.float32)
    w, b = f32(3, 1, 3, 3), f32(3)
    y = F.conv2d(x, w, b)
    assert np.isnan(y).all()
    dx, dw, db = F.conv2d_backward(x, w, y)
    assert np.isnan(dx).all() and np.isnan(dw).all() and np.isnan(db).all()
    pooled, argmax = F.max_pool2d(y, 2)
    assert np.isnan(pooled).all()
    assert np.isnan(F.relu(y)).all()
    logits = F.linear(pooled.reshape(2, -1), f32(10, 12), f32(10))
    loss, dlogits = F.softmax_cross_entropy(logits, np.array([1, 2]))
    assert np.isnan(loss) and np.isnan(dlogits).all()


def test_planes_too_large_for_int32_argmax_are_refused_even_in_empty_arrays():
    # numpy accepts any plane in an array with a zero-size dimension; H*Wo must not overflow
    # (2**47 * 2**17 wrapped to 0 and reached the kernel with a zero-size scratch buffer)
    x = np.empty((1, 1, 2**47 - 2**17, 0), np.float32)
    w, b = np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="too large for int32 argmax"):
        F.conv2d_relu_max_pool2d(x, w, b, 2**17, padding=2**16)
    with pytest.raises(ValueError, match="too large for int32 argmax"):
        F.conv2d_relu_max_pool2d_backward(
            x, w, np.zeros((1, 1, 0, 0), np.float32), np.zeros((1, 1, 0, 0), np.int32), 2**17, padding=2**16
        )
