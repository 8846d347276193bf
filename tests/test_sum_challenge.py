"""python -m cnnfast.sum_challenge: every statistic exact with stand-in models whose mistakes are
known, reproducible with a seed, and a short real run on MNIST."""

import json
import re
import sys
import time

import numpy as np
import pytest

import cnnfast
import cnnfast._cli
import cnnfast.datasets
import cnnfast.mnist
import cnnfast.sum_challenge as sc
import cnnfast.train
from cnnfast._terminal import digit_picture
from cnnfast.datasets import DatasetError
from conftest import mnist_dir

PER_TEST, PER_TRAIN = 3, 5  # images per digit in the synthetic splits


def synthetic(per_class: int, first_id: int):
    """Images whose pixel (0,0) is their label and (0,1),(0,2) a unique id; label = i % 10.
    A bar whose position depends on the label makes them visible in the terminal too."""
    n = 10 * per_class
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        images[i, 6:22, 4 + 2 * label : 8 + 2 * label] = 255
        ident = first_id + i
        images[i, 0, :3] = label, ident % 256, ident // 256
    return images, labels.astype(np.uint8)


X_TEST, Y_TEST = synthetic(PER_TEST, 0)
X_TRAIN, Y_TRAIN = synthetic(PER_TRAIN, 1000)
LABELS = Y_TEST.astype(np.int64)


class StandIn:
    """Answers mapping[true label], or overrides[id] for the image with that id; probability 0.9."""

    def __init__(self, mapping=None, overrides=None, classes=10):
        self.mapping = dict(mapping or {})
        self.overrides = dict(overrides or {})
        self.classes = classes

    def predict_proba(self, images):
        if images.dtype != np.uint8:  # the model input the commands make: float32 [N, 1, 28, 28] in [0, 1]
            images = np.rint(images[:, 0] * 255).astype(np.uint8)
        labels = images[:, 0, 0].astype(np.int64)
        ids = images[:, 0, 1].astype(np.int64) + 256 * images[:, 0, 2].astype(np.int64)
        pred = np.array([self.overrides.get(i, self.mapping.get(t, t)) for t, i in zip(labels, ids)], np.int64)
        proba = np.full((len(images), self.classes), 0.1 / 9)
        proba[np.arange(len(images)), pred] = 0.9
        return proba

    def predict(self, images):
        return self.predict_proba(images).argmax(axis=1)


def preds(model, images=X_TEST):
    return model.predict(images)


def draw(mode, model, trials=200, seed=0):
    pred = preds(model)
    t = sc.draw_trials(mode, LABELS, pred, trials, np.random.default_rng(seed))
    return t, sc.statistics(mode, t, LABELS, pred)


def check_consistent(t, labels=LABELS, pred=None):
    assert t["indices"].shape == t["true"].shape == t["pred"].shape
    assert (labels[t["indices"]] == t["true"]).all()
    if pred is not None:
        assert (pred[t["indices"]] == t["pred"]).all()


# ---------------------------------------------------------------------------- the pure functions


@pytest.mark.parametrize("mode", ["per-class", "by-prediction", "random"])
def test_perfect_model_always_passes(mode):
    t, s = draw(mode, StandIn())
    check_consistent(t, pred=LABELS)
    assert s["pass_rate"] == 1.0 and s["passes"] == 200 and s["lucky_passes"] == 0
    assert s["expected_pass_rate"] == 1.0 and s["histogram"] == {0: 200}
    if mode != "random":
        assert (t["true"] == np.arange(10)).all() and (t["pred"] == np.arange(10)).all()
        assert s["mean_sum"] == 45.0 and s["sd_sum"] == 0.0
    else:
        assert (t["sum"] == t["true"].sum(axis=1)).all() and s["sd_sum"] > 0
        assert all(len(set(row)) == 10 for row in t["indices"].tolist())  # ten distinct images


def test_three_read_as_eight():
    t, s = draw("per-class", StandIn({3: 8}))
    check_consistent(t)
    assert (t["sum"] == 50).all() and (t["target"] == 45).all()
    assert s == {
        **s,
        "pass_rate": 0.0,
        "passes": 0,
        "lucky_passes": 0,
        "all_right": 0,
        "mean_sum": 50.0,
        "sd_sum": 0.0,
        "mean_difference": 5.0,
        "histogram": {5: 200},
        "expected_pass_rate": 0.0,
    }
    assert sc.verdict(50, 45) == "above 45: the challenge reads this as overfitting"
    assert sc.verdict(40, 45) == "below 45: the challenge reads this as underfitting"
    assert sc.verdict(45, 45) == "= 45: pass"
    # by-prediction: nothing is ever classified as 3, so no trial can be formed
    with pytest.raises(sc.NoTrials, match=r"classifies none of the 30 test images as 3\b"):
        draw("by-prediction", StandIn({3: 8}))


