"""Tests for cnnfast.datasets: IDX parsing, validation, lookup order and download."""

from __future__ import annotations

import gzip
import io
import os
import socket
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from _idx_helpers import MNIST_FILES, gz, idx_bytes, idx_header, sha256, synthetic_mnist, write_bytes, write_mnist_dir
from cnnfast import datasets
from cnnfast.datasets import ChecksumError, DatasetError, DownloadError, load_mnist, read_idx

REAL_DATA = os.environ.get("CNNFAST_DATA")  # captured before the fixture below clears it


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the real cache, $CNNFAST_DATA, proxies or the internet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CNNFAST_DATA", raising=False)
    monkeypatch.delenv("CNNFAST_MNIST_MIRRORS", raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(datasets, "MIRRORS", [])


def cache(tmp_path):
    return tmp_path / "xdg" / "cnnfast" / "mnist"


def assert_same(result, arrays):
    expected = [arrays[n] for n in MNIST_FILES]
    assert len(result) == 4
    for got, want in zip(result, expected):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("shape", [(7, 28, 28), (5, 3, 4), (11,), (0,)])
def test_read_idx_round_trip(tmp_path, compress, shape):
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    path = write_bytes(tmp_path / "f", idx_bytes(arr), compress)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == shape
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_read_idx_sha256(tmp_path, compress):
    data = idx_bytes(np.arange(10, dtype=np.uint8))
    path = write_bytes(tmp_path / "labels", data, compress)
    np.testing.assert_array_equal(read_idx(path, sha256=sha256(data).upper()), np.arange(10))
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as exc:
        read_idx(path, sha256=wrong)
    msg = str(exc.value)
    assert str(path) in msg and wrong in msg and sha256(data) in msg


LABELS = idx_bytes(np.arange(10, dtype=np.uint8))
IMAGES = idx_bytes(np.full((2, 28, 28), 7, dtype=np.uint8))
CORRUPT = {
    "empty": (b"", "truncated"),
    "short-magic": (b"\x00\x00\x08", "truncated"),
    "bad-magic": (b"\x00\x00\x0d\x01" + LABELS[4:], "magic"),
    "text": (b"<html>404 not found</html>", "magic"),
    "float-type": (b"\x00\x00\x0d\x03" + IMAGES[4:], "magic"),
    "2-d": (idx_header((2, 3)) + bytes(6), "magic"),
    "short-header": (IMAGES[:10], "truncated"),
    "truncated-data": (IMAGES[:-1], "truncated"),
    "trailing": (LABELS + b"\x00", "trailing"),
    "1e9-images": (idx_header((10**9, 28, 28)) + bytes(84), "limit"),
    "1e6-images": (idx_header((10**6, 28, 28)) + bytes(84), "truncated"),
    "huge-dims": (idx_header((2**32 - 1, 2**32 - 1, 2**32 - 1)), "limit"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("case", CORRUPT)
def test_read_idx_corrupt(tmp_path, case, compress):
    data, word = CORRUPT[case]
    path = write_bytes(tmp_path / f"bad-{case}", data, compress)
    with pytest.raises(DatasetError) as exc:
        read_idx(path)
    assert str(path) in str(exc.value)
    assert word in str(exc.value)
    if case == "trailing" and not compress:
        assert "1 unexpected trailing byte" in str(exc.value)


def gz_corruptions():
    good = gz(IMAGES)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    bad_crc = bytearray(good)
    bad_crc[-8] ^= 0xFF
    bad_len = bytearray(good)
    bad_len[-4] ^= 0xFF
    return {
        "cut-stream": good[: len(good) // 2],
        "cut-trailer": good[:-3],
        "flipped-byte": bytes(flipped),
        "bad-crc": bytes(bad_crc),
        "bad-isize": bytes(bad_len),
        "header-only": good[:10],
        "garbage-after": good + b"garbage!",
    }


@pytest.mark.parametrize("case", gz_corruptions())
def test_read_idx_corrupt_gzip(tmp_path, case):
    path = tmp_path / f"{case}.gz"
    path.write_bytes(gz_corruptions()[case])
    with pytest.raises(DatasetError) as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_huge_claim_allocates_nothing(tmp_path, compress):
    # 10**6 images = 784 MB: under the size cap, so only the file-size check stops it.
    path = write_bytes(tmp_path / "f", idx_header((10**6, 28, 28)) + bytes(84), compress)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match="truncated"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_gzip_bomb_is_read_bounded(tmp_path):
    # Header claims 10 labels; the stream inflates to 32 MB. Only ~claimed size is read.
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as f:
        f.write(LABELS)
        f.write(bytes(32 << 20))
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match="trailing"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="nope"):
        read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- load_mnist validation


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_load_synthetic_verify_false(tmp_path, compress):
    arrays = synthetic_mnist()
    write_mnist_dir(tmp_path / "d", arrays, compress)
    assert_same(load_mnist(tmp_path / "d", download=False, verify=False), arrays)


def test_checksum_mismatch_names_file_and_hashes(tmp_path):
    arrays = synthetic_mnist()
    hashes = write_mnist_dir(tmp_path / "d", arrays)
    with pytest.raises(ChecksumError) as exc:
        load_mnist(tmp_path / "d", download=False)
    msg = str(exc.value)
    name = next(n for n in MNIST_FILES if n in msg)
    assert str(tmp_path / "d" / f"{name}.gz") in msg
    assert datasets.SHA256[name] in msg and hashes[name] in msg
    assert "verify=False accepts" in msg and "--no-verify" not in msg
    assert "--no-verify accepts" in exc.value.command_message and "verify=False" not in exc.value.command_message


def test_checksums_override_verifies(tmp_path):
    arrays = synthetic_mnist()
    hashes = write_mnist_dir(tmp_path / "d", arrays)
    assert_same(load_mnist(tmp_path / "d", download=False, checksums=hashes), arrays)
    hashes["t10k-labels-idx1-ubyte"] = "f" * 64
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path / "d", download=False, checksums=hashes)


def mutate(arrays, case):
    a = dict(arrays)
    if case == "count-mismatch":
        a["t10k-labels-idx1-ubyte"] = a["t10k-labels-idx1-ubyte"][:-1]
        return a, "t10k-images-idx3-ubyte"
    if case == "label-10":
        a["train-labels-idx1-ubyte"] = a["train-labels-idx1-ubyte"].copy()
        a["train-labels-idx1-ubyte"][2] = 10
        return a, "train-labels-idx1-ubyte"
    if case == "dims-27x28":
        a["t10k-images-idx3-ubyte"] = np.zeros((4, 27, 28), np.uint8)
        return a, "t10k-images-idx3-ubyte"
    if case == "labels-as-images":
        a["train-images-idx3-ubyte"] = a["train-labels-idx1-ubyte"]
        return a, "train-images-idx3-ubyte"
    if case == "images-as-labels":
        a["train-labels-idx1-ubyte"] = a["train-images-idx3-ubyte"]
        return a, "train-labels-idx1-ubyte"
    if case == "empty":
        a["train-images-idx3-ubyte"] = np.zeros((0, 28, 28), np.uint8)
        a["train-labels-idx1-ubyte"] = np.zeros(0, np.uint8)
        return a, "train-images-idx3-ubyte"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["count-mismatch", "label-10", "dims-27x28", "labels-as-images", "images-as-labels", "empty"]
)
def test_structure_errors_name_the_file(tmp_path, case):
    arrays, bad_file = mutate(synthetic_mnist(), case)
    write_mnist_dir(tmp_path / "d", arrays)
    with pytest.raises(DatasetError) as exc:
        load_mnist(tmp_path / "d", download=False, verify=False)
    assert str(tmp_path / "d" / f"{bad_file}.gz") in str(exc.value)


# ----------------------------------------------------------------------------- lookup order


def test_search_order(tmp_path, monkeypatch):
    sets = {k: synthetic_mnist(n_train=n, seed=n) for k, n in (("root", 3), ("env", 4), ("cache", 5))}
    write_mnist_dir(tmp_path / "root", sets["root"])
    write_mnist_dir(tmp_path / "env", sets["env"], compress=False)
    write_mnist_dir(cache(tmp_path), sets["cache"])
    monkeypatch.setenv("CNNFAST_DATA", str(tmp_path / "env"))
    kw = dict(download=False, verify=False)
    assert_same(load_mnist(tmp_path / "root", **kw), sets["root"])
    assert_same(load_mnist(str(tmp_path / "root"), **kw), sets["root"])
    assert_same(load_mnist(**kw), sets["env"])
    # A root without the files is an error naming it: the search order is for when none is named.
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=f"no MNIST data in root='{tmp_path / 'empty'}'"):
        load_mnist(tmp_path / "empty", **kw)
    with pytest.raises(DatasetError, match="directory does not exist"):
        load_mnist(tmp_path / "no-such-dir", **kw)
    assert datasets.find_mnist(tmp_path / "empty") is None
    assert datasets.find_mnist() == ("$CNNFAST_DATA", tmp_path / "env")
    assert datasets.find_mnist_dir(tmp_path / "root") == tmp_path / "root"
    monkeypatch.delenv("CNNFAST_DATA")
    assert_same(load_mnist(**kw), sets["cache"])
    assert datasets.find_mnist_dir() == cache(tmp_path)


