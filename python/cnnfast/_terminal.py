"""Drawing in the terminal: digits as shaded blocks, histograms. (Progress bars are tqdm's.)"""

from __future__ import annotations

import sys

import numpy as np

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


BLOCKS = {(False, False): " ", (True, False): "\u2580", (False, True): "\u2584", (True, True): "\u2588"}
FAINT = "\u2591"


def can_draw_blocks(stream=None) -> bool:
    """Whether `stream` (default stdout) can print the block characters (a UTF-8 terminal or
    file can; an ASCII one, e.g. PYTHONIOENCODING=ascii, cannot)."""
    stream = stream if stream is not None else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        "".join(BLOCKS.values()).encode(encoding)
        FAINT.encode(encoding)
        "\u250c\u2500\u2510\u2502\u2514\u2518".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def block_rows(image: np.ndarray, threshold: int = 128, faint: int = 48) -> list[str]:
    """A uint8 image (light ink on black, e.g. 28x28) at full resolution in half-block characters:
    each character is one pixel wide and two tall (terminal cells are about twice as tall as
    wide, so the digit keeps its shape); 28x28 becomes 14 rows of 28. A pixel >= `threshold`
    is ink; a cell with no ink but a pixel >= `faint` is drawn light-shaded."""
    image = np.asarray(image)
    if image.shape[0] % 2:
        image = np.concatenate([image, np.zeros((1, image.shape[1]), image.dtype)])
    rows = []
    for top, bottom in zip(image[0::2], image[1::2]):
        line = []
        for a, b in zip(top, bottom):
            char = BLOCKS[(bool(a >= threshold), bool(b >= threshold))]
            line.append(FAINT if char == " " and max(a, b) >= faint else char)
        rows.append("".join(line))
    return rows


def digit_picture(image: np.ndarray, stream=None, frame: bool = True) -> list[str]:
    """A 28x28 uint8 digit as it can best be printed on `stream` (default stdout): block_rows
    in a box-drawing frame, or, where the block characters cannot be encoded, the ASCII shades
    of digit_rows (28 wide) in a +--+ frame. 14 rows of 28 characters, plus the frame."""
    blocks = can_draw_blocks(stream)
    rows = block_rows(image) if blocks else digit_rows(image, width=np.asarray(image).shape[1])
    if not frame:
        return rows
    width = max((len(r) for r in rows), default=0)
    if blocks:
        return (
            ["\u250c" + "\u2500" * width + "\u2510"]
            + ["\u2502" + r.ljust(width) + "\u2502" for r in rows]
            + ["\u2514" + "\u2500" * width + "\u2518"]
        )
    return ["+" + "-" * width + "+"] + ["|" + r.ljust(width) + "|" for r in rows] + ["+" + "-" * width + "+"]


def picture_grid(blocks: list[list[str]], columns: int, gap: int = 2) -> list[str]:
    """Pictures with their captions (each a list of lines, e.g. digit_picture + captions) in rows
    of as many as fit in `columns`, a blank line between rows."""
    if not blocks:
        return []
    cell = max(len(line) for block in blocks for line in block)
    per_row = max(1, (columns + gap) // (cell + gap))
    lines = []
    for i in range(0, len(blocks), per_row):
        lines += side_by_side(blocks[i : i + per_row], cell, gap=gap) + [""]
    return lines[:-1]