def test_cancelling_errors_pass_by_luck():
    swap = StandIn({3: 4, 4: 3})
    for mode in ("per-class", "by-prediction"):
        t, s = draw(mode, swap)
        assert (t["sum"] == 45).all() and (t["target"] == 45).all()
        assert s["pass_rate"] == 1.0 and s["lucky_passes"] == 200 and s["all_right"] == 0
        assert s["expected_pass_rate"] == 0.0  # recall (precision) of 3 and 4 is 0
    t, s = draw("random", swap)
    check_consistent(t, pred=preds(swap))
    threes, fours = (t["true"] == 3).sum(axis=1), (t["true"] == 4).sum(axis=1)
    assert (t["sum"] - t["target"] == threes - fours).all()
    assert s["passes"] == (threes == fours).sum()
    assert s["lucky_passes"] == ((threes == fours) & (threes > 0)).sum() > 0
    assert s["all_right"] == ((threes == 0) & (fours == 0)).sum()
    assert s["expected_pass_rate"] == pytest.approx(np.prod([(24 - k) / (30 - k) for k in range(10)]))


def test_one_wrong_image():
    wrong = 3  # the image with id 3 (the first 3) is read as 8; the other 29 are right
    model = StandIn(overrides={wrong: 8})
    t, s = draw("per-class", model, trials=4000)
    hit = t["indices"][:, 3] == wrong
    assert (t["sum"] == 45 + 5 * hit).all()
    assert s["passes"] == (~hit).sum() and s["lucky_passes"] == 0
    assert s["expected_pass_rate"] == pytest.approx(2 / 3)
    assert 1200 < hit.sum() < 1467  # one of three 3s: 1333 expected, sd 30
    t, s = draw("by-prediction", model, trials=4000)
    check_consistent(t, pred=preds(model))
    assert (t["pred"] == np.arange(10)).all()
    hit = t["indices"][:, 8] == wrong  # classified as 8: the three 8s and the wrong 3
    assert sorted(set(t["indices"][:, 8].tolist())) == [3, 8, 18, 28]
    assert (t["sum"] == 45 - 5 * hit).all() and s["passes"] == (~hit).sum()
    assert s["expected_pass_rate"] == pytest.approx(3 / 4)
    assert 850 < hit.sum() < 1150
    t, s = draw("random", model, trials=4000)
    hit = (t["indices"] == wrong).any(axis=1)
    assert (t["sum"] - t["target"] == 5 * hit).all()
    assert s["expected_pass_rate"] == pytest.approx(20 / 30)  # 1 - P(the wrong one among 10 of 30)


@pytest.mark.parametrize("mode", ["per-class", "by-prediction", "random"])
def test_seed_reproducible_and_first_trials_fixed(mode):
    model = StandIn(overrides={3: 8, 14: 2})
    a, _ = draw(mode, model, trials=50, seed=7)
    b, _ = draw(mode, model, trials=50, seed=7)
    c, _ = draw(mode, model, trials=50, seed=8)
    short, _ = draw(mode, model, trials=5, seed=7)
    assert all((a[k] == b[k]).all() for k in a)
    assert not (a["indices"] == c["indices"]).all()
    assert (short["indices"] == a["indices"][:5]).all()  # trial 1 does not depend on --trials


def test_thousand_trials_are_fast():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 60000)
    pred = np.where(rng.random(60000) < 0.02, rng.integers(0, 10, 60000), labels)
    for mode in ("per-class", "by-prediction", "random"):
        start = time.perf_counter()
        t = sc.draw_trials(mode, labels, pred, 1000, np.random.default_rng(1))
        sc.statistics(mode, t, labels, pred)
        assert time.perf_counter() - start < 1.0, mode


