"""Nothing crashes, nothing is lost: training that is interrupted, that diverges, or whose model
file cannot be written; kernels called from several Python threads at once; memory over many
calls.

The signal tests run `python -m cnnfast.train` as a real subprocess on a pseudo-terminal, so
that its progress bar is drawn: the test sends SIGINT or SIGTERM once the bar shows that some
steps are done (no sleeps, no test hooks in the trainer), and retries if the signal happened
to land on an epoch boundary.
"""

import errno
import gc
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnnfast
import cnnfast.functional as F
from _argv import flags
from _idx_helpers import synthetic_mnist, write_mnist_dir
from _pty import open_terminal
from _stop_after import StopAfter
from cnnfast import checkpoint as ckpt
from cnnfast import nn, presets, train

STEPS = 250  # --limit 8000 --batch-size 32: 250 steps per epoch (at ~20,000 img/s, 0.4 s: the
# signal must land inside one; with 2,000 images an epoch took 0.1 s and CI's run could not hit it)


@pytest.fixture(scope="module")
def data_8000(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data8000")
    write_mnist_dir(directory, synthetic_mnist(n_train=8000, n_test=50, seed=5))
    return str(directory)


@pytest.fixture
def data_300(tmp_path):
    directory = tmp_path / "data"
    write_mnist_dir(directory, synthetic_mnist(n_train=300, n_test=50, seed=1))
    return str(directory)


def weights(path):
    return [p.data.tobytes() for p in cnnfast.load_model(path).parameters()]


def no_temporary_files(directory):
    return not [p for p in os.listdir(directory) if p.endswith(".tmp") or p.startswith(".cnnfast-")]


# ------------------------------------------------------------------ SIGINT / SIGTERM, resume


BAR = re.compile(rb"epoch (\d+)/\d+:[^|]*\|[^|]*\| (\d+)/8000")


def run_and_signal(args, sig, after: bytes, timeout=180, done_before=0):
    """Run `python -m cnnfast.train args` on a pseudo-terminal; once the output holds `after`
    followed by a progress bar showing more than `done_before` images done, or a later epoch's
    bar (at least one step of this process: a resumed bar starts at the checkpoint's count), send
    `sig`. Returns
    (exit code, output, whether the signal was sent)."""
    master, slave = open_terminal()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnfast.train", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        close_fds=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # (as from a terminal)
    )
    os.close(slave)
    output, sent = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            # (epoch, images done) of each progress bar after `after`: progress past the start is a
            # later count in the first epoch shown, or any count in a later epoch (a fast machine
            # can finish a resumed epoch's last steps between two updates of its bar)
            shown = [(int(e), int(n)) for e, n in BAR.findall(output.split(after, 1)[1])] if after in output else []
            if not sent and any((e > shown[0][0] and n > 0) or n > done_before for e, n in shown):
                proc.send_signal(sig)
                sent = True
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, output.decode(errors="replace"), sent


def interrupt_mid_epoch(args, sig, after: bytes, checkpoint_path, attempts=3, done_before=0):
    """Interrupt a run with `sig` until its checkpoint lies strictly inside an epoch. (A resumed run
    that finishes removes the checkpoint it resumed from: it is put back before each attempt.)"""
    resumed = args[args.index("--resume") + 1] if "--resume" in args else None
    resumed_bytes = Path(resumed).read_bytes() if resumed else None
    for _ in range(attempts):
        if resumed:
            Path(resumed).write_bytes(resumed_bytes)
        if os.path.exists(checkpoint_path):
            os.unlink(checkpoint_path)
        code, output, sent = run_and_signal(args, sig, after, done_before=done_before)
        assert sent, output[-3000:]
        if code == 0:  # it finished before the signal was handled: try again
            continue
        assert code == 128 + sig, output[-3000:]
        state = ckpt.load(checkpoint_path)
        if 0 < state.position.step < STEPS:
            return state, output
    pytest.fail(f"could not interrupt a run mid-epoch in {attempts} attempts: {output[-3000:]}")


