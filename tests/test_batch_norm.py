"""BatchNorm2d and BatchNorm1d: the kernels against the float64 NumPy reference (reference.py) and
central finite differences on every instruction set, train and eval modes, the running
statistics, the convolution they fold into at inference, and their buffers in state_dict,
model files and checkpoints."""

import numpy as np
import pytest

import cnnfast
import cnnfast.functional as F
import reference as ref
from cnnfast import checkpoint as ckpt
from cnnfast import nn
from cnnfast.optim import Adam

rng = np.random.default_rng(2024)

SHAPES = [(8, 3, 5, 5), (2, 4, 1, 1), (16, 5), (4, 3, 7), (3, 2, 6, 4)]


def rand(*shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


def channel_arrays(c):
    """weight, bias, running_mean, running_var of c channels, all away from their defaults."""
    return rand(c, shift=1.0), rand(c), rand(c), (rng.random(c) + 0.5).astype(np.float32)


def close(actual, expected, tol=1e-5):
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol, atol=tol * scale)


# ------------------------------------------------------------------ kernels


@pytest.mark.parametrize("shape", SHAPES)
def test_train_forward_matches_reference_and_updates_running_statistics(isa, shape):
    x = rand(*shape, scale=2.0, shift=0.5)
    weight, bias, running_mean, running_var = channel_arrays(shape[1])
    want = ref.batch_norm_train(x, weight, bias, running_mean, running_var, momentum=0.3, eps=1e-3)
    y, mean, invstd = F.batch_norm_train(x, weight, bias, running_mean, running_var, momentum=0.3, eps=1e-3)
    assert y.shape == x.shape and mean.shape == invstd.shape == (shape[1],)
    close(y, want[0])
    close(mean, want[1])
    close(invstd, want[2])
    close(running_mean, want[3])  # (updated in place)
    close(running_var, want[4])


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_matches_reference(isa, shape):
    x = rand(*shape, scale=2.0)
    weight, bias, running_mean, running_var = channel_arrays(shape[1])
    before = running_mean.copy(), running_var.copy()
    y = F.batch_norm_eval(x, weight, bias, running_mean, running_var, eps=1e-4)
    close(y, ref.batch_norm_eval(x, weight, bias, running_mean, running_var, eps=1e-4))
    assert (running_mean == before[0]).all() and (running_var == before[1]).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(isa, shape):
    x, dy = rand(*shape, shift=0.3), rand(*shape)
    weight, bias, running_mean, running_var = channel_arrays(shape[1])
    _, mean, invstd = F.batch_norm_train(x, weight, bias, running_mean, running_var)
    dx, dweight, dbias = F.batch_norm_backward(x, weight, dy, mean, invstd)
    want = ref.batch_norm_backward(x, weight, dy)
    close(dx, want[0], 1e-4)
    close(dweight, want[1], 1e-4)
    close(dbias, want[2], 1e-4)
    none, dweight2, dbias2 = F.batch_norm_backward(x, weight, dy, mean, invstd, input_grad=False)
    assert none is None and dweight2.tobytes() == dweight.tobytes() and dbias2.tobytes() == dbias.tobytes()


@pytest.mark.parametrize("shape", [(6, 3, 4, 4), (10, 4), (5, 2, 3)])
def test_backward_finite_differences(isa, shape):
    x, probe = rand(*shape), rand(*shape)
    weight, bias, _, _ = channel_arrays(shape[1])

    def loss(x, weight, bias):
        rm, rv = np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)
        return float((F.batch_norm_train(x, weight, bias, rm, rv)[0].astype(np.float64) * probe).sum())

    _, mean, invstd = F.batch_norm_train(x, weight, bias, np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32))
    grads = F.batch_norm_backward(x, weight, probe, mean, invstd)
    arrays = [x, weight, bias]
    for index, analytic in enumerate(grads):
        coords = rng.choice(arrays[index].size, size=min(10, arrays[index].size), replace=False)
        numeric = []
        for c in coords:
            old = arrays[index].flat[c]
            arrays[index].flat[c] = old + 1e-2
            plus = loss(*arrays)
            arrays[index].flat[c] = old - 1e-2
            minus = loss(*arrays)
            arrays[index].flat[c] = old
            numeric.append((plus - minus) / 2e-2)
        np.testing.assert_allclose(analytic.ravel()[coords], numeric, rtol=2e-2, atol=2e-3)


