"""python -m cnnfast.evaluate: exact numbers with a stand-in model whose mistakes are known,
the report and --json, errors and exit codes, and a real run that agrees with cnnfast.train."""

import json
import os
import sys

import numpy as np
import pytest

import cnnfast
import cnnfast._cli
import cnnfast.datasets
import cnnfast.evaluate as ev
import cnnfast.train
from _trained_model import real_mnist, trained_model_path
from cnnfast import mnist
from cnnfast.datasets import DatasetError
from conftest import mnist_dir


def synthetic(n: int, first_id: int):
    """Images whose pixel (0,0) is their label and (0,1),(0,2) a unique id; label = i % 10, and
    a bar whose position depends on the label, so the pictures differ."""
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        images[i, 6:22, 4 + 2 * label : 8 + 2 * label] = 255
        ident = first_id + i
        images[i, 0, :3] = label, ident % 256, ident // 256
    return images, labels.astype(np.uint8)


X_TEST, Y_TEST = synthetic(50, 0)
X_TRAIN, Y_TRAIN = synthetic(80, 1000)


class StandIn:
    """Answers mapping[true label] (or overrides[id] for one image) with probability confidence[id]
    (default 0.9), the rest spread evenly."""

    def __init__(self, mapping=None, overrides=None, confidence=None, classes=10):
        self.mapping, self.overrides = dict(mapping or {}), dict(overrides or {})
        self.confidence, self.classes = dict(confidence or {}), classes

    def predict_proba(self, images):
        if images.dtype != np.uint8:  # the model input the commands make: float32 [N, 1, 28, 28] in [0, 1]
            images = np.rint(images[:, 0] * 255).astype(np.uint8)
        labels = images[:, 0, 0].astype(np.int64)
        ids = images[:, 0, 1].astype(np.int64) + 256 * images[:, 0, 2].astype(np.int64)
        proba = np.zeros((len(images), self.classes))
        for row, (t, i) in enumerate(zip(labels, ids)):
            p = self.confidence.get(int(i), 0.9)
            proba[row] = (1 - p) / (self.classes - 1)
            proba[row, self.overrides.get(int(i), self.mapping.get(int(t), int(t)))] = p
        return proba


# test ids 3, 13, 23, 33, 43 are threes: read as 8, four of them, with different confidences;
# id 7 (a seven) is read as 1 with the highest confidence of all
MODEL = StandIn({3: 8}, overrides={43: 3, 7: 1}, confidence={3: 0.6, 13: 0.95, 23: 0.7, 33: 0.95, 7: 0.99})


# ---------------------------------------------------------------------------- the pure functions


def test_confusion_matrix_counts_true_rows_predicted_columns():
    cm = ev.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 0])
    assert cm.shape == (10, 10) and cm.sum() == 6
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 1 and cm[2, 2] == 1 and cm[2, 0] == 2


def test_per_class_precision_recall_and_undefined_cases():
    rows = ev.per_class(ev.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 0]))
    assert rows[0] == {"digit": 0, "images": 2, "predicted": 3, "correct": 1, "precision": 1 / 3, "recall": 0.5}
    assert rows[1]["precision"] == 0.5 and rows[1]["recall"] == 1.0
    assert rows[2]["precision"] == 1.0 and rows[2]["recall"] == 1 / 3
    assert rows[5] == {"digit": 5, "images": 0, "predicted": 0, "correct": 0, "precision": None, "recall": None}


