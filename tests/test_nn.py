"""Layers and Sequential: gradients against finite differences, determinism, model files."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnnfast
import cnnfast.functional as F
from _models import small_model
from cnnfast import mnist, nn
from cnnfast.optim import SGD, Adam

rng = np.random.default_rng(7)


def test_sequential_gradients_match_finite_differences():
    model = small_model().train()
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    labels = np.array([0, 3, 4])
    dropout_state = model.layers[6].rng.bit_generator.state

    def loss_and_grad():
        model.layers[6].rng.bit_generator.state = dropout_state  # the same dropout mask every time
        return F.softmax_cross_entropy(model.forward(x), labels)

    _, dlogits = loss_and_grad()
    dx = model.backward(dlogits)
    assert dx.shape == x.shape
    checked = 0
    for p in model.parameters():
        analytic = p.grad.copy()
        for c in rng.choice(p.data.size, size=min(6, p.data.size), replace=False):
            old = p.data.flat[c]
            p.data.flat[c] = old + 1e-3
            plus = loss_and_grad()[0]
            p.data.flat[c] = old - 1e-3
            minus = loss_and_grad()[0]
            p.data.flat[c] = old
            assert analytic.flat[c] == pytest.approx((plus - minus) / 2e-3, rel=2e-2, abs=1e-3)
            checked += 1
    assert checked == 6 + 3 + 6 + 4 + 6 + 5  # min(6, size) per parameter


def test_backward_without_input_grad_skips_dx_but_keeps_parameter_grads():
    model = small_model().eval()
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((2, 5)).astype(np.float32)
    model.forward(x)
    dx = model.backward(dy)
    grads = [p.grad.copy() for p in model.parameters()]
    model.forward(x)
    assert model.backward(dy, input_grad=False) is None
    for g, p in zip(grads, model.parameters()):
        np.testing.assert_array_equal(g, p.grad)
    assert dx.shape == x.shape


def test_conv_relu_maxpool_triples_and_pairs_run_fused_with_identical_results():
    model = small_model(seed=4).eval()
    assert [type(s).__name__ for s in model.steps] == [
        "Conv2dReLUMaxPool2d",
        "Conv2d",
        "ReLU",
        "Flatten",
        "Dropout",
        "Linear",
    ]
    relu_pool = nn.Sequential(nn.Conv2d(2, 3, 3, rng=np.random.default_rng(1)), nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2))
    assert [type(s).__name__ for s in relu_pool.steps] == ["Conv2d", "ReLU", "ReLUMaxPool2d"]
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((3, 5)).astype(np.float32)
    fused_y = model.forward(x)
    fused_dx = model.backward(dy)
    model.forward(x)
    model.backward(dy, input_grad=False)  # the first layer's own path: no dx
    fused_grads = [p.grad.copy() for p in model.parameters()]
    model.steps = list(model.layers)  # run every layer on its own
    np.testing.assert_array_equal(model.forward(x), fused_y)
    np.testing.assert_array_equal(model.backward(dy), fused_dx)
    for g, p in zip(fused_grads, model.parameters()):
        np.testing.assert_array_equal(g, p.grad)


def test_default_model_fused_and_unfused_agree():
    fused = nn.mnist_cnn(seed=2).eval()
    assert [type(s).__name__ for s in fused.steps][:2] == ["Conv2dReLUMaxPool2d", "Conv2dReLUMaxPool2d"]
    plain = nn.mnist_cnn(seed=2).eval()
    plain.steps = list(plain.layers)
    x = rng.random((37, 1, 28, 28)).astype(np.float32)
    dy = rng.standard_normal((37, 10)).astype(np.float32)
    for model in (fused, plain):
        model.forward(x)
        model.backward(dy, input_grad=False)
    convs = [fused.layers[i].weight for i in (0, 3)] + [fused.layers[i].bias for i in (0, 3)]
    for p, q in zip(fused.parameters(), plain.parameters()):
        if any(p is c for c in convs):
            # the fused kernels sum the conv weight and bias gradients in their own order (conv1
            # window by window, conv2 without the 11th row and column its windows never read):
            # the same terms, other roundings
            np.testing.assert_allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6)
            assert not np.array_equal(p.grad, np.zeros_like(p.grad))
        else:
            np.testing.assert_array_equal(p.grad, q.grad)
    np.testing.assert_array_equal(fused.infer(x), plain.forward(x))


def test_activations_are_each_layers_output_unfused():
    import reference

    model = nn.mnist_cnn(seed=3).eval()
    x = rng.random((5, 1, 28, 28)).astype(np.float32)
    outputs = model.activations(x)
    assert [list(y.shape) for y in outputs] == [
        [5, 32, 26, 26],
        [5, 32, 26, 26],
        [5, 32, 13, 13],
        [5, 64, 11, 11],
        [5, 64, 11, 11],
        [5, 64, 5, 5],
        [5, 1600],
        [5, 1600],
        [5, 10],
    ]
    conv = model.layers[0]
    # the convolution's own output, before its ReLU (negative values included), as the NumPy reference gives it
    np.testing.assert_allclose(outputs[0], reference.conv2d(x, conv.weight.data, conv.bias.data), rtol=1e-5, atol=1e-5)
    assert (outputs[0] < 0).any() and (outputs[1] >= 0).all()
    np.testing.assert_allclose(outputs[-1], model.infer(x), rtol=1e-5, atol=1e-5)
    assert all(y.dtype == np.float32 for y in outputs)


def test_default_model_has_the_keras_architecture():
    model = nn.mnist_cnn(seed=0)
    assert model.num_parameters() == 34826
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Dropout",
        "Linear",
    ]
    probs = model.predict_proba(np.zeros((3, 1, 28, 28), np.float32))
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_initialisation_is_seeded_and_pytorch_like():
    a, b, c = nn.mnist_cnn(seed=1), nn.mnist_cnn(seed=1), nn.mnist_cnn(seed=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert pa.data.tobytes() == pb.data.tobytes()
    assert any(pa.data.tobytes() != pc.data.tobytes() for pa, pc in zip(a.parameters(), c.parameters()))
    w = a.layers[3].weight.data  # Conv2d(32, 64, 3): uniform in +-1/sqrt(32*9)
    bound = 1 / np.sqrt(32 * 9)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound


def test_dropout_is_identity_in_eval_and_scales_in_train():
    d = nn.Dropout(0.5, rng=np.random.default_rng(0))
    x = np.ones((4, 100), np.float32)
    d.training = False
    assert d.forward(x) is x and d.backward(x) is x
    d.training = True
    y = d.forward(x)
    assert set(np.unique(y)) <= {0.0, 2.0}
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_save_and_load_round_trip(tmp_path):
    model = small_model(seed=3)
    path = model.save(tmp_path / "m.npz")
    loaded = cnnfast.load_model(path)
    assert loaded.architecture() == model.architecture()
    for p, q in zip(model.parameters(), loaded.parameters()):
        assert p.data.tobytes() == q.data.tobytes()
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(model.forward(x), loaded.forward(x))
    assert not loaded.training
    assert not list(tmp_path.glob("*.tmp"))


def test_predict_takes_model_input_and_refuses_uint8_digits():
    model = nn.mnist_cnn(seed=0)
    images = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = model.predict(mnist.as_model_input(images))
    assert labels.dtype == np.int64 and labels.shape == (5,)
    np.testing.assert_array_equal(labels, model.predict(images.astype(np.float64)[:, None] / 255))  # any float
    with pytest.raises(ValueError, match="floating-point input.*cnnfast.mnist.as_model_input"):
        model.predict(images)  # uint8 0..255 as float would be a silent wrong answer
    with pytest.raises(
        ValueError, match=r"takes a batch \[N, 1, \?, \?\] or one sample \[1, \?, \?\], got \[5, 28, 28\]"
    ):
        model.predict(np.zeros((5, 28, 28), np.float64))
    np.testing.assert_array_equal(mnist.probabilities(model, images), model.predict_proba(mnist.as_model_input(images)))


def test_a_3_channel_32x32_model_predicts_on_its_own_input():
    r = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, rng=r), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, rng=r), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10, rng=r),
    )  # fmt: skip
    x = r.random((6, 3, 32, 32), dtype=np.float32)
    proba = model.predict_proba(x)
    assert proba.shape == (6, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.predict(x), model.infer(x).argmax(axis=1))
    one = model.predict_proba(x[4])  # one sample: [3, 32, 32]
    assert one.shape == (10,) and isinstance(model.predict(x[4]), int)
    np.testing.assert_allclose(one, proba[4], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[N, 3, \?, \?\].*got \[6, 1, 32, 32\]"):
        model.predict(x[:, :1])
    assert model.predict_proba(x[:0]).shape == (0, 10)


def test_a_model_with_5_classes_gives_5_probabilities():
    r = np.random.default_rng(1)
    model = nn.Sequential(nn.Linear(7, 16, rng=r), nn.ReLU(), nn.Linear(16, 5, rng=r))
    x = r.standard_normal((9, 7)).astype(np.float32)
    proba = model.predict_proba(x)
    assert proba.shape == (9, 5) and model.predict(x).max() < 5
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert model.predict_proba(x[0]).shape == (5,) and isinstance(model.predict(x[0]), int)
    assert model.predict_proba(x[:0]).shape == (0, 5)
    with pytest.raises(ValueError, match=r"\[N, 7\]"):
        model.predict(x[:, :6])


def test_predict_needs_one_score_per_class():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))  # its output is [N, 2, H-2, W-2], not scores
    with pytest.raises(ValueError, match=r"not one score per class"):
        model.predict(np.zeros((1, 1, 5, 5), np.float32))


@pytest.mark.parametrize("kernel", [(3, 5), (5, 3), (1, 4)])
def test_conv2d_takes_non_square_kernels_as_functional_does(tmp_path, kernel):
    kh, kw = kernel
    layer = nn.Conv2d(2, 4, kernel, padding=1, rng=np.random.default_rng(0))
    assert layer.kernel_size == kernel and layer.weight.shape == (4, 2, kh, kw)
    x = rng.standard_normal((3, 2, 9, 10)).astype(np.float32)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, F.conv2d(x, layer.weight.data, layer.bias.data, 1))
    assert y.shape == (3, 4, 9 + 2 - kh + 1, 10 + 2 - kw + 1)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape and layer.weight.grad.shape == (4, 2, kh, kw)
    model = nn.Sequential(layer, nn.ReLU(), nn.Flatten())
    loaded = cnnfast.load_model(model.save(tmp_path / "m.npz"))
    assert loaded.layers[0].kernel_size == kernel and loaded.architecture() == model.architecture()
    np.testing.assert_array_equal(loaded.infer(x), model.infer(x))
    assert nn.Conv2d(1, 1, 3).config()["kernel_size"] == 3  # a square kernel is saved as before
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2d(1, 1, (3, 3, 3))


def test_backward_asks_every_layer_the_same_way():
    """Sequential.backward passes input_grad to whatever layer is first (no special case): the
    first layer skips its dx, any later one computes it."""
    calls = []

    class Spy(nn.Layer):
        def forward(self, x):
            return x

        def backward(self, dy, input_grad=True):
            calls.append(input_grad)
            return dy if input_grad else None

    model = nn.Sequential(Spy(), nn.ReLU(), Spy(), nn.Linear(4, 2))
    model.forward(np.ones((3, 4), np.float32))
    assert model.backward(np.ones((3, 2), np.float32), input_grad=False) is None
    assert calls == [True, False]
    calls.clear()
    assert model.backward(np.ones((3, 2), np.float32)).shape == (3, 4) and calls == [True, True]


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda p: p.write_bytes(b"not a zip at all"),
        lambda p: p.write_bytes(zipfile.ZipFile.__doc__.encode()[:10]),
        lambda p: np.savez(p, something=np.zeros(3)),
        lambda p: np.save(p, np.zeros(3)),
        lambda p: np.savez(p, format=np.array("cnnfast-model-v1"), architecture=np.array("{not json")),
        lambda p: np.savez(
            p, format=np.array("cnnfast-model-v1"), architecture=np.array(json.dumps([{"type": "os.system", "cmd": 1}]))
        ),
        lambda p: np.savez(
            p,
            format=np.array("cnnfast-model-v1"),
            architecture=np.array(json.dumps([{"type": "Linear", "in_features": 3, "out_features": 2}])),
            **{"0.weight": np.zeros((2, 4), np.float32), "0.bias": np.zeros(2, np.float32)},
        ),
        lambda p: np.savez(
            p,
            format=np.array("cnnfast-model-v1"),
            architecture=np.array(json.dumps([{"type": "Linear", "in_features": 3, "out_features": 2}])),
            **{"0.weight": np.zeros((2, 3), np.float32)},
        ),
        lambda p: np.savez(
            p,
            format=np.array("cnnfast-model-v1"),
            architecture=np.array(json.dumps([{"type": "Linear", "in_features": 3, "out_features": 2}])),
            **{"0.weight": np.array([object()] * 6, dtype=object).reshape(2, 3), "0.bias": np.zeros(2, np.float32)},
        ),
    ],
)
def test_loading_a_bad_file_is_a_clear_error(tmp_path, make_bad):
    path = tmp_path / "bad.npz"
    make_bad(path)
    if not path.exists():  # np.save appends .npy
        path = tmp_path / "bad.npz.npy"
    with pytest.raises(nn.ModelFormatError, match="bad.npz"):
        cnnfast.load_model(path)


def test_loading_a_truncated_model_is_a_clear_error(tmp_path):
    path = nn.mnist_cnn().save(tmp_path / "m.npz")
    data = Path(path).read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(nn.ModelFormatError, match="cut.npz"):
        cnnfast.load_model(tmp_path / "cut.npz")
    with pytest.raises(FileNotFoundError):
        cnnfast.load_model(tmp_path / "missing.npz")


@pytest.mark.parametrize("make_optimizer", [lambda ps: Adam(ps, lr=1e-2), lambda ps: SGD(ps, lr=0.1, momentum=0.9)])
def test_optimizers_reduce_the_loss(make_optimizer):
    model = small_model(seed=5).train()
    model.layers[6].p = 0.0
    x = rng.standard_normal((16, 2, 6, 6)).astype(np.float32)
    labels = rng.integers(0, 5, 16)
    optimizer = make_optimizer(model.parameters())
    losses = []
    for _ in range(30):
        loss, dlogits = F.softmax_cross_entropy(model.forward(x), labels)
        model.backward(dlogits, input_grad=False)
        optimizer.step()
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0]


def test_infer_matches_eval_forward_and_keeps_nothing():
    model = nn.mnist_cnn(seed=1)
    assert model.infer_block == 128
    x = rng.standard_normal((150, 1, 28, 28)).astype(np.float32)  # 128 + 22: a block and a tail
    got, one_block = model.infer(x), model.infer(x[:5])
    assert model.training  # infer() works in eval mode without switching the model
    model.eval()
    np.testing.assert_array_equal(got, model.forward(x))
    np.testing.assert_array_equal(one_block, model.forward(x[:5]))
    assert model.infer(x[:0]).shape == (0, 10)
    assert model.infer(x[:1]).shape == (1, 10)


class _KeptBuffer(nn.Layer):
    """A layer returning a read-only array it keeps, seen through a transposing view"""

    def forward(self, x):
        self.kept = np.ascontiguousarray(x[:, ::-1].T).T
        self.kept.flags.writeable = False
        return self.kept


@pytest.mark.parametrize("n", [3, 300], ids=["one block", "blocks"])
def test_infer_returns_a_new_whole_array_whatever_its_layers_return(n):
    x = np.arange(n * 18, dtype=np.float32).reshape(n, 2, 3, 3)
    y = nn.Sequential(nn.Flatten(), nn.Dropout(0.5)).infer(x)  # (nothing here copies)
    assert y.shape == (n, 18) and not np.shares_memory(x, y)
    kept = _KeptBuffer()
    y = nn.Sequential(nn.Flatten(), kept).infer(x)
    np.testing.assert_array_equal(y, x.reshape(n, 18)[:, ::-1])
    assert y.flags.c_contiguous and y.flags.writeable and not np.shares_memory(y, kept.kept)


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n" + bytes(200), b"", b"\x80\x04K\x01.", b"plain text\n"],
    ids=["png", "empty", "pickle", "text"],
)
def test_a_file_that_is_not_a_model_says_so_without_numpys_pickle_advice(tmp_path, content):
    path = tmp_path / "digit.png"
    path.write_bytes(content)
    with pytest.raises(nn.ModelFormatError) as error:
        cnnfast.load_model(path)
    assert str(error.value).startswith(f"{path}: not a cnnfast model file")
    assert "allow_pickle" not in str(error.value) and "unsafely" not in str(error.value)


def test_the_command_names_a_non_model_file(tmp_path):
    import subprocess
    import sys

    (tmp_path / "digit.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnfast.export",
            "--model",
            str(tmp_path / "digit.png"),
            "--onnx",
            str(tmp_path / "m.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "needs the onnx package" in result.stderr:
        pytest.skip("onnx is not installed")
    assert result.returncode == 1 and "allow_pickle" not in result.stderr
    assert f"{tmp_path / 'digit.png'}: not a cnnfast model file" in result.stderr


def test_one_image_is_a_batch_of_one_with_a_single_result():
    model = nn.mnist_cnn(seed=3)
    images = mnist.as_model_input(np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8))
    batch_proba, batch_labels = model.predict_proba(images), model.predict(images)
    for one in (images[2], images[2].astype(np.float64)):
        proba = model.predict_proba(one)
        assert proba.shape == (10,)
        np.testing.assert_allclose(proba, batch_proba[2], rtol=1e-6)
        label = model.predict(one)
        assert isinstance(label, int) and label == batch_labels[2]
    with pytest.raises(ValueError, match="takes a batch"):
        model.predict(np.zeros((28, 28), np.float64))
