"""Float64 NumPy versions of every cnnfast kernel, written for clarity, not speed.

This file is the specification the C++ kernels are tested against (test_functional.py).
"""

import numpy as np


def conv2d(x, w, b, padding=0, stride=1):
    """x [N,C,H,W], w [K,C,R,S], b [K] -> y [N,K,(H+2p-R)//stride+1,(W+2p-S)//stride+1]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    K, C, R, S = w.shape
    Ho, Wo = (xp.shape[2] - R) // stride + 1, (xp.shape[3] - S) // stride + 1
    y = np.zeros((x.shape[0], K, Ho, Wo)) + np.asarray(b, np.float64)[None, :, None, None]
    for r in range(R):
        for s in range(S):
            window = xp[:, :, r : r + stride * (Ho - 1) + 1 : stride, s : s + stride * (Wo - 1) + 1 : stride]
            y += np.einsum("nchw,kc->nkhw", window, w[:, :, r, s])
    return y


def conv2d_backward(x, w, dy, padding=0, stride=1):
    """Gradients of conv2d: (dx, dw, db)."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    K, C, R, S = w.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for r in range(R):
        for s in range(S):
            rows, cols = slice(r, r + stride * (Ho - 1) + 1, stride), slice(s, s + stride * (Wo - 1) + 1, stride)
            dw[:, :, r, s] = np.einsum("nkhw,nchw->kc", dy, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("nkhw,kc->nchw", dy, w[:, :, r, s])
    H, W = x.shape[2], x.shape[3]
    dx = dxp[:, :, padding : padding + H, padding : padding + W]
    return dx, dw, dy.sum(axis=(0, 2, 3))


def relu(x):
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, 0.0)


def relu_backward(x, dy):
    return np.where(np.asarray(x) > 0, np.asarray(dy, np.float64), 0.0)


def max_pool2d(x, k):
    """-> (y, argmax) with argmax the index h*W + w of the first maximum of each window."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    Ho, Wo = H // k, W // k
    windows = x[:, :, : Ho * k, : Wo * k].reshape(N, C, Ho, k, Wo, k).transpose(0, 1, 2, 4, 3, 5)
    flat = windows.reshape(N, C, Ho, Wo, k * k)
    best = flat.argmax(axis=-1)
    r, s = best // k, best % k
    rows = np.arange(Ho)[None, None, :, None] * k + r
    cols = np.arange(Wo)[None, None, None, :] * k + s
    return flat.max(axis=-1), rows * W + cols


def max_pool2d_backward(dy, argmax, x_shape):
    """Each dy added at its window's argmax; an argmax of -1 (a window closed by a fused ReLU)
    routes nothing."""
    N, C, H, W = x_shape
    dx = np.zeros((N * C, H * W))
    argmax = np.asarray(argmax).reshape(N * C, -1)
    dy = np.where(argmax >= 0, np.asarray(dy, np.float64).reshape(N * C, -1), 0.0)
    np.add.at(dx, (np.arange(N * C)[:, None], np.maximum(argmax, 0)), dy)
    return dx.reshape(x_shape)


def linear(x, w, b):
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)


def linear_backward(x, w, dy):
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    return dy @ w, dy.T @ x, dy.sum(axis=0)


def softmax_cross_entropy(logits, labels):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = z.shape[0]
    loss = -log_p[np.arange(n), labels].mean()
    d = np.exp(log_p)
    d[np.arange(n), labels] -= 1.0
    return loss, d / n


def dropout(x, mask, p):
    return np.asarray(x, np.float64) * mask / (1.0 - p)


def sgd_step(param, grad, velocity, lr, momentum=0.0, weight_decay=0.0):
    """Returns the new (param, velocity)."""
    g = grad + weight_decay * param
    if momentum:
        velocity = momentum * velocity + g
        g = velocity
    return param - lr * g, velocity


def adam_step(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
    """Returns the new (param, m, v)."""
    g = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return param - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


# ---------------------------------------------------------------- issue 17: pooling windows, activations


def leaky_relu(x, negative_slope=0.01):
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x, negative_slope * x)


def leaky_relu_backward(x, dy, negative_slope=0.01):
    return np.where(np.asarray(x) > 0, 1.0, negative_slope) * np.asarray(dy, np.float64)


def tanh(x):
    return np.tanh(np.asarray(x, np.float64))


def sigmoid(x):
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))  # (never overflows)
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _windows(x, kernel_size, stride, padding, fill):
    """The padded input's windows: [N, C, Ho, Wo, kh * kw], and the index h*W + w of each
    window element in its plane (-1 for padding)."""
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    N, C, H, W = x.shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    index = np.pad(np.arange(H * W).reshape(H, W), ((ph, ph), (pw, pw)), constant_values=-1)
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    windows = np.empty((N, C, Ho, Wo, kh * kw))
    indices = np.empty((Ho, Wo, kh * kw), np.int64)
    for oh in range(Ho):
        for ow in range(Wo):
            rows, cols = slice(oh * sh, oh * sh + kh), slice(ow * sw, ow * sw + kw)
            windows[:, :, oh, ow] = xp[:, :, rows, cols].reshape(N, C, -1)
            indices[oh, ow] = index[rows, cols].reshape(-1)
    return windows, indices


def max_pool2d_window(x, kernel_size, stride, padding):
    """PyTorch's max_pool2d (floor, padding -inf): (y, argmax) with argmax the plane index of each
    window's first maximum. Pairs (height, width) for every setting."""
    windows, indices = _windows(x, kernel_size, stride, padding, -np.inf)
    best = windows.argmax(axis=-1)
    argmax = np.take_along_axis(np.broadcast_to(indices, windows.shape), best[..., None], axis=-1)[..., 0]
    return windows.max(axis=-1), argmax


