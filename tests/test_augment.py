"""Data augmentation's kernels (cnnfast.functional.augment, augment_params, warp_bilinear) against
the NumPy reference of tests/reference.py, and cnnfast.augment.Augment."""

import numpy as np
import pytest

import cnnfast
import cnnfast.functional as F
import reference as ref
from cnnfast.augment import Augment

MNIST_LIKE = dict(rotation=12.0, scale=(0.85, 1.15), shear=8.0, translate=0.1, elastic_alpha=34.0, elastic_sigma=4.0)


def images(n=6, c=1, h=28, w=28, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


# ------------------------------------------------------------------ identity


def test_identity_parameters_return_the_input_bit_for_bit(isa):
    assert cnnfast.build_info()["kernels"]["augment"].startswith(isa + " ")  # the forced ISA's rows
    x = images(5, 3, 13, 17)
    x[0, 0, 0, :4] = [-0.0, np.inf, -np.inf, np.nan]  # even these, and their neighbours
    y = F.augment(x, seed=7, step=3)
    assert y.tobytes() == x.tobytes() and y is not x
    identity = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (5, 1, 1))
    assert F.warp_bilinear(x, identity).tobytes() == x.tobytes()
    assert F.warp_bilinear(x, identity, np.zeros((5, 2, 13, 17), np.float32)).tobytes() == x.tobytes()
    assert Augment(rotation=0, scale=(1, 1), shear=0, translate=0, elastic_alpha=0)(x, 11).tobytes() == x.tobytes()


def test_a_whole_pixel_shift_moves_pixels_exactly_and_fills_the_edge(isa):
    x = images(2, 2, 9, 11)
    shift = np.tile(np.array([[1, 0, -2], [0, 1, 1]], np.float32), (2, 1, 1))  # reads (j - 2, i + 1)
    y = F.warp_bilinear(x, shift, fill=0.25)
    assert np.array_equal(y[:, :, :-1, 2:], x[:, :, 1:, :-2])
    assert (y[:, :, -1, :] == 0.25).all() and (y[:, :, :, :2] == 0.25).all()


# ------------------------------------------------------------------ against the NumPy reference