def test_a_large_mean_beside_a_small_spread_stays_accurate(isa):
    x = rand(32, 2, 4, 4, scale=1e-2, shift=1000.0)
    weight, bias = np.ones(2, np.float32), np.zeros(2, np.float32)
    y, _, _ = F.batch_norm_train(x, weight, bias, np.zeros(2, np.float32), np.ones(2, np.float32), eps=1e-12)
    want = ref.batch_norm_train(x, weight, bias, np.zeros(2), np.ones(2), eps=1e-12)[0]
    # (a mean of 1000 rounded to float32 would be off by up to 3e-5: 3e-3 of y over a spread of
    # 1e-2; the kernel keeps the rest of the mean, and y is within float32 rounding)
    np.testing.assert_allclose(y, want, atol=1e-5)
    assert abs(float(y.std()) - 1.0) < 1e-2


def test_results_do_not_depend_on_the_thread_count(isa, threads):
    x, dy = rand(64, 16, 12, 12), rand(64, 16, 12, 12)
    weight, bias, running_mean, running_var = channel_arrays(16)

    def run():
        rm, rv = running_mean.copy(), running_var.copy()
        y, mean, invstd = F.batch_norm_train(x, weight, bias, rm, rv)
        return [y, mean, invstd, rm, rv, F.batch_norm_eval(x, weight, bias, rm, rv)] + list(
            F.batch_norm_backward(x, weight, dy, mean, invstd)
        )

    cnnfast.set_num_threads(1)
    one = run()
    cnnfast.set_num_threads(2)
    two = run()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one, two))


def test_bad_arguments_name_the_argument():
    x = rand(4, 3, 2, 2)
    w, b, rm, rv = channel_arrays(3)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        F.batch_norm_train(x, w, rand(4), rm, rv)
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        F.batch_norm_eval(x, w, b, rm, rand(3, 1))
    with pytest.raises(ValueError, match="x must have 2 to 4 dimensions"):
        F.batch_norm_train(rand(2, 3, 2, 2, 2), w, b, rm, rv)
    with pytest.raises(ValueError, match="training needs at least 2"):
        F.batch_norm_train(rand(1, 3), w, b, rm, rv)
    with pytest.raises(ValueError, match="momentum must be in"):
        F.batch_norm_train(x, w, b, rm, rv, momentum=1.5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        F.batch_norm_eval(x, w, b, rm, rv, eps=0.0)
    with pytest.raises(ValueError, match="running_mean is read-only"):
        frozen = rm.copy()
        frozen.flags.writeable = False
        F.batch_norm_train(x, w, b, frozen, rv)
    with pytest.raises(ValueError, match="running_mean and running_var share memory"):
        F.batch_norm_train(x, w, b, rm, rm)
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        F.batch_norm_eval(x, w.astype(np.float64), b, rm, rv)
    with pytest.raises(ValueError, match=r"dy must have the shape of x"):
        F.batch_norm_backward(x, w, rand(4, 3, 2, 1), rm, rv)
    assert F.batch_norm_eval(np.zeros((0, 3, 2, 2), np.float32), w, b, rm, rv).shape == (0, 3, 2, 2)


# ------------------------------------------------------------------ layers


def bn_model(seed=0):
    r = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, rng=r),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, rng=r),
        nn.BatchNorm2d(8, momentum=0.2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 12, rng=r),
        nn.BatchNorm1d(12),
        nn.ReLU(),
        nn.Linear(12, 10, rng=r),
    )


def images(n, seed=1):
    return np.random.default_rng(seed).random((n, 1, 14, 14), dtype=np.float32)