def max_pool2d_window_backward(dy, argmax, x_shape):
    """Each dy added at its argmax (overlapping windows add up)."""
    return max_pool2d_backward(dy, argmax, x_shape)


def avg_pool2d(x, kernel_size, stride, padding, count_include_pad=True):
    """PyTorch's avg_pool2d (floor, zero padding): each window's sum over kh * kw, or over the
    number of its pixels inside the image without count_include_pad."""
    windows, indices = _windows(x, kernel_size, stride, padding, 0.0)
    counts = np.full(indices.shape[:2], indices.shape[2]) if count_include_pad else (indices >= 0).sum(axis=-1)
    return windows.sum(axis=-1) / counts


def avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, count_include_pad=True):
    """The transpose of avg_pool2d, built from its windows."""
    N, C, H, W = x_shape
    _, indices = _windows(np.zeros(x_shape), kernel_size, stride, padding, 0.0)
    counts = np.full(indices.shape[:2], indices.shape[2]) if count_include_pad else (indices >= 0).sum(axis=-1)
    dx = np.zeros((N, C, H * W))
    dy = np.asarray(dy, np.float64) / counts
    for oh in range(indices.shape[0]):
        for ow in range(indices.shape[1]):
            for i in indices[oh, ow]:
                if i >= 0:
                    dx[:, :, i] += dy[:, :, oh, ow]
    return dx.reshape(x_shape)


def global_avg_pool2d(x):
    return np.asarray(x, np.float64).mean(axis=(2, 3), keepdims=True)


# ------------------------------------------------------------------ schedules and training options


def adamw_step(param, grad, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2):
    """PyTorch's AdamW: the decay applied to the parameter, not the gradient. Returns (param, m, v)."""
    param = param * (1 - lr * weight_decay)
    return adam_step(param, grad, m, v, step, lr, beta1, beta2, eps, weight_decay=0.0)


def softmax_cross_entropy_smoothed(logits, labels, label_smoothing):
    """PyTorch's label smoothing: the target (1 - e) onehot + e / K. Returns (loss, dlogits)."""
    z = np.asarray(logits, np.float64)
    n, k = z.shape
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    target = np.full((n, k), label_smoothing / k)
    target[np.arange(n), labels] += 1.0 - label_smoothing
    return -(target * log_p).sum(axis=1).mean(), (np.exp(log_p) - target) / n


# ------------------------------------------------------------------ batch normalisation


def _per_channel(a, ndim):
    return np.asarray(a, np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_train(x, weight, bias, running_mean, running_var, momentum=0.1, eps=1e-5):
    """PyTorch's training-mode BatchNorm over every axis but 1: (y, mean, invstd, new running_mean,
    new running_var), the running variance updated with the unbiased batch variance."""
    x = np.asarray(x, np.float64)
    axes = tuple(d for d in range(x.ndim) if d != 1)
    m = x.size // x.shape[1]
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x - _per_channel(mean, x.ndim)) * _per_channel(invstd * weight, x.ndim) + _per_channel(bias, x.ndim)
    new_mean = (1 - momentum) * np.asarray(running_mean, np.float64) + momentum * mean
    new_var = (1 - momentum) * np.asarray(running_var, np.float64) + momentum * var * m / (m - 1)
    return y, mean, invstd, new_mean, new_var


def batch_norm_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    x = np.asarray(x, np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, np.float64) + eps)
    return (x - _per_channel(running_mean, x.ndim)) * _per_channel(invstd * weight, x.ndim) + _per_channel(bias, x.ndim)


def batch_norm_backward(x, weight, dy):
    """Gradients of batch_norm_train's y (the batch's own statistics): (dx, dweight, dbias)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    axes = tuple(d for d in range(x.ndim) if d != 1)
    m = x.size // x.shape[1]
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    invstd = 1.0 / np.sqrt(var + 1e-5)
    xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(invstd, x.ndim)
    dbias, dweight = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
    dx = _per_channel(np.asarray(weight, np.float64) * invstd / m, x.ndim) * (
        m * dy - _per_channel(dbias, x.ndim) - xhat * _per_channel(dweight, x.ndim)
    )
    return dx, dweight, dbias
