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


# ----------------------------------------------------------------------------- augmentation
# cnnfast.functional.augment, written out: the counter-based draws (dropout_rng.hpp's SplitMix64
# finaliser), the affine map, Simard's elastic field and the bilinear sampling.

_MASK64 = (1 << 64) - 1


def splitmix(seed, i):
    """The well-mixed 64-bit value of (seed, i) (dropout_mix), as a Python int."""
    z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def augment_uniforms(seed, step, n, draws):
    """Image n's uniforms: [draws, 2] (the high and low 24 bits of each draw, times 2^-24)."""
    key = splitmix(splitmix(seed, step), n)
    bits = [splitmix(key, k) for k in range(draws)]
    return np.array([[(b >> 40) / 2**24, ((b >> 16) & 0xFFFFFF) / 2**24] for b in bits])


def augment_affine(seed, step, n, height, width, rotation=0.0, scale=(1.0, 1.0), shear=0.0, translate=0.0):
    """Image n's inverse map [2, 3]: output (i, j) reads the input at (x, y) = m @ (j, i, 1)."""
    u = augment_uniforms(seed, step, n, 3)
    theta = np.radians(rotation * (2 * u[0, 0] - 1))
    s = scale[0] + (scale[1] - scale[0]) * u[0, 1]
    phi = np.radians(shear * (2 * u[1, 0] - 1))
    t = np.array([translate * width * (2 * u[1, 1] - 1), translate * height * (2 * u[2, 0] - 1)])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = rot @ np.array([[1.0, np.tan(phi)], [0.0, 1.0]]) * s  # p' = A (p - c) + c + t
    inverse = np.linalg.inv(forward)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    return np.concatenate([inverse, (centre - inverse @ (centre + t))[:, None]], axis=1)


def augment_field(seed, step, n, height, width, alpha, sigma):
    """Image n's elastic displacements [2, H, W] (dx, dy): noise laid out [H, 2, W], element e
    from draw 3 + e // 2 (its high half for even e), as 2u - 1; smoothed by a Gaussian of sigma
    (radius int(4 sigma + 0.5), zero outside the image), times alpha."""
    count = 2 * height * width
    u = augment_uniforms(seed, step, n, 3 + count // 2)[3:].reshape(-1)
    noise = (2 * u - 1).reshape(height, 2, width).transpose(1, 0, 2)
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    taps = np.exp(-(offsets**2) / (2 * sigma**2))
    taps /= taps.sum()

    def smoothing(size):  # [size, size]: out = g @ in along one axis, zero outside
        d = np.arange(size)[:, None] - np.arange(size)[None, :]
        return np.where(np.abs(d) <= radius, taps[np.clip(d + radius, 0, 2 * radius)], 0.0)

    gh, gw = smoothing(height), smoothing(width)
    return alpha * np.einsum("ik,ckl,jl->cij", gh, noise, gw)


def warp_bilinear(x, affine, field=None, fill=0.0):
    """x [N, C, H, W] read through affine [N, 2, 3] (+ field [N, 2, H, W]) bilinearly, `fill`
    for neighbours outside; samples at integer positions are the pixels themselves."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    y = np.empty_like(x)
    padded = np.full((N, C, H + 2, W + 2), float(fill))  # one ring of fill around each image
    padded[:, :, 1:-1, 1:-1] = x
    for n in range(N):
        a = np.asarray(affine[n], np.float64)
        sx = a[0, 0] * j + a[0, 1] * i + a[0, 2]
        sy = a[1, 0] * j + a[1, 1] * i + a[1, 2]
        if field is not None:
            sx, sy = sx + field[n, 0], sy + field[n, 1]
        inside = (sx > -1) & (sx < W) & (sy > -1) & (sy < H)
        sx, sy = np.where(inside, sx, -1.0), np.where(inside, sy, -1.0)
        x0, y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
        fx, fy = sx - x0, sy - y0
        for c in range(C):
            p = padded[n, c]
            top = p[y0 + 1, x0 + 1] * (1 - fx) + p[y0 + 1, x0 + 2] * fx
            bottom = p[y0 + 2, x0 + 1] * (1 - fx) + p[y0 + 2, x0 + 2] * fx
            y[n, c] = np.where(inside, top * (1 - fy) + bottom * fy, fill)
    return y
