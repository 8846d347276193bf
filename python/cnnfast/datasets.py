"""MNIST loading: a bounded IDX reader, local lookup and a verified download.

Public API
----------
``load_mnist(root=None, download=True, verify=True, *, mirrors=None,
checksums=None, timeout=TIMEOUT)``
    ``(x_train, y_train, x_test, y_test)``: uint8 images ``[N, 28, 28]`` and
    uint8 labels ``[N]``.
``read_idx(path, *, sha256=None)``
    Any single uint8 IDX file (images or labels), plain or gzip-compressed.
``find_mnist(root=None)``, ``find_mnist_dir(root=None)``, ``search_dirs(root=None)``, ``cache_dir()``
    Where the four files are looked for: only in ``root`` if it is given (the
    commands' ``--data-dir``: a place named explicitly must hold the data);
    otherwise in ``$CNNFAST_DATA``, then ``$XDG_CACHE_HOME/cnnfast/mnist``
    (default ``~/.cache/cnnfast/mnist``), which is also the download target.

Errors
------
Every problem with the data (missing, truncated, corrupt, wrong checksum,
failed download) raises :class:`DatasetError`, a subclass of ``ValueError``,
or one of its subclasses :class:`ChecksumError` and :class:`DownloadError`.
The message names the file (or URL) and what is wrong. Low-level errors
(``OSError``, ``EOFError``, ``zlib.error``, ...) are chained with ``from``.

Overrides (used by the tests)
-----------------------------
``MIRRORS`` (module list), env ``CNNFAST_MNIST_MIRRORS`` (comma-separated) or
the ``mirrors=`` keyword, in increasing priority. ``SHA256`` (module dict of
expected SHA-256 of the *decompressed* files) or ``checksums=`` (merged over
``SHA256``).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ._files import atomic_write

__all__ = [
    "DatasetError",
    "ChecksumError",
    "DownloadError",
    "FILES",
    "SHA256",
    "MIRRORS",
    "load_mnist",
    "read_idx",
    "find_mnist",
    "find_mnist_dir",
    "search_dirs",
    "cache_dir",
]

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
TIMEOUT = 30.0  # seconds, per blocking network operation
MAX_IDX_BYTES = 4 << 30  # largest data payload an IDX header may claim
MAX_DOWNLOAD_BYTES = 256 << 20  # largest .gz accepted from a mirror (real: < 10 MB)

_IMAGES, _LABELS = 0x00000803, 0x00000801
_GZIP_MAX_RATIO = 1032  # deflate cannot expand data by more than ~1032:1
_CHUNK = 1 << 20


class DatasetError(ValueError):
    """A dataset file is missing, malformed, unverifiable or could not be fetched.

    ``str(error)`` speaks in the API's words (``root=``, ``verify=False``); ``command_message``
    says the same in the commands' flags (``--data-dir``, ``--no-verify``)."""

    def __init__(self, message: str, command_message: str | None = None):
        super().__init__(message)
        self.command_message = message if command_message is None else command_message


class ChecksumError(DatasetError):
    """The SHA-256 of a decompressed file differs from the expected value."""


class DownloadError(DatasetError):
    """Every mirror failed for a file that is not available locally."""


# ----------------------------------------------------------------------------- IDX reader


def read_idx(path, *, sha256: str | None = None) -> np.ndarray:
    """Read one uint8 IDX file (magic 0x801 labels ``[N]`` or 0x803 images ``[N, rows, cols]``).

    gzip compression is detected from the content, not the name. The header's
    claimed size is checked against the file before anything is allocated;
    short files, trailing bytes and corrupt gzip streams raise
    :class:`DatasetError`. If ``sha256`` is given, the hash of the
    (decompressed) bytes must match it, else :class:`ChecksumError`.
    """
    return _read_idx(path, sha256, str(path))


def _read_idx(path, sha256, name):
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            if raw.read(2) == b"\x1f\x8b":
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    return _parse(f, name, size * _GZIP_MAX_RATIO, False, sha256)
            raw.seek(0)
            return _parse(raw, name, size, True, sha256)
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error, struct.error, ValueError, OverflowError) as e:
        raise DatasetError(f"{name}: unreadable, truncated or corrupt file: {e}") from e