@pytest.mark.parametrize("h,w,c,fill", [(28, 28, 1, 0.0), (9, 31, 3, 0.5), (1, 1, 1, -1.0)])
def test_warp_matches_the_reference(isa, h, w, c, fill):
    rng = np.random.default_rng(h * w)
    n = 5
    x = images(n, c, h, w, seed=1)
    angle = rng.uniform(-0.5, 0.5, n)
    affine = np.zeros((n, 2, 3), np.float32)
    affine[:, 0, 0], affine[:, 0, 1] = np.cos(angle) * 1.1, -np.sin(angle)
    affine[:, 1, 0], affine[:, 1, 1] = np.sin(angle), np.cos(angle) * 0.9
    affine[:, :, 2] = rng.uniform(-3, 3, (n, 2))
    field = rng.normal(0, 1.5, (n, 2, h, w)).astype(np.float32)
    field[0, :, 0, 0] = [-40.0, 1e6]  # far outside: fill
    for f in (None, field):
        expected = ref.warp_bilinear(x, affine, f, fill)
        np.testing.assert_allclose(F.warp_bilinear(x, affine, f, fill), expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(
    "h,w,sigma",
    # widths of 1 to 4 vectors of 16 (AVX-512's smoothing); 70 x 67: the banded path (sides over 64)
    [(28, 28, 4.0), (28, 28, 1.5), (5, 3, 0.3), (17, 40, 2.0), (33, 64, 5.0), (70, 67, 3.0)],
)
def test_drawn_maps_and_fields_match_the_reference(isa, h, w, sigma):
    params = dict(MNIST_LIKE, elastic_sigma=sigma)
    affine, field = F.augment_params(4, h, w, seed=123, step=9, **params)
    assert affine.shape == (4, 2, 3) and field.shape == (4, 2, h, w)
    assert affine.dtype == field.dtype == np.float32
    for n in range(4):
        np.testing.assert_allclose(
            affine[n],
            ref.augment_affine(123, 9, n, h, w, **{k: params[k] for k in ("rotation", "scale", "shear", "translate")}),
            rtol=1e-6,
            atol=1e-5 * max(h, w),
        )
        expected = ref.augment_field(123, 9, n, h, w, params["elastic_alpha"], sigma)
        np.testing.assert_allclose(field[n], expected, rtol=0, atol=1e-5 * params["elastic_alpha"])
    assert F.augment_params(4, h, w, seed=123, step=9, **dict(params, elastic_alpha=0.0))[1] is None


def test_the_drawn_ranges_are_respected():
    params = dict(rotation=20.0, scale=(0.8, 1.2), shear=0.0, translate=0.0)
    affine, field = F.augment_params(2000, 28, 28, seed=5, **params)
    assert field is None
    linear = affine[:, :, :2].astype(np.float64)
    scale = 1 / np.sqrt(np.linalg.det(linear))  # the inverse of a rotation times s
    angle = np.degrees(np.arctan2(linear[:, 1, 0], linear[:, 0, 0]))
    assert 0.8 - 1e-6 <= scale.min() < 0.81 and 1.19 < scale.max() <= 1.2 + 1e-6
    assert -20 <= angle.min() < -19.5 and 19.5 < angle.max() <= 20
    centre = np.array([13.5, 13.5])  # the centre stays put without translation
    np.testing.assert_allclose(
        np.einsum("nij,j->ni", linear, centre) + affine[:, :, 2], np.tile(centre, (2000, 1)), atol=1e-4
    )


def test_the_fused_kernel_is_the_explicit_pair_bit_for_bit(isa):
    x = images(9, 2, 28, 28)
    for params in (MNIST_LIKE, dict(rotation=30.0), dict(elastic_alpha=8.0, elastic_sigma=2.0)):
        y = F.augment(x, 42, 17, fill=0.125, **params)
        affine, field = F.augment_params(9, 28, 28, 42, 17, **params)
        assert y.tobytes() == F.warp_bilinear(x, affine, field, fill=0.125).tobytes()


# ------------------------------------------------------------------ randomness


def test_draws_depend_on_seed_step_and_image_only(isa):
    x = images(16)
    y = F.augment(x, 3, 5, **MNIST_LIKE)
    assert y.tobytes() == F.augment(x, 3, 5, **MNIST_LIKE).tobytes()
    assert F.augment(x[:7], 3, 5, **MNIST_LIKE).tobytes() == y[:7].tobytes()  # not on the rest of the batch
    x2 = x.copy()
    x2[10:] = 0
    assert F.augment(x2, 3, 5, **MNIST_LIKE)[:10].tobytes() == y[:10].tobytes()  # nor on the other images
    for other in (F.augment(x, 4, 5, **MNIST_LIKE), F.augment(x, 3, 6, **MNIST_LIKE)):
        assert all(not np.array_equal(a, b) for a, b in zip(other, y))
    same = np.repeat(x[:1], 4, axis=0)  # one image four times: four different transforms
    out = F.augment(same, 3, 5, **MNIST_LIKE)
    assert len({o.tobytes() for o in out}) == 4


def test_results_do_not_depend_on_the_thread_count(isa, threads):
    x = images(37, 2, 28, 28)
    results = []
    for n in (1, 2, 3):
        cnnfast.set_num_threads(n)
        results.append(F.augment(x, 8, 1, **MNIST_LIKE).tobytes())
        results.append(F.augment_params(37, 28, 28, 8, 1, **MNIST_LIKE)[1].tobytes())
    assert results[0::2] == [results[0]] * 3 and results[1::2] == [results[1]] * 3


def test_large_seeds_and_steps(isa):
    x = images(2)
    y = F.augment(x, 2**64 - 1, 2**64 - 1, **MNIST_LIKE)
    assert np.isfinite(y).all() and not np.array_equal(y, x)
    with pytest.raises(TypeError):
        F.augment(x, 2**64, 0)
    with pytest.raises(TypeError):
        F.augment(x, -1, 0)


def test_an_empty_batch():
    x = np.zeros((0, 1, 28, 28), np.float32)
    assert F.augment(x, 0, 0, **MNIST_LIKE).shape == (0, 1, 28, 28)
    affine, field = F.augment_params(0, 28, 28, 0, **MNIST_LIKE)
    assert affine.shape == (0, 2, 3) and field.shape == (0, 2, 28, 28)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "params,message",
    [
        (dict(rotation=float("nan")), "rotation must be an angle in degrees in [0, 180], got nan"),
        (dict(rotation=-1.0), "rotation must be"),
        (dict(rotation=181.0), "rotation must be"),
        (dict(scale=(1.1, 0.9)), "scale must be (low, high) with 0 < low <= high"),
        (dict(scale=(0.0, 1.0)), "scale must be"),
        (dict(scale=(1.0, float("inf"))), "scale must be"),
        (dict(scale=(1.0,)), "scale must be a pair (low, high)"),
        (dict(scale=1.0), "scale must be a pair (low, high)"),
        (dict(shear=85.0), "shear must be an angle in degrees in [0, 80]"),
        (dict(translate=1.5), "translate must be a fraction of the image size in [0, 1]"),
        (dict(translate=float("nan")), "translate must be"),
        (dict(elastic_alpha=-1.0), "elastic_alpha must be in [0, 1e6] pixels"),
        (dict(elastic_sigma=0.0), "elastic_sigma must be in (0, 1000] pixels"),
        (dict(elastic_sigma=float("nan")), "elastic_sigma must be"),
        (dict(fill=float("nan")), "fill must be a finite number"),
    ],
)
def test_bad_parameters_are_errors_naming_them(params, message):
    with pytest.raises(ValueError) as error:
        F.augment(images(2), 0, 0, **params)
    assert message in str(error.value)
    with pytest.raises(ValueError) as error:
        Augment(**params)
    assert message in str(error.value)


