"""cnnfast.export_onnx and python -m cnnfast.export: the graph is the standard one, onnxruntime
computes the same logits as cnnfast (random weights and a trained model on 1,000 MNIST test
images), the batch dimension is dynamic, and errors are clear."""

import json
import sys

import numpy as np
import pytest

import cnnfast
import cnnfast.export as ex
from _trained_model import real_mnist, trained_model_path
from cnnfast import nn
from cnnfast.mnist import as_model_input
from cnnfast.nn import mnist_cnn

OPS = ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Flatten", "Gemm"]


@pytest.fixture
def onnx():
    return pytest.importorskip("onnx")


@pytest.fixture
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_the_graph_is_the_standard_one(onnx, tmp_path):
    model = mnist_cnn(1)
    path = ex.export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    graph = proto.graph
    assert [node.op_type for node in graph.node] == OPS  # Dropout, the identity at inference, is left out
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
    assert dims(graph.input[0]) == ["batch", 1, 28, 28] and dims(graph.output[0]) == ["batch", 10]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)] and proto.ir_version == 7
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    assert sorted(weights) == ["0.bias", "0.weight", "3.bias", "3.weight", "8.bias", "8.weight"]
    assert (weights["8.weight"] == model.layers[8].weight.data).all() and weights["8.weight"].shape == (10, 1600)
    attributes = {
        node.op_type + str(i): {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for i, node in enumerate(graph.node)
    }
    assert attributes["MaxPool2"]["kernel_shape"] == [2, 2] and attributes["MaxPool2"]["strides"] == [2, 2]
    assert attributes["Gemm7"]["transB"] == 1 and attributes["Flatten6"]["axis"] == 1
    assert json.loads({p.key: p.value for p in proto.metadata_props}["cnnfast_architecture"]) == model.architecture()


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnxruntime_computes_the_same_logits(ort, tmp_path, batch):
    model = mnist_cnn(2)
    path = ex.export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
    got = ex.run_onnx(path, x)
    assert got.shape == (batch, 10) and got.dtype == np.float32
    assert np.abs(got - ex.model_logits(model, x)).max() < 1e-4


def test_other_layer_settings(ort, tmp_path):
    """Padding, odd pooling (floor: 28 -> 9), ReLU after the last layer, two Linear layers."""
    r = np.random.default_rng(5)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 5, padding=2, rng=r),
        nn.ReLU(),
        nn.MaxPool2d(3),
        nn.Conv2d(4, 6, 2, padding=1, rng=r),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Dropout(0.3, rng=r),
        nn.Linear(6 * 2 * 2, 12, rng=r),
        nn.ReLU(),
        nn.Linear(12, 10, rng=r),
    )
    path = ex.export_onnx(model, tmp_path / "m.onnx")
    x = r.random((5, 1, 28, 28), dtype=np.float32)
    assert np.abs(ex.run_onnx(path, x) - ex.model_logits(model, x)).max() < 1e-4
    import onnx

    assert dims(onnx.load(path).graph.output[0]) == ["batch", 10]


def test_export_accepts_a_model_file(onnx, tmp_path):
    mnist_cnn(4).save(tmp_path / "m.npz")
    ex.export_onnx(tmp_path / "m.npz", tmp_path / "m.onnx")
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "m.onnx").graph.initializer}
    assert (weights["0.weight"] == mnist_cnn(4).layers[0].weight.data).all()