def test_summary_of_the_stand_in():
    labels = Y_TEST.astype(np.int64)
    s = ev.summarize(labels, MODEL.predict_proba(X_TEST), mistakes=8)
    assert s["images"] == 50 and s["wrong"] == 5 and s["correct"] == 45 and s["accuracy"] == 0.9
    cm = np.array(s["confusion_matrix"])
    assert cm[3, 8] == 4 and cm[3, 3] == 1 and cm[7, 1] == 1 and cm[7, 7] == 4 and np.trace(cm) == 45
    three, eight = s["per_class"][3], s["per_class"][8]
    assert three["recall"] == 0.2 and three["precision"] == 1.0
    assert eight["precision"] == 5 / 9 and eight["recall"] == 1.0 and eight["predicted"] == 9
    expected_loss = (
        -(45 * np.log(0.9) + np.log(0.4 / 9) + 2 * np.log(0.05 / 9) + np.log(0.3 / 9) + np.log(0.01 / 9)) / 50
    )  # 45 right at 0.9, then the 4 threes and the seven
    assert s["loss"] == pytest.approx(expected_loss, rel=1e-12)
    # most confident first; equal confidence (13 and 33 at 0.95): lower index first
    assert [m["index"] for m in s["mistakes"]] == [7, 13, 33, 23, 3]
    assert s["mistakes"][0] == {
        "index": 7,
        "true": 7,
        "predicted": 1,
        "probability": 0.99,
        "true_probability": pytest.approx(0.01 / 9),
    }
    assert [m["index"] for m in ev.summarize(labels, MODEL.predict_proba(X_TEST), mistakes=2)["mistakes"]] == [7, 13]


def test_scores_match_the_training_loss_definition():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((30, 10)) * 3
    labels = rng.integers(0, 10, 30)
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss, accuracy = ev.scores(labels, proba)
    loss_f, _ = cnnfast.functional.softmax_cross_entropy(logits.astype(np.float32), labels)
    assert loss == pytest.approx(loss_f, rel=1e-5)
    assert accuracy == (logits.argmax(axis=1) == labels).mean()


def test_confusion_table_text():
    cm = ev.confusion_matrix(Y_TEST, MODEL.predict_proba(X_TEST).argmax(axis=1))
    lines = ev.render_confusion(cm)
    assert lines[0].split() == ["true\\pred", *map(str, range(10)), "images"]
    three = lines[1 + 3].split()
    assert three == ["3", ".", ".", ".", "1", ".", ".", ".", ".", "4", ".", "5"]
    assert lines[-1].split() == ["predicted", "5", "6", "5", "1", "5", "5", "5", "4", "9", "5"]
    # a zero on the diagonal is a 0, not a '.'
    assert ev.render_confusion(np.zeros((10, 10), int))[1].split()[1] == "0"


def test_mistake_pictures_fit_the_width_and_name_each_mistake():
    mistakes = ev.summarize(Y_TEST, MODEL.predict_proba(X_TEST))["mistakes"]
    for columns in (40, 80, 120, 200):
        lines = ev.render_mistakes(X_TEST, mistakes, columns)
        assert max(len(line) for line in lines) <= max(columns, 30)
        text = "\n".join(lines)
        for m in mistakes:
            assert f"#{m['index']}" in text and f"p({m['predicted']}) = {m['probability']:.3f}" in text
    lines = ev.render_mistakes(X_TEST, mistakes, 120)
    assert lines[0].count("\u250c") == 3  # three framed 28x28 pictures per row at 120 columns


def test_mistake_pictures_in_ascii_where_blocks_cannot_be_printed():
    class Ascii:
        encoding = "ascii"

    lines = ev.render_mistakes(X_TEST, ev.summarize(Y_TEST, MODEL.predict_proba(X_TEST))["mistakes"], 120, Ascii())
    "\n".join(lines).encode("ascii")  # raises if anything is not ASCII
    assert lines[0].startswith("+----")


