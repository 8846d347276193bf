"""Writing a file atomically, with the permissions any other program would give it.

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
