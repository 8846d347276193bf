"""python -m cnnfast.predict: read digits from image files and classify them.

    python -m cnnfast.predict my_seven.png photo_of_a_three.jpg      # mnist_cnn.npz
    python -m cnnfast.predict --model other.npz --show digit.bmp     # also draw what the model saw

A model trained on MNIST only knows digits prepared the way MNIST's were, so each image is
prepared like them (:func:`prepare`): made grayscale, turned into light ink on a dark
background if it is dark-on-light, cropped to the digit's bounding box, scaled to fit a 20x20
box keeping its aspect ratio, and placed in a 28x28 field with its centre of mass at the
centre. For photos, the paper's brightness is estimated from the image's border as a smooth
surface (so uneven light is subtracted), ink within the noise is dropped, the contrast is
stretched, and stray dots at the edges are not counted in the bounding box. One image should
hold one digit, roughly cropped (the border should be paper). Reading files needs Pillow
(``pip install cnnfast[image]``); :func:`prepare` on an array in memory needs it only for
the resizing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import warnings

import numpy as np

from ._cli import add_model_argument, argument_parser, check_model_arg, load_model
from ._terminal import digit_picture
from .mnist import probabilities

SIZE = 28  # the field
BOX = 20  # the digit's longer side
CENTRE = 14.0  # MNIST's centre of mass (row and column), in pixel indices: measured 13.99, 14.01
MIN_CONTRAST = 24.0  # ink this much (of 255) away from the background, or the image is blank
NOISE_FLOOR = 0.05  # ink fainter than this fraction of the darkest stroke is background,
NOISE_SIGMAS = 5.0  # and so is ink within this many standard deviations of the border's noise
SPECKS = 0.02  # stray dots at the edges holding less than this share of the ink are cut off
MAX_SIDE = 1024  # larger images are reduced first (the digit ends up 20 pixels tall anyway)
MAX_PIXELS = 50_000_000  # larger images are refused (Pillow's decompression-bomb limit is 89M)
HELP_WIDTH = 78  # the description keeps its paragraph break, so it is wrapped here, as argparse would
PILLOW_MISSING = "reading images needs Pillow: pip install cnnfast[image]  (or: pip install pillow)"
# The only formats decoded (Pillow's names; JPEG includes the multi-picture JPEGs of cameras).
# Pillow would otherwise try every plugin it has, EPS (Ghostscript) and other rarely used,
# riskier decoders among them, on whatever bytes a file or the demo's page hands it.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF or WebP"


class ImageError(ValueError):
    """A file that cannot be read as an image, or an image with no digit in it."""


def _pillow():
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise ImportError(PILLOW_MISSING) from None
    return Image, ImageOps, UnidentifiedImageError


# ----------------------------------------------------------------------------- reading


def read_image(path) -> np.ndarray:
    """A PNG, JPEG, BMP, GIF, TIFF or WebP image (:data:`FORMATS`; others are refused) as float64 [H, W]
    brightness 0 (black) .. 255 (white). Transparency is composited on white (if that leaves
    nothing, the opacity itself is taken as the ink); 16-bit images keep their full range;
    EXIF orientation is applied; animations give their first frame. Raises ImageError.
    `path` may also be a binary file object (io.BytesIO of uploaded bytes, say): messages then
    name it by its `name`, or "image"."""
    Image, ImageOps, UnidentifiedImageError = _pillow()
    if hasattr(path, "read"):
        source, path = path, str(getattr(path, "name", "image"))
    else:
        source = path = os.fspath(path)
        if os.path.isdir(path):
            raise ImageError(f"{path}: is a directory, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=FORMATS) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: {image.width}x{image.height} pixels is too large (more than {MAX_PIXELS:,})"
                    )
                image.load()
                try:
                    image = ImageOps.exif_transpose(image) or image
                except Exception:  # broken EXIF metadata: keep the pixels as stored
                    pass
                return _brightness(image, path)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file in a format read here ({FORMAT_NAMES})") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: too large: {error}") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as error:
        # truncated or corrupt data, unsupported compression or mode, ...
        raise ImageError(f"{path}: unreadable or corrupt image ({type(error).__name__}: {error})") from None


def _brightness(image, path) -> np.ndarray:
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and values.max(initial=0) > 255) else 255.0
        if mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        return np.clip(values * (255.0 / top), 0.0, 255.0)
    has_alpha = "A" in mode or "a" in mode or "transparency" in image.info
    if has_alpha:
        Image, _, _ = _pillow()
        rgba = image.convert("RGBA")
        on_white = np.asarray(
            Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("L"), dtype=np.float64
        )
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64)
        if np.ptp(on_white) < MIN_CONTRAST and np.ptp(alpha) >= MIN_CONTRAST:
            return 255.0 - alpha  # e.g. white strokes on a transparent background: the opacity is the ink
        return on_white
    try:
        gray = image.convert("L")
    except ValueError:  # modes without a direct conversion (HSV, LAB, ...)
        gray = image.convert("RGB").convert("L")
    return np.asarray(gray, dtype=np.float64)


# ----------------------------------------------------------------------------- preparing


def background(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's brightness under the digit, and the standard deviation of its noise, from the
    image's border (the outermost rows and columns, where the digit rarely is): a smooth surface
    (a quadratic in row and column, so light that falls unevenly across a photo is followed)
    fitted by least squares to the border pixels, refitted without those far from it (ink that
    touches the border). A uniform border gives a constant and no noise."""
    h, w = gray.shape
    ys = np.concatenate([np.zeros(w), np.full(w, h - 1), np.arange(1, h - 1), np.arange(1, h - 1)]).astype(int)
    inner = max(h - 2, 0)  # (an image one pixel high has no rows between its first and last)
    xs = np.concatenate([np.arange(w), np.arange(w), np.zeros(inner), np.full(inner, w - 1)]).astype(int)
    values = gray[ys, xs]
    level = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - level)))
    if min(h, w) < 8 or spread == 0.0:
        return np.full_like(gray, level), spread

    def terms(y, x):
        y, x = 2.0 * y / (h - 1) - 1.0, 2.0 * x / (w - 1) - 1.0
        return [np.ones_like(y * x), y, x, y * x, y * y, x * x]

    design = np.stack(terms(ys.astype(float), xs.astype(float)), axis=-1)
    fitted = np.full(len(values), level)
    for _ in range(4):
        residual = values - fitted
        spread = 1.4826 * float(np.median(np.abs(residual)))
        keep = np.abs(residual) <= max(3.0 * spread, 1e-6)
        coefficients = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        fitted = design @ coefficients
    spread = 1.4826 * float(np.median(np.abs(values - fitted)))
    grid = terms(np.arange(h, dtype=float)[:, None], np.arange(w, dtype=float)[None, :])
    surface = sum(c * t for c, t in zip(coefficients, grid))
    return np.broadcast_to(surface, gray.shape).astype(np.float64), spread