def test_bad_arrays_are_errors_naming_them():
    x = images(2, 1, 8, 8)
    affine = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (2, 1, 1))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        F.augment(x.astype(np.float64), 0)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions \[N, C, H, W\]"):
        F.augment(x[:, 0], 0)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        F.augment(x[:, :, :, ::2], 0)
    with pytest.raises(ValueError, match="the images of x must be between 1 and"):
        F.augment(np.zeros((2, 1, 0, 8), np.float32), 0)
    with pytest.raises(ValueError, match=r"affine must have shape \(2, 2, 3\)"):
        F.warp_bilinear(x, affine[:1])
    with pytest.raises(ValueError, match=r"field must have shape \(2, 2, 8, 8\)"):
        F.warp_bilinear(x, affine, np.zeros((2, 2, 8, 7), np.float32))
    bad = affine.copy()
    bad[1, 0, 2] = np.nan
    with pytest.raises(ValueError, match="affine must be finite"):
        F.warp_bilinear(x, bad)
    field = np.zeros((2, 2, 8, 8), np.float32)
    field[0, 1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="field must be finite"):
        F.warp_bilinear(x, affine, field)
    with pytest.raises(TypeError, match="field must have dtype float32"):
        F.warp_bilinear(x, affine, field.astype(np.float64))
    with pytest.raises(ValueError, match="n must be >= 0"):
        F.augment_params(-1, 8, 8, 0)
    with pytest.raises(ValueError, match="height and width must be between 1 and"):
        F.augment_params(1, 0, 8, 0)
    with pytest.raises(ValueError, match="height and width must be between 1 and"):
        F.augment_params(1, 1 << 16, 1 << 16, 0)  # a plane of 2^32 pixels


# ------------------------------------------------------------------ the Python class


def test_augment_class_defaults_settings_and_description():
    augment = Augment(seed=4)
    assert (augment.rotation, augment.scale, augment.elastic_alpha, augment.elastic_sigma) == (
        10.0,
        (0.9, 1.1),
        34.0,
        4.0,
    )
    settings = augment.settings()
    assert settings == {
        "rotation": 10.0,
        "scale": [0.9, 1.1],
        "shear": 0.0,
        "translate": 0.05,
        "elastic_alpha": 34.0,
        "elastic_sigma": 4.0,
    }
    assert Augment.from_settings(settings, seed=4) == augment
    x = images(3)
    assert augment(x, 2).tobytes() == F.augment(x, 4, 2, **augment.parameters()).tobytes()
    affine, field = augment.draw(3, 28, 28, 2)
    assert augment(x, 2).tobytes() == F.warp_bilinear(x, affine, field).tobytes()
    assert "rotation +-10 deg" in augment.describe() and "elastic alpha 34 sigma 4" in augment.describe()
    assert Augment(rotation=0, scale=(1, 1), shear=0, translate=0, elastic_alpha=0).describe() == "none (identity)"


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Augment(seed=-1), "seed must be an integer in [0, 2**64)"),
        (lambda: Augment(seed=1.5), "seed must be an integer"),
        (lambda: Augment(rotation="10"), "rotation must be a number"),
        (lambda: Augment()(images(1), -1), "step must be an integer in [0, 2**64)"),
        (lambda: Augment.from_settings({"rotation": 10}), "augmentation settings must have the keys"),
        (lambda: Augment.from_settings([1, 2]), "augmentation settings must have the keys"),
    ],
)
def test_augment_class_rejects_bad_values(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert message in str(error.value)
