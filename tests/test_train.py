"""python -m cnnfast.train: argument checks, data errors, determinism, and a real short run."""

import json
import os
import subprocess
import sys

import pytest

import cnnfast
from _argv import flags
from cnnfast import mnist, train
from cnnfast.datasets import load_mnist
from conftest import mnist_dir


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epochs", "-1"], "--epochs must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["--lr", "-0.1"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--out", "/nonexistent-dir/model.npz"], "cannot be written"),
        (["--out", "/"], "is a directory"),
    ],
)
def test_bad_arguments_fail_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--data-dir", "/nonexistent-data"] + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNFAST_DATA", raising=False)
    monkeypatch.setenv("CNNFAST_MNIST_MIRRORS", "http://127.0.0.1:9/")  # nothing listens there
    code = train.main(["--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert code == 1
    assert "CNNFAST_DATA" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_a_data_dir_without_the_data_is_an_error_not_a_fallback(synthetic_dir, tmp_path, monkeypatch, capsys, where):
    """With $CNNFAST_DATA holding data, a wrong --data-dir is still an error naming it (exit 1),
    and nothing is downloaded."""
    monkeypatch.setenv("CNNFAST_DATA", synthetic_dir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNFAST_MNIST_MIRRORS", "http://127.0.0.1:9/")
    named = tmp_path / "named"
    if where == "empty":
        named.mkdir()
    code = train.main(["--data-dir", str(named), "--no-verify", "--epochs", "1", "--out", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"no MNIST data in --data-dir {named}" in err
    assert ("directory does not exist" if where == "missing" else "missing train-images-idx3-ubyte") in err
    assert "downloading" not in err and "root=" not in err
    assert not (tmp_path / "m.npz").exists() and not (tmp_path / "cache").exists()


def test_train_says_which_data_directory_it_read(synthetic_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNFAST_DATA", synthetic_dir)
    common = ["--no-verify", "--epochs", "1", "--limit", "32", "--out", str(tmp_path / "m.npz")]
    assert train.main(common) == 0
    err = capsys.readouterr().err
    assert f"cnnfast: MNIST from {synthetic_dir} ($CNNFAST_DATA)\n" in err
    assert train.main(["--data-dir", synthetic_dir] + common) == 0
    assert f"cnnfast: MNIST from {synthetic_dir} (--data-dir)\n" in capsys.readouterr().err


def test_one_thread_is_singular(synthetic_dir, tmp_path, capsys, threads):
    assert (
        train.main(
            flags(data_dir=synthetic_dir, no_verify=True, epochs=1, limit=32, threads=1, out=str(tmp_path / "m.npz"))
        )
        == 0
    )
    assert "training images, 1 thread\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command,abbreviation",
    [
        ("train", "--epoch"),
        ("evaluate", "--mistake"),
        ("predict", "--mod"),
        ("export", "--mod"),
        ("sum_challenge", "--trial"),
        ("backprop", "--step"),
    ],
)
def test_flags_are_not_abbreviated(command, abbreviation, capsys):
    import importlib

    module = importlib.import_module(f"cnnfast.{command}")
    parser = module.make_parser() if command == "backprop" else module.build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([abbreviation, "3", "x.png"] + (["--onnx", "a.onnx"] if command == "export" else []))
    assert exit_info.value.code == 2 and f"unrecognized arguments: {abbreviation}" in capsys.readouterr().err


def test_same_seed_gives_bit_identical_weights(synthetic_dir, tmp_path, threads):
    def run(name, seed):
        out = tmp_path / name
        assert (
            train.main(
                flags(
                    data_dir=synthetic_dir,
                    no_verify=True,
                    epochs=2,
                    batch_size=32,
                    seed=str(seed),
                    threads=2,
                    out=str(out),
                )
            )
            == 0
        )
        return [p.data for p in cnnfast.load_model(out).parameters()]

    a, b, c = run("a.npz", 3), run("b.npz", 3), run("c.npz", 4)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a, c))


def test_json_output_and_sgd(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "m.npz"
    code = train.main(
        flags(data_dir=synthetic_dir, no_verify=True, epochs=1, optimizer="sgd", limit=100, out=str(out), json=True)
    )
    assert code == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)  # stdout holds only the JSON object
    assert set(metrics) >= {"test_accuracy", "train_accuracy", "epochs", "seconds", "images_per_second", "model_path"}
    assert metrics["epochs"] == 1 and metrics["model_path"] == str(out)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["images_per_second"] > 0
    assert "epoch  1/1" in captured.err and "saved the model" in captured.err


def test_divergence_stops_with_a_message_and_saves_nothing(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "m.npz"
    code = train.main(flags(data_dir=synthetic_dir, no_verify=True, epochs=3, optimizer="sgd", lr="1e30", out=str(out)))
    err = capsys.readouterr().err
    assert code == 1
    assert "diverged in epoch 1" in err and "lower learning rate" in err
    assert not out.exists()


def test_help_explains_itself():
    out = subprocess.run([sys.executable, "-m", "cnnfast.train", "--help"], capture_output=True, text=True, check=True)
    for flag in (
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--seed",
        "--threads",
        "--data-dir",
        "--no-verify",
        "--out",
        "--limit",
        "--json",
    ):
        assert flag in out.stdout
    assert "--preset" in out.stdout and all(name in out.stdout for name in ("fast", "best", "classic"))


@pytest.mark.slow
def test_short_real_training_run_exceeds_95_percent(tmp_path):
    data = mnist_dir()
    out = tmp_path / "m.npz"
    code = train.main(
        ["--data-dir", data, "--epochs", "1", "--limit", "20000", "--batch-size", "32", "--out", str(out), "--json"]
    )
    assert code == 0
    _, _, x_test, y_test = load_mnist(data)
    accuracy = (cnnfast.load_model(out).predict(mnist.as_model_input(x_test[:2000])) == y_test[:2000]).mean()
    assert accuracy > 0.95, accuracy


def test_importing_cnnfast_leaves_the_allocator_alone_and_training_asks(tmp_path):
    # mallopt is process-wide: a notebook or server that imports cnnfast keeps glibc's behaviour;
    # the training command asks for the heap reuse it measured (a fifth of a step).
    code = (
        "import cnnfast, sys; from cnnfast import _core;"
        "before = _core.freed_memory_reused();"
        "from _idx_helpers import synthetic_mnist, write_mnist_dir;"
        f"write_mnist_dir({str(tmp_path)!r}, synthetic_mnist(n_train=64, n_test=8, seed=0));"
        "from cnnfast import train;"
        f"status = train.main(['--data-dir', {str(tmp_path)!r}, '--no-verify', '--epochs', '1',"
        f" '--out', {str(tmp_path / 'm.npz')!r}]);"
        "print(before, _core.freed_memory_reused(), status)"
    )
    tests = str(__import__("pathlib").Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tests, timeout=120)
    assert out.returncode == 0, out.stderr
    glibc = __import__("platform").libc_ver()[0] == "glibc"
    assert out.stdout.split()[-3:] == ["False", str(glibc), "0"], out.stdout


@pytest.mark.parametrize(
    "env, expected",
    [({}, "10000"), ({"GOMP_SPINCOUNT": "300000"}, "300000"), ({"OMP_WAIT_POLICY": "active"}, None)],
)
def test_openmp_threads_spin_briefly_unless_the_user_chose(env, expected):
    # libgomp's 300,000 spins took a busy machine's cores (2 threads slower than 1): cnnfast sets
    # GOMP_SPINCOUNT=10000 before OpenMP loads, unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set.
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", "import os, cnnfast; print(os.environ.get('GOMP_SPINCOUNT'))"],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)