def test_evidence_and_reading():
    proba = np.array([[0.5, 0.5] + [0] * 8, [0.25] * 4 + [0] * 6, [0] * 9 + [1.0]])
    loss, acc = cnnfast.mnist.scores(np.array([1, 0, 9]), proba)
    assert loss == pytest.approx((np.log(2) + np.log(4) + 0) / 3) and acc == pytest.approx(2 / 3)
    over = sc.evidence((0.01, 0.999), (0.3, 0.95))
    assert over["accuracy_gap"] == pytest.approx(0.049) and "suggests overfitting" in over["reading"]
    assert "underfitting" not in over["reading"]
    under = sc.evidence((0.4, 0.90), (0.4, 0.89))
    assert "suggests underfitting" in under["reading"] and "overfitting" not in under["reading"]
    both = sc.evidence((0.2, 0.96), (0.5, 0.90))
    assert "suggests overfitting" in both["reading"] and "suggests underfitting" in both["reading"]
    fine = sc.evidence((0.02, 0.995), (0.03, 0.99))
    assert "no sign of over- or underfitting" in fine["reading"]


@pytest.mark.parametrize("columns", [80, 120, 200])
def test_picture_fits_and_marks_wrong(columns):
    """The ten digits as evaluate draws them (framed half-block pictures, 30 wide), as many per
    row as fit, each captioned; one WRONG."""
    model = StandIn({3: 8})
    t, _ = draw("per-class", model, trials=1)
    first = {k: v[0] for k, v in t.items()}
    lines = sc.render_trial(X_TEST, first, model.predict_proba(X_TEST), columns)
    assert max(len(line) for line in lines) <= columns
    per_row = (columns + 2) // 32
    assert max(line.count("\u250c") for line in lines) == per_row  # frames of digit_picture
    assert sum(line.count("\u250c") for line in lines) == 10
    assert lines[1].startswith(digit_picture(X_TEST[first["indices"][0]])[1])  # evaluate's drawing

    def captions(word):
        return [w for line in lines if line.startswith(word) for w in line.split()[1::2]]

    assert captions("true") == [str(d) for d in range(10)]
    assert captions("pred") == ["0", "1", "2", "8", "4", "5", "6", "7", "8", "9"]
    assert captions("p ") == ["0.900"] * 10
    wrong = [line for line in lines if "WRONG" in line]
    assert len(wrong) == 1 and wrong[0].count("WRONG") == 1
    assert wrong[0].index("WRONG") == (3 % per_row) * 32