def test_incomplete_dir_is_skipped(tmp_path):
    write_mnist_dir(tmp_path / "root", synthetic_mnist())
    (tmp_path / "root" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert datasets.find_mnist_dir(tmp_path / "root") is None
    with pytest.raises(DatasetError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_mnist(tmp_path / "root", download=False)


def test_cache_dir_default_and_xdg(tmp_path, monkeypatch):
    assert datasets.cache_dir() == cache(tmp_path)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.cache_dir() == tmp_path / "home" / ".cache" / "cnnfast" / "mnist"


def test_a_root_without_the_data_is_an_error_naming_only_it(tmp_path, monkeypatch, server):
    """Not a fallback to $CNNFAST_DATA (which holds data here), nor a download."""
    write_mnist_dir(tmp_path / "envdir", synthetic_mnist())
    monkeypatch.setenv("CNNFAST_DATA", str(tmp_path / "envdir"))
    with pytest.raises(DatasetError) as exc:
        load_mnist(tmp_path / "rootdir", mirrors=[server.url + "/m"])
    msg, command = str(exc.value), exc.value.command_message
    assert f"root='{tmp_path / 'rootdir'}'" in msg and "directory does not exist" in msg
    assert "--data-dir" not in msg and str(tmp_path / "envdir") not in msg
    assert f"--data-dir {tmp_path / 'rootdir'}" in command and "root=" not in command
    assert server.log == [] and not cache(tmp_path).exists()


def test_not_found_lists_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNFAST_DATA", str(tmp_path / "envdir"))
    with pytest.raises(DatasetError) as exc:
        load_mnist(download=False)
    msg = str(exc.value)
    for place in (tmp_path / "envdir", cache(tmp_path)):
        assert str(place) in msg
    assert "CNNFAST_DATA" in msg and "root=DIR" in msg and "download=True" in msg
    assert "train-images-idx3-ubyte" in msg and "--data-dir" not in msg
    command = exc.value.command_message
    assert "--data-dir DIR" in command and "root=" not in command and "download=" not in command
    assert not cache(tmp_path).exists()


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_error_lists_places_and_mirror_reasons(tmp_path):
    mirrors = [f"http://127.0.0.1:{closed_port()}/a/", f"http://127.0.0.1:{closed_port()}/b"]
    with pytest.raises(DownloadError) as exc:
        load_mnist(mirrors=mirrors, timeout=5)
    msg = str(exc.value)
    for m in mirrors:
        assert m.rstrip("/") + "/train-images-idx3-ubyte.gz" in msg
    assert "refused" in msg.lower()
    assert str(cache(tmp_path)) in msg and "CNNFAST_DATA" in msg and "root=DIR" in msg
    assert "--data-dir DIR" in exc.value.command_message and "root=" not in exc.value.command_message
    # a failed download leaves no empty cache directory behind (nor the cnnfast one above it)
    assert not cache(tmp_path).exists() and not cache(tmp_path).parent.exists()


def test_no_mirrors_configured(tmp_path):
    with pytest.raises(DownloadError, match="no mirrors"):
        load_mnist()


# ----------------------------------------------------------------------------- download


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins handler threads


@pytest.fixture
def server():
    """Local HTTP server; ``routes[path] = (mode, body)``, mode in ok/short/hang."""
    routes, log, release = {}, [], threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            log.append(self.path)
            mode, body = routes.get(self.path, ("404", b""))
            if mode == "hang":
                release.wait(10)
                return
            if mode == "404":
                self.send_error(404)
                return
            self.send_response(200)
            length = len(body) + 1000 if mode == "short" else len(body)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if mode == "short" else body)

        def log_message(self, *args):
            pass

    srv = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{srv.server_address[1]}", routes=routes, log=log)
    finally:
        release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(10)
        assert not thread.is_alive()


def serve_mnist(server, prefix, arrays, mode="ok", only=MNIST_FILES):
    """Publish ``arrays`` as .gz files under ``prefix``; return name -> SHA-256."""
    hashes = {}
    for name in MNIST_FILES:
        data = idx_bytes(arrays[name])
        hashes[name] = sha256(data)
        if name in only:
            server.routes[f"{prefix}/{name}.gz"] = (mode, gz(data))
    return hashes


def cache_listing(tmp_path):
    d = cache(tmp_path)
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_download_into_cache(tmp_path, server, capsys):
    arrays = synthetic_mnist()
    hashes = serve_mnist(server, "/m", arrays)
    assert_same(load_mnist(mirrors=[server.url + "/m/"], checksums=hashes), arrays)
    assert cache_listing(tmp_path) == sorted(f"{n}.gz" for n in MNIST_FILES)
    for name in MNIST_FILES:
        assert read_idx(cache(tmp_path) / f"{name}.gz", sha256=hashes[name]).shape == arrays[name].shape
    assert len(capsys.readouterr().err.splitlines()) <= 1  # stderr is not a tty: one line at most
    # Second call uses the cache, with no further requests.
    n_requests = len(server.log)
    assert_same(load_mnist(mirrors=[server.url + "/m/"], checksums=hashes), arrays)
    assert len(server.log) == n_requests == 4


def test_404_then_next_mirror(tmp_path, server, monkeypatch):
    arrays = synthetic_mnist()
    hashes = serve_mnist(server, "/good", arrays)
    monkeypatch.setattr(datasets, "SHA256", hashes)
    monkeypatch.setattr(datasets, "MIRRORS", [server.url + "/missing", server.url + "/good"])
    assert_same(load_mnist(), arrays)
    assert server.log.count("/missing/train-images-idx3-ubyte.gz") == 1
    assert server.log.count("/good/train-images-idx3-ubyte.gz") == 1
    assert cache_listing(tmp_path) == sorted(f"{n}.gz" for n in MNIST_FILES)


def test_mirrors_from_environment(tmp_path, server, monkeypatch):
    arrays = synthetic_mnist()
    hashes = serve_mnist(server, "/env", arrays)
    monkeypatch.setenv("CNNFAST_MNIST_MIRRORS", f" {server.url}/nowhere , {server.url}/env/")
    assert_same(load_mnist(checksums=hashes), arrays)
    assert "/nowhere/train-labels-idx1-ubyte.gz" in server.log


def test_only_missing_files_are_downloaded(tmp_path, server):
    arrays = synthetic_mnist()
    hashes = serve_mnist(server, "/m", arrays)
    write_mnist_dir(cache(tmp_path), {n: arrays[n] for n in MNIST_FILES[:2]}, compress=False)
    assert_same(load_mnist(mirrors=[server.url + "/m"], checksums=hashes), arrays)
    assert sorted(server.log) == sorted(f"/m/{n}.gz" for n in MNIST_FILES[2:])


@pytest.mark.parametrize("mode", ["short", "cut-gzip"])
def test_truncated_transfer_leaves_nothing(tmp_path, server, mode):
    arrays = synthetic_mnist()
    if mode == "short":  # Content-Length larger than the body
        hashes = serve_mnist(server, "/m", arrays, mode="short")
    else:  # consistent Content-Length, but the gzip stream is cut
        hashes = serve_mnist(server, "/m", arrays)
        for key, (m, body) in list(server.routes.items()):
            server.routes[key] = (m, body[: len(body) - 20])
    with pytest.raises(DownloadError) as exc:
        load_mnist(mirrors=[server.url + "/m"], checksums=hashes)
    assert "train-images-idx3-ubyte.gz" in str(exc.value)
    assert ("cut short" if mode == "short" else "train-images") in str(exc.value)
    assert cache_listing(tmp_path) == []


def test_partial_failure_keeps_only_verified_files(tmp_path, server):
    arrays = synthetic_mnist()
    hashes = serve_mnist(server, "/m", arrays, only=MNIST_FILES[:3])
    serve_mnist(server, "/m", arrays, mode="short", only=MNIST_FILES[3:])
    with pytest.raises(DownloadError, match="t10k-labels-idx1-ubyte"):
        load_mnist(mirrors=[server.url + "/m"], checksums=hashes)
    assert cache_listing(tmp_path) == sorted(f"{n}.gz" for n in MNIST_FILES[:3])


def test_download_checksum_mismatch_leaves_nothing(tmp_path, server):
    arrays = synthetic_mnist()
    serve_mnist(server, "/m", arrays)
    with pytest.raises(DownloadError) as exc:  # default (official) hashes do not match
        load_mnist(mirrors=[server.url + "/m"], verify=False)
    msg = str(exc.value)
    assert "SHA-256 mismatch" in msg and datasets.SHA256["train-images-idx3-ubyte"] in msg
    assert sha256(idx_bytes(arrays["train-images-idx3-ubyte"])) in msg
    assert cache_listing(tmp_path) == []


def test_timeout_then_next_mirror(tmp_path, server):
    arrays = synthetic_mnist()
    hashes = serve_mnist(server, "/good", arrays)
    server.routes["/slow/train-images-idx3-ubyte.gz"] = ("hang", b"")
    mirrors = [server.url + "/slow", server.url + "/good"]
    start = time.monotonic()
    assert_same(load_mnist(mirrors=mirrors, checksums=hashes, timeout=0.3), arrays)
    assert time.monotonic() - start < 5  # the hanging mirror is held for 10 s
    assert "/slow/train-images-idx3-ubyte.gz" in server.log
    assert cache_listing(tmp_path) == sorted(f"{n}.gz" for n in MNIST_FILES)


def test_progress_bar_on_tty(tmp_path, server, monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    fake = FakeTTY()
    monkeypatch.setattr("sys.stderr", fake)
    arrays = synthetic_mnist()
    hashes = serve_mnist(server, "/m", arrays)
    load_mnist(mirrors=[server.url + "/m"], checksums=hashes)
    out = fake.getvalue()
    assert "100%" in out and "\r" in out
    assert "train-images-idx3-ubyte.gz" in out


# ----------------------------------------------------------------------------- real data


def test_real_mnist():
    if not REAL_DATA:
        if os.environ.get("CNNFAST_REQUIRE_DATA") == "1":
            pytest.fail("CNNFAST_REQUIRE_DATA=1 but CNNFAST_DATA is not set")
        pytest.skip("set CNNFAST_DATA to the MNIST directory (e.g. ../shared/data/mnist)")
    x_train, y_train, x_test, y_test = load_mnist(REAL_DATA, download=False, verify=True)
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    for a in (x_train, y_train, x_test, y_test):
        assert a.dtype == np.uint8
    for y in (y_train, y_test):
        assert set(np.unique(y).tolist()) == set(range(10))
