"""python -m cnnfast.train with a learning-rate schedule, AdamW and label smoothing: runs that
stop and resume end bit for bit where straight runs do, the flags change the run (and their
defaults spelled out do not), bad values fail before any work, --resume refuses another schedule."""

import numpy as np
import pytest

import cnnfast
from _argv import flags
from _idx_helpers import synthetic_mnist, write_mnist_dir
from _stop_after import StopAfter
from cnnfast import checkpoint as ckpt
from cnnfast import train
from cnnfast.nn import Parameter
from cnnfast.optim import Adam


def an_optimizer():
    return Adam([Parameter(np.zeros(3))])


@pytest.fixture(scope="module")
def data_320(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data320")
    write_mnist_dir(directory, synthetic_mnist(n_train=320, n_test=40, seed=3))
    return str(directory)


SCHEDULED = {
    "onecycle": flags(schedule="onecycle", optimizer="adamw", weight_decay=0.05, label_smoothing=0.1),
    "cosine": flags(schedule="cosine", warmup_epochs=0.5, min_lr=1e-5, optimizer="sgd", label_smoothing=0.2),
    "step": flags(schedule="step", step_size=1, gamma=0.5, optimizer="adam", weight_decay=1e-3),
}


def weights(path):
    return [p.data.tobytes() for p in cnnfast.load_model(path).parameters()]


@pytest.mark.parametrize(
    "schedule,stop_at",
    [("onecycle", 12), ("onecycle", 15), ("cosine", 5), ("step", 12)],  # 10 steps an epoch; 12: between epochs
)
def test_a_scheduled_run_resumes_bit_identically(data_320, tmp_path, monkeypatch, threads, capsys, schedule, stop_at):
    """Two epochs straight, and the same run stopped (after epoch 1, or inside an epoch) and
    resumed from its checkpoint with --resume alone, end with the same weights, bit for bit."""
    common = ["--data-dir", data_320, *flags(no_verify=True, epochs=2, batch_size=32, seed=4), *SCHEDULED[schedule]]
    assert train.main(common + ["--out", str(tmp_path / "straight.npz")]) == 0
    assert f"{schedule} schedule" in capsys.readouterr().out
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(stop_at))
        assert train.main(common + ["--out", str(tmp_path / "m.npz")]) == 130
    state = ckpt.load(tmp_path / "m.ckpt.npz")
    done = (state.epoch - 1) * 10 + state.position.step
    assert state.schedule == {"step": done} and state.settings["schedule"] == schedule
    assert train.main(["--resume", str(tmp_path / "m.ckpt.npz")]) == 0
    assert weights(tmp_path / "m.npz") == weights(tmp_path / "straight.npz")


def test_schedules_and_options_change_the_run_and_the_default_is_unchanged(data_320, tmp_path, threads):
    """The default run is the fast preset: its settings spelled out give the same weights; each
    schedule and option changed gives others."""
    common = ["--data-dir", data_320, *flags(no_verify=True, epochs=1, batch_size=32, seed=4)]
    spelled_out = flags(preset="fast", schedule="onecycle", optimizer="adamw", lr=1e-2, weight_decay=0.01)
    runs = {}
    for name, extra in [
        ("default", []),
        ("fast", spelled_out + flags(label_smoothing=0.1, warmup_epochs=0.3)),
        ("constant", flags(schedule="constant")),
        ("no smoothing", flags(label_smoothing=0)),
        ("adam", flags(optimizer="adam")),
        ("classic", flags(preset="classic")),
    ]:
        assert train.main(common + extra + ["--out", str(tmp_path / f"{name}.npz")]) == 0
        runs[name] = weights(tmp_path / f"{name}.npz")
    assert runs["fast"] == runs["default"]  # the defaults spelled out are the default run
    for name in ("constant", "no smoothing", "adam", "classic"):
        assert runs[name] != runs["default"], name


@pytest.mark.parametrize(
    "args,message",
    [
        (flags(schedule="step", warmup_epochs=1), "--warmup-epochs is a setting of --schedule onecycle or cosine"),
        (flags(min_lr=0.1), "--min-lr is a setting of --schedule cosine, not of --schedule onecycle"),
        (flags(schedule="cosine", gamma=0.5), "--gamma is a setting of --schedule step"),
        (flags(schedule="cosine", epochs=2, warmup_epochs=2), "--warmup-epochs 2 must be less than --epochs 2"),
        (flags(schedule="onecycle", epochs=2, warmup_epochs=3), "--warmup-epochs 3 must not exceed --epochs 2"),
        (flags(schedule="cosine", lr=1e-3, min_lr=1e-2), "--min-lr 0.01 must not exceed --lr 0.001"),
        (flags(schedule="step", step_size=0), "--step-size must be at least 1"),
        (flags(schedule="step", gamma=-1), "--gamma must be a positive number"),
        (flags(weight_decay=-1), "--weight-decay must be a number >= 0"),
        (flags(label_smoothing=1.5), "--label-smoothing must be in [0, 1]"),
        (flags(schedule="linear"), "invalid choice: 'linear'"),
    ],
)
def test_bad_schedule_flags_fail_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_of_the_schedules():
    args = train.default_settings(schedule="onecycle", epochs=10)
    assert (args.warmup_epochs, args.min_lr, args.step_size, args.gamma) == (3.0, None, None, None)
    args = train.default_settings(schedule="step", epochs=10, optimizer="adamw")
    assert (args.step_size, args.gamma, args.weight_decay, args.lr) == (3, 0.1, 0.01, 1e-2)  # (the fast preset's lr)
    args = train.default_settings(schedule="step", epochs=10, optimizer="adam")  # not the preset's: Adam's defaults
    assert (args.weight_decay, args.lr) == (0.0, 1e-3)
    args = train.default_settings()  # the fast preset
    assert (args.schedule, args.weight_decay, args.label_smoothing, args.optimizer) == ("onecycle", 0.01, 0.1, "adamw")
    assert (args.epochs, args.warmup_epochs) == (2, 0.6)
    args = train.default_settings(preset="classic")
    assert (args.schedule, args.weight_decay, args.label_smoothing, args.optimizer) == ("constant", 0.0, 0.0, "adam")
    assert train.make_scheduler(args, an_optimizer(), 10) is None


def test_resume_refuses_a_different_schedule(data_320, tmp_path, monkeypatch, threads, capsys):
    common = ["--data-dir", data_320, *flags(no_verify=True, epochs=2, batch_size=32), *SCHEDULED["onecycle"]]
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(3))
        assert train.main(common + ["--out", str(tmp_path / "m.npz")]) == 130
    for change, message in [
        (flags(schedule="cosine"), "--schedule cosine contradicts the checkpoint's --schedule onecycle"),
        (flags(label_smoothing=0.2), "--label-smoothing 0.2 contradicts the checkpoint's --label-smoothing 0.1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--resume", str(tmp_path / "m.ckpt.npz"), *change])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
