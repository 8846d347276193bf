"""Files cnnfast writes get the permissions the umask gives, like any other program's (not the
0600 of a bare mkstemp), and are written atomically through one helper (cnnfast._files).

The modes are checked in subprocesses started with a known umask, so the test process's own
umask plays no part.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from _argv import flags
from _idx_helpers import synthetic_mnist, write_mnist_dir
from cnnfast import _files

WRITE_EVERY_KIND = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import cnnfast
    from cnnfast import checkpoint as ckpt, nn, plots
    from cnnfast.optim import Adam
    from cnnfast.checkpoint import EpochState
    out = sys.argv[1]
    model = nn.mnist_cnn(seed=0)
    model.save(os.path.join(out, "model.npz"))
    plots.write_history_csv([{"epoch": 1, "train_loss": 0.5}], os.path.join(out, "model.csv"))
    snapshot = ckpt.capture(model, Adam(model.parameters()), settings={}, epoch=1, position=EpochState(),
                            shuffle_rng=np.random.default_rng(0).bit_generator.state, history=[],
                            train_seconds=0.0, trained_images=0)
    ckpt.save(snapshot, os.path.join(out, "model.ckpt.npz"))
    try:
        cnnfast.export_onnx(model, os.path.join(out, "model.onnx"))
    except ImportError:
        pass
    print(json.dumps({name: os.stat(os.path.join(out, name)).st_mode & 0o777 for name in os.listdir(out)}))
""")


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_get_the_mode_the_umask_gives(tmp_path, umask, expected):
    result = subprocess.run(
        [sys.executable, "-c", WRITE_EVERY_KIND, str(tmp_path)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(umask),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    modes = json.loads(result.stdout)
    assert {"model.npz", "model.csv", "model.ckpt.npz"} <= set(modes)
    assert modes == {name: expected for name in modes}, {k: oct(v) for k, v in modes.items()}


def test_train_saves_model_and_metrics_readable_by_others(tmp_path):
    """The command end to end, umask 022: the model and the CSV are 0644, as cp or numpy would make them."""
    data = tmp_path / "data"
    write_mnist_dir(data, synthetic_mnist(n_train=64, n_test=16, seed=2))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnfast.train",
            *flags(data_dir=str(data), no_verify=True, epochs=1, batch_size=32, out=str(tmp_path / "m.npz")),
        ],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("m.npz", "m.csv"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"before")
    with pytest.raises(RuntimeError):
        with _files.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"before" and os.listdir(tmp_path) == ["file.bin"]

    def refuse(temp):
        with open(temp, "rb") as f:
            assert f.read() == b"unverified"
        raise ValueError("bad content")

    with pytest.raises(ValueError, match="bad content"):
        with _files.atomic_write(target, check=refuse) as f:
            f.write(b"unverified")
    assert target.read_bytes() == b"before" and os.listdir(tmp_path) == ["file.bin"]
    with _files.atomic_write(target, "w", encoding="utf-8") as f:
        f.write("after")
    assert target.read_text() == "after" and os.listdir(tmp_path) == ["file.bin"]


def test_one_atomic_write_helper():
    """No module creates its own temporary files: they all use cnnfast._files.atomic_write."""
    package = os.path.dirname(_files.__file__)
    for name in sorted(os.listdir(package)):
        if name.endswith(".py") and name != "_files.py":
            with open(os.path.join(package, name), encoding="utf-8") as f:
                text = f.read()
            assert "mkstemp" not in text and "os.replace(" not in text, name