@pytest.mark.parametrize(
    "layers,message",
    [
        (lambda: [nn.Conv2d(1, 4, 3), nn.Conv2d(3, 4, 3)], "needs 3 channels"),
        (lambda: [nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(100, 10)], "needs [batch, 100]"),
        (lambda: [nn.Conv2d(1, 4, 30)], "kernel is larger"),
        (lambda: [nn.MaxPool2d(29)], "at least 29 pixels"),
    ],
)
def test_models_that_do_not_fit_are_an_export_error(onnx, tmp_path, layers, message):
    with pytest.raises(ex.ExportError, match=message.replace("[", r"\[")):
        ex.export_onnx(nn.Sequential(*layers()), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_without_onnx_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install cnnfast\[onnx\]"):
        ex.export_onnx(mnist_cnn(0), tmp_path / "m.onnx")
    mnist_cnn(0).save(tmp_path / "m.npz")
    status = ex.main(["--model", str(tmp_path / "m.npz"), "--onnx", str(tmp_path / "m.onnx")])
    out, err = capsys.readouterr()
    assert status == 1 and out == "" and "pip install cnnfast[onnx]" in err
    assert not (tmp_path / "m.onnx").exists()


def test_check_without_onnxruntime(onnx, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    mnist_cnn(0).save(tmp_path / "m.npz")
    status = ex.main(["--model", str(tmp_path / "m.npz"), "--onnx", str(tmp_path / "m.onnx"), "--check"])
    assert status == 1 and "--check: running an ONNX file needs onnxruntime" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the command


def run(capsys, *argv):
    status = ex.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_command_writes_and_checks(ort, tmp_path, capsys):
    mnist_cnn(6).save(tmp_path / "m.npz")
    status, out, err = run(capsys, "--model", tmp_path / "m.npz", "--onnx", tmp_path / "m.onnx", "--check")
    assert status == 0 and err == ""
    assert f"wrote {tmp_path / 'm.onnx'}" in out and "Conv -> Relu -> MaxPool" in out
    assert "input  'input'  float32 [batch, 1, 28, 28]" in out and "within 0.0001" in out
    status, out, err = run(capsys, "--model", tmp_path / "m.npz", "--onnx", tmp_path / "n.onnx", "--check", "--json")
    data = json.loads(out)
    assert status == 0 and "wrote" in err
    assert data["operators"] == OPS and data["input"] == {"name": "input", "shape": ["batch", 1, 28, 28]}
    assert data["check_passed"] is True and data["max_abs_difference"] < 1e-4 and data["check_images"] == 256
    assert data["bytes"] == (tmp_path / "n.onnx").stat().st_size > 34_826 * 4


def test_check_reports_a_difference(ort, tmp_path, capsys, monkeypatch):
    mnist_cnn(6).save(tmp_path / "m.npz")
    real = ex.run_onnx
    monkeypatch.setattr(ex, "run_onnx", lambda path, x: real(path, x) + 1e-3)
    status, out, _ = run(capsys, "--model", tmp_path / "m.npz", "--onnx", tmp_path / "m.onnx", "--check")
    assert status == 1 and "ABOVE 0.0001" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "m.npz"], "the following arguments are required: --onnx"),
        (["--onnx", "/"], "is a directory"),
        (["--onnx", "/nonexistent-dir/m.onnx"], "no such directory"),
        (["--model", "/", "--onnx", "m.onnx"], "is a directory"),
        (["--onnx", "x.txt"], "--onnx x.txt: give a file name ending in .onnx (e.g. x.onnx)"),
        (["--onnx", "model"], "give a file name ending in .onnx (e.g. model.onnx)"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        ex.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_missing_and_bad_model(onnx, tmp_path, capsys):
    status, out, err = run(capsys, "--model", tmp_path / "none.npz", "--onnx", tmp_path / "m.onnx")
    assert status == 1 and "no model file" in err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    status, out, err = run(capsys, "--model", tmp_path / "bad.npz", "--onnx", tmp_path / "m.onnx")
    assert status == 1 and "cannot load the model" in err and not (tmp_path / "m.onnx").exists()


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ex.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for words in (
        "--model",
        "--onnx",
        "--check",
        "--json",
        "Conv, Relu, MaxPool, Flatten, Gemm",
        "[batch, 1, 28, 28]",
        "pip install cnnfast[onnx]",
    ):
        assert words in out


# ---------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return trained_model_path(tmp_path_factory)


@pytest.mark.slow
def test_trained_model_on_1000_test_images(ort, model_path, tmp_path):
    x_test, y_test = real_mnist()[2][:1000], real_mnist()[3][:1000]
    model = cnnfast.load_model(model_path)
    path = ex.export_onnx(model, tmp_path / "mnist_cnn.onnx")
    x = as_model_input(x_test)
    logits = ex.run_onnx(path, x)
    ours = ex.model_logits(model, x)
    assert np.abs(logits - ours).max() < 1e-4
    assert (logits.argmax(axis=1) == model.predict(x)).all()
    assert (logits.argmax(axis=1) == y_test).mean() > 0.85  # a trained model, not noise


def test_the_package_exports_export_onnx(onnx, tmp_path):
    assert "export_onnx" in cnnfast.__all__
    cnnfast.export_onnx(mnist_cnn(0), tmp_path / "m.onnx")
    assert [node.op_type for node in onnx.load(tmp_path / "m.onnx").graph.node] == OPS


# ---------------------------------------------------------------------------- issue 17's layers, any input shape


def every_new_layer_model(input_shape=(3, 20, 20)):
    r = np.random.default_rng(17)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding="same", bias=False, rng=r),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Residual(
            [nn.Conv2d(8, 8, (3, 1), padding=(1, 0), rng=r), nn.Tanh(), nn.Conv2d(8, 8, 2, padding="same", rng=r)]
        ),
        nn.Residual(
            [nn.Conv2d(8, 16, 3, padding=1, rng=r), nn.Sigmoid(), nn.Dropout(0.5, rng=r)],
            shortcut=[nn.Conv2d(8, 16, 1, bias=False, rng=r)],
        ),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        nn.AvgPool2d(2, stride=1),
        nn.Conv2d(16, 16, 3, padding="valid", rng=r),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10, rng=r),
        input_shape=input_shape,
    ).eval()