def _parse(f, name, avail, exact, sha256):
    """Parse an IDX stream; ``avail`` = file size if ``exact`` else an upper bound."""
    head = _read_upto(f, 4)
    if len(head) < 4:
        raise DatasetError(f"{name}: truncated: file ends inside the 4-byte IDX magic number")
    magic = int.from_bytes(head, "big")
    if magic not in (_IMAGES, _LABELS):
        raise DatasetError(
            f"{name}: bad magic number 0x{magic:08x} (expected 0x{_IMAGES:08x} "
            f"for images or 0x{_LABELS:08x} for labels); not a uint8 IDX file"
        )
    ndim = head[3]
    dims_raw = _read_upto(f, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DatasetError(f"{name}: truncated: file ends inside the IDX header")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    n = math.prod(dims)
    what = f"the header claims shape {dims} = {n} data bytes"
    if n > MAX_IDX_BYTES:
        raise DatasetError(f"{name}: {what}, more than the limit of {MAX_IDX_BYTES}")
    if exact:  # plain file: the size must match exactly
        have = avail - 4 - 4 * ndim
        if have < n:
            raise DatasetError(f"{name}: truncated: {what} but the file holds only {have}")
        if have > n:
            raise DatasetError(f"{name}: {have - n} unexpected trailing bytes ({what})")
    elif n > avail:
        raise DatasetError(
            f"{name}: truncated or corrupt: {what}, more than a gzip file of {avail // _GZIP_MAX_RATIO} bytes can hold"
        )
    data = np.empty(n, dtype=np.uint8)
    got = _read_upto(f, n, into=memoryview(data))
    if got < n:
        raise DatasetError(f"{name}: truncated: {what} but only {got} are present")
    if f.read(1):
        raise DatasetError(f"{name}: unexpected trailing bytes ({what})")
    if sha256:
        actual = hashlib.sha256(head + dims_raw)
        actual.update(data)
        if actual.hexdigest() != sha256.lower():
            raise ChecksumError(
                f"{name}: SHA-256 mismatch: expected {sha256.lower()}, "
                f"actual {actual.hexdigest()} (corrupt, or not the official "
                f"MNIST file)"
            )
    return data.reshape(dims)


def _read_upto(f, n, into=None):
    """Read up to ``n`` bytes (stops early only at EOF); bytes, or a count if ``into``."""
    buf = into if into is not None else memoryview(bytearray(n))
    pos = 0
    while pos < n:
        k = f.readinto(buf[pos : min(n, pos + _CHUNK)])
        if not k:
            break
        pos += k
    return pos if into is not None else bytes(buf[:pos])


# ----------------------------------------------------------------------------- lookup


def cache_dir() -> Path:
    """Download cache: ``$XDG_CACHE_HOME/cnnfast/mnist``, default ``~/.cache/cnnfast/mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnnfast" / "mnist"


def search_dirs(root=None) -> list[tuple[str, Path]]:
    """``(description, directory)`` pairs searched, in order. A ``root`` the caller names is
    the only place: ``[("root", root)]``. Without one: ``$CNNFAST_DATA`` (if set), then the cache."""
    if root is not None and str(root):
        return [("root", Path(root).expanduser())]
    places = []
    if os.environ.get("CNNFAST_DATA"):
        places.append(("$CNNFAST_DATA", Path(os.environ["CNNFAST_DATA"]).expanduser()))
    places.append(("cache", cache_dir()))
    return places


def _locate(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz`` (plain preferred), or None."""
    for p in (directory / name, directory / f"{name}.gz"):
        if os.path.isfile(p):
            return p
    return None


def find_mnist(root=None) -> tuple[str, Path] | None:
    """``(description, directory)`` of the first searched directory holding all four files
    (plain or .gz), or None. Descriptions: "root", "$CNNFAST_DATA", "cache"."""
    for place in search_dirs(root):
        if all(_locate(place[1], name) for name in FILES):
            return place
    return None


def find_mnist_dir(root=None) -> Path | None:
    """The first searched directory holding all four files (plain or .gz), or None."""
    found = find_mnist(root)
    return found[1] if found else None


def _state(directory: Path) -> str:
    """What is wrong with a directory that should hold MNIST."""
    if not os.path.isdir(directory):
        return f"{directory}: directory does not exist"
    missing = [f"{n}[.gz]" for n in FILES if _locate(directory, n) is None]
    return f"{directory}: missing " + ", ".join(missing)


def _not_in_root(root) -> DatasetError:
    """The directory the caller named does not hold MNIST: an error naming it (no fallback)."""
    state = _state(Path(root).expanduser())
    files = "the four files (" + ", ".join(FILES) + "; plain or .gz)"
    return DatasetError(
        f"no MNIST data in root={str(root)!r}: {state}.\nPut {files} there, or call without root= "
        "to search $CNNFAST_DATA and the cache (and download into the cache).",
        f"no MNIST data in --data-dir {root}: {state}.\nPut {files} there, or leave out --data-dir "
        "to search $CNNFAST_DATA and the cache (and download into the cache).",
    )


def _where_looked(download: bool) -> tuple[str, str]:
    """Where the data was looked for, and what to do: (in the API's words, in the commands')."""
    lines = ["Looked in:"]
    places = dict(search_dirs())
    for desc, unset in (("$CNNFAST_DATA", "not set"), ("cache", "")):
        d = places.get(desc)
        lines.append(f"  {desc}: {unset if d is None else _state(d)}")
    files = "the four files (" + ", ".join(FILES) + "; plain or .gz)"
    where = f"setting CNNFAST_DATA=DIR, or putting them in {cache_dir()}"
    network = "; or let them be downloaded with network access" if download else ""
    api = (
        f"Provide {files} by passing root=DIR, {where}"
        + (network if download else "; or call with download=True with network access")
        + "."
    )
    command = f"Provide {files} with --data-dir DIR, by {where}{network}."
    text = "\n".join(lines)
    return f"{text}\n{api}", f"{text}\n{command}"


# ----------------------------------------------------------------------------- download


def _mirror_list(mirrors):
    if mirrors is not None:
        return list(mirrors)
    env = os.environ.get("CNNFAST_MNIST_MIRRORS")
    if env:
        return [m.strip() for m in env.split(",") if m.strip()]
    return list(MIRRORS)


def _fetch(url: str, dest: Path, sha256, timeout) -> np.ndarray:
    """Download ``url`` to a temp file next to ``dest``, verify it, then move it into place."""
    verified = {}

    def verify(temp):
        verified["data"] = _read_idx(temp, sha256, url)

    with atomic_write(dest, check=verify) as out:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > MAX_DOWNLOAD_BYTES:
                raise DatasetError(f"{url}: refusing {total} bytes (> {MAX_DOWNLOAD_BYTES})")
            got = 0
            # a progress bar on stderr if it is a terminal (tqdm's disable=None), else nothing
            with tqdm(total=total, desc=dest.name, unit="B", unit_scale=True, file=sys.stderr, disable=None) as bar:
                while chunk := resp.read(64 << 10):
                    got += len(chunk)
                    if got > MAX_DOWNLOAD_BYTES:
                        raise DatasetError(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes")
                    out.write(chunk)
                    bar.update(len(chunk))
        if total is not None and got != total:
            raise DatasetError(f"{url}: transfer cut short: got {got} of {total} bytes")
    return verified["data"]


def _download(name, cache: Path, mirrors, sha256, timeout) -> np.ndarray:
    """Fetch ``name.gz`` into ``cache`` (which exists) from the first working mirror."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{name}.gz"
        try:
            return _fetch(url, cache / f"{name}.gz", sha256, timeout)
        except urllib.error.HTTPError as e:
            e.close()
            failures.append(f"{url}: HTTP {e.code} {e.reason}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append(f"{url}: {type(e).__name__}: {e}")
    if not mirrors:
        failures.append("no mirrors configured")
    head = (
        f"MNIST data not found locally and {name}.gz could not be downloaded:\n"
        + "\n".join(f"  {f}" for f in failures)
        + "\n"
    )
    api, command = _where_looked(download=True)
    raise DownloadError(head + api, head + command)


def _make_dirs(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; the ones created, deepest first."""
    created, d = [], directory
    while not os.path.isdir(d) and d != d.parent:
        created.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    return created


# ----------------------------------------------------------------------------- public loader


def load_mnist(
    root=None, download: bool = True, verify: bool = True, *, mirrors=None, checksums=None, timeout: float = TIMEOUT
):
    """Load MNIST as ``(x_train, y_train, x_test, y_test)`` (uint8 ``[N,28,28]`` / ``[N]``).

    A ``root`` the caller names must hold the four IDX files (plain or .gz): if it does not,
    that is a DatasetError naming it, never a fallback to another place. Without ``root``, the
    first of ``$CNNFAST_DATA`` and :func:`cache_dir` that holds them is used; otherwise, if
    ``download``, the missing .gz files are fetched into the cache (next mirror on failure); a
    downloaded file is always checked against its expected SHA-256 before it is atomically moved
    into place, and a failed download leaves no empty cache directory behind. With
    ``verify=False``, local files are only checked for structure (any 28x28 images with labels
    0..9 are accepted). :func:`find_mnist` tells which directory this reads.
    """
    expected = {**SHA256, **(checksums or {})}
    found = find_mnist(root)
    if found is None and root is not None and str(root):
        raise _not_in_root(root)
    if found is None and not download:
        api, command = _where_looked(download=False)
        raise DatasetError("MNIST data not found.\n" + api, "MNIST data not found.\n" + command)
    directory = found[1] if found else cache_dir()
    sources, arrays, created = {}, {}, []
    try:
        if not all(_locate(directory, n) for n in FILES):
            print(f"cnnfast: downloading MNIST into {directory}", file=sys.stderr)
            try:
                created = _make_dirs(directory)
            except OSError as e:
                head = f"MNIST data not found locally and the cache {directory} cannot be created: {e}\n"
                api, command = _where_looked(download=True)
                raise DownloadError(head + api, head + command) from e
        for name in FILES:
            path = _locate(directory, name)
            if path is None:
                sources[name] = str(directory / f"{name}.gz")
                arrays[name] = _download(name, directory, _mirror_list(mirrors), expected.get(name), timeout)
            else:
                sources[name] = str(path)
                try:
                    arrays[name] = read_idx(path, sha256=expected.get(name) if verify else None)
                except ChecksumError as e:
                    raise ChecksumError(
                        f"{e}; verify=False accepts other IDX data", f"{e}; --no-verify accepts other IDX data"
                    ) from None
    except BaseException:
        for d in created:  # deepest first: only the directories this call made, if still empty
            try:
                os.rmdir(d)
            except OSError:
                break
        raise
    out = []
    for split in ("train", "t10k"):
        img, lbl = f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"
        out += _check_split(arrays[img], arrays[lbl], sources[img], sources[lbl])
    return tuple(out)


def _check_split(images, labels, img_name, lbl_name):
    if images.ndim != 3:
        raise DatasetError(
            f"{img_name}: expected an image file (magic 0x{_IMAGES:08x}), got a {images.ndim}-d IDX file"
        )
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{img_name}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if labels.ndim != 1:
        raise DatasetError(f"{lbl_name}: expected a label file (magic 0x{_LABELS:08x}), got a {labels.ndim}-d IDX file")
    if len(images) != len(labels):
        raise DatasetError(f"{img_name} has {len(images)} images but {lbl_name} has {len(labels)} labels")
    if len(images) == 0:
        raise DatasetError(f"{img_name}: contains no images")
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DatasetError(f"{lbl_name}: label {labels[bad[0]]} at index {bad[0]} is outside 0..9")
    return images, labels