def test_train_mode_normalises_with_the_batch_and_eval_mode_with_the_running_statistics():
    layer = nn.BatchNorm2d(3, momentum=0.25)
    assert (layer.weight.data == 1).all() and (layer.bias.data == 0).all()
    assert (layer.running_mean == 0).all() and (layer.running_var == 1).all()
    x = rand(16, 3, 4, 4, scale=3.0, shift=2.0)
    y = layer.forward(x)
    close(y.mean(axis=(0, 2, 3)), np.zeros(3), 1e-5)
    close(y.std(axis=(0, 2, 3)), np.ones(3), 1e-3)
    m = x.size // 3
    close(layer.running_mean, 0.25 * x.astype(np.float64).mean(axis=(0, 2, 3)))
    close(layer.running_var, 0.75 + 0.25 * x.astype(np.float64).var(axis=(0, 2, 3)) * m / (m - 1))
    layer.training = False
    before = layer.running_mean.copy()
    y_eval = layer.forward(x)
    assert (layer.running_mean == before).all()  # eval mode leaves the statistics alone
    close(y_eval, ref.batch_norm_eval(x, layer.weight.data, layer.bias.data, layer.running_mean, layer.running_var))
    assert layer.infer(x).tobytes() == y_eval.tobytes()
    with pytest.raises(ValueError, match=r"BatchNorm2d takes \[N, C, H, W\], got shape \[16, 48\]"):
        layer.forward(x.reshape(16, 48))
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        nn.BatchNorm1d(0)
    with pytest.raises(ValueError, match="momentum must be in"):
        nn.BatchNorm2d(3, momentum=2)


def test_eval_mode_backward_is_the_affine_maps_gradient():
    layer = nn.BatchNorm1d(4)
    layer.weight.data[...] = rand(4)
    layer.running_mean[...], layer.running_var[...] = rand(4), rng.random(4).astype(np.float32) + 0.5
    layer.training = False
    x, probe = rand(5, 4), rand(5, 4)
    layer.forward(x)
    dx = layer.backward(probe)
    for c in range(4):
        for n in (0, 3):
            plus, minus = x.copy(), x.copy()
            plus[n, c] += 1e-2
            minus[n, c] -= 1e-2
            numeric = ((layer.infer(plus) - layer.infer(minus)).astype(np.float64) * probe).sum() / 2e-2
            assert dx[n, c] == pytest.approx(numeric, rel=1e-2, abs=1e-3)
    invstd = 1 / np.sqrt(layer.running_var.astype(np.float64) + layer.eps)
    close(layer.bias.grad, probe.sum(axis=0))
    close(layer.weight.grad, (probe * (x - layer.running_mean) * invstd).sum(axis=0))


def test_a_model_with_batch_norm_learns_and_its_inference_folds_into_the_convolutions():
    model = bn_model()
    x, labels = images(64), np.arange(64) % 10
    optimizer = Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, dlogits = F.softmax_cross_entropy(model.forward(x), labels)
        model.backward(dlogits, input_grad=False)
        optimizer.step()
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    steps = model.inference_steps()
    assert (
        type(steps[0]).__name__ == "Conv2dReLUMaxPool2d"
    )  # Conv2d + BatchNorm2d folded, then fused with ReLU + MaxPool2d
    assert not any(isinstance(s, nn.BatchNorm2d) for s in steps)
    assert any(isinstance(s, nn.BatchNorm1d) for s in steps)  # (after a Linear: not folded)
    eval_forward = model.forward(x)
    close(model.infer(x), eval_forward, 1e-4)
    assert (model.predict(x) == eval_forward.argmax(axis=1)).all()


def test_fold_batch_norm_is_the_two_layers():
    conv, bn = nn.Conv2d(3, 5, (3, 2), padding=1, rng=np.random.default_rng(0)), nn.BatchNorm2d(5, eps=1e-3)
    bn.weight.data[...], bn.bias.data[...] = rand(5), rand(5)
    bn.running_mean[...], bn.running_var[...] = rand(5), rng.random(5).astype(np.float32) + 0.1
    x = rand(4, 3, 7, 6)
    folded = nn.fold_batch_norm(conv, bn)
    close(folded.infer(x), bn.infer(conv.infer(x)), 1e-5)
    assert folded.kernel_size == (3, 2) and folded.padding == 1 and folded.config() == conv.config()
    assert nn.fold_batch_norms([conv, nn.ReLU()]) is None


