"""python -m cnnfast.train --augment (and its parameters, --show-augment): training with augmented
batches, resumed bit for bit, its settings in checkpoints, bad values refused."""

import numpy as np
import pytest

from _argv import flags
from _idx_helpers import synthetic_mnist, write_mnist_dir
from _stop_after import StopAfter
from cnnfast import checkpoint as ckpt
from cnnfast import train
from cnnfast.augment import Augment
from test_robustness import weights

RUN = {"no_verify": True, "batch_size": 32, "seed": 3, "limit": 200, "epochs": 2, "threads": 2}  # 7 steps an epoch


@pytest.fixture
def data(tmp_path):
    directory = tmp_path / "data"
    write_mnist_dir(directory, synthetic_mnist(n_train=300, n_test=50, seed=1))
    return str(directory)


def run(data, out, *extra, **settings):
    return train.main(flags(data_dir=data, **{**RUN, **settings}, out=out) + list(extra))


def test_the_default_run_does_not_augment():
    args = train.default_settings()
    assert args.augment is None
    args, _ = train.parse_args(["--augment"])
    assert args.augment == Augment().settings()
    args, _ = train.parse_args(["--rotation", "5", "--scale", "0.8", "1.2"])
    assert args.augment == dict(Augment().settings(), rotation=5.0, scale=[0.8, 1.2])


def test_augmented_training_resumes_bit_for_bit(data, tmp_path, monkeypatch, threads, capsys):
    """2 epochs straight, and the same run stopped (after epoch 1; mid-epoch 2) then resumed:
    the same weights exactly; and not those of the run without augmentation."""
    augment = ["--augment", "--rotation", "15"]
    assert run(data, tmp_path / "straight.npz", *augment) == 0
    assert "augmentation: rotation +-15 deg, scale 0.9-1.1" in capsys.readouterr().out
    assert run(data, tmp_path / "plain.npz") == 0
    assert weights(tmp_path / "straight.npz") != weights(tmp_path / "plain.npz")
    for stop_at in (8, 11):  # before epoch 2's first step; before its fourth
        out = tmp_path / f"m{stop_at}.npz"
        with monkeypatch.context() as m:
            m.setattr(train, "StopRequest", lambda n=stop_at: StopAfter(n))
            assert run(data, out, *augment) == 130
        state = ckpt.load(tmp_path / f"m{stop_at}.ckpt.npz")
        assert state.settings["augment"] == dict(Augment().settings(), rotation=15.0)
        assert train.main(["--resume", str(tmp_path / f"m{stop_at}.ckpt.npz")]) == 0
        assert weights(out) == weights(tmp_path / "straight.npz")


def test_resume_refuses_other_augmentation(data, tmp_path, monkeypatch, threads, capsys):
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(3))
        assert run(data, tmp_path / "plain.npz") == 130
        assert run(data, tmp_path / "aug.npz", "--augment") == 130
    plain, aug = str(tmp_path / "plain.ckpt.npz"), str(tmp_path / "aug.ckpt.npz")
    for argv, message in (
        (["--resume", plain, "--augment"], "--augment contradicts the checkpoint's run without --augment"),
        (["--resume", plain, "--shear", "3"], "--shear contradicts the checkpoint's run without --augment"),
        (["--resume", aug, "--rotation", "5"], "--rotation 5 contradicts the checkpoint's --rotation 10"),
        (["--resume", aug, "--scale", "0.9", "1.2"], "--scale 0.9 1.2 contradicts the checkpoint's --scale 0.9 1.1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            train.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    args, _ = train.parse_args(["--resume", aug, "--augment", "--rotation", "10"])  # agreeing is fine
    assert args.augment == Augment().settings()
    args, _ = train.parse_args(["--resume", plain])
    assert args.augment is None


def test_checkpoints_without_the_setting_resume_without_augmentation_and_bad_ones_are_refused(
    data, tmp_path, monkeypatch, threads
):
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(3))
        assert run(data, tmp_path / "m.npz", "--augment") == 130
    path = tmp_path / "m.ckpt.npz"
    state = ckpt.load(path)
    del state.settings["augment"]  # as an earlier cnnfast wrote them
    ckpt.save(state, path)
    args, _ = train.parse_args(["--resume", str(path)])
    assert args.augment is None
    state.settings["augment"] = {"rotation": -3}
    ckpt.save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="bad augmentation settings"):
        ckpt.load(path)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--rotation", "nan"], "--rotation: rotation must be an angle in degrees in [0, 180], got nan"),
        (["--scale", "1.2", "0.8"], "--scale: scale must be (low, high) with 0 < low <= high"),
        (["--elastic-sigma", "0"], "--elastic-sigma: elastic_sigma must be in (0, 1000]"),
        (["--translate", "2"], "--translate: translate must be a fraction"),
        (["--show-augment", "grid.txt"], "--show-augment grid.txt: give a .png, .pdf or .svg file name"),
    ],
)
def test_bad_augmentation_values_fail_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_show_augment_draws_a_grid_and_does_not_train(data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "grid.png"
    out = tmp_path / "m.npz"
    assert train.main(["--data-dir", data, "--no-verify", "--show-augment", str(png), "--out", str(out)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not out.exists() and "wrote 8 digits and 7 augmented copies" in capsys.readouterr().out


def test_show_augment_without_matplotlib_says_what_to_install(data, tmp_path, monkeypatch, capsys):
    from cnnfast import plots

    def missing():
        raise plots.PlotUnavailable(plots.PLOT_MISSING)

    monkeypatch.setattr(plots, "figure_class", missing)
    assert train.main(["--data-dir", data, "--no-verify", "--show-augment", str(tmp_path / "g.png")]) == 1
    assert (
        "--show-augment needs matplotlib: pip install cnnfast[plot]" in capsys.readouterr().err
        and not (tmp_path / "g.png").exists()
    )


def test_the_batches_of_a_run_get_their_own_draws(data, tmp_path):
    """Every step of every epoch its own transforms: batch_augment numbers steps across epochs."""
    args = train.default_settings(augment=Augment().settings(), batch_size=32, limit=200)
    images = np.random.default_rng(0).integers(0, 255, (200, 28, 28), dtype=np.uint8)
    run_ = train.start_run(args, images, np.zeros(200, np.uint8))
    seen = set()
    x = np.random.default_rng(1).random((32, 1, 28, 28), dtype=np.float32)
    for epoch in (1, 2):
        run_.epoch = epoch
        hook = train.batch_augment(run_, 200, 32)
        seen |= {hook(x, step).tobytes() for step in range(7)}
    assert len(seen) == 14
