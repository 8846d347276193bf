"""Fuzzing the two file readers with random and mutated bytes.

- `cnnfast.datasets.read_idx`: valid IDX files (plain and gzip) with bits flipped, bytes set,
  cut, extended, inserted and deleted, header fields replaced, gzip streams corrupted or
  re-compressed around a mutated payload, files spliced together, plain random bytes. Each must
  either parse to exactly what an independent reader (`expected_idx`, below) gets from the same
  bytes, or raise DatasetError (or a subclass) naming the file; never another exception, never
  a hang (a watchdog alarm), and never an allocation larger than the file could describe
  (measured with tracemalloc: the file's size, times deflate's 1032:1 limit for gzip).
- `cnnfast.load_model`: a real saved model with its bytes mutated, and with the members of its
  zip archive mutated (so that the CRCs still match and the damage reaches numpy's .npy parser,
  the JSON architecture and the shape checks), plus pickled object arrays: a ModelFormatError
  naming the file or a model that fits its architecture; never an unpickled object.
- `cnnfast.checkpoint.load` and `restore` (what `--resume` does) on a real training checkpoint
  damaged the same ways: a CheckpointError naming the file, or a checkpoint that restores.

Inputs are drawn from a seeded generator: the same inputs on every run.
"""

import contextlib
import gzip
import io
import json
import math
import os
import signal
import struct
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest

import cnnfast
from _idx_helpers import gz, idx_bytes, idx_header, sha256
from _models import small_model
from cnnfast import checkpoint as ckpt
from cnnfast import nn
from cnnfast.datasets import ChecksumError, DatasetError, read_idx

IDX_INPUTS = int(os.environ.get("CNNFAST_FUZZ_IDX", "3000"))
MODEL_INPUTS = int(os.environ.get("CNNFAST_FUZZ_MODELS", "1500"))
CHECKPOINT_INPUTS = int(os.environ.get("CNNFAST_FUZZ_CHECKPOINTS", "1000"))
GZIP_MAX_RATIO = 1032


@contextlib.contextmanager
def watchdog(seconds):
    """Fail (instead of hanging forever) if the body takes longer than `seconds`."""

    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ mutations


def mutate(rng: np.random.Generator, data: bytes, corpus: list) -> bytes:
    """`data` damaged in one to three random ways."""
    b = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        op = rng.integers(0, 11)
        n = len(b)
        if op == 0 and n:  # flip bits
            for _ in range(rng.integers(1, 5)):
                b[rng.integers(0, n)] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and n:  # set bytes to extreme or random values
            for _ in range(rng.integers(1, 5)):
                b[rng.integers(0, n)] = int(rng.choice([0, 0xFF, 0x7F, 0x80, rng.integers(0, 256)]))
        elif op == 2:  # cut
            del b[rng.integers(0, n + 1) :]
        elif op == 3:  # extend
            b += (
                bytes(rng.integers(0, 256, rng.integers(1, 40), dtype=np.uint8))
                if rng.random() < 0.5
                else bytes(int(rng.integers(1, 40)))
            )
        elif op == 4:  # insert
            at = rng.integers(0, n + 1)
            b[at:at] = bytes(rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8))
        elif op == 5 and n:  # delete a range
            at = rng.integers(0, n)
            del b[at : at + rng.integers(1, 9)]
        elif op == 6 and n >= 4:  # overwrite an aligned 32-bit field (IDX header fields, zip sizes)
            at = int(rng.integers(0, n // 4)) * 4
            value = int(rng.choice([0, 1, 28, 2**31 - 1, 2**31, 2**32 - 1, 10**9, rng.integers(0, 2**32)]))
            b[at : at + 4] = struct.pack(">I" if rng.random() < 0.5 else "<I", value)
        elif op == 7 and corpus:  # splice with another file
            other = corpus[rng.integers(0, len(corpus))]
            b = b[: rng.integers(0, n + 1)] + bytearray(other[rng.integers(0, len(other) + 1) :])
        elif op == 8 and n:  # duplicate a range
            at = rng.integers(0, n)
            b[at:at] = b[at : at + rng.integers(1, 64)]
        elif op == 9 and n:  # swap two bytes
            i, j = rng.integers(0, n, 2)
            b[i], b[j] = b[j], b[i]
        elif op == 10:  # random bytes
            b = bytearray(rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8).tobytes())
    return bytes(b)


# ------------------------------------------------------------------ IDX


def expected_idx(data: bytes):
    """An independent reading of the IDX format: the array a correct reader returns, or None
    if the bytes are not a valid uint8 IDX file (0x801 labels [N] or 0x803 images [N, R, C])."""
    raw = data
    if data[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] not in (1, 3):
        return None
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    if len(raw) != 4 + 4 * ndim + math.prod(dims):
        return None
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_corpus():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 10, n, dtype=np.uint8) for n in (0, 1, 7, 60)]
    arrays += [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(0, 28, 28), (1, 3, 4), (3, 4, 5), (2, 28, 28)]
    ]
    plain = [idx_bytes(a) for a in arrays]
    return plain + [gz(p) for p in plain]