def test_buffers_are_in_state_dict_model_files_and_architecture(tmp_path):
    model = bn_model(3)
    model.forward(images(32))  # moves the running statistics
    assert [name for name, _ in model.named_buffers()] == [
        "1.running_mean",
        "1.running_var",
        "5.running_mean",
        "5.running_var",
        "9.running_mean",
        "9.running_var",
    ]
    state = model.state_dict()
    assert {"1.running_mean", "9.running_var", "1.weight", "1.bias"} <= set(state)
    other = bn_model(4)
    running_var = other.layers[5].running_var
    other.load_state_dict(state)
    assert other.layers[5].running_var is running_var  # restored in place
    assert all((state[k] == v).all() for k, v in other.state_dict().items())
    with pytest.raises(ValueError, match=r"missing \['1.running_mean'\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "1.running_mean"})

    path = model.save(tmp_path / "bn.npz")
    loaded = cnnfast.load_model(path)
    assert loaded.architecture() == model.architecture()
    assert loaded.architecture()[5] == {"type": "BatchNorm2d", "num_features": 8, "eps": 1e-5, "momentum": 0.2}
    assert not loaded.training
    assert all((loaded.state_dict()[k] == v).all() for k, v in state.items())
    x = images(20, seed=7)
    assert loaded.infer(x).tobytes() == model.infer(x).tobytes()

    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    del arrays["5.running_var"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(nn.ModelFormatError, match=r"missing array '5.running_var'"):
        cnnfast.load_model(tmp_path / "missing.npz")
    arrays["5.running_var"] = np.ones(7, np.float32)
    np.savez(tmp_path / "wrong.npz", **arrays)
    with pytest.raises(nn.ModelFormatError, match=r"'5.running_var' is float32 \[7\]"):
        cnnfast.load_model(tmp_path / "wrong.npz")


def test_checkpoints_hold_the_running_statistics(tmp_path):
    from cnnfast import train

    model = bn_model(5)
    optimizer = Adam(model.parameters())
    model.forward(images(16))
    args = train.default_settings()
    settings = {key: getattr(args, key) for key in ckpt.RUN_SETTINGS + ckpt.RUN_DEFAULTS}
    settings.update(train_images=16, train_data_sha256="0" * 64)
    checkpoint = ckpt.capture(
        model,
        optimizer,
        settings=settings,
        epoch=1,
        position=ckpt.EpochState(),
        shuffle_rng=np.random.default_rng(0).bit_generator.state,
        history=[],
        train_seconds=0.0,
        trained_images=0,
    )
    assert len(checkpoint.buffers) == 6
    checkpoint = ckpt.load(ckpt.save(checkpoint, tmp_path / "bn.ckpt.npz"))  # through the file
    fresh = bn_model(5)
    ckpt.restore(checkpoint, fresh, Adam(fresh.parameters()), np.random.default_rng(1))
    assert all((a == b).all() for (_, a), (_, b) in zip(fresh.named_buffers(), model.named_buffers()))
    checkpoint.buffers = checkpoint.buffers[:4]
    with pytest.raises(ckpt.CheckpointError, match="buffers"):
        ckpt.restore(checkpoint, fresh, Adam(fresh.parameters()), np.random.default_rng(1))


def resnet_block_model(seed=0):
    """A ResNet-style stage with BatchNorm inside a Residual (block and shortcut)."""
    r = np.random.default_rng(seed)
    block = [
        nn.Conv2d(4, 8, 3, padding=1, stride=2, bias=False, rng=r),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False, rng=r),
        nn.BatchNorm2d(8),
    ]
    shortcut = [nn.Conv2d(4, 8, 1, stride=2, bias=False, rng=r), nn.BatchNorm2d(8)]
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=r),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Residual(block, shortcut),
        nn.ReLU(),
        nn.GlobalAvgPool2d(),
        nn.Flatten(),
        nn.Linear(8, 10, rng=r),
    )


def test_batch_norm_inside_a_residual_block_trains_saves_and_folds(tmp_path):
    model = resnet_block_model()
    x = images(16)
    y = model.forward(x)
    model.backward(np.ones_like(y))
    names = [name for name, _ in model.named_buffers()]
    assert "3.block.1.running_mean" in names and "3.shortcut.1.running_var" in names and len(names) == 8
    residual = model.layers[3]
    assert not (residual.block.layers[1].running_mean == 0).all()  # its statistics moved in training
    assert residual.block.layers[1].weight.grad.any()
    model.eval()
    close(model.infer(x), model.forward(x), 1e-4)  # folded inside the Residual's branches too
    path = model.save(tmp_path / "res.npz")
    loaded = cnnfast.load_model(path)
    state = model.state_dict()
    assert all((loaded.state_dict()[k] == v).all() for k, v in state.items())
    assert loaded.infer(x).tobytes() == model.infer(x).tobytes()
    with pytest.raises(ValueError, match=r"layer 1.block.1 \(BatchNorm2d.*needs \[batch, 8, height, width\]"):
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.Residual([nn.Conv2d(4, 6, 1), nn.BatchNorm2d(8)])).forward(x)
