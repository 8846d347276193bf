"""What every command shares (README, Commands): --json puts one JSON object on stdout and the
human text on stderr; without it the text is on stdout."""

import importlib
import json

import numpy as np
import pytest

from _idx_helpers import synthetic_mnist, write_mnist_dir
from cnnfast import nn


@pytest.fixture
def workspace(tmp_path):
    """Synthetic MNIST (every digit in the test split), an untrained model file and a digit image."""
    data = tmp_path / "data"
    arrays = synthetic_mnist(n_train=300, n_test=100, seed=1)
    assert set(arrays["t10k-labels-idx1-ubyte"]) == set(range(10))
    write_mnist_dir(data, arrays)
    model = nn.mnist_cnn(seed=0).save(tmp_path / "model.npz")
    image = tmp_path / "digit.png"
    Image = pytest.importorskip("PIL.Image")
    picture = np.full((40, 30), 255, np.uint8)
    picture[8:32, 13:17] = 0  # a dark "1" on white paper
    Image.fromarray(picture).save(image)
    return {"data": data, "model": model, "image": image, "dir": tmp_path}


ARGS = {
    "train": lambda w: ["--data-dir", w["data"], "--no-verify", "--epochs", "1", "--out", w["dir"] / "new.npz"],
    "evaluate": lambda w: ["--model", w["model"], "--data-dir", w["data"], "--no-verify", "--mistakes", "2"],
    "predict": lambda w: ["--model", w["model"], w["image"]],
    "sum_challenge": lambda w: ["--model", w["model"], "--data-dir", w["data"], "--no-verify", "--trials", "20"],
    "backprop": lambda w: [],
    "export": lambda w: ["--model", w["model"], "--onnx", w["dir"] / "model.onnx"],
}


def run(command, argv, capsys):
    if command == "export":
        pytest.importorskip("onnx")
    status = importlib.import_module(f"cnnfast.{command}").main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("command", list(ARGS))
def test_json_is_all_that_goes_to_stdout(command, workspace, capsys):
    status, out, err = run(command, ARGS[command](workspace) + ["--json"], capsys)
    assert status == 0, err
    assert out.endswith("}\n") and out.count("\n") == 1  # one object, on one line
    assert isinstance(json.loads(out), dict)
    assert len(err.strip().splitlines()) >= 1  # the text a person reads went to stderr


@pytest.mark.parametrize("command", list(ARGS))
def test_without_json_the_text_is_on_stdout(command, workspace, capsys):
    status, out, err = run(command, ARGS[command](workspace), capsys)
    assert status == 0, err
    assert out.strip() and not out.lstrip().startswith("{")


def test_an_output_file_that_cannot_be_written_is_status_1(tmp_path, capsys):
    """An I/O error is exit status 1 in every command; backprop's --dot said 2."""
    (tmp_path / "taken").mkdir()
    status, _, err = run("backprop", ["--dot", tmp_path / "taken"], capsys)
    assert status == 1 and "cannot write" in err
