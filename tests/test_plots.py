"""cnnfast.plots: the metrics CSV (exact round trip), the training curves and the evaluation
picture (what is drawn, not just that a file appears), and the message without matplotlib."""

import csv
import json
import os
import sys

import numpy as np
import pytest

from _argv import flags
from cnnfast import plots

HISTORY = [
    {
        "epoch": 1,
        "train_loss": 0.1 + 0.2,
        "train_accuracy": 1 / 3,
        "test_loss": 2.5e-300,
        "test_accuracy": 0.9123,
        "seconds": 12.000000000000002,
        "images_per_second": 5000.0,
    },
    {
        "epoch": 2,
        "train_loss": 0.05,
        "train_accuracy": 0.98765,
        "test_loss": 0.04,
        "test_accuracy": 0.99,
        "seconds": np.float64(11.5),
        "images_per_second": np.float32(5217.5),
    },
]


def test_csv_round_trip_is_exact(tmp_path):
    path = plots.write_history_csv(HISTORY, tmp_path / "m.csv")
    assert path == str(tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == ",".join(plots.FIELDS) and len(lines) == 3
    assert lines[1].startswith("1,0.30000000000000004,0.3333333333333333,2.5e-300,")
    back = plots.read_history_csv(path)
    assert back == [{k: float(v) if k != "epoch" else v for k, v in row.items()} for row in HISTORY]
    assert isinstance(back[0]["epoch"], int) and isinstance(back[1]["seconds"], float)
    with open(path, newline="") as f:  # any CSV reader gets the same columns
        assert [row["test_accuracy"] for row in csv.DictReader(f)] == ["0.9123", "0.99"]


def test_csv_extra_and_missing_keys(tmp_path):
    history = [dict(HISTORY[0], resumed=True), {k: v for k, v in HISTORY[1].items() if k != "seconds"}]
    path = plots.write_history_csv(history, tmp_path / "m.csv")
    header = (tmp_path / "m.csv").read_text().splitlines()[0].split(",")
    assert header == list(plots.FIELDS) + ["resumed"]
    back = plots.read_history_csv(path)
    assert back[0]["resumed"] == "true" and back[1]["resumed"] == "" and back[1]["seconds"] == ""


def test_csv_replaces_an_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("old contents that are longer than the new ones " * 100)
    plots.write_history_csv(HISTORY[:1], target)
    assert len(plots.read_history_csv(target)) == 1
    assert os.listdir(tmp_path) == ["m.csv"]


def test_empty_history_writes_only_the_header(tmp_path):
    plots.write_history_csv([], tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text() == ",".join(plots.FIELDS) + "\n"


@pytest.mark.parametrize(
    "model,expected",
    [("mnist_cnn.npz", "mnist_cnn.csv"), ("out/model.v2.npz", "out/model.v2.csv"), ("model", "model.csv")],
)
def test_csv_goes_beside_the_model(model, expected):
    assert plots.history_csv_path(model) == expected


def test_plot_path_problems(tmp_path):
    assert plots.plot_path_problem(tmp_path / "a.png") is None
    assert plots.plot_path_problem(tmp_path / "a.SVG") is None
    assert "give a .png" in plots.plot_path_problem(tmp_path / "a.txt")
    assert "no such directory" in plots.plot_path_problem(tmp_path / "nope" / "a.png")
    (tmp_path / "d.png").mkdir()
    assert "is a directory" in plots.plot_path_problem(tmp_path / "d.png")


def test_without_matplotlib_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(plots.PlotUnavailable, match=r"pip install cnnfast\[plot\]") as error:
        plots.plot_training_curves(HISTORY, tmp_path / "c.png")
    assert isinstance(error.value, ImportError)
    with pytest.raises(ImportError, match=r"--plot needs matplotlib"):
        plots.plot_evaluation(
            tmp_path / "e.png",
            np.eye(10, dtype=int),
            np.zeros((1, 28, 28), np.uint8),
            np.zeros(1, int),
            np.full((1, 10), 0.1),
            [],
        )
    assert os.listdir(tmp_path) == []


def test_training_curves_draw_the_history(tmp_path):
    pytest.importorskip("matplotlib")
    fig = plots.training_curves_figure(HISTORY)
    loss_ax, acc_ax = fig.axes
    train_loss, test_loss = loss_ax.lines
    assert list(train_loss.get_xdata()) == [1, 2]
    assert list(train_loss.get_ydata()) == [h["train_loss"] for h in HISTORY]
    assert list(test_loss.get_ydata()) == [h["test_loss"] for h in HISTORY]
    assert loss_ax.get_yscale() == "log"  # the losses span more than a factor 10
    assert [line.get_ydata()[1] for line in acc_ax.lines] == pytest.approx([98.765, 99.0])
    texts = [t.get_text() for t in fig.findobj(lambda artist: hasattr(artist, "get_text"))]
    assert "2 epochs: test accuracy 99.00%, test loss 0.0400" in texts
    for name in ("c.png", "c.svg", "c.pdf"):
        plots.plot_training_curves(HISTORY, tmp_path / name)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "c.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:1000]


def test_one_epoch_and_empty_history(tmp_path):
    pytest.importorskip("matplotlib")
    plots.plot_training_curves(HISTORY[:1], tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="empty"):
        plots.plot_training_curves([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_evaluation_picture_shows_the_matrix_and_the_mistakes(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 5, (10, 10)) + np.diag(np.full(10, 500))
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 10
    proba = np.full((20, 10), 0.01)
    proba[np.arange(20), (labels + 1) % 10] = 0.91
    fig = plots.evaluation_figure(confusion, images, labels, proba, [3, 7, 11], "a title")
    heat = next(ax for ax in fig.get_axes() if ax.get_xlabel() == "predicted digit")
    assert (np.ma.filled(heat.images[0].get_array(), 0) == confusion).all()
    texts = {t.get_text() for t in heat.texts}
    assert {"500", str(confusion[0, 1])} <= texts | {"0"}
    grid = [ax for ax in fig.get_axes() if ax.images and ax is not heat]
    assert len(grid) == 3
    assert (grid[1].images[0].get_array() == images[7]).all()
    assert grid[1].get_title() == "#7: true 7\npred 8 (0.910)"
    plots.plot_evaluation(tmp_path / "e.png", confusion, images, labels, proba, [], "no mistakes")
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- python -m cnnfast.train


def test_training_writes_the_metrics_csv_beside_the_model(synthetic_dir, tmp_path, capsys):
    from cnnfast import train

    out = tmp_path / "run" / "model.npz"
    out.parent.mkdir()
    assert (
        train.main(flags(data_dir=synthetic_dir, no_verify=True, epochs=2, batch_size=50, out=str(out), json=True)) == 0
    )
    final = json.loads(capsys.readouterr().out)
    rows = plots.read_history_csv(tmp_path / "run" / "model.csv")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[-1]["test_accuracy"] == final["test_accuracy"] and rows[-1]["train_loss"] == final["train_loss"]
    assert all(row["images_per_second"] > 0 and row["seconds"] > 0 for row in rows)


def test_training_plot(synthetic_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from cnnfast import train

    assert (
        train.main(
            flags(
                data_dir=synthetic_dir,
                no_verify=True,
                epochs=1,
                out=str(tmp_path / "m.npz"),
                plot=str(tmp_path / "curves.png"),
            )
        )
        == 0
    )
    assert "wrote the training curves" in capsys.readouterr().out
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("plot,message", [("curves.txt", "give a .png"), ("nope/curves.png", "no such directory")])
def test_training_plot_bad_path_exits_2(tmp_path, capsys, plot, message):
    from cnnfast import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(
            ["--data-dir", "/nonexistent-data", "--out", str(tmp_path / "m.npz"), "--plot", str(tmp_path / plot)]
        )
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_training_plot_without_matplotlib_fails_before_training(monkeypatch, tmp_path, capsys):
    from cnnfast import train

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(train, "load_data", lambda *a, **k: pytest.fail("loaded data before checking matplotlib"))
    status = train.main(["--out", str(tmp_path / "m.npz"), "--plot", str(tmp_path / "c.png")])
    assert status == 1 and "--plot needs matplotlib: pip install cnnfast[plot]" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