def check_idx(path, data, expected_sha=None):
    """Read `data` through read_idx and compare with expected_idx; returns the outcome.
    tracemalloc must be tracing: the peak allocation is bounded by what the file can hold."""
    path.write_bytes(data)
    expected = expected_idx(data)
    tracemalloc.reset_peak()
    try:
        with watchdog(10):
            got = read_idx(path, sha256=expected_sha)
    except DatasetError as error:
        assert str(path) in str(error), f"the message does not name the file: {error}"
        if isinstance(error, ChecksumError):
            assert expected is not None and expected_sha != sha256(
                gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            )
            outcome = "checksum"
        else:
            assert expected is None, f"a valid file was rejected: {error}"
            outcome = "error"
    else:
        assert expected is not None, f"invalid bytes were accepted: {got.shape}"
        assert got.dtype == np.uint8 and got.shape == expected.shape and np.array_equal(got, expected)
        outcome = "parsed"
    bound = len(data) * (GZIP_MAX_RATIO if data[:2] == b"\x1f\x8b" else 1) + (1 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    assert peak <= bound, f"read_idx allocated {peak} bytes for a {len(data)}-byte file"
    return outcome


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def test_idx_reader_fuzz(tmp_path, traced):
    rng = np.random.default_rng(2024)
    corpus = idx_corpus()
    path = tmp_path / "fuzz-idx-ubyte"
    outcomes = {"parsed": 0, "error": 0, "checksum": 0}
    for _ in range(IDX_INPUTS):
        seed = corpus[rng.integers(0, len(corpus))]
        if seed[:2] == b"\x1f\x8b" and rng.random() < 0.5:  # damage inside the gzip stream
            data = gz(mutate(rng, gzip.decompress(seed), corpus))
        else:
            data = mutate(rng, seed, corpus)
        expected_sha = None
        if rng.random() < 0.2:  # sometimes with the checksum of the file it was made from
            expected_sha = sha256(gzip.decompress(seed) if seed[:2] == b"\x1f\x8b" else seed)
        outcomes[check_idx(path, data, expected_sha)] += 1
    for data in corpus:  # and the unmutated files parse
        assert check_idx(path, data) == "parsed"
    print("IDX fuzz outcomes:", outcomes)
    # the fuzzer reaches every outcome (a vacuous fuzzer would reject everything)
    assert all(count > 0 for count in outcomes.values()), outcomes


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dims", [(10**9, 28, 28), (2**32 - 1,), (2**32 - 1, 2**32 - 1, 2**32 - 1), (60000, 28, 28)])
def test_idx_header_claiming_more_than_the_file_holds(tmp_path, traced, compress, dims):
    """A 100-byte file whose header claims 10^9 images is an error, not a 700 GB allocation."""
    data = idx_header(dims) + bytes(range(100))
    data = gz(data) if compress else data
    assert check_idx(tmp_path / "claims-too-much", data) == "error"


# ------------------------------------------------------------------ model files

UNPICKLED = []


def _unpickled(tag):
    """Called only if a pickle is loaded: load_model must never get here."""
    UNPICKLED.append(tag)
    return tag


class Trap:
    def __reduce__(self):
        return (_unpickled, ("unpickled!",))


def saved_bytes(model, path) -> bytes:
    model.save(path)
    return path.read_bytes()


def rezip(data: bytes, change) -> bytes:
    """The archive `data` rewritten with `change(name, content) -> content or None` applied to
    every member (None drops it); CRCs are recomputed, so the damage is inside the members."""
    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        members = [(info, zin.read(info.filename)) for info in zin.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for info, content in members:
            content = change(info.filename, content)
            if content is not None:
                zout.writestr(info, content)
    return out.getvalue()


def npy_bytes(header: str, payload: bytes = b"") -> bytes:
    """A .npy file with a literal header (version 1.0), padded as numpy pads it."""
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * (pad % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


NPY_HEADERS = [  # damaged .npy headers, each a way numpy's header parser can fail
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }",  # 4 TB
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), ",  # unbalanced
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3]), }",
    "{[]: 1}",
    "{'descr': '|O', 'fortran_order': False, 'shape': (2, 3), }",  # an object array
    "{'descr': '<f4', 'fortran_order': True, 'shape': (-1, 3), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (2**70,), }",
    "{'descr': 'xyz', 'fortran_order': False, 'shape': (2, 3), }",
    "(" * 200 + ")" * 200,
    "",
]


