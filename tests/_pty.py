"""A pseudo-terminal for the tests that watch a command's progress bar."""

import fcntl
import pty
import struct
import termios


def open_terminal(rows: int = 24, columns: int = 100) -> tuple[int, int]:
    """(master, slave) of a new pseudo-terminal with a window size, as a real terminal has: a
    fresh pty reports 0 columns, and tqdm draws its bar to the width the terminal reports."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave
