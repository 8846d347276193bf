"""What the demo's JSON API computes, without the web framework: requests in, JSON-ready dicts out.

- :func:`predict` takes an image (PNG, JPEG, BMP, GIF, TIFF or WebP bytes under an ``image/...``
  Content-Type, or a 2-D list of grey levels of any size as ``application/json``), prepares it
  exactly as ``python -m cnnfast.predict`` prepares a photo (:func:`cnnfast.predict.prepare`),
  and returns the model's digit, its ten probabilities, the
  28x28 image it saw and each convolution layer's feature maps (computed by the C++ kernels,
  layer by layer: :meth:`cnnfast.nn.Sequential.activations`).
- :func:`backprop` takes the worked example's x, y, weights and learning rate (numbers or
  fraction strings) and returns one exact step (:mod:`cnnfast.backprop`) with its graph and the
  float32 kernel replay beside it.
- :func:`pick_examples` chooses MNIST test digits to load with one click: one of each digit the
  model reads right and a few it reads wrong.

Anything malformed raises :class:`RequestError` (status 400, 413 for a body too large, 415 for a
Content-Type not accepted) with a message for the person who sent it; the server turns it into a JSON error response.
"""

from __future__ import annotations

import io
import json
import math
import re
from fractions import Fraction

import numpy as np

from .. import backprop as bp
from .. import nn
from ..mnist import as_model_input, probabilities
from ..predict import FORMAT_NAMES, FORMATS, ImageError, prepare, read_image

MAX_BODY = 2 * 1024 * 1024  # bytes in a request body
MAX_SIDE = 4096  # pixels on an image's side
MAX_MAGNITUDE = 10**9  # |x|, |y|, |w|, |lr| in the worked example
MAX_NUMBER_TEXT = 200  # characters in a number written as a string ("3/2", "-0.25", "1e-3")
MAX_EXPONENT = 64  # |e| in "1e-3"-style strings (Fraction would build 10**e exactly)
# The Content-Types /api/predict takes for image bytes (decoded as one of predict.FORMATS,
# whichever the bytes are). Anything else, text/plain in particular, is refused: a page on
# another site can send text/plain without asking (a "simple" request), not these.
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/x-ms-bmp", "image/gif", "image/tiff", "image/webp")
JSON_TYPE = "application/json"


class RequestError(ValueError):
    """A request the API cannot serve: `status` (400, 403, 413, 415) and the message for its sender."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- predict


def parse_json(body: bytes):
    """The JSON value in a request body; RequestError if it is not JSON (NaN and Infinity are not JSON)."""

    def refuse_constant(name):
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        return json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RequestError(f"the body is not valid JSON: {error}") from None


def grey_levels(value) -> np.ndarray:
    """float64 [H, W] from a 2-D list of grey levels 0..255 (rows of equal length, at most
    MAX_SIDE each way, every value a finite number); RequestError otherwise."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
        raise RequestError('"image" must be a 2-D list of grey levels (a list of rows, each a list of numbers)')
    if len(value) > MAX_SIDE or any(len(row) > MAX_SIDE for row in value):
        raise RequestError(f"the image is larger than {MAX_SIDE}x{MAX_SIDE} pixels")
    if len({len(row) for row in value}) != 1 or not value[0]:
        raise RequestError('"image" must be rectangular: every row the same length, at least one value')
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for row in value for v in row):
        raise RequestError('"image" must hold numbers only (grey levels 0..255)')
    try:
        gray = np.array(value, dtype=np.float64)
    except OverflowError:
        raise RequestError('"image" holds a number too large for a grey level (0..255)') from None
    if not np.isfinite(gray).all() or gray.min() < 0 or gray.max() > 255:
        raise RequestError('"image" values must be grey levels from 0 (black) to 255 (white)')
    return gray


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower case, without parameters ("; charset=...")."""
    return content_type.split(";")[0].strip().lower()


def image_bytes(body: bytes) -> np.ndarray:
    """Brightness [H, W] of an encoded image (PNG, JPEG, BMP, GIF, TIFF or WebP, as cnnfast.predict reads files);
    RequestError if it is not an image or has more than MAX_SIDE pixels on a side."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body), formats=FORMATS) as image:  # (reads the header only)
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise RequestError(
            f"the body is not an image in a format read here ({FORMAT_NAMES} bytes), nor JSON "
            '{"image": [[grey levels]]} with Content-Type: application/json'
        ) from None
    if width > MAX_SIDE or height > MAX_SIDE:
        raise RequestError(f"the image is {width}x{height} pixels; at most {MAX_SIDE}x{MAX_SIDE} are accepted")
    try:
        return read_image(io.BytesIO(body))
    except ImageError as error:
        raise RequestError(str(error)) from None


