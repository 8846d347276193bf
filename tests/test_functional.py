"""Every kernel against the float64 NumPy reference (reference.py) and against central finite
differences, once per instruction set the CPU supports (the `isa` fixture)."""

import numpy as np
import pytest

import cnnfast
import cnnfast.functional as F
import reference as ref
from cnnfast import _core
from conftest import SUPPORTED_ISAS

rng = np.random.default_rng(1234)


def rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def assert_close(actual, expected, rtol=1e-4, atol=1e-4):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


def numeric_grad(f, arrays, index, coords, eps):
    """Central differences of scalar f(*arrays) in arrays[index] at the given flat coordinates."""
    grads = []
    for c in coords:
        a = arrays[index]
        old = a.flat[c]
        a.flat[c] = old + eps
        plus = f(*arrays)
        a.flat[c] = old - eps
        minus = f(*arrays)
        a.flat[c] = old
        grads.append((plus - minus) / (2 * eps))
    return np.array(grads)


def sample(a, count=12):
    return rng.choice(a.size, size=min(count, a.size), replace=False)


# ------------------------------------------------------------------ GEMM (under conv and linear)


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (5, 7, 3), (8, 32, 1), (64, 121, 288), (97, 1030, 260)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_matches_numpy_and_naive_loop(isa, M, N, K, trans_a, trans_b):
    a = rand(K, M) if trans_a else rand(M, K)
    b = rand(N, K) if trans_b else rand(K, N)
    expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    assert_close(_core.matmul(a, b, trans_a, trans_b), expected, rtol=1e-5, atol=1e-5)
    assert_close(_core.matmul(a, b, trans_a, trans_b, naive=True), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ conv2d

CONV_SHAPES = [  # N, C, H, W, K, R, S, padding
    (2, 1, 5, 5, 3, 3, 3, 0),
    (3, 2, 7, 6, 4, 3, 2, 1),
    (1, 3, 4, 4, 5, 4, 4, 0),  # kernel as large as the input
    (2, 4, 9, 11, 7, 1, 1, 0),  # 1x1 (dx: one product an image, the pointwise one)
    (2, 40, 5, 6, 8, 1, 1, 0),  # 1x1 with more than 32 channels: the panels' dw
    (2, 40, 5, 6, 24, 1, 1, 0),  # the same, 24 out: pixel-major, a panel's rows of 6 one run on AVX-512
    (1, 48, 8, 4, 20, 1, 1, 0),  # 1x1 on 32 pixels: the few-pixels forward reads x as it is
    # 1x1, the pointwise forward: 169 pixels (the last panel partial), K not a tile multiple; 160 channels
    (3, 48, 13, 13, 20, 1, 1, 0),
    (2, 160, 8, 8, 24, 1, 1, 0),
    # 1x1 with 260 output channels: dx by a GEMM (more than the pointwise product takes), one image or two
    (1, 40, 6, 6, 260, 1, 1, 0),
    (2, 36, 5, 5, 260, 1, 1, 0),
    (7, 40, 4, 4, 260, 1, 1, 0),  # the same on 16 pixels: dx by one product for 4 images side by side, then 3
    (3, 40, 4, 4, 20, 1, 1, 0),  # 1x1 on 4 x 4: one vector an image on AVX-512, the pointwise product's narrow tile
    # 1x1 on 3 x 3, 70 out: the pointwise forward over the batch (units across images, staged; K not a tile multiple)
    (6, 40, 3, 3, 70, 1, 1, 0),
    # 3 x 3 at padding 1, 8 images: the panels without the padding's taps, a panel's pixels one an image (AVX-512 and
    # AVX2: packed by a gather a tap)
    (8, 40, 3, 3, 20, 3, 3, 1),
    (8, 16, 16, 16, 24, 1, 1, 0),  # 1x1, 16 channels in: its backward the pointwise one on AVX-512 (the direct forward)
    (2, 5, 6, 5, 3, 5, 3, 2),
    (4, 32, 13, 13, 64, 3, 3, 0),  # the default model's second layer
    (3, 4, 9, 7, 32, 3, 3, 1),  # padding, dW's A read in place (S*C a multiple of 12, K of 32)
    (5, 1, 28, 28, 32, 3, 3, 0),  # the default model's first layer
    (2, 16, 8, 14, 24, 3, 3, 1),  # Winograd F(2x2, 3x3): 16+ channels, even output, 56 tiles
    (1, 20, 14, 12, 17, 3, 3, 2),  # Winograd, padding 2 (dx: dy padded by 0), K not a tile multiple
    (8, 33, 6, 6, 16, 3, 3, 0),  # Winograd on 4 x 4 outputs, 32 tiles over 8 images
    (2, 64, 8, 8, 70, 3, 3, 1),  # Winograd's dw too (64+ channels in and out)
    # Winograd F(4x4, 3x3): 48 tiles in rows of 3, K not a tile multiple
    (4, 16, 16, 12, 20, 3, 3, 1),
    # F(4x4) on rows of 9 tiles (more than a vector on AVX2) and padding 2, dx (18 x 34) too
    (2, 24, 18, 34, 16, 3, 3, 2),
    (8, 16, 10, 10, 16, 3, 3, 2),  # F(4x4) forward (12 x 12), dx on 10 x 10 by F(2x2) (4 x 4 tiles: 1.44x)
    # F(4x4) on rows of 1-2 tiles (value by value on AVX-512 / AVX2), the last column or row of tiles partial
    (16, 16, 8, 6, 16, 3, 3, 1),
    (16, 16, 7, 4, 16, 3, 3, 1),  # (an odd output: the panels on AVX-512)
    (8, 48, 7, 7, 40, 3, 3, 1),  # an odd output from 48 channels in: F(4x4) on AVX-512 too
    # the same with 64 out: its backward by Winograd on every ISA (dx by F(4x4), dw by F(3x3, 4x4))
    (8, 48, 7, 7, 64, 3, 3, 1),
    (3, 16, 14, 18, 16, 3, 3, 1),  # F(4x4) on 14 x 18 outputs: tiles past the last row and column
    # F(4x4) on rows of 2 tiles, 3 rows an image (AVX-512: 16-row chunks, the scatter of rows of 1-2 tiles
    # starting mid-image)
    (24, 32, 12, 8, 64, 3, 3, 1),
    (2, 3, 10, 9, 64, 7, 7, 3),  # a first layer's dw by tap rows, channels in two blocks on AVX-512
    (2, 2, 9, 8, 100, 5, 5, 2),  # the same, 100 channels: in blocks, or too many (the GEMM paths)
    # a first layer's dw with pixels in the lanes (stride 1, <= 32 taps): 20 images in 16 chunks, 77 pixels
    # (the last vector partial), 6 channels in blocks of 2-3, 25 taps in groups of 5
    (20, 1, 9, 13, 6, 5, 5, 1),
    (2, 3, 11, 13, 16, 5, 5, 2),  # 16 channels: one tile, channel-major (panels of 16 pixels over rows of 13)
    # a first layer's direct forward: rows of 37 in segments of a vector (the last one short), K in blocks of 5-6
    (2, 3, 12, 41, 20, 5, 5, 0),
    (1, 1, 9, 36, 7, 3, 3, 1),  # 9 taps: conv1's loop (AVX-512), rows of 36
    (2, 8, 7, 40, 12, 5, 5, 2),  # 8 channels, rows of 40 (two vectors or more on every ISA): the direct forward
    # stride 1, few channels on rows of 8-15: tap rows' pixel-major forward (AVX-512: K <= 48; AVX2: K <= 16)
    (2, 6, 14, 14, 16, 5, 5, 0),  # LeNet's second layer: tiles of a whole row of 10
    (2, 8, 11, 12, 40, 3, 3, 1),  # 3 vectors of channels on AVX-512: tiles of 9 pixels across rows of 12
    # 48 out, dW through the panels: on AVX-512 its product by rows of output channels (4 rows of 12 fill the tiles,
    # where the other way 48 of 64 columns would); 5x5 at one image: dW beside dx, or over the threads alone
    (4, 32, 10, 10, 48, 3, 3, 0),
    (1, 24, 12, 12, 48, 5, 5, 2),
]


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv2d_forward_matches_reference(isa, few_pixels, shape):
    N, C, H, W, K, R, S, p = shape
    x, w, b = rand(N, C, H, W), rand(K, C, R, S, scale=0.3), rand(K)
    expected = ref.conv2d(x, w, b, p)
    assert_close(F.conv2d(x, w, b, padding=p), expected)
    assert_close(_core.conv2d_naive(x, w, b, p), expected)


@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv2d_backward_matches_reference(isa, few_pixels, shape):
    N, C, H, W, K, R, S, p = shape
    x, w = rand(N, C, H, W), rand(K, C, R, S, scale=0.3)
    dy = rand(N, K, H + 2 * p - R + 1, W + 2 * p - S + 1)
    dx, dw, db = F.conv2d_backward(x, w, dy, padding=p)
    rdx, rdw, rdb = ref.conv2d_backward(x, w, dy, p)
    assert_close(dx, rdx)
    assert_close(dw, rdw)
    assert_close(db, rdb)


# (the third and fourth: Winograd F(2x2), but the panels on AVX-512 (36 tiles in two panels of 32),
# and F(4x4). conv2d is linear in each argument, so the central
# difference is exact at any eps up to rounding: F(4x4)'s, 1e-5 of the largest output, would swamp
# one at eps 1e-2, so it takes a larger one)
@pytest.mark.parametrize(
    "shape, eps",
    [
        ((2, 2, 5, 4, 3, 3, 2, 1), 1e-2),
        ((1, 3, 6, 6, 2, 3, 3, 0), 1e-2),
        ((4, 16, 6, 6, 16, 3, 3, 1), 1e-2),
        ((4, 16, 8, 16, 16, 3, 3, 1), 0.5),
        ((2, 40, 4, 8, 12, 1, 1, 0), 1e-2),  # 1x1: the pointwise product's dx (forward too, few_pixels off)
        ((16, 40, 8, 8, 12, 1, 1, 0), 1e-2),  # 1x1, 1,024 pixels: AVX-512's dw by inner products too
    ],
)
def test_conv2d_backward_finite_differences(isa, few_pixels, shape, eps):
    N, C, H, W, K, R, S, p = shape
    x, w, b = rand(N, C, H, W), rand(K, C, R, S), rand(K)
    probe = rand(N, K, H + 2 * p - R + 1, W + 2 * p - S + 1)  # L = sum(conv2d(x, w, b) * probe)

    def loss(x, w, b):
        return float((F.conv2d(x, w, b, padding=p).astype(np.float64) * probe).sum())

    dx, dw, db = F.conv2d_backward(x, w, probe, padding=p)
    for i, grad in enumerate((dx, dw, db)):
        coords = sample(grad)
        numeric = numeric_grad(loss, [x, w, b], i, coords, eps=eps)
        np.testing.assert_allclose(grad.flat[coords], numeric, rtol=1e-2, atol=1e-2)


# (the last: 14 x 14 outputs in 4 x 4 tiles, their last row and column half outside)
@pytest.mark.parametrize(
    "shape", [(4, 16, 16, 12, 20, 1), (2, 24, 16, 16, 32, 1), (8, 96, 8, 8, 112, 1), (2, 16, 14, 14, 24, 1)]
)
def test_winograd_4x4_and_2x2_tiles_both_match_the_reference(isa, shape):
    N, C, H, W, K, p = shape
    x, w, b = rand(N, C, H, W), rand(K, C, 3, 3, scale=0.3), rand(K)
    dy = rand(N, K, H + 2 * p - 2, W + 2 * p - 2)
    assert _core.conv2d_path(x.shape, w.shape, p) == "winograd"
    expected, (rdx, _, _) = ref.conv2d(x, w, b, p), ref.conv2d_backward(x, w, dy, p)
    results = []
    for tile in (2, 4):
        before = _core.set_winograd_tile_limit(tile)
        try:
            assert _core.conv2d_path(x.shape, w.shape, p) == "winograd"
            y, dx = F.conv2d(x, w, b, padding=p), F.conv2d_backward(x, w, dy, padding=p)[0]
        finally:
            _core.set_winograd_tile_limit(before)
        assert_close(y, expected)
        assert_close(dx, rdx)
        results.append((y, dx))
    # (another algorithm ran: other roundings)
    assert not np.array_equal(results[0][0], results[1][0])
    assert not np.array_equal(results[0][1], results[1][1])


# On AVX-512 Winograd's forward leaves 16->16 to the other paths (its transforms weigh as much as its products there);
# 16->24 and the backward stay with it. Every ISA gives the reference's numbers either way.
def test_winograd_forward_takes_16_to_16_channels_except_on_avx512(isa):
    x, w, b = rand(4, 16, 14, 14), rand(16, 16, 3, 3, scale=0.3), rand(16)
    assert (_core.conv2d_path(x.shape, w.shape, 1) == "winograd") == (isa != "avx512")
    assert _core.conv2d_path(x.shape, w.shape, 1, 0, True, True) == "winograd"
    assert _core.conv2d_path(x.shape, (24, 16, 3, 3), 1) == "winograd"
    assert_close(F.conv2d(x, w, b, padding=1), ref.conv2d(x, w, b, 1))


@pytest.mark.parametrize("N, C, H, K, p", [(6, 48, 9, 16, 1), (15, 96, 5, 16, 1), (6, 48, 11, 48, 0)])
def test_winograd_2x2_tiles_on_an_odd_output_match_the_reference(isa, N, C, H, K, p):
    # 9 x 9: F(4x4)'s tiles would cover 12 x 12, F(2x2)'s 10 x 10 (its last row and column of tiles
    # half outside); 5 x 5 in 6 x 6 (from 96 channels). From 128 tiles: 150 and 135 here, one image
    # fewer too few. Their backward through the panels, even where dx (11 x 11) would go by F(4x4).
    x, w, b = rand(N, C, H, H), rand(K, C, 3, 3, scale=0.3), rand(K)
    assert _core.conv2d_path(x.shape, w.shape, p) == "winograd"
    assert _core.conv2d_path(x.shape, w.shape, p, backward=True) == "panels"
    assert _core.conv2d_path(x[1:].shape, w.shape, p) != "winograd"
    y = F.conv2d(x, w, b, padding=p)
    assert_close(y, ref.conv2d(x, w, b, p))
    assert_close(F.conv2d(x[1:], w, b, padding=p), y[1:])
    pooled, argmax = F.conv2d_relu_max_pool2d(x, w, b, 2, padding=p)  # (the last row and column dropped)
    ry, rargmax = F.max_pool2d(y, 2, relu=True)
    np.testing.assert_array_equal(pooled, ry)
    np.testing.assert_array_equal(argmax, rargmax)


# Stride 2 through the input's phases (the forward, and dx by the same products transposed; dw
# through the panels): 8 x 8 outputs in 4 tiles an image; 16 x 15 (the last column of tiles a
# quarter outside; dx's 8 x 8 tiles of 33 x 31 too) without padding; a tile an image (its outputs
# scattered value by value on AVX-512); padding 2; more than 320 channels in (the products' depth
# in two parts; AVX-512's panels of 32 tiles of them are too wide for the backward's chunks: the
# panels take that there); one
# chunk of 32 tiles (its transforms and blocks of output channels over the threads); 17 x 15 with
# padding 1 (dx's odd tiles, ragged). Chunks start mid-image in the second (dx: 8 rows of tiles, 5 an
# image) and the last (the forward on AVX-512 at one thread: 16 rows, 3 an image).
STRIDE2_SHAPES = [
    (32, 32, 16, 16, 64, 1),
    (2, 36, 33, 31, 65, 0),
    (48, 32, 8, 8, 64, 1),
    (8, 32, 21, 21, 64, 2),
    (8, 330, 16, 16, 64, 1),
    (2, 32, 32, 32, 64, 1),
    (12, 32, 17, 15, 64, 1),
]


@pytest.mark.parametrize("shape", STRIDE2_SHAPES)
def test_stride2_winograd_matches_the_reference_and_the_panels(isa, shape):
    N, C, H, W, K, p = shape
    x, w, b = rand(N, C, H, W), rand(K, C, 3, 3, scale=0.3), rand(K)
    # (AVX-512's panels of 32 tiles of 330 channels, 3.5 MB: the forward's, not the backward's)
    backward_path = "panels" if C > 320 and isa == "avx512" else "winograd"
    assert _core.conv2d_path(x.shape, w.shape, p, stride=2) == "winograd"
    assert _core.conv2d_path(x.shape, w.shape, p, stride=2, backward=True) == backward_path
    expected = ref.conv2d(x, w, b, p, stride=2)
    dy = rand(*expected.shape)
    rdx, rdw, rdb = ref.conv2d_backward(x, w, dy, p, stride=2)
    y, (dx, dw, db) = F.conv2d(x, w, b, padding=p, stride=2), F.conv2d_backward(x, w, dy, padding=p, stride=2)
    for got, want in ((y, expected), (dx, rdx), (dw, rdw), (db, rdb)):
        assert_close(got, want)
    before = _core.set_winograd_tile_limit(2)  # (F(4x4) off: the panels take it)
    try:
        assert _core.conv2d_path(x.shape, w.shape, p, stride=2) != "winograd"
        other, other_dx = F.conv2d(x, w, b, padding=p, stride=2), F.conv2d_backward(x, w, dy, padding=p, stride=2)[0]
    finally:
        _core.set_winograd_tile_limit(before)
    assert_close(other, expected)
    assert not np.array_equal(y, other)  # (another algorithm ran: other roundings)
    assert np.array_equal(dx, other_dx) == (backward_path == "panels")


@pytest.mark.parametrize("shape", [STRIDE2_SHAPES[0], STRIDE2_SHAPES[5], STRIDE2_SHAPES[6]])
def test_stride2_winograd_is_the_same_on_any_thread_count(isa, threads, shape):
    N, C, H, W, K, p = shape
    x, w, b = rand(N, C, H, W), rand(K, C, 3, 3, scale=0.3), rand(K)
    dy = rand(N, K, (H + 2 * p - 3) // 2 + 1, (W + 2 * p - 3) // 2 + 1)
    results = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        results.append([F.conv2d(x, w, b, padding=p, stride=2), *F.conv2d_backward(x, w, dy, padding=p, stride=2)])
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


# dw by F(3x3, 4x4): 32 tiles in one chunk, 96 tiles in two chunks (summed in order), 14 x 14
# outputs (the last tiles' dy zero past the plane), padding 0 and 2, 32 channels in (the fewest it
# takes)
WEIGHT_GRAD_4X4_SHAPES = [
    (8, 64, 8, 8, 64, 1),
    (24, 64, 8, 8, 72, 1),
    (4, 64, 14, 14, 64, 1),
    (4, 64, 16, 18, 64, 0),
    (4, 64, 12, 12, 64, 2),
    (2, 32, 16, 16, 64, 1),
    (32, 32, 4, 4, 64, 1),  # a tile an image (AVX2: its blocks gathered value by value)
    (24, 32, 12, 8, 64, 1),  # rows of 2 tiles, 3 an image: chunks of 32 rows start mid-image
]


@pytest.mark.parametrize("shape", WEIGHT_GRAD_4X4_SHAPES)
def test_winograd_weight_gradient_by_4x4_tiles_matches_the_reference(isa, shape):
    N, C, H, W, K, p = shape
    x, w = rand(N, C, H, W), rand(K, C, 3, 3, scale=0.1)
    dy = rand(N, K, H + 2 * p - 2, W + 2 * p - 2)
    assert _core.conv2d_path(x.shape, w.shape, p) == "winograd"
    _, rdw, rdb = ref.conv2d_backward(x, w, dy, p)
    results = []
    for tile in (2, 4):  # (2: F(3x3, 2x2) or the panels' dw, by the ISA)
        before = _core.set_winograd_tile_limit(tile)
        try:
            _, dw, db = F.conv2d_backward(x, w, dy, padding=p, input_grad=False)
        finally:
            _core.set_winograd_tile_limit(before)
        assert_close(dw, rdw)
        assert_close(db, rdb)
        results.append(dw)
    assert not np.array_equal(results[0], results[1])  # (another algorithm ran: other roundings)


# (one chunk: its transforms and products over the threads; two chunks: summed in order)
@pytest.mark.parametrize("shape", WEIGHT_GRAD_4X4_SHAPES[:2])
def test_winograd_weight_gradient_by_4x4_tiles_is_the_same_on_any_thread_count(isa, threads, shape):
    N, C, H, W, K, p = shape
    x, w, dy = rand(N, C, H, W), rand(K, C, 3, 3, scale=0.1), rand(N, K, H + 2 * p - 2, W + 2 * p - 2)
    results = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        results.append(F.conv2d_backward(x, w, dy, padding=p)[1])
    np.testing.assert_array_equal(results[0], results[1])


def test_winograd_tile_limit_is_checked():
    for tile in (0, 3, 8):
        with pytest.raises(ValueError, match="tile must be 2 or 4"):
            _core.set_winograd_tile_limit(tile)


def test_conv2d_padding_larger_than_kernel(isa):
    x, w, b = rand(1, 1, 2, 2), rand(1, 1, 1, 1), rand(1)
    y = F.conv2d(x, w, b, padding=2)
    assert y.shape == (1, 1, 6, 6)
    assert_close(y, ref.conv2d(x, w, b, 2))


def test_conv2d_zero_size_batch_and_channels():
    y = F.conv2d(np.zeros((0, 3, 5, 5), np.float32), rand(4, 3, 3, 3), rand(4))
    assert y.shape == (0, 4, 3, 3)
    b = rand(4)
    y = F.conv2d(np.zeros((2, 0, 5, 5), np.float32), np.zeros((4, 0, 3, 3), np.float32), b)
    assert_close(y, np.broadcast_to(b[None, :, None, None], (2, 4, 3, 3)))
    dx, dw, db = F.conv2d_backward(
        np.zeros((0, 3, 5, 5), np.float32), rand(4, 3, 3, 3), np.zeros((0, 4, 3, 3), np.float32)
    )
    assert dx.shape == (0, 3, 5, 5) and not dw.any() and not db.any()


# ------------------------------------------------------------------ conv2d with a stride

STRIDED_SHAPES = [  # N, C, H, W, K, R, S, padding, stride
    (2, 3, 9, 9, 4, 3, 3, 1, 2),  # a ResNet's 3x3 stride-2 downsampling, odd input
    (2, 8, 9, 11, 12, 3, 3, 2, 2),  # padding 2: the even columns to phase 0 (split_phases2)
    (3, 8, 8, 8, 16, 1, 1, 0, 2),  # its 1x1 stride-2 shortcut
    (2, 40, 7, 7, 12, 1, 1, 0, 2),  # a 1x1 stride-2 shortcut through the panels
    # rows of output of 8 pixels or more for tap_rows_forward (AVX-512's tiles: 28, 14, 6 pixels for 1, 2, 4
    # vectors of output channels), input channels in blocks (the last shape's weights exceed 24 KB)
    (2, 3, 60, 58, 16, 3, 3, 1, 2),
    (2, 8, 30, 30, 32, 3, 3, 1, 2),
    (1, 40, 20, 21, 64, 3, 3, 1, 2),
    (2, 6, 9, 11, 48, 3, 3, 1, 2),  # 3 vectors of channels: tiles of 9 pixels running on across rows of 6
    (2, 3, 15, 13, 8, 7, 7, 3, 2),  # a stem's 7x7 stride 2, padding 3
    (2, 3, 17, 15, 64, 7, 7, 3, 2),  # the same with 64 channels: channel-major where tap rows decline
    (1, 2, 10, 11, 5, 3, 2, 0, 3),  # stride 3, rows and columns it does not reach
    (4, 16, 8, 8, 32, 3, 3, 1, 2),  # many channels: several images per chunk
    (1, 1, 4, 4, 2, 2, 2, 2, 4),  # stride larger than the kernel, padding larger than it
    (3, 16, 11, 9, 20, 3, 3, 0, 2),  # the panels' in-place dW (S*C a multiple of 12)
    (2, 4, 6, 6, 3, 3, 3, 1, 1),  # stride 1 through the same entry points
    (1, 40, 8, 8, 24, 1, 1, 0, 2),  # a 1x1 stride-2 shortcut on 16 pixels: the few-pixels forward
    (2, 3, 41, 70, 20, 7, 7, 3, 2),  # a first layer's direct forward: rows of 35 from 2 x 2 phases
    (1, 2, 23, 50, 9, 5, 4, 2, 3),  # the same at stride 3: 3 x 3 phases, rows of 17
    (2, 16, 9, 70, 20, 3, 3, 1, 2),  # 16 channels, rows of 35: the direct forward too
    (2, 16, 28, 28, 16, 3, 3, 1, 2),  # rows of 14, shorter than a tile of one vector of channels: tap rows
    # padding past the kernel: a tile's kernel rows (inside the image) kept within 0..R (tap rows, across rows)
    (4, 8, 4, 4, 48, 1, 5, 2, 1),
    (2, 8, 3, 3, 40, 3, 3, 4, 1),
]


def strided_output(shape):
    N, C, H, W, K, R, S, p, st = shape
    return N, K, (H + 2 * p - R) // st + 1, (W + 2 * p - S) // st + 1


@pytest.mark.parametrize("shape", STRIDED_SHAPES)
def test_strided_conv2d_forward_and_backward_match_reference(isa, few_pixels, shape):
    N, C, H, W, K, R, S, p, st = shape
    x, w, b = rand(N, C, H, W), rand(K, C, R, S, scale=0.3), rand(K)
    expected = ref.conv2d(x, w, b, p, st)
    assert expected.shape == strided_output(shape)
    assert_close(F.conv2d(x, w, b, padding=p, stride=st), expected)
    assert_close(_core.conv2d_naive(x, w, b, p, st), expected)
    dy = rand(*expected.shape)
    rdx, rdw, rdb = ref.conv2d_backward(x, w, dy, p, st)
    dx, dw, db = F.conv2d_backward(x, w, dy, padding=p, stride=st)
    for got, want in ((dx, rdx), (dw, rdw), (db, rdb)):
        assert_close(got, want)
    none, dw2, db2 = F.conv2d_backward(x, w, dy, padding=p, input_grad=False, stride=st)
    assert none is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


# (the second: the Winograd path, forward and dx through the input's phases)
@pytest.mark.parametrize("shape, eps", [((2, 3, 7, 8, 4, 3, 3, 1, 2), 1e-2), ((8, 32, 16, 16, 64, 3, 3, 1, 2), 0.5)])
def test_strided_conv2d_finite_differences(isa, few_pixels, shape, eps):
    N, C, H, W, K, R, S, p, st = shape
    x, w, b = rand(N, C, H, W), rand(K, C, R, S), rand(K)
    probe = rand(*strided_output((N, C, H, W, K, R, S, p, st)))

    def loss(x, w, b):
        return float((F.conv2d(x, w, b, padding=p, stride=st).astype(np.float64) * probe).sum())

    if C == 32 and few_pixels.endswith("off"):
        assert _core.conv2d_path(x.shape, w.shape, p, stride=st, backward=True) == "winograd"
    dx, dw, db = F.conv2d_backward(x, w, probe, padding=p, stride=st)
    for i, grad in enumerate((dx, dw, db)):
        coords = sample(grad)
        numeric = numeric_grad(loss, [x, w, b], i, coords, eps=eps)
        np.testing.assert_allclose(grad.flat[coords], numeric, rtol=1e-2, atol=1e-2)


# the direct path, the panels and Winograd through the phases (8 x 8 outputs)
@pytest.mark.parametrize("N, C, H, K", [(3, 1, 17, 8), (3, 4, 17, 8), (8, 32, 16, 64)])
def test_strided_conv2d_relu_max_pool2d_equals_the_three_kernels(isa, few_pixels, N, C, H, K):
    x, w, b = rand(N, C, H, H), rand(K, C, 3, 3, scale=0.3), rand(K)
    if C == 32 and few_pixels.endswith("off"):
        assert _core.conv2d_path(x.shape, w.shape, 1, 2, True, True, stride=2) == "winograd"
    y = F.conv2d(x, w, b, padding=1, stride=2)  # 9 x 9 (8 x 8)
    pooled, argmax = F.max_pool2d(y, 2, relu=True)
    fused, fused_argmax = F.conv2d_relu_max_pool2d(x, w, b, 2, padding=1, stride=2)
    np.testing.assert_array_equal(fused, pooled)
    np.testing.assert_array_equal(fused_argmax, argmax)
    dy = rand(*pooled.shape)
    expected = F.conv2d_backward(x, w, F.max_pool2d_backward(dy, argmax, y.shape), padding=1, stride=2)
    got = F.conv2d_relu_max_pool2d_backward(x, w, dy, argmax, 2, padding=1, stride=2)
    for a, e in zip(got, expected):
        assert_close(a, e, rtol=1e-5, atol=1e-5)


# dx at stride 1 as the direct path's forward of dy through w flipped and transposed, where the layer's dx would be the
# panels': few channels (too few for Winograd) on rows filling every ISA's vectors; padding 1, 0 (dy padded by 2) and
# a 2x2 kernel (24 taps: the direct path's backward). Pooled, dx is the forward of the unpooled gradient. A 5x5 layer
# keeps the panels' dx.
@pytest.mark.parametrize(
    "N, C, H, K, R, p", [(2, 8, 48, 8, 3, 1), (3, 12, 16, 6, 3, 1), (2, 8, 30, 16, 3, 0), (2, 6, 32, 10, 2, 1)]
)
def test_input_gradient_by_the_direct_forward_of_dy(isa, N, C, H, K, R, p):
    x, w, b = rand(N, C, H, H), rand(K, C, R, R, scale=0.3), rand(K)
    y = F.conv2d(x, w, b, padding=p)
    dy = rand(*y.shape)
    few_taps = C * R * R <= 32  # (the direct path's backward, whose dx was the panels' too)
    assert _core.conv2d_path(x.shape, w.shape, p, 0, True, True) == ("direct" if few_taps else "panels, dx direct")
    assert _core.conv2d_path(x.shape, w.shape, p, 0, True, False) == ("direct" if few_taps else "panels")
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    assert _core.conv2d_path(dy.shape, flipped.shape, R - 1 - p) == "direct"
    dx, dw, db = F.conv2d_backward(x, w, dy, padding=p)
    np.testing.assert_array_equal(dx, F.conv2d(dy, flipped, np.zeros(C, np.float32), padding=R - 1 - p))
    rdx, rdw, rdb = ref.conv2d_backward(x, w, dy, p)
    for got, want in ((dx, rdx), (dw, rdw), (db, rdb)):
        assert_close(got, want)
    np.testing.assert_array_equal(F.conv2d_backward(x, w, dy, padding=p, input_grad=False)[1], dw)
    pooled, argmax = F.conv2d_relu_max_pool2d(x, w, b, 2, padding=p)
    dp = rand(*pooled.shape)
    dconv = F.max_pool2d_backward(dp, argmax, y.shape)
    fused = F.conv2d_relu_max_pool2d_backward(x, w, dp, argmax, 2, padding=p)
    np.testing.assert_array_equal(fused[0], F.conv2d(dconv, flipped, np.zeros(C, np.float32), padding=R - 1 - p))
    for got, want in zip(fused, ref.conv2d_backward(x, w, dconv, p)):
        assert_close(got, want)
    w5 = rand(K, C, 5, 5, scale=0.3)
    assert _core.conv2d_path(x.shape, w5.shape, 2, 0, True, True) == "panels"


# Small padded images, where 30% of the taps or more fall in the padding: the panels' pixel-major product leaves those
# out (taps in (r, q, c) order, the pixels grouped by the taps they read). Padding 3 on 3 x 3: pixels that read only
# zeros (y = b); 3 x 5; 4 x 4 (also pooled: the product put back in the rows' order); stride 2; 96 channels in (864
# taps: w's depth blocks end inside a kernel row's run of taps). 72 channels out, so that no ISA's tap-rows kernel takes
# the forward.
@pytest.mark.parametrize(
    "N, C, H, W, K, p, st",
    [
        (4, 24, 3, 3, 72, 3, 1),
        (8, 24, 3, 5, 72, 1, 1),
        (6, 24, 4, 4, 72, 1, 1),
        (9, 40, 4, 4, 72, 1, 2),
        (6, 24, 5, 5, 72, 1, 2),
        (4, 96, 3, 3, 72, 1, 1),
    ],
)
def test_panels_skip_the_taps_in_the_padding(isa, few_pixels, threads, N, C, H, W, K, p, st):
    x, w, b = rand(N, C, H, W), rand(K, C, 3, 3, scale=0.3), rand(K)
    if few_pixels.endswith("off"):
        assert _core.conv2d_path(x.shape, w.shape, p, stride=st) == "panels"
    dy = rand(N, K, (H + 2 * p - 3) // st + 1, (W + 2 * p - 3) // st + 1)
    results = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        y = F.conv2d(x, w, b, padding=p, stride=st)
        results.append([y, *F.conv2d_backward(x, w, dy, padding=p, stride=st)])
        if y.shape[2] >= 2 and y.shape[3] >= 2:  # pooled: the separate layers' bits
            fused, fused_argmax = F.conv2d_relu_max_pool2d(x, w, b, 2, padding=p, stride=st)
            pooled, argmax = F.max_pool2d(y, 2, relu=True)
            np.testing.assert_array_equal(fused, pooled)
            np.testing.assert_array_equal(fused_argmax, argmax)
    assert_close(results[0][0], ref.conv2d(x, w, b, p, st))
    for got, expected in zip(results[0][1:], ref.conv2d_backward(x, w, dy, p, st)):
        assert_close(got, expected)
    for one, two in zip(*results):  # (the same on one thread and two)
        np.testing.assert_array_equal(one, two)


def forward_on_one_thread_and_two(x, w, b, p, st):
    """conv2d's y on one thread, asserted equal to two threads' and close to the reference."""
    ys = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        ys.append(F.conv2d(x, w, b, padding=p, stride=st))
    np.testing.assert_array_equal(ys[0], ys[1])
    assert_close(ys[0], ref.conv2d(x, w, b, p, st))
    return ys[0]


def backward_on_one_thread_and_two(x, w, dy, p, st):
    """conv2d_backward's (dx, dw, db) on one thread, asserted equal to two threads' and close to the reference."""
    results = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        results.append(F.conv2d_backward(x, w, dy, padding=p, stride=st))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
    for got, expected in zip(results[0], ref.conv2d_backward(x, w, dy, p, st)):
        assert_close(got, expected)
    return results[0]


# A kernel covering the whole unpadded image: one output pixel, a dense layer over C*R*S inputs (linear's kernels:
# dot products up to 8 images forward and 4 backward, GEMMs beyond), any stride.
@pytest.mark.parametrize(
    "N, C, H, K, st", [(1, 512, 1, 256, 1), (3, 16, 5, 120, 1), (5, 16, 5, 120, 2), (12, 7, 3, 33, 1)]
)
def test_dense_conv2d_matches_the_reference(isa, threads, N, C, H, K, st):
    x, w, b = rand(N, C, H, H), rand(K, C, H, H, scale=0.1), rand(K)
    assert _core.conv2d_path(x.shape, w.shape, 0, 0, True, True, stride=st) == "dense"
    forward_on_one_thread_and_two(x, w, b, 0, st)
    dy = rand(N, K, 1, 1)
    _, dw, db = backward_on_one_thread_and_two(x, w, dy, 0, st)
    _, dw_alone, db_alone = F.conv2d_backward(x, w, dy, stride=st, input_grad=False)  # (no dx: the same dw, db)
    np.testing.assert_array_equal(dw_alone, dw)
    np.testing.assert_array_equal(db_alone, db)


# A strided 1x1 layer's forward with more taps than the direct path's: the pointwise product on the pixels the stride
# picks (backward: the panels), pooled or not; and a first layer's patches (a kernel as large as its stride) on rows
# too short for the direct forward's vectors, over C*R*S channels. (64 pixels an image: whole panels on every ISA; and
# 7 x 7 at stride 2, rows of 7 picked with the constant stride's shuffles and a tail, the last panel partial.)
@pytest.mark.parametrize(
    "N, C, H, K, R, st",
    [(40, 64, 16, 128, 1, 2), (24, 40, 13, 48, 1, 2), (9, 48, 23, 40, 1, 3), (8, 3, 32, 96, 4, 4)],
)
def test_strided_pointwise_forward_matches_the_reference(isa, threads, N, C, H, K, R, st):
    x, w, b = rand(N, C, H, H), rand(K, C, R, R, scale=0.2), rand(K)
    assert _core.conv2d_path(x.shape, w.shape, 0, 0, stride=st) == "pointwise"
    assert _core.conv2d_path(x.shape, w.shape, 0, 0, True, True, stride=st) != "pointwise"
    y = forward_on_one_thread_and_two(x, w, b, 0, st)
    pooled, argmax = F.conv2d_relu_max_pool2d(x, w, b, 2, stride=st)
    expected, expected_argmax = F.max_pool2d(y, 2, relu=True)
    np.testing.assert_array_equal(pooled, expected)
    np.testing.assert_array_equal(argmax, expected_argmax)


def assert_pooled_backward_is_the_separate_layers(x, w, b, p):
    """conv2d_relu_max_pool2d_backward (stride 1, 2x2 windows) close to the separate layers' gradients."""
    y = F.conv2d(x, w, b, padding=p)
    pooled, argmax = F.max_pool2d(y, 2, relu=True)
    dp = rand(*pooled.shape)
    expected = F.conv2d_backward(x, w, F.max_pool2d_backward(dp, argmax, y.shape), padding=p)
    got = F.conv2d_relu_max_pool2d_backward(x, w, dp, argmax, 2, padding=p)
    for a, e in zip(got, expected):
        assert_close(a, e, rtol=1e-5, atol=1e-5)


# The panels' dx leaves out the taps in the padding where they are a tenth of the taps or more (forward: 30%), its
# pixels grouped by the taps they read; dW too where a fifth or more are (and A is read in place: 64 channels out).
# 5 x 5 (a last chunk of one image; pooled too), 9 x 9 with 40 channels (their taps straddle the blocks of taps), 5x5
# kernels at padding 2, stride 2.
@pytest.mark.parametrize(
    "N, C, H, K, R, p, st",
    [
        (7, 24, 5, 72, 3, 1, 1),
        (7, 24, 5, 64, 3, 1, 1),
        (4, 40, 9, 40, 3, 1, 1),
        (3, 32, 10, 48, 5, 2, 1),
        (9, 40, 6, 72, 3, 1, 2),
    ],
)
def test_panels_dx_leaves_out_the_taps_in_the_padding(isa, threads, N, C, H, K, R, p, st):
    x, w, b = rand(N, C, H, H), rand(K, C, R, R, scale=0.2), rand(K)
    assert _core.conv2d_path(x.shape, w.shape, p, 0, True, True, stride=st) == "panels"
    Ho = (H + 2 * p - R) // st + 1
    backward_on_one_thread_and_two(x, w, rand(N, K, Ho, Ho), p, st)
    if st == 1:
        assert_pooled_backward_is_the_separate_layers(x, w, b, p)


# Deep layers on tiny images: each chunk's partial dW^T would be large against its pixels (4,096 floats a pixel or
# more), so the panels make dW over the whole batch at once, its panels of taps over the threads, after dx chunk by
# chunk. 1 x 1 outputs; 3 x 3 at padding 1 (also pooled); stride 2; and Winograd's dx beside the panels' dW
# (2 x 2 outputs without padding: at padding 1 the panels take them, Winograd's tiles doing no fewer multiplies).
@pytest.mark.parametrize(
    "N, C, H, K, p, st, path",
    [
        (72, 64, 4, 128, 0, 2, "panels"),  # (3x3 on 3 x 3 unpadded: the dense path)
        (16, 128, 3, 256, 1, 1, "panels"),
        (32, 64, 4, 256, 1, 2, "panels"),
        (32, 128, 4, 128, 0, 1, "winograd"),
        (32, 128, 2, 128, 1, 1, "panels"),
    ],
)
def test_panels_make_dw_over_the_whole_batch_where_chunk_partials_are_large(isa, threads, N, C, H, K, p, st, path):
    x, w, b = rand(N, C, H, H), rand(K, C, 3, 3, scale=0.1), rand(K)
    assert _core.conv2d_path(x.shape, w.shape, p, 0, True, True, stride=st) == path
    Ho = (H + 2 * p - 3) // st + 1
    dy = rand(N, K, Ho, Ho)
    _, dw, db = backward_on_one_thread_and_two(x, w, dy, p, st)
    for n in (1, 2):  # (dw alone: the same)
        cnnfast.set_num_threads(n)
        _, dw_alone, db_alone = F.conv2d_backward(x, w, dy, padding=p, stride=st, input_grad=False)
        np.testing.assert_array_equal(dw_alone, dw)
        np.testing.assert_array_equal(db_alone, db)
    if st == 1 and Ho >= 2:
        assert_pooled_backward_is_the_separate_layers(x, w, b, p)


def test_strided_conv2d_takes_the_panels_or_direct_and_is_the_same_on_any_thread_count(isa, threads):
    assert _core.conv2d_path((8, 16, 8, 8), (32, 16, 3, 3), 1, stride=2) == "panels"  # (Winograd: 32 -> 64 and more)
    assert _core.conv2d_path((8, 16, 16, 16), (32, 16, 3, 3), 1, 0, True, True, stride=2) == "panels"
    # output rows of two vectors and 16 pixels or more (40 pixels: on every ISA): the direct forward
    assert _core.conv2d_path((2, 16, 80, 80), (32, 16, 3, 3), 1, stride=2) == "direct"
    assert _core.conv2d_path((8, 16, 16, 16), (32, 16, 3, 3), 1, stride=1) == "winograd"
    assert _core.conv2d_path((8, 3, 16, 16), (32, 3, 3, 3), 1, stride=2) == "direct"
    assert _core.conv2d_path((8, 1, 28, 28), (32, 1, 3, 3), 0, 2, stride=2) == "direct"  # (conv3x3_pool2: stride 1)
    for N in (1, 9):  # one chunk, and several
        x, w, b = rand(N, 16, 16, 16), rand(32, 16, 3, 3, scale=0.2), rand(32)
        results = []
        for n in (1, 2):
            cnnfast.set_num_threads(n)
            y = F.conv2d(x, w, b, padding=1, stride=2)
            results.append([y, *F.conv2d_backward(x, w, y, padding=1, stride=2)])
        for a, b_ in zip(*results):
            np.testing.assert_array_equal(a, b_)


def test_strided_conv2d_bad_stride_is_named():
    x, w, b = rand(1, 1, 5, 5), rand(1, 1, 3, 3), rand(1)
    for stride in (0, -1):
        with pytest.raises(ValueError, match="stride must be between 1 and"):
            F.conv2d(x, w, b, stride=stride)
        with pytest.raises(ValueError, match="stride must be between 1 and"):
            F.conv2d_backward(x, w, rand(1, 1, 3, 3), stride=stride)
    with pytest.raises(ValueError, match="dy must have the shape of conv2d's output \\(1, 1, 2, 2\\)"):
        F.conv2d_backward(x, w, rand(1, 1, 3, 3), stride=2)


# ------------------------------------------------------------------ relu


def test_relu_forward_backward():
    x = rand(3, 4, 5)
    dy = rand(3, 4, 5)
    assert_close(F.relu(x), ref.relu(x), rtol=0, atol=0)
    assert_close(F.relu_backward(x, dy), ref.relu_backward(x, dy), rtol=0, atol=0)
    x = np.array([0.0, -0.0, 1.5, -2.0], np.float32)
    assert F.relu_backward(x, np.ones(4, np.float32)).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_relu_finite_differences():
    x = rand(40)
    x[np.abs(x) < 0.05] = 0.5  # keep away from the kink
    probe = rand(40)
    numeric = numeric_grad(
        lambda x: float((F.relu(x).astype(np.float64) * probe).sum()), [x], 0, np.arange(40), eps=1e-3
    )
    np.testing.assert_allclose(F.relu_backward(x, probe), numeric, rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------ max_pool2d


@pytest.mark.parametrize(
    "shape,k",
    [
        ((2, 3, 4, 4), 2),
        ((1, 2, 7, 5), 2),
        ((2, 1, 9, 9), 3),
        ((3, 2, 26, 26), 2),
        ((1, 1, 3, 3), 1),
        ((1, 2, 5, 71), 2),
    ],
)  # 35 windows a row: 16 + 16 + a tail of 3
def test_max_pool2d_matches_reference(isa, shape, k):
    x = rand(*shape)
    y, argmax = F.max_pool2d(x, k)
    ry, rargmax = ref.max_pool2d(x, k)
    assert argmax.dtype == np.int32
    assert_close(y, ry, rtol=0, atol=0)
    np.testing.assert_array_equal(argmax, rargmax)
    dy = rand(*y.shape)
    assert_close(
        F.max_pool2d_backward(dy, argmax, x.shape), ref.max_pool2d_backward(dy, rargmax, x.shape), rtol=0, atol=0
    )


def test_max_pool2d_finite_differences():
    # distinct values 0.1 apart, so a step of 1e-3 never changes a window's winner
    x = (rng.permutation(2 * 2 * 6 * 6) * 0.1).reshape(2, 2, 6, 6).astype(np.float32)
    y, argmax = F.max_pool2d(x, 2)
    probe = rand(*y.shape)
    numeric = numeric_grad(
        lambda x: float((F.max_pool2d(x, 2)[0].astype(np.float64) * probe).sum()), [x], 0, np.arange(x.size), eps=1e-3
    )
    np.testing.assert_allclose(F.max_pool2d_backward(probe, argmax, x.shape).ravel(), numeric, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("width", [13, 41])  # 6 or 20 windows a row: vector steps and tails
def test_max_pool2d_nan_wins_its_window_on_every_path(isa, width):
    x = rand(2, 3, 8, width)
    x[rng.random(x.shape) < 0.1] = np.nan
    y, argmax = F.max_pool2d(x, 2)
    ry, rargmax = ref.max_pool2d(x, 2)  # numpy's max/argmax: NaN wins, the first NaN's index
    np.testing.assert_array_equal(y, ry.astype(np.float32))
    np.testing.assert_array_equal(argmax, rargmax)
    assert np.isnan(y).any()


@pytest.mark.parametrize("shape,k", [((2, 3, 8, 13), 2), ((2, 2, 9, 9), 3), ((4, 32, 26, 26), 2), ((1, 2, 4, 45), 2)])
def test_max_pool2d_fused_relu_equals_relu_then_pool(isa, shape, k):
    x = rand(*shape)
    x[0, 0] = -np.abs(x[0, 0])  # a plane where every window is off
    x[-1, -1, :2, :2] = np.nan  # and a NaN window
    dy = None
    y_fused, argmax_fused = F.max_pool2d(x, k, relu=True)
    relu_x = F.relu(x)
    y, argmax = F.max_pool2d(relu_x, k)
    np.testing.assert_array_equal(y_fused, y)
    assert (argmax_fused[0, 0] == -1).all()
    dy = rand(*y.shape)
    dx_fused = F.max_pool2d_backward(dy, argmax_fused, x.shape)
    dx = F.relu_backward(x, F.max_pool2d_backward(dy, argmax, x.shape))
    np.testing.assert_array_equal(dx_fused, dx)


def test_max_pool2d_ties_pick_first_and_nan_propagates():
    x = np.ones((1, 1, 2, 2), np.float32)
    y, argmax = F.max_pool2d(x, 2)
    assert argmax.ravel().tolist() == [0]
    x[0, 0, 1, 0] = np.nan
    y, argmax = F.max_pool2d(x, 2)
    assert np.isnan(y).all() and argmax.ravel().tolist() == [2]


# ------------------------------------------------------------------ linear


@pytest.mark.parametrize(
    "N,I,O",
    [(1, 1, 1), (3, 5, 2), (128, 1600, 10), (6, 37, 16), (7, 33, 65), (300, 40, 20), (4, 150, 70), (1, 1030, 40)],
)
def test_linear_matches_reference(isa, N, I, O):
    x, w, b, dy = rand(N, I), rand(O, I, scale=0.1), rand(O), rand(N, O)
    assert_close(F.linear(x, w, b), ref.linear(x, w, b))
    for got, expected in zip(F.linear_backward(x, w, dy), ref.linear_backward(x, w, dy)):
        assert_close(got, expected)


@pytest.mark.parametrize("N", [1, 3, 4, 5, 9])
def test_linear_is_the_same_on_one_thread_and_two(isa, threads, N):
    """A few rows (up to 8 forward, 4 backward) go by dot products, w's outputs or columns over the threads."""
    x, w, b, dy = rand(N, 1000), rand(300, 1000, scale=0.05), rand(300), rand(N, 300)
    results = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        results.append((F.linear(x, w, b), *F.linear_backward(x, w, dy)))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
    assert_close(results[0][0], ref.linear(x, w, b))
    for got, expected in zip(results[0][1:], ref.linear_backward(x, w, dy)):
        assert_close(got, expected)


def test_linear_finite_differences(isa):
    x, w, b = rand(4, 6), rand(3, 6), rand(3)
    probe = rand(4, 3)
    grads = F.linear_backward(x, w, probe)
    for i, grad in enumerate(grads):
        numeric = numeric_grad(
            lambda x, w, b: float((F.linear(x, w, b).astype(np.float64) * probe).sum()),
            [x, w, b],
            i,
            np.arange(grad.size),
            eps=1e-2,
        )
        np.testing.assert_allclose(grad.ravel(), numeric, rtol=1e-2, atol=1e-2)


def test_linear_empty_batch():
    y = F.linear(np.zeros((0, 4), np.float32), rand(3, 4), rand(3))
    assert y.shape == (0, 3)
    dx, dw, db = F.linear_backward(np.zeros((0, 4), np.float32), rand(3, 4), np.zeros((0, 3), np.float32))
    assert dx.shape == (0, 4) and not dw.any() and not db.any()


@pytest.mark.parametrize("N", [2, 40])  # (a few rows: the dot products' path; more: the GEMM's)
def test_linear_without_outputs(isa, N):
    y = F.linear(rand(N, 300), np.zeros((0, 300), np.float32), np.zeros(0, np.float32))
    assert y.shape == (N, 0)
    dx, dw, db = F.linear_backward(rand(N, 300), np.zeros((0, 300), np.float32), np.zeros((N, 0), np.float32))
    assert dx.shape == (N, 300) and not dx.any() and dw.shape == (0, 300) and db.shape == (0,)


# ------------------------------------------------------------------ softmax cross-entropy


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_softmax_cross_entropy_matches_reference(label_dtype):
    logits = rand(9, 10, scale=3.0)
    labels = rng.integers(0, 10, 9).astype(label_dtype)
    loss, dlogits = F.softmax_cross_entropy(logits, labels)
    rloss, rd = ref.softmax_cross_entropy(logits, labels)
    assert abs(loss - rloss) < 1e-6
    assert_close(dlogits, rd, rtol=1e-5, atol=1e-6)


def test_softmax_cross_entropy_finite_differences():
    logits = rand(4, 5)
    labels = np.array([0, 4, 2, 2])
    _, dlogits = F.softmax_cross_entropy(logits, labels)
    numeric = numeric_grad(
        lambda z: F.softmax_cross_entropy(z, labels)[0], [logits], 0, np.arange(logits.size), eps=1e-2
    )
    np.testing.assert_allclose(dlogits.ravel(), numeric, rtol=1e-2, atol=1e-4)


def test_softmax_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [3e38, 3e38, -3e38]], np.float32)
    loss, dlogits = F.softmax_cross_entropy(logits, np.array([0, 1]))
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert abs(loss - np.log(2) / 2) < 1e-6
    loss, dlogits = F.softmax_cross_entropy(np.array([[np.nan, 1.0]], np.float32), np.array([1]))
    assert np.isnan(loss)


# ------------------------------------------------------------------ dropout


def test_dropout_mask_rate_scale_and_reproducibility():
    x = rand(100, 100)
    y, mask = F.dropout(x, 0.5, seed=7)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert 0.47 < mask.mean() < 0.53
    assert_close(y, ref.dropout(x, mask, 0.5), rtol=0, atol=0)
    y2, mask2 = F.dropout(x, 0.5, seed=7)
    np.testing.assert_array_equal(mask, mask2)
    _, mask3 = F.dropout(x, 0.5, seed=8)
    assert (mask != mask3).any()
    dy = rand(100, 100)
    assert_close(F.dropout_backward(dy, mask, 0.5), ref.dropout(dy, mask, 0.5), rtol=0, atol=0)
    assert F.dropout(x, 0.0, seed=1)[1].all()
    assert not F.dropout(x, 1.0, seed=1)[0].any()


def test_dropout_finite_differences():
    x, probe = rand(30), rand(30)
    _, mask = F.dropout(x, 0.3, seed=3)
    numeric = numeric_grad(
        lambda x: float((F.dropout(x, 0.3, seed=3)[0].astype(np.float64) * probe).sum()),
        [x],
        0,
        np.arange(30),
        eps=1e-2,
    )
    np.testing.assert_allclose(F.dropout_backward(probe, mask, 0.3), numeric, rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------ optimizers


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2)])
def test_sgd_step_matches_update_rule(momentum, weight_decay):
    param, velocity = rand(50), np.zeros(50, np.float32)
    p64, v64 = param.astype(np.float64), velocity.astype(np.float64)
    for _ in range(5):
        grad = rand(50)
        F.sgd_step(param, grad, velocity, lr=0.1, momentum=momentum, weight_decay=weight_decay)
        p64, v64 = ref.sgd_step(p64, grad.astype(np.float64), v64, 0.1, momentum, weight_decay)
    assert_close(param, p64, rtol=1e-5, atol=1e-6)
    assert_close(velocity, v64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_step_matches_update_rule(weight_decay):
    param, m, v = rand(7, 9), np.zeros((7, 9), np.float32), np.zeros((7, 9), np.float32)
    p64, m64, v64 = param.astype(np.float64), m.astype(np.float64), v.astype(np.float64)
    for step in range(1, 8):
        grad = rand(7, 9)
        F.adam_step(param, grad, m, v, step, lr=1e-2, weight_decay=weight_decay)
        p64, m64, v64 = ref.adam_step(p64, grad.astype(np.float64), m64, v64, step, lr=1e-2, weight_decay=weight_decay)
    assert_close(param, p64, rtol=1e-5, atol=1e-6)
    assert_close(m, m64, rtol=1e-5, atol=1e-6)
    assert_close(v, v64, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("O", [3, 10, 16, 65, 200])
def test_linear_narrow_rows_alone_equal_the_batch_bit_for_bit(isa, O):
    """A row computed alone (a single image) or among fewer than 4 takes its outputs several at a
    time, blocks of 4 rows one output at a time: the same sums in the same order either way. (Wider
    layers take these dot products up to 8 rows, in blocks of 64 outputs: 65 and 200 outputs.)"""
    x, w, b = rand(7, 1603), rand(O, 1603, scale=0.1), rand(O)
    batch = F.linear(x, w, b)
    for n in range(7):
        np.testing.assert_array_equal(F.linear(x[n : n + 1], w, b), batch[n : n + 1])
    np.testing.assert_array_equal(F.linear(x[:6], w, b), batch[:6])
    assert_close(batch, ref.linear(x, w, b))


# ------------------------------------------------------------------ threads and ISAs


@pytest.mark.parametrize(
    "x_shape, w_shape, padding, path",
    [
        ((1, 32, 13, 13), (64, 32, 3, 3), 0, "panels"),  # one image: its panels over the threads, dW beside dx
        ((1, 64, 13, 13), (64, 64, 3, 3), 0, "panels"),  # the same from 4M multiply-adds (AVX-512's threshold)
        ((1, 16, 16, 16), (32, 16, 3, 3), 1, "winograd"),  # one image: its 16 products over the threads
        ((2, 32, 16, 16), (64, 32, 3, 3), 1, "winograd"),  # F(4x4), one chunk: its 36 products over the threads
        ((8, 96, 8, 8), (112, 96, 3, 3), 1, "winograd"),  # F(4x4), 1.5 MB of transformed weights
        # one image, 64 channels: dW alone (the panels' on AVX-512, Winograd's elsewhere) over the threads
        ((1, 64, 16, 16), (64, 64, 3, 3), 1, "winograd"),
        ((1, 64, 16, 16), (128, 64, 1, 1), 0, "few_pixels"),  # 1x1: dx one product, its panels over the threads
        ((4, 64, 16, 16), (40, 64, 1, 1), 0, "pointwise"),  # 1x1: panels of pixels over the threads
        # F(4x4), a tile an image, 2.7 MB of transformed weights: its products over the threads
        ((32, 128, 4, 4), (144, 128, 3, 3), 1, "winograd"),
        # F(2x2) (6 x 6 outputs: 4 x 4 tiles would cover 1.8x), transformed weights over 1 MB, 4 chunks of
        # tiles: each chunk in turn over the threads
        ((16, 128, 6, 6), (144, 128, 3, 3), 1, "winograd"),
        # F(2x2) in chunks of 16 rows of 3 tiles, then 2 (AVX-512: 48 tiles, a panel of 32 and a vector of
        # 16, then 6): a last panel of at most a vector goes through the products' narrower tile
        ((6, 160, 6, 6), (160, 160, 3, 3), 1, "winograd"),
        # F(4x4) whose transformed weights outgrow half of L2: 2-3 chunks in turn, each over both threads (one region,
        # the output transforms without a barrier before the next chunk's input transforms)
        ((8, 128, 12, 12), (64, 128, 3, 3), 1, "winograd"),
        ((1, 64, 4, 4), (48, 64, 3, 3), 1, "few_pixels"),  # output channels (dx: taps) over the threads
        ((1, 20, 9, 9), (40, 20, 3, 3), 0, "few_pixels"),  # 49 pixels, tiles of taps cut at the end
        # few taps: the product made channel-major, one image's pixel panels over the threads, or images
        # (rows under 16 pixels: wider ones go to the direct forward)
        ((1, 8, 100, 14), (64, 8, 3, 3), 0, "panels"),
        ((1, 6, 160, 14), (16, 6, 5, 5), 2, "panels"),  # 16 channels: one tile, channel-major too
        ((3, 8, 40, 14), (64, 8, 3, 3), 1, "panels"),
        # a first layer: the direct forward, one image's rows over the threads; the panels' backward
        ((1, 3, 48, 48), (64, 3, 5, 5), 2, "direct"),
        ((1, 3, 48, 48), (16, 3, 7, 7), 3, "direct"),
        ((3, 3, 40, 40), (64, 3, 5, 5), 2, "direct"),
        # a first layer's dw with pixels in the lanes: one image's blocks over the threads, or 19 images
        # in 16 chunks
        ((1, 3, 128, 128), (32, 3, 3, 3), 1, "direct"),
        ((19, 1, 20, 20), (6, 1, 5, 5), 0, "direct"),
        # one image, 7x7 at padding 3 on 9 x 9: the panels' forward without the taps in the padding, its pixel panels
        # over the threads (784 taps: w's depth blocks end inside a kernel row's run); 72 out: on AVX-512 dW by rows
        # of output channels, alone over the threads or beside dx
        ((1, 16, 9, 9), (72, 16, 7, 7), 3, "panels"),
    ],
)
def test_one_image_or_a_few_use_the_threads_and_give_the_same_bits(isa, threads, x_shape, w_shape, padding, path):
    assert _core.conv2d_path(x_shape, w_shape, padding) == path
    x, w, b = rand(*x_shape), rand(*w_shape, scale=0.2), rand(w_shape[0])
    results = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        y = F.conv2d(x, w, b, padding=padding)
        both = F.conv2d_backward(x, w, y, padding=padding)
        dw_alone = F.conv2d_backward(x, w, y, padding=padding, input_grad=False)
        np.testing.assert_array_equal(dw_alone[1], both[1])  # (dW the same with and without dx)
        results.append([y, *both, *dw_alone[1:]])
    assert_close(results[0][0], ref.conv2d(x, w, b, padding))
    rdx, rdw, rdb = ref.conv2d_backward(x, w, results[0][0], padding)
    assert_close(results[0][1], rdx)
    assert_close(results[0][2], rdw)
    assert_close(results[0][3], rdb)
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)


# 1x1 layers whose backward takes the pointwise path on AVX-512 (dw by inner products along the
# pixels, in spans of about 1 MB): 16 images in one span, 16 in spans of 14 and 2, and images of 2.1 MB,
# each in three spans of pixels (2,032, 2,032 and 32); K not a multiple of the tile's 4 channels, C in
# blocks of 5 and 6
@pytest.mark.parametrize("shape", [(16, 40, 8, 8, 30), (16, 40, 16, 16, 30), (2, 48, 64, 64, 81)])
def test_a_1x1_layers_backward_matches_the_reference_and_is_the_same_on_any_thread_count(isa, threads, shape):
    N, C, H, W, K = shape
    path = _core.conv2d_path((N, C, H, W), (K, C, 1, 1), 0, backward=True)
    assert path == ("pointwise" if isa == "avx512" else "panels")
    x, w, dy = rand(N, C, H, W), rand(K, C, 1, 1, scale=0.2), rand(N, K, H, W)
    results = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        both = F.conv2d_backward(x, w, dy)
        dw_alone = F.conv2d_backward(x, w, dy, input_grad=False)
        np.testing.assert_array_equal(dw_alone[1], both[1])
        np.testing.assert_array_equal(dw_alone[2], both[2])
        results.append(both)
    for got, expected in zip(results[0], ref.conv2d_backward(x, w, dy, 0)):
        assert_close(got, expected)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# (its 33 output channels over the threads, 16 and 17 on two; windows 13 x 13, 4 x 20 with padding,
# 15 x 4; 1 x 1, too little work for a second thread)
@pytest.mark.parametrize("H, W, padding", [(28, 28, 0), (9, 41, 1), (30, 9, 1), (4, 4, 0)])
def test_conv1s_fused_block_at_one_image_gives_the_same_bits_on_any_number_of_threads(isa, threads, H, W, padding):
    x, w, b = rand(1, 1, H, W), rand(33, 1, 3, 3, scale=0.3), rand(33)
    assert _core.conv2d_path(x.shape, w.shape, padding, 2) == "conv3x3_pool2"
    results = []
    for n in (1, 2, 3):
        cnnfast.set_num_threads(n)
        results.append(F.conv2d_relu_max_pool2d(x, w, b, 2, padding=padding))
        np.testing.assert_array_equal(F.conv2d_relu_max_pool2d(x, w, b, 2, padding, False), results[-1][0])
    ry, rargmax = F.max_pool2d(F.conv2d(x, w, b, padding=padding), 2, relu=True)
    for y, argmax in results:
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(argmax, rargmax)


def test_a_strided_first_layer_on_one_image_gives_the_same_bits_on_two_threads(isa, threads):
    # (the direct forward, 9.6M multiply-adds: one image's rows over the threads, each with its own copy)
    x, w, b = rand(1, 3, 64, 64), rand(64, 3, 7, 7, scale=0.2), rand(64)
    ys = []
    for n in (1, 2):
        cnnfast.set_num_threads(n)
        ys.append(F.conv2d(x, w, b, padding=3, stride=2))
    assert_close(ys[0], ref.conv2d(x, w, b, 3, 2))
    np.testing.assert_array_equal(ys[0], ys[1])


def test_results_identical_with_one_and_two_threads(isa, threads):
    x, w, b = rand(16, 8, 12, 12), rand(16, 8, 3, 3), rand(16)
    xl, wl, bl = rand(64, 300), rand(10, 300), rand(10)
    labels = rng.integers(0, 10, 64)

    def run():
        y = F.conv2d(x, w, b, padding=1)
        conv_grads = F.conv2d_backward(x, w, y, padding=1)
        pooled, argmax = F.max_pool2d(F.relu(y), 2)
        z = F.linear(xl, wl, bl)
        loss, dz = F.softmax_cross_entropy(z, labels)
        return [y, *conv_grads, pooled, argmax, z, dz, np.float64(loss), *F.linear_backward(xl, wl, dz)]

    cnnfast.set_num_threads(1)
    assert cnnfast.get_num_threads() == 1
    one = run()
    cnnfast.set_num_threads(2)
    assert cnnfast.get_num_threads() == (2 if cnnfast.build_info()["openmp"] else 1)
    two = run()
    for a, b_ in zip(one, two):
        assert a.tobytes() == b_.tobytes()


def test_build_info_reports_what_a_bug_report_needs():
    info = cnnfast.build_info()
    for key in ("isa", "isa_compiled", "isa_supported", "openmp", "num_threads", "compiler", "cxx_flags"):
        assert key in info
    assert info["isa"] in info["isa_supported"]
    assert set(info["isa_supported"]) <= set(info["isa_compiled"])
    assert info["isa_compiled"][0] == "baseline"
    assert isinstance(info["openmp"], bool)
    assert info["num_threads"] == cnnfast.get_num_threads()
    assert info["kernels"]["gemm"].startswith(info["isa"] + " ")
    assert info["kernels"]["conv2d"][-1] == "reference"


def test_every_kernel_follows_the_forced_isa(isa):
    """The whole table switches with the instruction set, not only the GEMM micro-kernel."""
    info = cnnfast.build_info()
    assert info["isa"] == isa
    kernels = info["kernels"]
    assert kernels["gemm"].startswith(isa + " ") and tuple(info["gemm_tile"]) == tuple(
        int(v) for v in kernels["gemm"].split()[1].split("x")
    )
    assert kernels["conv2d_direct"] == isa and kernels["dropout"] == isa
    assert kernels["linear"].startswith(isa + " ")
    assert kernels["conv2d"] == [
        "conv3x3_pool2",
        "dense",
        "few_pixels",
        "winograd",
        "pointwise",
        "panels",
        "direct",
        "reference",
    ]
    assert kernels["max_pool2d"].startswith("avx512") == (isa == "avx512")


@pytest.mark.parametrize(
    "x_shape, w_shape, padding, pool, backward, input_grad, paths",
    [
        # conv1 of the default model, fused with ReLU and pool: in registers (no dx), else direct
        ((128, 1, 28, 28), (32, 1, 3, 3), 0, 2, False, False, {None: "conv3x3_pool2"}),
        ((128, 1, 28, 28), (32, 1, 3, 3), 0, 2, True, False, {None: "conv3x3_pool2"}),
        ((128, 1, 28, 28), (32, 1, 3, 3), 0, 2, True, True, {}),
        ((128, 1, 28, 28), (32, 1, 3, 3), 0, 0, False, False, {}),
        # conv2: 288 taps; forward by Winograd F(4x4) on its odd output but on AVX-512 (whose own panels
        # kernel fused with the pool was faster), backward by the panels
        ((128, 32, 13, 13), (64, 32, 3, 3), 0, 2, False, False, {None: "winograd", "avx512": "panels"}),
        ((128, 32, 13, 13), (64, 32, 3, 3), 0, 2, True, True, {}),
        # a first layer (<= 4 input channels): direct forward at any number of taps; its backward by the panels
        ((4, 3, 32, 32), (16, 3, 5, 5), 2, 0, False, False, {None: "direct"}),
        ((4, 3, 32, 32), (16, 3, 5, 5), 2, 0, True, False, {None: "panels"}),
        ((4, 3, 64, 64), (64, 3, 7, 7), 3, 0, False, False, {None: "direct"}),  # (stride 1 here)
        ((4, 5, 14, 14), (16, 5, 5, 5), 2, 0, False, False, {None: "panels"}),  # 5 input channels, rows of 14
        ((4, 5, 32, 32), (16, 5, 5, 5), 2, 0, False, False, {None: "direct"}),  # rows of 32: the direct forward
        ((2, 8, 28, 28), (16, 8, 3, 3), 1, 0, False, False, {None: "direct"}),  # rows of 28: 7/8 of AVX-512's two
        ((4, 64, 32, 32), (16, 64, 1, 1), 0, 0, False, False, {None: "pointwise"}),  # 1x1, 64 channels
        ((4, 3, 32, 32), (16, 3, 3, 3), 1, 0, True, True, {}),  # 27 taps: direct
        # 3x3, 16+ channels in and out, even output, 32+ tiles of 2x2 outputs: Winograd, pooled or not
        ((8, 32, 16, 16), (64, 32, 3, 3), 1, 2, True, True, {None: "winograd"}),
        ((8, 32, 16, 16), (64, 32, 3, 3), 1, 0, False, False, {None: "winograd"}),
        ((2, 96, 12, 12), (96, 96, 3, 3), 1, 0, True, False, {None: "winograd"}),
        # 36 tiles: 56% of two panels of 32 on AVX-512 (the panels' GEMM instead), 75% of three of 16 on AVX2
        ((1, 96, 12, 12), (96, 96, 3, 3), 1, 0, False, False, {None: "winograd", "avx512": "panels"}),
        # 16 output pixels: the weights used as they lie (Winograd's 4 tiles, the panels' packing cost more)
        ((1, 128, 4, 4), (256, 128, 3, 3), 1, 0, False, False, {None: "few_pixels"}),
        ((1, 128, 4, 4), (256, 128, 3, 3), 1, 2, True, True, {None: "few_pixels"}),
        ((2, 64, 8, 8), (128, 64, 3, 3), 1, 0, True, True, {None: "winograd"}),  # 128 pixels: more than it takes
        # 1x1 at batch 1 with 16k pixels: x read as it is, forward; backward: the panels; 36 pixels: the
        # pointwise forward, but on AVX-512 (two panels of 32 pixels hold 1.78x the 36: the panels)
        ((1, 256, 8, 8), (64, 256, 1, 1), 0, 0, False, False, {None: "few_pixels"}),
        ((1, 256, 8, 8), (64, 256, 1, 1), 0, 0, True, True, {}),
        ((1, 256, 6, 6), (64, 256, 1, 1), 0, 0, False, False, {None: "pointwise", "avx512": "panels"}),
        # 9 pixels an image, 64 out: one image wastes a panel (not NEON's 12 pixels), the batch's 72 side by side
        # fill the pointwise product's units (where the panels' product, channel-major, would go image by image)
        ((1, 64, 3, 3), (64, 64, 1, 1), 0, 0, False, False, {None: "panels", "neon": "pointwise"}),
        ((8, 64, 3, 3), (64, 64, 1, 1), 0, 0, False, False, {None: "pointwise"}),
        ((8, 256, 3, 3), (64, 256, 1, 1), 0, 0, False, False, {None: "panels", "neon": "pointwise"}),  # 256 taps
        ((2, 64, 16, 16), (128, 64, 1, 1), 0, 0, False, False, {None: "few_pixels"}),  # 512 pixels
        ((1, 64, 32, 32), (128, 64, 1, 1), 0, 0, False, False, {None: "pointwise"}),  # 1,024: one product
        ((1, 64, 32, 32), (128, 64, 1, 1), 0, 2, False, False, {None: "pointwise"}),  # pooled
        ((4, 512, 14, 14), (128, 512, 1, 1), 0, 0, False, False, {}),  # over 256 channels: the panels
        # a kernel covering the whole unpadded image (one output pixel): a dense layer, but padded
        ((1, 512, 1, 1), (256, 512, 1, 1), 0, 0, False, False, {None: "dense"}),
        ((3, 16, 5, 5), (120, 16, 5, 5), 0, 0, True, True, {None: "dense"}),
        ((3, 16, 5, 5), (120, 16, 5, 5), 1, 0, False, False, {None: "few_pixels"}),  # padded: 27 pixels
        # 1x1 backward: on AVX-512 dw by inner products along the pixels (whole vectors of them, 4+ an image,
        # 64+ in the batch, up to 16,384 weights), elsewhere the panels
        ((32, 64, 16, 16), (128, 64, 1, 1), 0, 0, True, True, {"avx512": "pointwise"}),
        ((32, 64, 16, 16), (128, 64, 1, 1), 0, 0, True, False, {"avx512": "pointwise"}),
        ((1, 64, 16, 16), (128, 64, 1, 1), 0, 0, True, True, {}),  # one image of 16 vectors
        ((32, 64, 7, 7), (128, 64, 1, 1), 0, 0, True, True, {}),  # 49 pixels: not whole vectors
        ((64, 64, 4, 4), (128, 64, 1, 1), 0, 0, True, True, {}),  # one vector an image
        ((32, 16, 16, 16), (64, 16, 1, 1), 0, 0, True, True, {"avx512": "pointwise"}),  # few taps: backward too
        ((32, 128, 8, 8), (256, 128, 1, 1), 0, 0, True, True, {}),  # over 16,384 weights
        ((32, 64, 16, 16), (128, 64, 1, 1), 0, 2, True, True, {}),  # pooled
        ((8, 32, 13, 13), (64, 32, 3, 3), 0, 0, False, False, {None: "winograd", "avx512": "panels"}),  # odd: 11 x 11
        ((8, 32, 13, 13), (64, 32, 3, 3), 0, 0, True, False, {}),
        ((8, 48, 7, 7), (64, 48, 3, 3), 1, 0, False, False, {None: "winograd"}),  # odd, 48 channels in: on every ISA
        ((8, 48, 7, 7), (64, 48, 3, 3), 1, 2, False, False, {None: "winograd"}),  # (pooled alike)
        ((8, 48, 7, 7), (64, 48, 3, 3), 1, 0, True, True, {None: "winograd"}),  # backward: dx by F(4x4)
        ((8, 48, 7, 7), (64, 48, 3, 3), 1, 2, True, True, {None: "winograd"}),
        ((8, 48, 7, 7), (40, 48, 3, 3), 1, 0, True, True, {None: "winograd", "avx512": "panels"}),  # (dx: 40 in)
        # 8 input channels, rows of 16 (two vectors, or one whole vector on AVX-512): the direct forward
        ((8, 8, 16, 16), (64, 8, 3, 3), 1, 0, False, False, {None: "direct"}),
        ((8, 8, 16, 16), (64, 8, 3, 3), 1, 0, True, True, {}),
        # padding 3, rows of 20 (on AVX-512 a vector and a quarter: the panels)
        ((8, 32, 16, 16), (64, 32, 3, 3), 3, 0, False, False, {None: "direct", "avx512": "panels"}),
        ((8, 32, 10, 10), (64, 32, 3, 3), 3, 0, False, False, {}),  # padding 3, rows of 14: the panels
        ((0, 3, 8, 8), (4, 3, 3, 3), 0, 0, False, False, {None: "reference"}),  # no images
        ((2, 0, 8, 8), (4, 0, 3, 3), 0, 0, True, True, {None: "reference"}),  # no input channels
    ],
)
def test_conv2d_takes_the_first_path_of_its_list_that_accepts_the_layer(
    isa, x_shape, w_shape, padding, pool, backward, input_grad, paths
):
    taps = w_shape[1] * w_shape[2] * w_shape[3]
    default = "direct" if 0 < taps <= 32 else "panels" if taps > 32 else "reference"
    want = paths.get(isa, paths.get(None, default))
    assert _core.conv2d_path(x_shape, w_shape, padding, pool, backward, input_grad) == want


def every_kernel_once(seed=7):
    """Every kernel's outputs on one set of arrays: conv2d on its direct, long-patch and padded
    shapes, the fused block on conv1's and conv2's shapes, pooling, linear (narrow and GEMM),
    dropout and a matrix product."""
    r = np.random.default_rng(seed)

    def f32(*shape, scale=1.0):
        return (scale * r.standard_normal(shape)).astype(np.float32)

    out = []
    for x_shape, w_shape, p in [
        ((3, 1, 28, 28), (8, 1, 3, 3), 0),
        ((2, 16, 13, 13), (32, 16, 3, 3), 0),
        ((2, 3, 16, 16), (8, 3, 5, 5), 2),
    ]:
        x, w, b = f32(*x_shape), f32(*w_shape, scale=0.2), f32(w_shape[0])
        y = F.conv2d(x, w, b, padding=p)
        out += [y, *F.conv2d_backward(x, w, f32(*y.shape), padding=p)]
        pooled, argmax = F.conv2d_relu_max_pool2d(x, w, b, 2, padding=p)
        out += [pooled, argmax, *F.conv2d_relu_max_pool2d_backward(x, w, f32(*pooled.shape), argmax, 2, padding=p)]
    x = f32(3, 4, 14, 26)
    out += [*F.max_pool2d(x, 2), *F.max_pool2d(x, 3, relu=True), F.dropout(x, 0.3, seed=5)[0]]
    for n_out in (10, 100):
        xl, wl = f32(37, 300), f32(n_out, 300, scale=0.1)
        yl = F.linear(xl, wl, f32(n_out))
        out += [yl, *F.linear_backward(xl, wl, f32(*yl.shape))]
    out.append(_core.matmul(f32(50, 70), f32(70, 40)))
    return out


def test_instruction_sets_agree_within_float_rounding():
    """The same ISA gives the same bits every time; across ISAs, integers (argmax, dropout's mask)
    are equal and floats agree to 1e-5 of each array's largest magnitude (the ISAs differ in
    fused multiply-adds and in the order of some sums, not in what they compute)."""
    before = cnnfast.build_info()["isa"]
    results = {}
    try:
        for isa in SUPPORTED_ISAS:
            _core.set_isa(isa)
            results[isa] = every_kernel_once()
            again = every_kernel_once()
            assert all(a.tobytes() == b.tobytes() for a, b in zip(results[isa], again)), isa
    finally:
        _core.set_isa(before)
    base = results["baseline"]
    for isa, arrays in results.items():
        for i, (a, b) in enumerate(zip(arrays, base)):
            if a.dtype.kind in "iub":
                assert np.array_equal(a, b), (isa, i)
            else:
                scale = max(1.0, float(np.abs(b).max()))
                assert np.abs(a.astype(np.float64) - b).max() <= 1e-5 * scale, (isa, i)


def test_set_num_threads_without_openmp_warns_once(monkeypatch):
    if cnnfast.build_info()["openmp"]:
        pytest.skip("this build has OpenMP (CI also builds and tests one without it)")
    monkeypatch.setattr(cnnfast, "_warned_no_openmp", False)
    before = cnnfast.get_num_threads()
    with pytest.warns(RuntimeWarning, match="built without OpenMP"):
        cnnfast.set_num_threads(2)
    assert cnnfast.get_num_threads() == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cnnfast.set_num_threads(2)  # (once: no second warning)
        cnnfast.set_num_threads(1)  # (one thread asked for: nothing to say)
    cnnfast.set_num_threads(before)


def test_isa_can_be_forced_lower_and_unknown_is_rejected():
    before = cnnfast.build_info()["isa"]
    try:
        _core.set_isa("baseline")
        assert cnnfast.build_info()["isa"] == "baseline"
        with pytest.raises(ValueError, match="not available"):
            _core.set_isa("sse9")
        assert cnnfast.build_info()["isa"] == "baseline"
    finally:
        _core.set_isa(before)


def test_cnnfast_isa_environment_variable(tmp_path):
    import subprocess
    import sys

    code = "import cnnfast; print(cnnfast.build_info()['isa'])"
    env = {**__import__("os").environ, "CNNFAST_ISA": "baseline"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "baseline"
    env["CNNFAST_ISA"] = "nonsense"
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == cnnfast.build_info()["isa_supported"][-1]
    assert "CNNFAST_ISA=nonsense ignored" in out.stderr


def test_set_num_threads_rejects_zero():
    with pytest.raises(ValueError):
        cnnfast.set_num_threads(0)


# ------------------------------------------------------------------ conv2d + ReLU + max_pool2d

FUSED_SHAPES = [  # N, C, H, W, K, R, S, padding, k
    (3, 1, 28, 28, 32, 3, 3, 0, 2),  # the default model's first layer: the fused direct path
    # the default model's two layers at one image: conv1's channels over the threads, conv2's pixel panels
    (1, 1, 28, 28, 32, 3, 3, 0, 2),
    (1, 32, 13, 13, 64, 3, 3, 0, 2),
    (2, 2, 7, 9, 3, 3, 2, 1, 2),  # padding, odd sizes, a dropped last row/column
    (2, 4, 9, 9, 5, 3, 3, 0, 3),  # 36 taps: the GEMM path; windows skip the last conv row/column
    (3, 32, 13, 13, 64, 3, 3, 0, 2),  # the default model's second layer (100 of 121 pixels read)
    (2, 1, 11, 9, 5, 3, 3, 1, 2),  # one channel, 3x3 (conv1's kernel) with padding, odd sizes
    (2, 1, 9, 38, 3, 3, 3, 2, 2),  # one channel, 3x3: rows of 20 windows (two blocks), padding 2 all round
    (1, 1, 4, 4, 2, 1, 1, 0, 1),
    (4, 16, 16, 16, 32, 3, 3, 1, 2),  # a CIFAR-style block: Winograd, then the pool
    (2, 16, 10, 10, 20, 3, 3, 1, 3),  # Winograd; windows skip the last conv row/column
    # conv2 at 36 tiles: Winograd F(4x4) on its odd output (but on AVX-512), pooled; backward by the panels
    (4, 32, 13, 13, 64, 3, 3, 0, 2),
    (2, 16, 14, 14, 24, 3, 3, 1, 2),  # F(4x4) then the pool, 14 x 14 in 4 x 4 tiles (the last row and column cut)
    (8, 48, 7, 7, 40, 3, 3, 1, 2),  # F(4x4) on every ISA, pooled in its tiles: 7 x 7, the last windows dropped
    (2, 6, 14, 14, 16, 5, 5, 0, 2),  # LeNet's second layer: tap rows (pixel-major) on AVX2 and AVX-512
    (2, 6, 14, 14, 20, 5, 5, 0, 2),  # 20 channels through the panels: the pooling's last vector partly filled
    (2, 40, 8, 8, 24, 1, 1, 0, 2),  # 1x1, 40 channels: the pointwise product (few_pixels off), then the pool
]


def assert_same_sums(x, w, dconv, p, dw, db, rdw, rdb):
    """dw, db equal to rdw, rdb up to float32 rounding of sums taken in another order: within a
    few ulps of the sum of the terms' magnitudes (so heavy cancellation cannot fail it)."""
    _, mag_dw, _ = ref.conv2d_backward(np.abs(x), np.abs(w), np.abs(dconv), p)
    mag_db = np.abs(dconv.astype(np.float64)).sum(axis=(0, 2, 3))
    eps = np.finfo(np.float32).eps
    assert (np.abs(dw.astype(np.float64) - rdw) <= 8 * eps * mag_dw + 1e-30).all()
    assert (np.abs(db.astype(np.float64) - rdb) <= 8 * eps * mag_db + 1e-30).all()


def windows_cover_conv(shape):
    """Whether the pooling windows read every pixel of the convolution's output."""
    N, C, H, W, K, R, S, p, k = shape
    Ho, Wo = H + 2 * p - R + 1, W + 2 * p - S + 1
    return Ho % k == 0 and Wo % k == 0


@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_conv2d_relu_max_pool2d_equals_the_three_kernels(isa, few_pixels, shape):
    N, C, H, W, K, R, S, p, k = shape
    x, w, b = rand(N, C, H, W), rand(K, C, R, S, scale=0.3), rand(K)
    y, argmax = F.conv2d_relu_max_pool2d(x, w, b, k, padding=p)
    conv = F.conv2d(x, w, b, padding=p)
    ry, rargmax = F.max_pool2d(conv, k, relu=True)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(argmax, rargmax)
    assert_close(y, ref.max_pool2d(np.maximum(ref.conv2d(x, w, b, p), 0), k)[0])
    dy = rand(*y.shape)
    dconv = F.max_pool2d_backward(dy, argmax, conv.shape)
    for input_grad in (True, False):
        dx, dw, db = F.conv2d_relu_max_pool2d_backward(x, w, dy, argmax, k, padding=p, input_grad=input_grad)
        rdx, rdw, rdb = F.conv2d_backward(x, w, dconv, padding=p, input_grad=input_grad)
        # (the fused kernels may sum dw and db in another order, e.g. leaving out the pixels no
        # window reads, or window by window: the same terms, other roundings)
        assert_same_sums(x, w, dconv, p, dw, db, rdw, rdb)
        assert (dx is None) == (not input_grad)
        if input_grad:
            np.testing.assert_array_equal(dx, rdx)
    ref_dx, ref_dw, ref_db = ref.conv2d_backward(x, w, dconv.astype(np.float64), p)
    assert_close(dw, ref_dw)
    assert_close(db, ref_db)


@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_conv2d_relu_max_pool2d_without_argmax_gives_the_same_y(isa, shape):
    N, C, H, W, K, R, S, p, k = shape
    x, w, b = rand(N, C, H, W), rand(K, C, R, S, scale=0.3), rand(K)
    x.flat[::5] = np.nan  # NaN windows too
    y, argmax = F.conv2d_relu_max_pool2d(x, w, b, k, padding=p)
    y_only = F.conv2d_relu_max_pool2d(x, w, b, k, padding=p, return_argmax=False)
    assert isinstance(y_only, np.ndarray) and y_only.dtype == np.float32
    np.testing.assert_array_equal(y_only, y)


@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_conv2d_relu_max_pool2d_ties_nan_and_inf_as_the_separate_kernels(isa, few_pixels, shape):
    # Ties (an all-zero image: every output is its bias), NaN and infinities must pick the same
    # maximum and argmax as max_pool2d's rule (first maximum wins, a NaN wins).
    N, C, H, W, K, R, S, p, k = shape
    w, b = rand(K, C, R, S, scale=0.3), rand(K)
    b[::2] = 0.0  # ties at zero too: ReLU's edge
    for x in (np.zeros((N, C, H, W), np.float32), rand(N, C, H, W)):
        x = x.copy()
        x.flat[::7] = np.nan
        x.flat[3::11] = np.inf
        x.flat[5::13] = -np.inf
        y, argmax = F.conv2d_relu_max_pool2d(x, w, b, k, padding=p)
        ry, rargmax = F.max_pool2d(F.conv2d(x, w, b, padding=p), k, relu=True)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(argmax, rargmax)
    y, argmax = F.conv2d_relu_max_pool2d(np.zeros((N, C, H, W), np.float32), w, b, k, padding=p)
    assert ((argmax == -1) == (y == 0)).all()


@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_conv2d_relu_max_pool2d_ties_and_zeros_without_nan_as_the_separate_kernels(isa, shape):
    # Without a NaN anywhere (the fused kernels then pick a window's maximum and the first of its
    # candidates equal to it): ties everywhere (a zero image: every output its channel's bias;
    # integer images: equal sums), -0.0 and +0.0 biases (maxima not > 0: y = +0, argmax -1) and
    # huge values. (Infinities make NaN in the sums: the test above.)
    N, C, H, W, K, R, S, p, k = shape
    w0, b = rand(K, C, R, S, scale=0.3), rand(K)
    b[::3], b[1::3] = -0.0, 0.0
    huge = rand(N, C, H, W) * np.float32(1e30)
    small_integers = np.round(rand(N, C, H, W)), np.round(rand(K, C, R, S))  # (exact sums, many equal)
    for x, w in ((np.zeros((N, C, H, W), np.float32), w0), (huge, w0), small_integers):
        y, argmax = F.conv2d_relu_max_pool2d(x, w, b, k, padding=p)
        ry, rargmax = F.max_pool2d(F.conv2d(x, w, b, padding=p), k, relu=True)
        assert not np.isnan(ry).any()
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(argmax, rargmax)
        assert not np.signbit(y).any()
        # (inference, no argmax made: the same y, zeros +0 too)
        y_only = F.conv2d_relu_max_pool2d(x, w, b, k, padding=p, return_argmax=False)
        np.testing.assert_array_equal(y_only, ry)
        assert not np.signbit(y_only).any()


@pytest.mark.parametrize("shape", [s for s in FUSED_SHAPES if s[1] == 1 and s[5] == 3])
def test_conv2d_relu_max_pool2d_backward_with_infinities_in_x_as_the_separate_kernels(isa, shape):
    # The separate kernels multiply each pixel a tap reads by its d(conv), 0 where no window's
    # argmax is: an infinity or NaN in x makes NaN (0 * inf) or an infinity in the taps that read
    # it, and only there. The one-channel 3x3 kernel reads x through planes that go on past the
    # last window with x's last rows: those lanes must not reach dw. (Every conv output pooled:
    # the same products, so the same NaN and infinities.)
    N, C, H, W, K, R, S, p, k = shape
    H, W = H - (H + 2 * p - R + 1) % 2, W - (W + 2 * p - S + 1) % 2  # (even conv outputs)
    x, w, b = rand(N, C, H, W), rand(K, C, R, S, scale=0.3), rand(K)
    held = min(H - 1, (H + 2 * p - R + 1) // 2 * 2 - p)  # (the row of x the planes hold past the last window)
    x[-1, 0, -1, 1], x[-1, 0, -2, -1], x[0, 0, held, 1] = np.inf, -np.inf, np.nan
    y, argmax = F.conv2d_relu_max_pool2d(x, w, b, k, padding=p)
    dy = rand(*y.shape)
    dconv = F.max_pool2d_backward(dy, argmax, F.conv2d(x, w, b, padding=p).shape)
    _, rdw, rdb = F.conv2d_backward(x, w, dconv, padding=p, input_grad=False)
    _, dw, db = F.conv2d_relu_max_pool2d_backward(x, w, dy, argmax, k, padding=p, input_grad=False)
    assert np.isnan(rdw).any()
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(rdw))
    np.testing.assert_array_equal(np.where(np.isinf(rdw), rdw, 0), np.where(np.isinf(dw), dw, 0))
    finite = np.isfinite(rdw)
    assert_close(dw[finite], rdw[finite], rtol=1e-5, atol=1e-5)
    assert_close(db, rdb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", FUSED_SHAPES)
def test_conv2d_relu_max_pool2d_backward_with_a_stray_argmax(isa, few_pixels, shape):
    # An argmax the forward pass never makes (the first window naming the plane's last pixel:
    # outside every window, or in another one) must still route its gradient there; the fused
    # kernels' window-by-window and skipped-pixel paths must notice and take every pixel.
    N, C, H, W, K, R, S, p, k = shape
    x, w, b = rand(N, C, H, W), rand(K, C, R, S, scale=0.3), rand(K)
    y, argmax = F.conv2d_relu_max_pool2d(x, w, b, k, padding=p)
    conv_shape = F.conv2d(x, w, b, padding=p).shape
    argmax = argmax.copy()
    argmax[-1, -1, 0, 0] = conv_shape[2] * conv_shape[3] - 1
    dy = rand(*y.shape)
    dconv = F.max_pool2d_backward(dy, argmax, conv_shape)
    assert dconv[-1, -1, -1, -1] != 0.0
    rdx, rdw, rdb = F.conv2d_backward(x, w, dconv, padding=p)
    for input_grad in (True, False):
        dx, dw, db = F.conv2d_relu_max_pool2d_backward(x, w, dy, argmax, k, padding=p, input_grad=input_grad)
        assert_same_sums(x, w, dconv, p, dw, db, rdw, rdb)
        if input_grad:
            np.testing.assert_array_equal(dx, rdx)
    ref_dx, ref_dw, ref_db = ref.conv2d_backward(x, w, dconv.astype(np.float64), p)
    assert_close(dw, ref_dw)
    assert_close(rdx, ref_dx)


def test_conv2d_relu_max_pool2d_bad_inputs_name_the_argument():
    x, w, b = rand(2, 1, 8, 8), rand(4, 1, 3, 3), rand(4)
    with pytest.raises(ValueError, match="k must be at least 1"):
        F.conv2d_relu_max_pool2d(x, w, b, 0)
    with pytest.raises(ValueError, match="window k=7 is larger"):
        F.conv2d_relu_max_pool2d(x, w, b, 7)
    y, argmax = F.conv2d_relu_max_pool2d(x, w, b, 2)
    with pytest.raises(ValueError, match="dy must have the shape of the pooled output"):
        F.conv2d_relu_max_pool2d_backward(x, w, y[:, :3].copy(), argmax, 2)
    with pytest.raises(ValueError, match="argmax must have the shape of dy"):
        F.conv2d_relu_max_pool2d_backward(x, w, y, argmax[:1].copy(), 2)
    bad = argmax.copy()
    bad[0, 0, 0, 0] = 36  # the convolution's plane is 6 x 6
    with pytest.raises(ValueError, match="argmax holds 36, outside the plane of 36 pixels"):
        F.conv2d_relu_max_pool2d_backward(x, w, y, bad, 2)
    with pytest.raises(TypeError, match="argmax must have dtype int32"):
        F.conv2d_relu_max_pool2d_backward(x, w, y, argmax.astype(np.int64), 2)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 16, 17), (1, 2, 7, 37)])
def test_max_pool2d_backward_routes_hand_made_argmax_anywhere_in_the_plane(isa, shape):
    # argmax need not come from max_pool2d: an index outside its window, or two windows sharing
    # one index, is routed (and summed) as documented, on the dense AVX-512 path's fallback too
    N, C, H, W = shape
    Ho, Wo = H // 2, W // 2
    argmax = rng.integers(-1, H * W, size=(N, C, Ho, Wo)).astype(np.int32)
    argmax[0, 0, 0, :2] = 5  # a shared index
    dy = rand(N, C, Ho, Wo)
    assert_close(
        F.max_pool2d_backward(dy, argmax, shape), ref.max_pool2d_backward(dy, argmax, shape), rtol=1e-6, atol=1e-6
    )  # (the shared index is a float32 sum)
    _, window_argmax = F.max_pool2d(rand(*shape), 2, relu=True)  # and the dense path itself
    np.testing.assert_array_equal(
        F.max_pool2d_backward(dy, window_argmax, shape),
        ref.max_pool2d_backward(dy, window_argmax, shape).astype(np.float32),
    )
