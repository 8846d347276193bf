"""Drawing in the terminal: a progress bar, digits as shaded blocks, histograms."""
from __future__ import annotations

import sys
import time

import numpy as np


class Progress:
    """A one-line progress bar redrawn in place; silent unless `stream` is a terminal."""

    def __init__(self, total: int, label: str = "", stream=None, width: int = 30):
        self.total, self.label, self.width = max(int(total), 1), label, width
        self.stream = stream if stream is not None else sys.stdout
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_draw = 0.0

    def update(self, done: int, message: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and done < self.total and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {message}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


SHADES = " .:-=+*#%@"


def digit_rows(image: np.ndarray, width: int = 14) -> list[str]:
    """A 28x28 uint8 image as text rows of `width` characters (2x2 pixels per character at
    width 14; each row of characters covers 28/width*2 image rows, as terminal cells are tall)."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    step_x = w / width
    step_y = step_x * 2.0
    rows = []
    y = 0.0
    while y < h - 1e-9:
        y0, y1 = int(y), max(int(y + step_y), int(y) + 1)
        line = []
        for i in range(width):
            x0, x1 = int(i * step_x), max(int((i + 1) * step_x), int(i * step_x) + 1)
            v = image[y0:y1, x0:x1].mean() / 255.0
            line.append(SHADES[min(int(v * len(SHADES)), len(SHADES) - 1)])
        rows.append("".join(line))
        y += step_y
    return rows


def histogram(counts: dict, width: int = 50, label_format: str = "{:>+4}") -> list[str]:
    """Horizontal bars, one per key in sorted order: `label | ##### count`."""
    if not counts:
        return []
    peak = max(counts.values())
    lines = []
    for key in sorted(counts):
        n = counts[key]
        bar = "#" * max(1 if n else 0, round(width * n / peak)) if peak else ""
        lines.append(f"{label_format.format(key)} | {bar} {n}")
    return lines


def side_by_side(blocks: list[list[str]], width: int, gap: int = 1) -> list[str]:
    """Text blocks (lists of lines) placed next to each other in columns `width` characters
    wide (lines cut or padded to fit) separated by `gap` spaces; trailing spaces removed."""
    height = max((len(block) for block in blocks), default=0)
    rows = []
    for i in range(height):
        cells = [(block[i] if i < len(block) else "")[:width].ljust(width) for block in blocks]
        rows.append((" " * gap).join(cells).rstrip())
    return rows