@pytest.mark.slow
def test_sigint_and_sigterm_write_checkpoints_and_resume_is_bit_identical(data_8000, tmp_path, threads):
    common = flags(data_dir=data_8000, no_verify=True, limit=8000, epochs=2, batch_size=32, threads=2, seed=3)
    reference = tmp_path / "uninterrupted.npz"
    assert train.main(common + ["--out", str(reference)]) == 0

    out = tmp_path / "model.npz"
    first, second = tmp_path / "first.ckpt.npz", tmp_path / "second.ckpt.npz"
    out.write_bytes(b"a previous model")  # an interrupted run does not touch --out

    # Ctrl-C mid-epoch: exit 130 and a checkpoint with everything needed to continue
    state1, output = interrupt_mid_epoch(
        common + ["--out", str(out), "--checkpoint", str(first)], signal.SIGINT, b" thread", first
    )
    assert "interrupted by SIGINT in epoch" in output and str(first) in output and "--resume" in output
    assert out.read_bytes() == b"a previous model"
    assert no_temporary_files(tmp_path)
    with np.load(first, allow_pickle=False) as f:  # plain arrays and JSON: nothing pickled
        assert str(f["format"]) == ckpt.FORMAT
        assert all(f[k].dtype != object for k in f.files)
    assert state1.settings == {
        "epochs": 2,
        "batch_size": 32,
        "optimizer": "adamw",  # the default run: the fast preset's recipe
        "lr": 1e-2,
        "seed": 3,
        "limit": 8000,
        "out": str(out),
        "plot": None,
        "data_dir": os.path.abspath(data_8000),
        "no_verify": True,
        "train_images": 8000,
        "train_data_sha256": state1.settings["train_data_sha256"],
        # the schedule and options of the fast preset
        "schedule": "onecycle",
        "warmup_epochs": 0.6,
        "min_lr": None,
        "step_size": None,
        "gamma": None,
        "weight_decay": 0.01,
        "label_smoothing": 0.1,
        "augment": None,  # (--augment: its parameters)
        "preset": "fast",
        "architecture": presets.PRESETS["fast"].architecture,  # (a resumed run builds its model from it)
    }
    assert state1.shuffle_rng["bit_generator"] == "PCG64" and list(state1.layer_rngs) == [7]  # Dropout
    steps_done = (state1.epoch - 1) * STEPS + state1.position.step
    assert int(state1.optimizer["t"]) == steps_done  # AdamW's step count
    assert len(state1.params) == 6 and all(p.dtype == np.float32 for p in state1.params)
    with pytest.raises(nn.ModelFormatError, match="not a cnnfast model"):  # only --resume reads it
        cnnfast.load_model(first)

    # resumed, then SIGTERM: exit 143 and a later checkpoint
    state2, output = interrupt_mid_epoch(
        common + ["--out", str(out), "--checkpoint", str(second), "--resume", str(first)],
        signal.SIGTERM,
        b"resuming from",
        second,
        done_before=state1.position.seen,
    )
    assert "interrupted by SIGTERM" in output
    assert (state2.epoch, state2.position.step) > (state1.epoch, state1.position.step)

    # resumed again, to the end: the same weights, bit for bit, as the uninterrupted run
    assert (
        train.main(
            common + ["--out", str(out), "--checkpoint", str(tmp_path / "third.ckpt.npz"), "--resume", str(second)]
        )
        == 0
    )
    assert weights(out) == weights(reference)
    assert not second.exists()  # its run is finished
    assert no_temporary_files(tmp_path)


SMALL_RUN = {"no_verify": True, "batch_size": 32, "seed": 5, "limit": 200, "epochs": 2}  # 7 steps an epoch
ANY_POINT = flags(no_verify=True, epochs=2, batch_size=32, threads=2, optimizer="sgd", seed=11)


