"""Every command works with a model that has BatchNorm (issue 15, item 5): a BatchNorm model
trained briefly (AdamW, one-cycle, label smoothing) on synthetic digits that can be learned
goes through load_model, evaluate, predict, sum_challenge and export --onnx --check, and its
ONNX graph (BatchNormalization nodes) computes cnnfast's logits in onnxruntime."""

import importlib
import json

import numpy as np
import pytest

import cnnfast
import cnnfast.export as ex
from _idx_helpers import write_bar_mnist
from cnnfast import nn
from cnnfast.mnist import as_model_input
from cnnfast.optim import AdamW, OneCycleLR
from cnnfast.train import train_epoch


def bn_cnn(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, rng=rng),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, rng=rng),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 32, rng=rng),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.2, rng=np.random.default_rng(seed + 1)),
        nn.Linear(32, 10, rng=rng),
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The data directory and the briefly trained BatchNorm model's file."""
    directory = tmp_path_factory.mktemp("bn")
    x_train, y_train, x_test, y_test = write_bar_mnist(directory / "data")
    model = bn_cnn()
    optimizer = AdamW(model.parameters(), lr=1e-2)
    schedule = OneCycleLR(optimizer, max_lr=1e-2, total_steps=4 * 10)
    shuffle = np.random.default_rng(0)
    for _ in range(4):
        train_epoch(model, optimizer, x_train, y_train, 64, shuffle, scheduler=schedule, label_smoothing=0.1)
    path = model.save(directory / "bn.npz")
    return {"data": directory / "data", "model": path, "dir": directory, "test": (x_test, y_test)}


def run(command, argv, capsys):
    status = importlib.import_module(f"cnnfast.{command}").main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_load_model_gives_the_trained_model_in_eval_mode(workspace):
    model = cnnfast.load_model(workspace["model"])
    assert not model.training and [type(layer).__name__ for layer in model.layers][:3] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
    ]
    assert not (model.layers[1].running_mean == 0).all()  # trained: the statistics moved
    x_test, y_test = workspace["test"]
    x = as_model_input(x_test)
    assert (model.predict(x) == y_test).mean() > 0.9  # it learned the bars
    model.eval()
    np.testing.assert_allclose(model.infer(x), model.forward(x), rtol=1e-4, atol=1e-4)  # folded == eval forward


def test_evaluate(workspace, capsys):
    status, out, err = run(
        "evaluate", ["--model", workspace["model"], "--data-dir", workspace["data"], "--no-verify", "--json"], capsys
    )
    assert status == 0, err
    result = json.loads(out)
    x_test, y_test = workspace["test"]
    model = cnnfast.load_model(workspace["model"])
    assert result["accuracy"] == pytest.approx((model.predict(as_model_input(x_test)) == y_test).mean())
    assert result["accuracy"] > 0.9


def test_predict(workspace, capsys):
    Image = pytest.importorskip("PIL.Image")
    picture = np.full((28, 28), 255, np.uint8)
    picture[10:18, 12:16] = 0
    Image.fromarray(picture).save(workspace["dir"] / "digit.png")
    status, out, err = run("predict", ["--model", workspace["model"], workspace["dir"] / "digit.png", "--json"], capsys)
    assert status == 0, err
    result = json.loads(out)
    assert result["predicted"] == 1 and result["failed"] == 0


def test_sum_challenge(workspace, capsys):
    argv = ["--model", workspace["model"], "--data-dir", workspace["data"], "--no-verify", "--trials", "20", "--json"]
    status, out, err = run("sum_challenge", argv, capsys)
    assert status == 0, err
    assert json.loads(out)["test_accuracy"] > 0.9


def test_export_onnx_check(workspace, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    onnx_path = workspace["dir"] / "bn.onnx"
    status, out, err = run("export", ["--model", workspace["model"], "--onnx", onnx_path, "--check", "--json"], capsys)
    assert status == 0, err
    result = json.loads(out)
    assert result["check_passed"] and result["max_abs_difference"] < 1e-4
    assert result["operators"][:3] == ["Conv", "BatchNormalization", "Relu"]
    assert result["operators"].count("BatchNormalization") == 3  # two BatchNorm2d and a BatchNorm1d
    x = as_model_input(workspace["test"][0][:50])
    model = cnnfast.load_model(workspace["model"])
    np.testing.assert_allclose(ex.run_onnx(onnx_path, x), model.infer(x), atol=1e-4, rtol=1e-4)


def test_export_names_a_batch_norm_that_does_not_fit(tmp_path):
    pytest.importorskip("onnx")
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(5))
    with pytest.raises(ex.ExportError, match=r"layer 1 \(BatchNorm2d.*needs \[batch, 5, height, width\]"):
        ex.export_onnx(model, tmp_path / "bad.onnx")
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm1d(4))
    with pytest.raises(ex.ExportError, match=r"layer 1 \(BatchNorm1d"):
        ex.export_onnx(model, tmp_path / "bad.onnx")


def test_a_residual_model_with_batch_norm_exports_and_agrees(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_batch_norm import resnet_block_model

    model = resnet_block_model(1)
    x = np.random.default_rng(3).random((32, 1, 12, 12), dtype=np.float32)
    for _ in range(3):
        model.forward(x)  # moves the running statistics away from 0 and 1
    model.eval()
    path = ex.export_onnx(model, tmp_path / "res.onnx")
    import onnx

    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ops.count("BatchNormalization") == 4 and "Add" in ops
    np.testing.assert_allclose(ex.run_onnx(path, x), model.infer(x), atol=1e-4, rtol=1e-4)
