"""Writing a file atomically, with the permissions any other program would give it; reading an
.npz archive without ever unpickling.

Every file cnnfast writes (models, checkpoints, metrics CSVs, ONNX graphs, downloaded MNIST
files) goes through :func:`atomic_write`: the content is written to a temporary file in the
same directory, flushed to disk, given the mode ``0o666 & ~umask`` (``mkstemp`` creates it
0600, which would make a model unreadable to anyone else), and only then renamed over the
target. A reader never sees half a file, and on any error or interruption (an exception,
Ctrl-C) the temporary file is removed and a previous file at the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np


def current_umask() -> int:
    """The process's umask (os.umask can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, check=None, **open_args):
    """Open a temporary file beside `path` for writing (`mode` "wb" or "w", `open_args` such as
    encoding= and newline= as for open()), yield it, and when the block ends without an error
    move it to `path`. `check(temp_path)`, if given, is called on the closed temporary file
    before the move and may raise to refuse it (a download is verified this way)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    fd, temp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o666 & ~current_umask())
        if check is not None:
            check(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def is_npz(file) -> bool:
    """Whether an open binary file starts like a zip archive (an .npz), leaving its position at 0."""
    start = file.read(4)
    file.seek(0)
    return start in (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive


def read_npz(path, parse, error: type[Exception], what: str, written_by: str):
    """parse(archive) of the .npz archive at `path` (a cnnfast model or checkpoint), read with
    allow_pickle=False. Raises `error` naming the file when it is not an .npz archive (numpy
    would take anything else for a pickle and advise unpickling it), when numpy or zipfile
    cannot read it, or as `parse` raised it; `what` ("model") and `written_by` (the program
    that writes one) word the message. FileNotFoundError and other errors opening the file
    pass through (their messages name the path)."""
    path = os.fspath(path)
    with open(path, "rb") as file:
        if not is_npz(file):
            raise error(f"{path}: not a cnnfast {what} file (a {what} is the .npz archive that {written_by} writes)")
        try:
            loaded = np.load(file, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise error(f"not a cnnfast {what} (a .npy array, not an .npz archive)")
            with loaded:
                return parse(loaded)
        except error as problem:
            raise error(f"{path}: {problem}") from None
        except Exception as problem:  # noqa: BLE001 - whatever a damaged archive makes zipfile,
            # numpy's .npy parser (ValueError, TokenError, MemoryError, ...) or json raise
            raise error(f"{path}: not a readable cnnfast {what} ({type(problem).__name__}: {problem})") from None