@pytest.fixture(scope="module")
def any_point_reference(tmp_path_factory):
    """Synthetic data (300 images: 10 steps of 32) and the weights of an uninterrupted run."""
    directory = tmp_path_factory.mktemp("any-point")
    write_mnist_dir(directory / "data", synthetic_mnist(n_train=300, n_test=50, seed=1))
    before = cnnfast.get_num_threads()
    try:
        assert (
            train.main(["--data-dir", str(directory / "data"), *ANY_POINT, "--out", str(directory / "reference.npz")])
            == 0
        )
    finally:
        cnnfast.set_num_threads(before)
    return str(directory / "data"), weights(directory / "reference.npz")


@pytest.mark.parametrize(
    "stop_at,position",
    [
        (1, (1, 0)),  # before the first step
        (4, (1, 3)),  # mid-epoch
        (11, (1, 10)),  # after the last step of epoch 1, before its evaluation
        (12, (2, 0)),  # during the evaluation of epoch 1
        (20, (2, 7)),  # mid-epoch 2
    ],
)
def test_resume_from_any_point_is_bit_identical(
    any_point_reference, tmp_path, monkeypatch, threads, capsys, stop_at, position
):
    """Interruptions at every kind of place, through the real code path (the signal handlers
    replaced by StopAfter); the trainer checks for a stop before each step and after the last."""
    data, reference = any_point_reference
    common = ["--data-dir", data, *ANY_POINT]
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(stop_at))
        assert train.main(common + ["--out", str(tmp_path / "m.npz")]) == 130
    assert not (tmp_path / "m.npz").exists()
    state = ckpt.load(tmp_path / "m.ckpt.npz")  # the default: next to --out
    assert (state.epoch, state.position.step) == position
    assert f"epoch {position[0]}, step {position[1]}/10" in capsys.readouterr().err
    assert train.main(common + ["--out", str(tmp_path / "m.npz"), "--resume", str(tmp_path / "m.ckpt.npz")]) == 0
    assert weights(tmp_path / "m.npz") == reference


