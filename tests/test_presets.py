"""python -m cnnfast.train --preset (issue 15, items 4 and 5): each preset's short run learns
learnable synthetic digits; its model goes through load_model, evaluate, predict, sum_challenge
and export --onnx --check; flags override a preset's settings; the preset and its network are
settings of the run, so --resume continues a preset's run bit for bit and refuses another preset.
(The presets' accuracy on MNIST is measured by bench/time_to_accuracy.py, not here.)"""

import contextlib
import importlib
import io
import json

import numpy as np
import pytest

import cnnfast
from _argv import flags
from _idx_helpers import write_bar_mnist
from _stop_after import StopAfter
from cnnfast import checkpoint as ckpt
from cnnfast import nn, presets, train
from cnnfast.augment import Augment
from cnnfast.mnist import as_model_input
from test_train_schedules import weights

PRESETS = ("fast", "best")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("presets")
    _, _, x_test, y_test = write_bar_mnist(directory / "data")
    return {"data": directory / "data", "dir": directory, "test": (x_test, y_test)}


def run(command, argv, capsys):
    status = importlib.import_module(f"cnnfast.{command}").main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module", params=PRESETS)
def trained(request, data, tmp_path_factory):
    """(preset name, the model file of its short run, the run's JSON) on the bar digits."""
    name = request.param
    out = tmp_path_factory.mktemp(name) / f"{name}.npz"
    argv = flags(preset=name, data_dir=data["data"], no_verify=True, epochs=3, batch_size=64, out=out, json=True)
    if presets.get(name).augment is not None:  # (the bars' classes lie 2 pixels apart: distortions would mix them)
        argv.append("--no-augment")
    stdout = io.StringIO()  # (a module's fixture has no capsys: the JSON is stdout's last line)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert train.main(argv) == 0
    return name, out, json.loads(stdout.getvalue().strip().splitlines()[-1])


def test_a_short_preset_run_learns_and_saves_the_presets_network(trained, data):
    name, path, result = trained
    assert result["test_accuracy"] > 0.9 and result["epochs"] == 3
    model = cnnfast.load_model(path)
    assert model.architecture() == presets.get(name).architecture and not model.training
    x_test, y_test = data["test"]
    x = as_model_input(x_test)
    assert (model.predict(x) == y_test).mean() == pytest.approx(result["test_accuracy"])
    model.eval()
    np.testing.assert_allclose(model.infer(x), model.forward(x), rtol=1e-4, atol=1e-4)  # (BatchNorm folded)


def test_evaluate(trained, data, capsys):
    _, path, result = trained
    status, out, err = run("evaluate", ["--model", path, "--data-dir", data["data"], "--no-verify", "--json"], capsys)
    assert status == 0, err
    assert json.loads(out)["accuracy"] == pytest.approx(result["test_accuracy"])


def test_predict(trained, data, capsys):
    Image = pytest.importorskip("PIL.Image")
    _, path, _ = trained
    picture = np.full((28, 28), 255, np.uint8)  # dark ink on white paper, as predict expects photos
    picture[4:24, 12:16] = 0
    image = data["dir"] / f"digit-{path.stem}.png"
    Image.fromarray(picture).save(image)
    status, out, err = run("predict", ["--model", path, image, "--json"], capsys)
    assert status == 0, err
    result = json.loads(out)
    assert result["failed"] == 0 and result["predicted"] == 1  # (images predicted)
    assert sum(result["predictions"][0]["probabilities"]) == pytest.approx(1.0)


def test_sum_challenge(trained, data, capsys):
    _, path, _ = trained
    argv = ["--model", path, "--data-dir", data["data"], "--no-verify", "--trials", "20", "--json"]
    status, out, err = run("sum_challenge", argv, capsys)
    assert status == 0, err
    assert json.loads(out)["test_accuracy"] > 0.9