# ---------------------------------------------------------------------------- the command


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Synthetic MNIST and a model file that loads as the stand-in `fake.model`."""

    class Fake:
        model = StandIn()
        path = tmp_path / "model.npz"
        loads = []

    Fake.path.write_bytes(b"stand-in")
    monkeypatch.setattr(sc, "load_mnist", lambda data_dir, no_verify: (X_TRAIN, Y_TRAIN, X_TEST, Y_TEST))

    def load(path):
        Fake.loads.append(path)
        return Fake.model

    monkeypatch.setattr(sc, "load_model", load)
    return Fake


def run(capsys, *argv):
    status = sc.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_command_text_three_as_eight(fake, capsys):
    fake.model = StandIn({3: 8})
    status, out, err = run(capsys, "--model", fake.path, "--trials", "20")
    assert status == 0 and err == ""
    assert "Mode per-class: one random test image of each true digit 0..9" in out
    assert "predicted digits 0+1+2+8+4+5+6+7+8+9 = 50   (true sum 45)" in out
    assert "verdict: above 45: the challenge reads this as overfitting" in out
    assert re.search(r"\n  pass rate +0\.00%   0 of 20 with predicted sum = 45\n", out)
    assert re.search(r"\n  passed by luck +0   ", out)
    assert re.search(r"\n  expected pass rate +0\.00%   if errors never cancelled", out)
    assert re.search(r"\n  predicted sum mean +50\.00   standard deviation 0\.00\n", out)
    assert "+5 | " + "#" * 50 + " 20" in out
    assert "heuristic, not a diagnosis" in out
    assert re.search(r"\n  train +50 +90\.00% ", out) and re.search(r"\n  test +30 +90\.00% ", out)
    assert "reading: accuracy is below 97% on both sets: suggests underfitting" in out
    picture = out.split("Trial 1\n")[1].split("predicted digits")[0].splitlines()
    assert len(picture) >= 9 and max(map(len, picture)) <= 120
    assert sum("WRONG" in line for line in picture) == 1


def test_command_json(fake, capsys):
    fake.model = StandIn({3: 4, 4: 3})
    status, out, err = run(capsys, "--model", fake.path, "--trials", "150", "--seed", "3", "--json")
    assert status == 0 and "Trial 1" in err  # the text goes to stderr, stdout is only JSON
    data = json.loads(out)
    assert {
        "trials": 150,
        "mode": "per-class",
        "split": "test",
        "seed": 3,
        "pass_rate": 1.0,
        "lucky_passes": 150,
        "mean_sum": 45.0,
        "sd_sum": 0.0,
        "expected_pass_rate": 0.0,
        "train_accuracy": 0.8,
        "test_accuracy": 0.8,
    }.items() <= data.items()
    assert len(data["samples"]) == 100
    for sample in data["samples"]:
        assert Y_TEST[sample["indices"]].tolist() == sample["true"] == list(range(10))
        assert X_TEST[sample["indices"], 0, 0].tolist() == sample["true"]  # the image itself
        assert sample["pred"] == [0, 1, 2, 4, 3, 5, 6, 7, 8, 9] and sample["sum"] == 45


@pytest.mark.parametrize("mode,split", [("by-prediction", "test"), ("random", "train"), ("per-class", "train")])
def test_command_json_indices_point_at_their_images(fake, capsys, mode, split):
    fake.model = StandIn(overrides={3: 8, 1005: 2})
    status, out, _ = run(capsys, "--model", fake.path, "--trials", "30", "--mode", mode, "--split", split, "--json")
    assert status == 0
    data = json.loads(out)
    images, labels = (X_TEST, Y_TEST) if split == "test" else (X_TRAIN, Y_TRAIN)
    pred = fake.model.predict(images)
    assert data["mode"] == mode and data["split"] == split and len(data["samples"]) == 30
    for sample in data["samples"]:
        assert labels[sample["indices"]].tolist() == sample["true"]
        assert pred[sample["indices"]].tolist() == sample["pred"]
        added = sample["true"] if mode == "by-prediction" else sample["pred"]
        assert sample["sum"] == sum(added)
    passes = sum(s["sum"] == s["target"] for s in data["samples"])
    assert data["pass_rate"] == passes / 30


def test_same_seed_same_output(fake, capsys):
    fake.model = StandIn(overrides={3: 8, 14: 2})
    outputs = [
        run(capsys, "--model", fake.path, "--trials", "40", "--seed", seed, *extra)[1]
        for seed in (5, 5, 6)
        for extra in ([], ["--json"])
    ]
    assert outputs[0] == outputs[2] and outputs[1] == outputs[3]
    first = [json.loads(outputs[i])["samples"][0]["indices"] for i in (1, 5)]
    assert first[0] != first[1]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--trials", "0"], "--trials must be between 1 and 1,000,000, got 0"),
        (["--trials", "1000001"], "--trials must be between 1 and 1,000,000"),
        (["--trials", "many"], "invalid int value"),
        (["--seed=-1"], "--seed must be at least 0"),
        (["--mode", "sum"], "invalid choice"),
        (["--split", "val"], "invalid choice"),
        (["--width", "60"], "--width must be at least 80"),
        (["--plot", "out.gif"], "give a .png, .pdf or .svg"),
        (["--plot", "/no/such/dir/out.png"], "no such directory"),
        (["--model", "/no/such/dir/model.npz"], "cannot be trained there"),
    ],
)
def test_bad_arguments_exit_2(fake, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        sc.main(["--model", str(fake.path)] + argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert fake.loads == []  # before any work


def test_model_directory_is_a_bad_argument(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        sc.main(["--model", str(tmp_path)])
    assert info.value.code == 2 and "is a directory" in capsys.readouterr().err


def test_help_states_the_caveat(capsys):
    with pytest.raises(SystemExit) as info:
        sc.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "heuristic, not a diagnosis" in out and "--mode" in out
    assert "product over digits of the per-class accuracy" in out


def test_missing_data(fake, monkeypatch, capsys):
    def missing(root=None, download=True, verify=True):
        raise DatasetError("MNIST data not found (root=)", "MNIST data not found (--data-dir)")

    monkeypatch.setattr(sc, "load_mnist", cnnfast._cli.load_mnist)
    monkeypatch.setattr(cnnfast.datasets, "load_mnist", missing)
    status, out, err = run(capsys, "--model", fake.path)
    assert status == 1 and out == "" and "error: MNIST data not found (--data-dir)" in err


def test_bad_model_file(tmp_path, capsys):
    path = tmp_path / "model.npz"
    path.write_bytes(b"not a model")
    status, out, err = run(capsys, "--model", path)
    assert status == 1 and "cannot load the model" in err and str(path) in err


def test_model_with_wrong_outputs(fake, capsys):
    fake.model = StandIn(classes=12)
    status, _, err = run(capsys, "--model", fake.path)
    assert status == 1 and "does not fit 28x28 MNIST images" in err and "not 10 per image" in err


def test_by_prediction_without_some_class(fake, capsys):
    fake.model = StandIn({3: 8, 7: 1})
    status, out, err = run(capsys, "--model", fake.path, "--mode", "by-prediction")
    assert status == 1 and "classifies none of the 30 test images as 3 or 7" in err
    assert "can never pass" in err


@pytest.mark.parametrize("json_flag", [False, True])
def test_missing_model_is_trained_first(fake, monkeypatch, capsys, tmp_path, json_flag):
    path, calls = tmp_path / "new.npz", []

    def fake_train(settings, data, log):
        calls.append((settings, data))
        print("training output", file=log)
        path.write_bytes(b"trained")
        return 0, None

    monkeypatch.setattr(cnnfast.train, "train", fake_train)
    status, out, err = run(
        capsys,
        "--model",
        path,
        "--data-dir",
        tmp_path,
        "--no-verify",
        "--trials",
        "5",
        *(["--json"] if json_flag else []),
    )
    assert status == 0 and fake.loads == [str(path)]
    ((settings, data),) = calls  # the training function, with the data the command read, not train.main
    assert (settings.out, settings.data_dir, settings.no_verify) == (str(path), str(tmp_path), True)
    assert (settings.preset, settings.epochs, settings.optimizer, settings.seed) == (
        "fast",
        2,
        "adamw",
        0,
    )  # the default
    assert data[0] is X_TRAIN and data[2] is X_TEST
    text = err if json_flag else out
    assert "does not exist: training the default model first" in text and "training output" in text
    if json_flag:
        assert json.loads(out)["trials"] == 5  # stdout stays pure JSON


def test_failed_training_stops(fake, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cnnfast.train, "train", lambda settings, data, log: (1, None))
    status, _, _ = run(capsys, "--model", tmp_path / "new.npz")
    assert status == 1 and fake.loads == []


def test_plot_without_matplotlib(fake, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    status, out, err = run(capsys, "--model", fake.path, "--plot", tmp_path / "p.png")
    assert status == 1 and "pip install cnnfast[plot]" in err
    assert fake.loads == [] and not (tmp_path / "p.png").exists()


def test_plot(fake, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    fake.model = StandIn({3: 8})
    status, out, _ = run(capsys, "--model", fake.path, "--trials", "20", "--plot", tmp_path / "p.png")
    assert status == 0 and "wrote" in out
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", ["per-class", "by-prediction"])
def test_plot_histogram_is_readable(mode):
    """The bar at 0 (most trials) must not flatten the others: a log scale; whole-number x-ticks."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    model = StandIn({3: 5, 5: 3, 7: 1, 1: 7})
    trials, stats = draw(mode, model, trials=200)
    fig = sc.figure(X_TEST, trials, model.predict_proba(X_TEST), stats, mode, Figure)
    ax = fig.axes[-1]
    assert ax.get_yscale() == "log"
    ticks = ax.get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks), ticks