def test_resume_alone_continues_the_run_it_came_from(data_300, tmp_path, monkeypatch, threads, capsys):
    """The README's command, `--resume CHECKPOINT` and nothing else: the checkpoint holds every
    setting of the run (here --epochs 2, not the default 15, and the --data-dir and --out)."""
    common = ["--data-dir", data_300, "--no-verify", "--batch-size", "64", "--seed", "2", "--epochs", "2"]
    assert train.main(common + ["--out", str(tmp_path / "reference.npz")]) == 0
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(3))
        assert train.main(common + ["--out", str(tmp_path / "m.npz")]) == 130
    checkpoint = tmp_path / "m.ckpt.npz"
    assert f"continue with: python -m cnnfast.train --resume {checkpoint}" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "..")  # another directory: the paths in the checkpoint are absolute
    assert train.main(["--resume", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "epoch  2/2" in out and "/15" not in out
    assert weights(tmp_path / "m.npz") == weights(tmp_path / "reference.npz")
    assert not checkpoint.exists() and f"removed the checkpoint {checkpoint}: its run is finished" in out


@pytest.fixture
def a_checkpoint(data_300, tmp_path, monkeypatch, threads):
    """A real checkpoint (epoch 1, step 2) of a run with --batch-size 32 --seed 5 --limit 200."""
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(3))
        assert train.main(flags(data_dir=data_300, **SMALL_RUN, out=tmp_path / "m.npz")) == 130
    return tmp_path / "m.ckpt.npz"


@pytest.mark.parametrize(
    "change,message",
    [
        (["--batch-size", "64"], "--batch-size 64 contradicts the checkpoint's --batch-size 32"),
        (["--seed", "6"], "--seed 6 contradicts the checkpoint's --seed 5"),
        (["--lr", "0.02"], "--lr 0.02 contradicts the checkpoint's --lr 0.01"),
        (["--optimizer", "sgd"], "--optimizer sgd contradicts the checkpoint's --optimizer adamw"),
        (["--preset", "best"], "--preset best contradicts the checkpoint's --preset fast"),
        (["--limit", "300"], "--limit 300 contradicts the checkpoint's --limit 200"),
        (["--epochs", "5"], "--epochs 5 contradicts the checkpoint's --epochs 2"),
        (["--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_resume_refuses_different_settings(a_checkpoint, data_300, tmp_path, capsys, change, message):
    args = {"--batch-size": "32", "--seed": "5", "--limit": "200", "--epochs": "2"}
    args.update(dict(zip(change[::2], change[1::2])))
    argv = ["--data-dir", data_300, "--no-verify", "--out", str(tmp_path / "m2.npz"), "--resume", str(a_checkpoint)]
    for flag, value in args.items():
        argv += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m2.npz").exists()


def test_resume_refuses_other_training_data(a_checkpoint, tmp_path, capsys):
    other = tmp_path / "other-data"
    write_mnist_dir(other, synthetic_mnist(n_train=300, n_test=50, seed=2))  # as many images, others
    assert train.main(["--resume", str(a_checkpoint), "--data-dir", str(other)]) == 1
    assert "other training data" in capsys.readouterr().err
    assert a_checkpoint.exists() and not (tmp_path / "m.npz").exists()


def test_a_limit_given_to_a_run_that_had_none_is_named_as_such(data_300, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(2))
        assert train.main(["--data-dir", data_300, "--no-verify", "--out", str(tmp_path / "m.npz")]) == 130
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path / "m.ckpt.npz"), "--limit", "100"])
    assert "--limit 100 contradicts the checkpoint's run without --limit" in capsys.readouterr().err


def _rewrite_checkpoint(source, target, **changes):
    with np.load(source) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    np.savez(target, **arrays)


@pytest.mark.parametrize(
    "make_bad,message",
    [
        (lambda src, p: p.write_bytes(b"not a zip"), "not a cnnfast checkpoint"),
        (lambda src, p: p.write_bytes(src.read_bytes()[:5000]), "not a readable cnnfast checkpoint"),
        (lambda src, p: nn.mnist_cnn().save(p), "a saved model, not a training checkpoint"),
        (  # a model file of the second format (its input shape recorded)
            lambda src, p: nn.Sequential(nn.Flatten(), nn.Linear(12, 2), input_shape=(3, 2, 2)).save(p),
            "a saved model, not a training checkpoint",
        ),
        (lambda src, p: np.savez(p, x=np.zeros(3)), "not a cnnfast checkpoint"),
        (lambda src, p: _rewrite_checkpoint(src, p, meta=np.array("{broken json")), "not a readable"),
        (lambda src, p: _rewrite_checkpoint(src, p, meta=np.array([object()], dtype=object)), "not a readable"),
        (lambda src, p: _rewrite_checkpoint(src, p, **{"param.0": np.zeros((2, 2), np.float32)}), "do not fit"),
        (lambda src, p: _rewrite_checkpoint(src, p, **{"optim.m.0": np.zeros(3, np.float32)}), "does not fit"),
        (lambda src, p: _rewrite_checkpoint(src, p, **{"param.1": np.zeros(32, np.float64)}), "not float32"),
        (lambda src, p: _rewrite_checkpoint(src, p, **{"extra": np.zeros(1)}), "missing or unexpected"),
    ],
    ids=[
        "garbage",
        "truncated",
        "model",
        "model-v2",
        "foreign",
        "json",
        "pickle",
        "shape",
        "optimizer",
        "dtype",
        "extra",
    ],
)
def test_resume_rejects_a_bad_checkpoint_clearly(a_checkpoint, data_300, tmp_path, capsys, make_bad, message):
    bad = tmp_path / "bad.ckpt.npz"
    make_bad(a_checkpoint, bad)
    argv = flags(data_dir=data_300, **SMALL_RUN, out=tmp_path / "m2.npz", resume=bad)
    try:
        code = train.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert message in err and "bad.ckpt.npz" in err, err
    assert not (tmp_path / "m2.npz").exists()


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one(data_300, tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "m.ckpt.npz"
    checkpoint.write_bytes(b"the previous checkpoint")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(train, "StopRequest", lambda: StopAfter(2))
        m.setattr(np, "savez", no_space)
        code = train.main(
            flags(data_dir=data_300, no_verify=True, limit=64, batch_size=32, out=str(tmp_path / "m.npz"))
        )
    assert code == 130
    assert "the checkpoint could not be written" in capsys.readouterr().err
    assert checkpoint.read_bytes() == b"the previous checkpoint"
    assert no_temporary_files(tmp_path)


def test_stop_request_handlers_set_a_flag_and_are_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with train.StopRequest() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs in the main thread at the next bytecode
        assert stop.requested() and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # after one signal, Ctrl-C quits at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ------------------------------------------------------------------ divergence


def test_divergence_names_epoch_and_step_and_keeps_existing_files(data_300, tmp_path, capsys):
    out, checkpoint = tmp_path / "m.npz", tmp_path / "m.ckpt.npz"
    out.write_bytes(b"the last good model")
    checkpoint.write_bytes(b"the last good checkpoint")
    code = train.main(
        flags(data_dir=data_300, no_verify=True, epochs=3, batch_size=128, optimizer="sgd", lr="1e30", out=str(out))
    )
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(r"diverged in epoch 1: the loss became (nan|inf|-inf) at step \d+ of 3\b", err), err
    assert "lower learning rate (--lr 1e+29)" in err
    assert out.read_bytes() == b"the last good model"
    assert checkpoint.read_bytes() == b"the last good checkpoint"
    assert str(out) in err and "unchanged" in err
    assert no_temporary_files(tmp_path)


def test_a_finite_but_exploding_loss_is_divergence_too(data_300, tmp_path, capsys):
    """Adam at --lr 50 keeps the loss finite (1e5..1e9) at chance accuracy (the classic model, at a
    constant rate: BatchNorm keeps the fast preset's loss near chance): that run must not replace a
    good model either."""
    out, checkpoint = tmp_path / "m.npz", tmp_path / "m.ckpt.npz"
    out.write_bytes(b"the last good model")
    checkpoint.write_bytes(b"the last good checkpoint")
    code = train.main(
        ["--data-dir", data_300, "--no-verify", "--preset", "classic", "--epochs", "3", "--batch-size", "32"]
        + ["--lr", "50", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(
        rf"diverged in epoch \d: the loss has stayed above {train.DIVERGED_FACTOR:g} times its first "
        rf"value \(2\.\d+\) for {train.DIVERGED_STEPS} steps",
        err,
    ), err
    assert "lower learning rate (--lr 5)" in err
    assert out.read_bytes() == b"the last good model"
    assert checkpoint.read_bytes() == b"the last good checkpoint"
    assert not (tmp_path / "m.csv").exists() and no_temporary_files(tmp_path)


def test_divergence_watch_counts_steps_in_a_row():
    watch = train.DivergenceWatch()
    watch.check(2.0, "step 1")
    for _ in range(train.DIVERGED_STEPS - 1):
        watch.check(1e6, "a step")
    watch.check(2.5, "a step")  # one step back near the start: the count begins again
    for _ in range(train.DIVERGED_STEPS - 1):
        watch.check(1e6, "a step")
    with pytest.raises(train.TrainingDiverged, match="for 10 steps; it is 1e\\+06 at step 99"):
        watch.check(1e6, "step 99")


# ------------------------------------------------------------------ a model file that cannot be written


def test_a_full_disk_keeps_the_previous_model_and_the_trained_weights(data_300, tmp_path, monkeypatch, capsys, threads):
    common = ["--data-dir", data_300, "--no-verify", "--epochs", "1", "--batch-size", "64", "--threads", "2"]
    assert train.main(common + ["--out", str(tmp_path / "reference.npz")]) == 0
    out = tmp_path / "m.npz"
    previous = nn.mnist_cnn(seed=9).save(out)
    before = out.read_bytes()
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if os.fspath(dst) == str(out):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", full_disk)
        assert train.main(common + ["--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "could not save the model" in err and "No space left on device" in err and previous in err
    assert out.read_bytes() == before
    assert no_temporary_files(tmp_path)
    # nothing is lost: the trained weights went to the checkpoint, and --resume saves them
    assert "--resume" in err and os.path.exists(tmp_path / "m.ckpt.npz")
    assert train.main(common + ["--out", str(out), "--resume", str(tmp_path / "m.ckpt.npz")]) == 0
    assert weights(out) == weights(tmp_path / "reference.npz")
    assert "training had finished (all 1 epochs); saving the model" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "m.ckpt.npz")


def test_no_space_at_all_is_a_clear_error_and_the_previous_model_is_intact(data_300, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.npz"
    nn.mnist_cnn(seed=9).save(out)
    before = out.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(np, "savez", no_space)
        code = train.main(["--data-dir", data_300, "--no-verify", "--epochs", "1", "--limit", "64", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "could not save the model" in err and "No space left on device" in err and "either" in err
    assert out.read_bytes() == before
    assert no_temporary_files(tmp_path)
    assert not os.path.exists(tmp_path / "m.ckpt.npz")


# ------------------------------------------------------------------ memory


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_ten_thousand_kernel_calls_do_not_grow_memory(threads):
    """Every kernel, and every kind of error, 10,000 calls: resident memory stays put (a leak
    of one output array per call would add 40 MB or more). One thread: on a busy 2-core machine
    each OpenMP fork/join can wait milliseconds for the second core, and the calls are small."""
    cnnfast.set_num_threads(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    w, b = rng.standard_normal((8, 3, 3, 3)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    y = F.conv2d(x, w, b)  # every output below is 4 KB or more
    pooled, argmax = F.max_pool2d(y, 2)
    xl, wl, bl = (
        rng.standard_normal((64, 128)).astype(np.float32),
        rng.standard_normal((64, 128)).astype(np.float32),
        rng.standard_normal(64).astype(np.float32),
    )
    labels = rng.integers(0, 64, 64)
    param, grad = rng.standard_normal(4096).astype(np.float32), rng.standard_normal(4096).astype(np.float32)
    m, v, velocity = np.zeros_like(param), np.zeros_like(param), np.zeros_like(param)
    calls = [
        lambda: F.conv2d(x, w, b, padding=1),
        lambda: F.conv2d_backward(x, w, y),
        lambda: F.relu(y),
        lambda: F.relu_backward(y, y),
        lambda: F.max_pool2d(y, 2),
        lambda: F.max_pool2d_backward(pooled, argmax, y.shape),
        lambda: F.linear(xl, wl, bl),
        lambda: F.linear_backward(xl, wl, F.linear(xl, wl, bl)),
        lambda: F.softmax_cross_entropy(F.linear(xl, wl, bl), labels),
        lambda: F.dropout(y, 0.5, 7),
        lambda: F.dropout_backward(y, np.ones(y.shape, np.uint8), 0.5),
        lambda: F.sgd_step(param, grad * 0, velocity, 0.1, 0.9),
        lambda: F.adam_step(param, grad * 0, m, v, 1),
    ]
    errors = [  # the error paths build messages and exceptions in C++: they must not leak either
        lambda: F.conv2d(x.astype(np.float64), w, b),
        lambda: F.conv2d(x, w[:, :2].copy(), b),
        lambda: F.linear(xl[:, ::2], wl, bl),
        lambda: F.softmax_cross_entropy(F.linear(xl, wl, bl), labels + 100),
        lambda: F.max_pool2d_backward(pooled, argmax + 10**6, y.shape),
        lambda: F.adam_step(param, grad, m, v, 0),
    ]

    def run(n):
        for i in range(n):
            calls[i % len(calls)]()
            if i % 4 == 0:
                with pytest.raises((TypeError, ValueError)):
                    errors[i % len(errors)]()

    run(2000)  # warm up: allocator pools, lazily built type objects
    gc.collect()
    start = resident_bytes()
    run(10000)
    gc.collect()
    grown = resident_bytes() - start
    assert grown < 8 << 20, f"resident memory grew by {grown / 2**20:.1f} MB over 10,000 calls"