def conv_feature_maps(model: nn.Sequential, outputs: list[np.ndarray]) -> list[dict]:
    """Each Conv2d layer's feature maps for one image, after the ReLU that follows it (if one
    does), as grey levels 0..255 spanning that layer's [min, max]: a value v is
    min + level / 255 * (max - min)."""
    maps = []
    for i, layer in enumerate(model.layers):
        if not isinstance(layer, nn.Conv2d):
            continue
        relu = i + 1 < len(model.layers) and isinstance(model.layers[i + 1], nn.ReLU)
        values = outputs[i + 1 if relu else i][0].astype(np.float64)
        low, high = float(values.min()), float(values.max())
        span = high - low
        levels = np.zeros(values.shape) if span <= 0 else (values - low) * (255.0 / span)
        kh, kw = layer.kernel_size
        maps.append(
            {
                "layer": i,
                "name": f"Conv2d({layer.in_channels}, {layer.out_channels}, {kh}x{kw})" + (" + ReLU" if relu else ""),
                "channels": int(values.shape[0]),
                "height": int(values.shape[1]),
                "width": int(values.shape[2]),
                "min": low,
                "max": high,
                "maps": np.rint(levels).astype(np.uint8).tolist(),
            }
        )
    return maps


def predict(model: nn.Sequential, body: bytes, content_type: str = "") -> dict:
    """POST /api/predict: {"digit", "probabilities", "input_28x28", "inverted", "feature_maps"}
    for an image sent as bytes (Content-Type one of IMAGE_TYPES) or as JSON {"image": [[...]]}
    (application/json); RequestError 415 for any other Content-Type."""
    kind = media_type(content_type)
    if kind not in IMAGE_TYPES and kind != JSON_TYPE:
        raise RequestError(
            f"Content-Type {kind or '(none)'!r} is not accepted: send image bytes as one of "
            f'{", ".join(IMAGE_TYPES)}, or {JSON_TYPE} {{"image": [[grey levels]]}}',
            415,
        )
    if kind == JSON_TYPE:
        payload = parse_json(body)
        if not isinstance(payload, dict) or set(payload) != {"image"}:
            raise RequestError('send JSON {"image": [[grey levels 0..255, row by row]]}')
        gray = grey_levels(payload["image"])
    else:
        if not body:
            raise RequestError('the body is empty: send an image (PNG bytes) or JSON {"image": [[...]]}')
        gray = image_bytes(body)
    try:
        digit, inverted = prepare(gray, return_inverted=True)
    except ImageError as error:
        raise RequestError(str(error)) from None
    proba = probabilities(model, digit[None])[0]  # as python -m cnnfast.predict computes it
    outputs = model.activations(as_model_input(digit[None]))
    return {
        "digit": int(proba.argmax()),
        "probabilities": [float(p) for p in proba],
        "input_28x28": digit.tolist(),
        "inverted": bool(inverted),
        "feature_maps": conv_feature_maps(model, outputs),
    }


# ----------------------------------------------------------------------------- examples


def pick_examples(model: nn.Sequential, images: np.ndarray, labels: np.ndarray, wrong: int = 4) -> list[dict]:
    """MNIST test digits for the page: the first of each digit 0..9 the model reads right and
    the first `wrong` it reads wrong, both as /api/predict sees them (prepared as a photo is):
    [{"index", "label", "predicted", "image": 28 rows of 28 grey levels}], the right ones first."""
    predicted = probabilities(model, images).argmax(axis=1)  # a first pass on the digits as stored,
    chosen, right, mistakes = [], set(), 0

    def as_the_page_sees(i):  # then confirmed on the digit as prepared, which the page will send
        return int(probabilities(model, prepare(images[i].astype(np.float64))[None])[0].argmax())

    for i in np.flatnonzero(predicted == labels):
        label = int(labels[i])
        if label not in right and as_the_page_sees(i) == label:
            right.add(label)
            chosen.append((label, i, label))
        if len(right) == 10:
            break
    chosen.sort()
    for i in np.flatnonzero(predicted != labels):
        if mistakes == wrong:
            break
        seen = as_the_page_sees(i)
        if seen != int(labels[i]):
            mistakes += 1
            chosen.append((int(labels[i]), i, seen))
    return [
        {"index": int(i), "label": label, "predicted": seen, "image": images[i].tolist()} for label, i, seen in chosen
    ]


# ----------------------------------------------------------------------------- backprop

_EXPONENT = re.compile(r"[eE]\s*([+-]?\d+)")