def model_mutation(rng, data, corpus):
    """A damaged copy of the model file `data`: raw bytes, or inside its members."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return mutate(rng, data, corpus)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    target = names[rng.integers(0, len(names))]
    if kind == 1:  # the bytes of one member (its .npy header, architecture JSON or weights)
        head = rng.random() < 0.7  # mostly the first 128 bytes, where the header lives
        return rezip(
            data,
            lambda name, c: (
                c if name != target else (mutate(rng, c[:128], []) + c[128:] if head else mutate(rng, c, []))
            ),
        )
    if kind == 2:  # one member replaced by a damaged .npy header, or dropped, or added
        choice = rng.integers(0, len(NPY_HEADERS) + 2)
        if choice == len(NPY_HEADERS):
            return rezip(data, lambda name, c: None if name == target else c)
        if choice == len(NPY_HEADERS) + 1:  # an extra member, a copy of another
            extra = io.BytesIO(data)
            with zipfile.ZipFile(extra, "a") as z:
                z.writestr("extra.npy", zipfile.ZipFile(io.BytesIO(data)).read(target))
            return extra.getvalue()
        payload = bytes(rng.integers(0, 256, rng.integers(0, 64), dtype=np.uint8))
        return rezip(data, lambda name, c: npy_bytes(NPY_HEADERS[choice], payload) if name == target else c)
    # kind 3: the architecture JSON rewritten
    if "architecture.npy" not in names:
        return mutate(rng, data, corpus)
    architecture = json.loads(str(np.load(io.BytesIO(data))["architecture"]))
    layer = architecture[rng.integers(0, len(architecture))]
    key = list(layer)[rng.integers(0, len(layer))]
    layer[key] = [0, -1, 10**12, 2**63, 1.5, "Linear", None, True, [], {}, "__import__"][rng.integers(0, 11)]
    buffer = io.BytesIO()
    np.save(buffer, np.array(json.dumps(architecture)))
    return rezip(data, lambda name, c: buffer.getvalue() if name == "architecture.npy" else c)


# Exceptions that load_model let escape instead of raising ModelFormatError (faults found by
# this fuzzing, pinned by the tests at the end of this file): none left, so the fuzz test
# accepts ModelFormatError only.
KNOWN_ESCAPES = ()


def check_model(path, data, reference):
    """load_model on `data`: a model that fits its architecture, or ModelFormatError naming the
    file. Returns the outcome."""
    path.write_bytes(data)
    try:
        with watchdog(10), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about some odd .npy headers
            model = cnnfast.load_model(path)
    except nn.ModelFormatError as error:
        assert str(path) in str(error), f"the message does not name the file: {error}"
        return "error"
    except KNOWN_ESCAPES as error:
        return f"known fault: {type(error).__name__}"
    assert not UNPICKLED, "load_model unpickled an object"
    fresh = nn.from_architecture(model.architecture())
    assert [p.shape for p in model.parameters()] == [p.shape for p in fresh.parameters()]
    assert all(p.data.dtype == np.float32 and p.data.flags.c_contiguous for p in model.parameters())
    if model.architecture() == reference.architecture() and all(
        p.data.tobytes() == q.data.tobytes() for p, q in zip(model.parameters(), reference.parameters())
    ):
        return "same model"
    return "other model"


def test_model_file_fuzz(tmp_path):
    rng = np.random.default_rng(7)
    files = [
        (model, saved_bytes(model, tmp_path / name))
        for model, name in ((small_model(seed=3), "small.npz"), (nn.mnist_cnn(seed=1), "big.npz"))
    ]
    corpus = [data for _, data in files]
    path = tmp_path / "fuzz-model.npz"
    outcomes = {}
    for i in range(MODEL_INPUTS):
        reference, data = files[0] if i % 10 else files[1]  # mostly the small file: more header per byte
        outcome = check_model(path, model_mutation(rng, data, corpus), reference)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print("model fuzz outcomes:", outcomes)
    assert outcomes.get("error", 0) > MODEL_INPUTS // 4 and outcomes.get("same model", 0) > 0, outcomes


@pytest.mark.parametrize("member", ["format", "architecture", "0.weight", "extra"])
def test_a_pickle_inside_a_model_file_is_never_loaded(tmp_path, member):
    path = small_model(seed=3).save(tmp_path / "m.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays[member] = np.array([Trap(), Trap()], dtype=object)
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(nn.ModelFormatError, match="pickled.npz"):
        cnnfast.load_model(tmp_path / "pickled.npz")
    assert not UNPICKLED
    with np.load(tmp_path / "pickled.npz", allow_pickle=True) as f:  # the trap works when allowed
        f[member]
    assert UNPICKLED
    UNPICKLED.clear()


# ------------------------------------------------------------------ training checkpoints


def make_checkpoint(path):
    from cnnfast.optim import Adam

    model = small_model(seed=3)
    optimizer = Adam(model.parameters())
    snapshot = ckpt.capture(
        model,
        optimizer,
        settings={
            "epochs": 3,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 1e-3,
            "seed": 0,
            "limit": None,
            "train_images": 300,
            "out": "/tmp/m.npz",
            "plot": None,
            "data_dir": None,
            "no_verify": False,
            "train_data_sha256": "0" * 64,
        },
        epoch=2,
        position=ckpt.EpochState(3, 7.5, 40, 96, 0.25),
        shuffle_rng=np.random.default_rng(1).bit_generator.state,
        history=[],
        train_seconds=1.0,
        trained_images=300,
    )
    ckpt.save(snapshot, path)
    return path.read_bytes()


def test_checkpoint_fuzz(tmp_path):
    from cnnfast.optim import Adam

    rng = np.random.default_rng(11)
    data = make_checkpoint(tmp_path / "good.ckpt.npz")
    path = tmp_path / "fuzz.ckpt.npz"
    outcomes = {}
    for _ in range(CHECKPOINT_INPUTS):
        if rng.random() < 0.3:  # the JSON document: a value replaced
            meta = json.loads(str(np.load(io.BytesIO(data))["meta"]))
            key = list(meta)[rng.integers(0, len(meta))]
            meta[key] = [None, -1, 10**12, 1.5, "x", [], {}, {"state": {}}, [{}], True][rng.integers(0, 10)]
            buffer = io.BytesIO()
            np.save(buffer, np.array(json.dumps(meta)))
            new_meta = buffer.getvalue()
            damaged = rezip(data, lambda name, c, new=new_meta: new if name == "meta.npy" else c)
        else:
            damaged = model_mutation(rng, data, [data]) if rng.random() < 0.8 else mutate(rng, data, [data])
        path.write_bytes(damaged)
        try:
            with watchdog(10), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = ckpt.load(path)
                model = small_model(seed=3)
                ckpt.restore(loaded, model, Adam(model.parameters()), np.random.default_rng())
            outcome = "restored"
        except ckpt.CheckpointError as error:
            assert str(path) in str(error) or "corrupt" in str(error) or "fit" in str(error), error
            outcome = "error"
        assert not UNPICKLED
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print("checkpoint fuzz outcomes:", outcomes)
    assert outcomes.get("error", 0) > CHECKPOINT_INPUTS // 4 and outcomes.get("restored", 0) > 0, outcomes


# ------------------------------------------------------------------ known faults in load_model


def test_damaged_zip_compression_method_is_a_model_format_error(tmp_path):
    data = bytearray(saved_bytes(small_model(seed=3), tmp_path / "m.npz"))
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        at = data.find(signature) + offset
        data[at : at + 2] = struct.pack("<H", 99)
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(nn.ModelFormatError, match="bad.npz"):
        cnnfast.load_model(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "header", [NPY_HEADERS[1], NPY_HEADERS[3], NPY_HEADERS[0]], ids=["unbalanced", "unhashable", "4TB"]
)
def test_damaged_npy_header_is_a_model_format_error(tmp_path, header):
    data = rezip(
        saved_bytes(small_model(seed=3), tmp_path / "m.npz"),
        lambda name, c: npy_bytes(header) if name == "0.weight.npy" else c,
    )
    (tmp_path / "bad.npz").write_bytes(data)
    with pytest.raises(nn.ModelFormatError, match="bad.npz"):
        cnnfast.load_model(tmp_path / "bad.npz")


def test_a_member_that_is_not_npy_is_a_model_format_error(tmp_path):
    data = rezip(
        saved_bytes(small_model(seed=3), tmp_path / "m.npz"),
        lambda name, c: b"not an npy file" if name == "0.weight.npy" else c,
    )
    (tmp_path / "bad.npz").write_bytes(data)
    with pytest.raises(nn.ModelFormatError, match="bad.npz"):
        cnnfast.load_model(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "layer",
    [
        {"type": "Linear", "in_features": 0, "out_features": 2},
        {"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 0, "padding": 0},
    ],
)
def test_a_layer_without_inputs_is_a_model_format_error(tmp_path, layer):
    np.savez(tmp_path / "bad.npz", format=np.array(nn.FORMAT), architecture=np.array(json.dumps([layer])))
    with pytest.raises(nn.ModelFormatError, match="bad.npz"):
        cnnfast.load_model(tmp_path / "bad.npz")