# ---------------------------------------------------------------------------- the command


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Synthetic MNIST and a model file that loads as the stand-in `fake.model`."""

    class Fake:
        model = MODEL
        path = tmp_path / "model.npz"
        loads = []
        data_loads = []

    Fake.path.write_bytes(b"stand-in")

    def data(data_dir, no_verify):  # cnnfast._cli.load_mnist
        Fake.data_loads.append((data_dir, not no_verify))
        return X_TRAIN, Y_TRAIN, X_TEST, Y_TEST

    def load(path):
        Fake.loads.append(path)
        return Fake.model

    monkeypatch.setattr(ev, "load_mnist", data)
    monkeypatch.setattr(ev, "load_model", load)
    return Fake


def run(capsys, *argv):
    status = ev.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_command_report(fake, capsys):
    status, out, err = run(capsys, "--model", fake.path, "--data-dir", "somewhere")
    assert status == 0 and err == ""
    assert fake.data_loads == [("somewhere", True)]
    assert f"Model {fake.path} on the MNIST test split (50 images)" in out
    assert "accuracy  90.00%   (45 right, 5 wrong)" in out
    assert ["3", "100.00%", "20.00%", "5", "1"] in [line.split() for line in out.splitlines()]
    assert "The 5 most confident mistakes (of 5)" in out
    assert out.count("\u250c") == 5 and "true 7  pred 1" in out and "p(1) = 0.990" in out
    names = [line.split() for line in out.splitlines() if line.startswith("#")]
    assert names == [["#7", "#13", "#33"], ["#23", "#3"]]  # most confident first, three per row


def test_command_json_is_the_only_output(fake, capsys):
    status, out, err = run(capsys, "--model", fake.path, "--json", "--mistakes", "3", "--no-verify")
    assert status == 0 and "accuracy  90.00%" in err  # the report goes to stderr (the rule of every command)
    data = json.loads(out)
    assert fake.data_loads == [(None, False)]
    assert data["model"] == str(fake.path) and data["split"] == "test" and data["images"] == 50
    assert data["accuracy"] == 0.9 and data["wrong"] == 5
    assert np.array(data["confusion_matrix"]).sum() == 50 and data["confusion_matrix"][3][8] == 4
    assert [m["index"] for m in data["mistakes"]] == [7, 13, 33]
    assert data["per_class"][8]["precision"] == 5 / 9


def test_train_split(fake, capsys):
    fake.model = StandIn({9: 4})
    status, out, _ = run(capsys, "--model", fake.path, "--split", "train", "--json", "--mistakes", "100")
    data = json.loads(out)
    assert status == 0 and data["split"] == "train" and data["images"] == 80
    assert data["confusion_matrix"][9][4] == 8 and data["wrong"] == 8 and len(data["mistakes"]) == 8
    assert all(Y_TRAIN[m["index"]] == 9 for m in data["mistakes"])


def test_no_mistakes_and_none_asked(fake, capsys):
    fake.model = StandIn()
    status, out, _ = run(capsys, "--model", fake.path)
    assert status == 0 and "No mistakes." in out and "\u250c" not in out
    fake.model = MODEL
    status, out, _ = run(capsys, "--model", fake.path, "--mistakes", "0")
    assert status == 0 and "most confident" not in out and "\u250c" not in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--mistakes", "-1"], "--mistakes must be between 0 and"),
        (["--width", "10"], "--width must be at least 40"),
        (["--split", "validation"], "invalid choice: 'validation'"),
        (["--plot", "out.txt"], "give a .png, .pdf or .svg"),
        (["--plot", "/nonexistent-dir/out.png"], "no such directory"),
        (["--model", "/"], "is a directory"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2(fake, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        ev.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert fake.loads == [] and fake.data_loads == []


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for flag in ("--model", "--data-dir", "--no-verify", "--json", "--plot", "--mistakes", "--split", "--width"):
        assert flag in out
    assert "confusion matrix" in out and "pip install cnnfast[plot]" in out


def test_missing_model_file(tmp_path, capsys):
    status, out, err = run(capsys, "--model", tmp_path / "none.npz")
    assert status == 1 and out == ""
    assert "no model file" in err and "python -m cnnfast.train" in err


def test_bad_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model at all")
    status, out, err = run(capsys, "--model", bad)
    assert status == 1 and out == "" and "cannot load the model" in err and str(bad) in err


def test_model_that_does_not_fit_mnist(fake, capsys, tmp_path):
    class Seven:
        def predict_proba(self, images):
            return np.full((len(images), 7), 1 / 7)

    fake.model = Seven()
    status, out, err = run(capsys, "--model", fake.path)
    assert status == 1 and out == "" and "does not fit 28x28 MNIST digits" in err
    # a real model whose first layer wants 3 channels
    path = tmp_path / "rgb.npz"
    cnnfast.nn.Sequential(cnnfast.nn.Conv2d(3, 2, 3), cnnfast.nn.Flatten(), cnnfast.nn.Linear(2 * 26 * 26, 10)).save(
        path
    )
    fake.model = cnnfast.load_model(path)
    status, out, err = run(capsys, "--model", fake.path)
    assert status == 1 and "does not fit" in err


def test_missing_data_is_reported_in_the_commands_words(fake, monkeypatch, capsys):
    def fail(root=None, download=True, verify=True):
        raise DatasetError(
            "MNIST data not found.\nProvide them by passing root=DIR",
            "MNIST data not found.\nProvide them with --data-dir DIR",
        )

    monkeypatch.setattr(ev, "load_mnist", cnnfast._cli.load_mnist)
    monkeypatch.setattr(cnnfast.datasets, "load_mnist", fail)
    status, out, err = run(capsys, "--model", fake.path, "--json", "--data-dir", "nowhere")
    assert status == 1 and out == "" and "error: MNIST data not found." in err
    assert "--data-dir DIR" in err and "root=" not in err


def test_plot_without_matplotlib_fails_before_any_work(fake, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    status, out, err = run(capsys, "--model", fake.path, "--plot", tmp_path / "e.png")
    assert status == 1 and "--plot needs matplotlib: pip install cnnfast[plot]" in err
    assert fake.loads == [] and fake.data_loads == [] and not (tmp_path / "e.png").exists()


def test_plot(fake, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    status, out, err = run(capsys, "--model", fake.path, "--plot", tmp_path / "e.png", "--json")
    assert status == 0 and json.loads(out)["wrong"] == 5 and "wrote" in err
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- real MNIST


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return trained_model_path(tmp_path_factory)


@pytest.mark.slow
def test_real_model_agrees_with_the_training_evaluation(model_path, capsys):
    x_train, y_train, x_test, y_test = real_mnist()
    status, out, err = run(capsys, "--model", model_path, "--json", "--mistakes", "20")
    assert status == 0 and err.startswith(f"cnnfast: MNIST from {os.path.abspath(mnist_dir())} ($CNNFAST_DATA)\n")
    assert "Confusion matrix" in err  # the report, on stderr with --json
    data = json.loads(out)
    model = cnnfast.load_model(model_path)
    loss, accuracy = cnnfast.train.evaluate(model, x_test, y_test)
    assert data["images"] == 10_000 and data["accuracy"] == accuracy and 0.85 < accuracy < 0.99
    assert data["loss"] == pytest.approx(loss, rel=1e-5)
    cm = np.array(data["confusion_matrix"])
    assert (cm.sum(axis=1) == np.bincount(y_test, minlength=10)).all() and np.trace(cm) == data["correct"]
    assert [row["images"] for row in data["per_class"]] == np.bincount(y_test, minlength=10).tolist()
    pred = model.predict(mnist.as_model_input(x_test))
    for m in data["mistakes"]:
        assert m["true"] == y_test[m["index"]] != pred[m["index"]] == m["predicted"]
    confidences = [m["probability"] for m in data["mistakes"]]
    assert confidences == sorted(confidences, reverse=True) and len(confidences) == 20
    wrong = np.flatnonzero(pred != y_test)
    assert confidences[0] == pytest.approx(mnist.probabilities(model, x_test[wrong]).max())


@pytest.mark.slow
def test_real_report_text(model_path, capsys):
    status, out, err = run(capsys, "--model", model_path, "--mistakes", "4", "--width", "80")
    assert status == 0 and err.startswith("cnnfast: MNIST from ") and err.count("\n") == 1
    assert "on the MNIST test split (10,000 images)" in " ".join(out.split()) and "Confusion matrix" in out
    assert out.count("\u250c") == 4 and max(len(line) for line in out.splitlines()) <= 120