def exact_number(value, name: str) -> Fraction:
    """A number of the worked example from JSON: an integer, a decimal (read as written: 0.1 is
    1/10), or a string Fraction parses ("3/2", "-0.25", "1e-3"); at most MAX_MAGNITUDE in size."""
    if isinstance(value, bool):
        raise RequestError(f"{name} must be a number, not {json.dumps(value)}")
    if isinstance(value, int):
        number = Fraction(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise RequestError(f"{name} must be a finite number")
        number = Fraction(repr(value))  # the decimal as written, not its binary approximation
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_NUMBER_TEXT:
            raise RequestError(f"{name} is longer than {MAX_NUMBER_TEXT} characters")
        if any(abs(int(e)) > MAX_EXPONENT for e in _EXPONENT.findall(text)):
            raise RequestError(f"{name}: exponents beyond +-{MAX_EXPONENT} are not accepted")
        try:
            number = bp.parse_number(text)
        except ValueError as error:
            raise RequestError(f"{name}: {error}") from None
    else:
        raise RequestError(f'{name} must be a number or a string such as "3/2", not {type(value).__name__}')
    if abs(number) > MAX_MAGNITUDE:
        raise RequestError(f"{name} = {bp.fmt(number)[:40]} is too large: at most {MAX_MAGNITUDE:.0e} in size")
    return number


BACKPROP_KEYS = {"x", "y", "weights", "lr"}


def backprop_inputs(payload) -> tuple[Fraction, Fraction, tuple[Fraction, ...], Fraction]:
    """(x, y, weights, lr) from {"x", "y", "weights": [w1..w5] or {"w1": .., ...}, "lr"}; a key
    left out takes the seed's value (x 2, y 3, weights 2,1,2,4,1, lr 0.1)."""
    if not isinstance(payload, dict):
        raise RequestError('send a JSON object {"x", "y", "weights": [w1, w2, w3, w4, w5], "lr"}')
    unknown = sorted(set(payload) - BACKPROP_KEYS)
    if unknown:
        raise RequestError(f"unknown keys {unknown}: the example takes x, y, weights and lr")
    x = exact_number(payload["x"], "x") if "x" in payload else bp.DEFAULT_X
    y = exact_number(payload["y"], "y") if "y" in payload else bp.DEFAULT_Y
    lr = exact_number(payload["lr"], "lr") if "lr" in payload else bp.DEFAULT_LR
    weights = payload.get("weights", list(bp.DEFAULT_WEIGHTS))
    if isinstance(weights, dict):
        if set(weights) != set(bp.WEIGHT_NAMES):
            raise RequestError(f"weights as an object must have exactly the keys {list(bp.WEIGHT_NAMES)}")
        weights = [weights[name] for name in bp.WEIGHT_NAMES]
    if not isinstance(weights, list) or len(weights) != 5:
        raise RequestError("weights must be a list of the five weights [w1, w2, w3, w4, w5]")
    weights = tuple(
        w if isinstance(w, Fraction) else exact_number(w, name) for w, name in zip(weights, bp.WEIGHT_NAMES)
    )
    return x, y, weights, lr


def _finite(value: float):
    return float(value) if math.isfinite(value) else None  # (JSON has no inf or NaN)


def backprop(payload) -> dict:
    """POST /api/backprop: one exact step of the worked example and its float32 kernel replay:
    {"inputs", "forward", "loss", "grads", "updated" (exact strings, as backprop --json),
    "graph" (cnnfast.backprop.graph_json), "kernel": {"forward", "loss", "grads", "updated"
    (floats; null where float32 overflowed), "check": {"ok", "worst", "note", "mismatches"}}}."""
    x, y, weights, lr = backprop_inputs(payload)
    nodes, result = bp.step(x, y, weights, lr)
    check = bp.check_kernels(x, y, weights, lr)
    kernel = None
    if not check.note:  # the magnitudes are within float32's range
        with np.errstate(all="ignore"):
            replay = bp.kernel_replay(x, y, weights, lr)
        kernel = {
            "forward": {k: _finite(v) for k, v in replay["forward"].items()},
            "loss": _finite(replay["loss"]),
            "grads": {k: _finite(v) for k, v in replay["grads"].items()},
            "updated": {k: _finite(v) for k, v in replay["updated"].items()},
        }
    return {
        "inputs": {"x": bp.fmt(x), "y": bp.fmt(y), "weights": [bp.fmt(w) for w in weights], "lr": bp.fmt(lr)},
        **bp.to_json(result),
        "graph": bp.graph_json(nodes),
        "kernel": {
            **(kernel or {}),
            "check": {
                "ok": check.ok,
                "worst": _finite(check.worst),
                "note": check.note,
                "mismatches": [
                    {"name": name, "exact": bp.fmt(want), "kernel": _finite(got), "tolerance": float(tol)}
                    for name, want, got, tol in check.mismatches
                ],
            },
        },
    }