def test_every_new_layer_exports_and_onnxruntime_agrees(ort, tmp_path):
    import onnx

    model = every_new_layer_model()
    path = ex.export_onnx(model, tmp_path / "m.onnx")
    graph = onnx.load(path).graph
    ops = [node.op_type for node in graph.node]
    for op in ("LeakyRelu", "Tanh", "Sigmoid", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Gemm"):
        assert op in ops
    assert ops.count("Add") == 2 and "Dropout" not in ops
    assert dims(graph.input[0]) == ["batch", 3, 20, 20] and dims(graph.output[0]) == ["batch", 10]
    weights = {t.name for t in graph.initializer}
    assert {"0.weight", "3.block.0.bias", "4.shortcut.0.weight"} <= weights and "0.bias" not in weights
    for batch in (1, 6):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 20, 20)).astype(np.float32)
        assert np.abs(ex.run_onnx(path, x) - ex.model_logits(model, x)).max() < 1e-4


def cifar_like():
    r = np.random.default_rng(3)
    return nn.Sequential(
        nn.Conv2d(3, 16, 5, rng=r),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1, rng=r),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10, rng=r),
    )


def test_a_model_of_any_input_shape_exports_with_its_own_shape(ort, tmp_path):
    model = cifar_like()  # never run: it does not know its input shape, 28x28 is assumed and does not fit
    with pytest.raises(
        ex.ExportError, match=r"layer 7 .* gets input \[batch, 576\], needs \[batch, 784\].*input_shape"
    ):
        ex.export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    path = ex.export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 32, 32))
    assert np.abs(ex.run_onnx(path, x) - ex.model_logits(model, x)).max() < 1e-4
    model.forward(x)  # a batch through it: now it knows
    assert model.input_shape == (3, 32, 32)
    ex.export_onnx(model, tmp_path / "n.onnx")
    assert np.abs(ex.run_onnx(tmp_path / "n.onnx", x) - ex.model_logits(model, x)).max() < 1e-4


def test_command_takes_the_input_shape_from_the_model_file(ort, tmp_path, capsys):
    every_new_layer_model().save(tmp_path / "m.npz")
    status, out, err = run(capsys, "--model", tmp_path / "m.npz", "--onnx", tmp_path / "m.onnx", "--check", "--json")
    data = json.loads(out)
    assert status == 0 and data["input"]["shape"] == ["batch", 3, 20, 20] and data["check_passed"] is True
    assert "Add" in data["operators"] and data["max_abs_difference"] < 1e-4
    cifar_like().save(tmp_path / "old.npz")  # a file that records no shape: 28x28 does not fit
    status, out, err = run(capsys, "--model", tmp_path / "old.npz", "--onnx", tmp_path / "o.onnx", "--check")
    assert status == 1 and "--input-shape C,H,W" in err
    status, out, err = run(
        capsys, "--model", tmp_path / "old.npz", "--onnx", tmp_path / "o.onnx", "--check", "--input-shape", "3,32,32"
    )
    assert status == 0 and "[batch, 3, 32, 32]" in out and "within 0.0001" in out


def test_command_rejects_a_bad_input_shape(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ex.main(["--model", "m.npz", "--onnx", "m.onnx", "--input-shape", "3,x"])
    assert exit_info.value.code == 2 and "not sizes such as 3,32,32" in capsys.readouterr().err


def test_a_resnet_with_strided_convolutions_exports(ort, tmp_path):
    import onnx

    r = np.random.default_rng(8)

    def stage(c_in, c_out):
        return nn.Residual(
            [
                nn.Conv2d(c_in, c_out, 3, padding=1, stride=2, rng=r),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, rng=r),
            ],
            shortcut=[nn.Conv2d(c_in, c_out, 1, stride=2, bias=False, rng=r)],
        )

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, rng=r),
        nn.ReLU(),
        stage(8, 16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2, rng=r),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.GlobalAvgPool2d(),
        nn.Flatten(),
        nn.Linear(16, 10, rng=r),
        input_shape=(3, 32, 32),
    )
    path = ex.export_onnx(model, tmp_path / "m.onnx")
    strides = [
        onnx.helper.get_attribute_value(a)
        for node in onnx.load(path).graph.node
        for a in node.attribute
        if node.op_type == "Conv" and a.name == "strides"
    ]
    assert strides.count([2, 2]) == 3
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert np.abs(ex.run_onnx(path, x) - ex.model_logits(model, x)).max() < 1e-4