def ink(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """Light-on-dark ink 0..255 from brightness 0..255: the background (see `background`) is
    subtracted, the polarity decided by whether the pixels that differ from it are mostly darker
    (dark-on-light: inverted) or lighter, ink within NOISE_FLOOR of the strongest stroke or
    NOISE_SIGMAS standard deviations of the border's noise taken as background, and the contrast
    stretched so the strongest strokes (the top 1%) are 255. Returns (ink, inverted). Raises
    ImageError for a blank image, or one whose noise is as strong as its ink."""
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 2 or gray.size == 0:
        raise ImageError(f"expected a 2-d grayscale image, got shape {list(gray.shape)}")
    paper, noise = background(gray)
    darker = np.clip(paper - gray, 0.0, None)
    lighter = np.clip(gray - paper, 0.0, None)
    inverted = darker.sum() > lighter.sum()
    strokes = darker if inverted else lighter
    strongest = float(strokes.max())
    if strongest < MIN_CONTRAST:
        raise ImageError(
            f"blank image: nothing differs from the background by more than {strongest:.0f} "
            f"of 255 (needs {MIN_CONTRAST:.0f}); no digit to read"
        )
    above_noise = strokes[strokes > NOISE_SIGMAS * noise]
    peak = float(np.percentile(above_noise, 99)) if above_noise.size else 0.0  # a max robust to outliers
    floor = max(NOISE_FLOOR * peak, NOISE_SIGMAS * noise)
    if floor >= 0.5 * peak:
        raise ImageError(
            f"no clear digit: the strokes ({strongest:.0f} of 255 from the background at "
            f"most) are not far above the background's noise (standard deviation {noise:.1f})"
        )
    return np.clip((strokes - floor) * (255.0 / (peak - floor)), 0.0, 255.0), bool(inverted)


def bounding_box(strokes: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom and right exclusive: the rows and columns holding ink,
    less stray dots (dust, noise) at the edges: runs of ink separated from the rest by empty
    rows (columns) and holding together less than SPECKS of the ink."""

    def span(profile):
        nonzero = profile > 0
        starts = np.flatnonzero(nonzero & ~np.concatenate([[False], nonzero[:-1]]))
        ends = np.flatnonzero(nonzero & ~np.concatenate([nonzero[1:], [False]])) + 1
        mass = np.array([profile[a:b].sum() for a, b in zip(starts, ends)])
        allowed, first, last = SPECKS * mass.sum(), 0, len(mass) - 1
        while first < last and mass[first] <= allowed:
            allowed -= mass[first]
            first += 1
        while last > first and mass[last] <= allowed:
            allowed -= mass[last]
            last -= 1
        return int(starts[first]), int(ends[last])

    top, bottom = span(strokes.sum(axis=1))
    left, right = span(strokes.sum(axis=0))
    return top, bottom, left, right


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    Image, _, _ = _pillow()
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    shrinking = width <= image.shape[1] and height <= image.shape[0]
    method = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BILINEAR
    return np.clip(np.asarray(picture.resize((width, height), method), dtype=np.float64), 0.0, 255.0)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre of an image with positive total."""
    total = image.sum()
    rows, cols = np.arange(image.shape[0]), np.arange(image.shape[1])
    return float(image.sum(axis=1) @ rows / total), float(image.sum(axis=0) @ cols / total)


def prepare(gray: np.ndarray, return_inverted: bool = False):
    """An image of a digit (brightness [H, W], either polarity, any size) as MNIST prepared its
    digits: uint8 [28, 28], light ink on black, the bounding box scaled to fit 20x20 keeping
    its aspect ratio, and moved by whole pixels so its centre of mass is at (14, 14) (the digit
    stays inside the field). With return_inverted, also whether the input was dark-on-light.
    Images larger than MAX_SIDE are first reduced by averaging whole blocks of pixels."""
    gray = np.asarray(gray, dtype=np.float64)
    factor = -(-max(gray.shape, default=0) // MAX_SIDE)
    if factor > 1:
        Image, _, _ = _pillow()
        gray = np.asarray(Image.fromarray(gray.astype(np.float32)).reduce(factor), dtype=np.float64)
    strokes, inverted = ink(gray)
    top, bottom, left, right = bounding_box(strokes)
    crop = strokes[top:bottom, left:right]
    h, w = crop.shape
    scale = BOX / max(h, w)
    height, width = max(1, round(h * scale)), max(1, round(w * scale))
    digit = _resize(crop, width, height)
    if digit.sum() <= 0:  # a speck that vanished in the resizing
        digit = np.full((height, width), 255.0)
    cy, cx = centre_of_mass(digit)
    top = min(max(int(np.floor(CENTRE - cy + 0.5)), 0), SIZE - height)
    left = min(max(int(np.floor(CENTRE - cx + 0.5)), 0), SIZE - width)
    field = np.zeros((SIZE, SIZE))
    field[top : top + height, left : left + width] = digit
    out = np.clip(np.rint(field), 0, 255).astype(np.uint8)
    return (out, inverted) if return_inverted else out


def load_digit(path) -> np.ndarray:
    """read_image then prepare: the uint8 [28, 28] the model sees. Raises ImageError naming the file."""
    gray = read_image(path)
    try:
        return prepare(gray)
    except ImageError as error:
        raise ImageError(f"{os.fspath(path)}: {error}") from None


# ----------------------------------------------------------------------------- the command


def top_k(proba: np.ndarray, k: int = 3) -> list[tuple[int, float]]:
    """The k most probable digits with their probabilities, most probable first (ties: lower digit)."""
    order = np.argsort(-np.asarray(proba), kind="stable")[:k]
    return [(int(d), float(proba[d])) for d in order]


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(
        prog="python -m cnnfast.predict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join(
            textwrap.fill(paragraph, HELP_WIDTH)
            for paragraph in (
                "Classify handwritten digits in image files (PNG, JPEG, BMP, GIF, TIFF or WebP; the first frame "
                "of an animation) with a trained model.",
                "Each image is prepared the way the MNIST digits were: made grayscale (transparency on white), "
                "turned into light-on-dark if it is dark ink on a light background, cropped to the digit's "
                "bounding box, scaled to fit 20x20 keeping its aspect ratio, and centred by its centre of mass "
                "in a 28x28 field. One image should hold one digit.",
            )
        ),
        epilog=textwrap.fill(
            "Prints each file's predicted digit and its three most probable digits. A file that cannot be "
            "read, or holds no digit, is reported on stderr and the others are still predicted. Exit "
            "status: 0 all predicted, 1 a file failed (or no model, or no Pillow: pip install "
            "cnnfast[image]), 2 bad arguments; 130 (143) after Ctrl-C (SIGTERM).",
            HELP_WIDTH,
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one digit each")
    add_model_argument(p)
    p.add_argument(
        "--show",
        action="store_true",
        help="also draw the 28x28 image the model saw (with --json: add it as 'image', 28 rows of 28 values)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (the text goes to stderr): {'model', 'predictions': [{'file', 'digit', "
        "'top3', 'probabilities', 'inverted'} or {'file', 'error'}]}",
    )
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_arg(parser, args.model)
    try:
        _pillow()
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    model = load_model(args.model)
    if model is None:
        return 1

    entries, digits, inverted = [], [], []
    for path in args.images:
        try:
            gray = read_image(path)
            try:
                digit, flipped = prepare(gray, return_inverted=True)
            except ImageError as error:
                raise ImageError(f"{path}: {error}") from None
        except ImageError as error:
            entries.append({"file": path, "error": str(error)})
            continue
        entries.append({"file": path})
        digits.append(digit)
        inverted.append(flipped)

    if digits:
        try:
            proba = probabilities(model, np.stack(digits))
        except ValueError as error:
            print(f"error: the model in {args.model} does not fit 28x28 digit images: {error}", file=sys.stderr)
            return 1
    log = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON alone
    results = iter(range(len(digits)))
    failed = 0
    width = max(len(e["file"]) for e in entries)
    for entry in entries:
        if "error" in entry:
            failed += 1
            print(f"error: {entry['error']}", file=sys.stderr)
            continue
        i = next(results)
        best = top_k(proba[i])
        entry.update(
            digit=best[0][0],
            top3=[{"digit": d, "probability": p} for d, p in best],
            probabilities=proba[i].tolist(),
            inverted=inverted[i],
        )
        if args.show:
            entry["image"] = digits[i].tolist()
        others = "  ".join(f"{d}: {100 * p:6.2f}%" for d, p in best)
        print(f"{entry['file']:<{width}}  {best[0][0]}   ({others})", file=log, flush=True)
        if args.show:
            note = " (inverted: dark ink on a light background)" if inverted[i] else ""
            print(
                "\n".join(
                    ["  " + row for row in digit_picture(digits[i], log)]
                    + [f"  the 28x28 image the model saw{note}", ""]
                ),
                file=log,
            )
    if args.json:
        print(
            json.dumps(
                {
                    "model": os.path.abspath(args.model),
                    "predicted": len(digits),
                    "failed": failed,
                    "predictions": entries,
                }
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    from ._cli import run_command

    sys.exit(run_command(main))