# ---------------------------------------------------------------------------- real MNIST


@pytest.mark.slow
def test_real_run(tmp_path, capsys):
    data_dir = mnist_dir()
    model_path = tmp_path / "model.npz"
    assert (
        cnnfast.train.main(["--epochs", "1", "--limit", "3000", "--data-dir", data_dir, "--out", str(model_path)]) == 0
    )
    capsys.readouterr()
    status, out, err = run(capsys, "--model", model_path, "--data-dir", data_dir, "--trials", "50", "--json")
    assert status == 0 and "The real evidence" in err
    data = json.loads(out)
    x_train, y_train, x_test, y_test = cnnfast.datasets.load_mnist(data_dir)
    assert data["trials"] == 50 and len(data["samples"]) == 50
    assert 0 <= data["pass_rate"] <= 1 and 0 <= data["lucky_passes"] <= data["pass_rate"] * 50
    assert 0 <= data["expected_pass_rate"] <= 1
    assert 0.5 < data["test_accuracy"] < 0.97 and 0.5 < data["train_accuracy"] < 0.97  # 3,000 images, 1 epoch
    assert data["reading"].endswith("suggests underfitting")
    indices = np.array([s["indices"] for s in data["samples"]])
    assert (y_test[indices] == np.arange(10)).all()
    assert [s["true"] for s in data["samples"]] == [list(range(10))] * 50
    pred = cnnfast.load_model(model_path).predict(cnnfast.mnist.as_model_input(x_test[indices.ravel()])).reshape(50, 10)
    assert pred.tolist() == [s["pred"] for s in data["samples"]]
    assert [s["sum"] for s in data["samples"]] == pred.sum(axis=1).tolist()
    assert data["mean_sum"] == pytest.approx(pred.sum(axis=1).mean())