def test_export_onnx_check(trained, data, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import cnnfast.export as ex

    name, path, _ = trained
    onnx_path = path.with_suffix(".onnx")
    status, out, err = run("export", ["--model", path, "--onnx", onnx_path, "--check", "--json"], capsys)
    assert status == 0, err
    result = json.loads(out)
    n_batch_norms = sum(layer["type"].startswith("BatchNorm") for layer in presets.get(name).architecture)
    assert result["check_passed"] and result["operators"].count("BatchNormalization") == n_batch_norms
    x = as_model_input(data["test"][0][:50])
    np.testing.assert_allclose(ex.run_onnx(onnx_path, x), cnnfast.load_model(path).infer(x), atol=1e-4, rtol=1e-4)


def test_the_fast_preset_is_no_larger_than_the_classic_model():
    flops = {name: presets.forward_flops(preset.model()) for name, preset in presets.PRESETS.items()}
    assert flops["fast"] <= flops["classic"] == 4_881_920  # conv1 389,376 + conv2 4,460,544 + dense 32,000
    assert flops["best"] > flops["fast"]


def test_every_preset_builds_its_architecture_and_is_seeded():
    for name, preset in presets.PRESETS.items():
        a, b, c = preset.model(1), preset.model(1), preset.model(2)
        assert a.output_shape((1, 28, 28)) == (10,), name
        if preset.architecture is not None:
            assert a.architecture() == preset.architecture
        assert all((p.data == q.data).all() for p, q in zip(a.parameters(), b.parameters()))
        assert not all((p.data == q.data).all() for p, q in zip(a.parameters(), c.parameters()))
    assert presets.get("classic").model(3).architecture() == nn.mnist_cnn(3).architecture()
    with pytest.raises(ValueError, match="no preset 'huge'; the presets are fast, best, classic"):
        presets.get("huge")


def test_the_default_run_is_the_fast_preset_and_flags_override_a_preset():
    args = train.default_settings()
    fast = presets.get("fast")
    assert args.preset == "fast" and {k: getattr(args, k) for k in fast.settings} == fast.settings
    assert args.augment is None
    best, _ = train.parse_args(["--preset", "best"])
    assert (best.epochs, best.lr, best.augment) == (15, 3e-3, Augment(translate=0.1, elastic_alpha=0).settings())
    assert train.preset_changes(best) == ""
    best, _ = train.parse_args(["--preset", "best", "--epochs", "3", "--rotation", "5"])
    assert best.epochs == 3 and best.warmup_epochs == pytest.approx(0.9)  # the schedule fits the 3 epochs
    assert best.augment == dict(presets.get("best").augment, rotation=5.0)
    assert train.preset_changes(best) == " (changed: --epochs 3 --rotation 5)"
    elastic, _ = train.parse_args(["--preset", "best", "--elastic-alpha", "34"])
    assert train.preset_changes(elastic) == " (changed: --elastic-alpha 34)"
    assert train.preset_changes(train.parse_args(["--augment"])[0]) == " (changed: --augment)"  # (fast has none)
    assert train.parse_args(["--preset", "best", "--no-augment"])[0].augment is None
    sgd, _ = train.parse_args(["--optimizer", "sgd"])  # another optimizer: its own lr and weight decay
    assert (sgd.lr, sgd.weight_decay, sgd.schedule, sgd.epochs) == (0.01, 0.0, "onecycle", 2)
    classic, _ = train.parse_args(["--preset", "classic"])
    assert (classic.epochs, classic.optimizer, classic.lr, classic.schedule) == (15, "adam", 1e-3, "constant")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        (["--no-augment", "--rotation", "5"], "--no-augment contradicts --rotation"),
    ],
)
def test_bad_preset_flags_fail_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_preset_run_resumes_bit_for_bit_and_refuses_another_preset(data, tmp_path, monkeypatch, threads, capsys):
    """The best preset (augmented, its own network) for 2 epochs straight, and stopped mid-epoch 2
    then resumed with --resume alone: the same weights; the checkpoint names the preset and holds
    the network."""
    common = flags(preset="best", data_dir=data["data"], no_verify=True, epochs=2, batch_size=64, limit=320)
    assert train.main(common + ["--out", str(tmp_path / "straight.npz")]) == 0
    assert "preset best (changed: --epochs 2 --batch-size 64)" in capsys.readouterr().out
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(8))  # 5 steps an epoch: mid-epoch 2
        assert train.main(common + ["--out", str(tmp_path / "m.npz")]) == 130
    state = ckpt.load(tmp_path / "m.ckpt.npz")
    assert state.settings["preset"] == "best" and state.settings["architecture"] == presets.get("best").architecture
    for change, message in [
        (["--preset", "fast"], "--preset fast contradicts the checkpoint's --preset best"),
        (["--no-augment"], "--no-augment contradicts the checkpoint's augmented run"),
    ]:
        with pytest.raises(SystemExit):
            train.main(["--resume", str(tmp_path / "m.ckpt.npz"), *change])
        assert message in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path / "m.ckpt.npz")]) == 0
    assert weights(tmp_path / "m.npz") == weights(tmp_path / "straight.npz")


def test_a_checkpoint_from_before_the_presets_resumes_the_classic_model(data, tmp_path, monkeypatch, threads, capsys):
    """Checkpoints written before --preset existed hold neither "preset" nor "architecture": they
    trained the classic model, and resume as that."""
    common = flags(preset="classic", data_dir=data["data"], no_verify=True, epochs=1, batch_size=64, limit=320)
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(3))
        assert train.main(common + ["--out", str(tmp_path / "m.npz")]) == 130
    path = tmp_path / "m.ckpt.npz"
    state = ckpt.load(path)
    del state.settings["preset"], state.settings["architecture"]
    ckpt.save(state, path)
    assert ckpt.load(path).settings["preset"] == "classic"
    assert train.main(["--resume", str(path)]) == 0
    assert "preset classic" in capsys.readouterr().out
    assert cnnfast.load_model(tmp_path / "m.npz").architecture() == nn.mnist_cnn().architecture()
