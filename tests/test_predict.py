"""python -m cnnfast.predict: MNIST-style preparation of images (exact on synthetic shapes),
reading every kind of file, per-file errors, and MNIST test digits written out as PNG/JPEG
(both polarities, scaled up, off-centre) predicted as the raw arrays are."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnfast
import cnnfast.predict as pr
from _trained_model import real_mnist, trained_model_path
from cnnfast import mnist
from cnnfast.nn import mnist_cnn


@pytest.fixture
def Image():
    return pytest.importorskip("PIL.Image")


def bar_image(height=200, width=300, top=30, left=200, h=60, w=30, ink=0, paper=255):
    """Dark ink (a filled rectangle) on light paper, away from the centre."""
    image = np.full((height, width), float(paper))
    image[top : top + h, left : left + w] = ink
    return image


def bbox(image):
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


# ---------------------------------------------------------------------------- preparing


def test_a_bar_is_cropped_scaled_to_20_and_centred(Image):
    out, inverted = pr.prepare(bar_image(), return_inverted=True)
    assert out.dtype == np.uint8 and out.shape == (28, 28) and inverted
    top, bottom, left, right = bbox(out)
    assert (bottom - top, right - left) == (20, 10)  # 60x30 keeps its 2:1 aspect ratio
    assert (top, left) == (5, 10)  # centre of mass 9.5, 4.5 in the box: moved by 4.5 -> 5 whole pixels
    assert out[top:bottom, left:right].min() == 255 and out.sum() == 255 * 200
    cy, cx = pr.centre_of_mass(out.astype(float))
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_wide_shapes_keep_their_aspect_ratio(Image):
    out = pr.prepare(bar_image(h=10, w=40))
    top, bottom, left, right = bbox(out)
    assert (bottom - top, right - left) == (5, 20)


def test_polarity_does_not_matter(Image):
    rng = np.random.default_rng(0)
    image = np.zeros((90, 70))
    image[20:70, 30:36] = 200 + 55 * rng.random((50, 6))  # a textured stroke
    image[20:26, 20:50] = 255
    light_on_dark, flipped = pr.prepare(image, return_inverted=True)
    dark_on_light, flipped_too = pr.prepare(255 - image, return_inverted=True)
    assert not flipped and flipped_too
    assert (light_on_dark == dark_on_light).all() and light_on_dark.max() == 255


def seven(ink=0, paper=255):
    """A 7-like shape (its centre of mass is not on a half pixel, so rounding cannot flip)."""
    image = np.full((200, 300), float(paper))
    image[40:52, 100:190] = ink
    for row in range(52, 160):
        column = 185 - (row - 52) // 2
        image[row, column - 8 : column + 4] = ink
    return image


def test_grey_paper_and_faint_ink_are_stretched(Image):
    clean = pr.prepare(seven())
    rng = np.random.default_rng(1)
    photo = seven(ink=70, paper=120) + rng.normal(0, 2, (200, 300))  # grey paper, noise
    out, inverted = pr.prepare(photo, return_inverted=True)
    assert inverted  # darker ink on a (darker than mid-grey) background is still dark-on-light
    assert np.abs(out.astype(int) - clean).mean() < 3 and out.max() == 255


def test_uneven_light_is_followed(Image):
    """A photo lit from one side: the paper goes from 200 to 110, darker than the ink's contrast."""
    clean = pr.prepare(seven())
    rows, cols = np.mgrid[0:200, 0:300]
    light = 200 - 0.25 * cols - 0.1 * rows + 0.0005 * (cols - 150) ** 2
    photo = light - 60 * (seven() == 0) + np.random.default_rng(3).normal(0, 2, (200, 300))
    out, inverted = pr.prepare(photo, return_inverted=True)
    assert inverted and np.abs(out.astype(int) - clean).mean() < 3
    paper, noise = pr.background(photo)
    assert np.abs(paper - light).max() < 3 and 1.5 < noise < 2.5


def test_large_images_are_reduced_first(Image, monkeypatch):
    clean = pr.prepare(seven())
    monkeypatch.setattr(pr, "MAX_SIDE", 64)  # 300 wide: reduced 5x before anything else
    reduced = pr.prepare(seven())
    assert 0 < np.abs(reduced.astype(int) - clean).mean() < 3 and reduced.max() == 255
    assert (bbox(reduced)[1] - bbox(reduced)[0]) == 20


def test_a_digit_far_from_its_centre_of_mass_stays_inside_the_field(Image):
    image = np.zeros((140, 140))
    image[20:105, 20:24] = 255  # a thin stroke above...
    image[105:120, 20:120] = 255  # ...a heavy bar: the centre of mass is near the bottom
    out = pr.prepare(image)
    top, bottom, left, right = bbox(out)
    # centring the mass (low in the box) would move the box up by 2: it stops at the top, whole
    assert (bottom - top, right - left) == (20, 20) and (top, bottom) == (0, 20)
    assert (out[0:17, left] > 128).all() and (out[17:20, left:right] > 128).all()
    assert pr.centre_of_mass(out.astype(float))[0] > 15


def test_stray_dots_at_the_edges_are_not_part_of_the_digit(Image):
    clean = pr.prepare(bar_image())
    dusty = bar_image()
    dusty[180:182, 5:7] = 0  # dust far from the digit
    dusty[2, 290] = 60
    assert (pr.prepare(dusty) == clean).all()
    two_parts = bar_image()
    two_parts[150:170, 200:230] = 0  # a real second part (20% of the ink) is kept
    top, bottom, _, _ = bbox(pr.prepare(two_parts))
    assert bottom - top == 20 and pr.prepare(two_parts)[bottom - 3 : bottom].max() == 255


def test_too_much_noise_is_an_error(Image):
    rng = np.random.default_rng(2)
    with pytest.raises(pr.ImageError, match="no clear digit"):
        pr.prepare(bar_image(ink=150, paper=180) + rng.normal(0, 8, (200, 300)))


def test_mnist_digits_are_nearly_unchanged():
    """MNIST digits are already prepared: preparing them again changes little."""
    pytest.importorskip("PIL")
    x_test = real_mnist()[2][:300]
    prepared = np.stack([pr.prepare(image) for image in x_test])
    difference = np.abs(prepared.astype(int) - x_test.astype(int))
    assert difference.mean() < 2.0
    assert (difference.max(axis=(1, 2)) <= 64).mean() > 0.9  # no shifted digits


@pytest.mark.parametrize("image", [np.full((40, 40), 255.0), np.zeros((5, 5)), np.full((30, 30), 100.0)])
def test_blank_images_are_an_error(Image, image):
    with pytest.raises(pr.ImageError, match="blank image"):
        pr.prepare(image)


def test_faint_noise_is_still_blank(Image):
    noise = 128 + np.random.default_rng(0).normal(0, 3, (50, 50))
    with pytest.raises(pr.ImageError, match="blank"):
        pr.prepare(noise)


def test_top_k_sorted_with_ties_to_the_lower_digit():
    assert pr.top_k(np.array([0.1, 0.3, 0.05, 0.3, 0.25])) == [(1, 0.3), (3, 0.3), (4, 0.25)]


# ---------------------------------------------------------------------------- reading files


def save(Image, path, array, **options):
    Image.fromarray(array).save(path, **options)
    return path


def test_every_kind_of_file_gives_the_same_digit(Image, tmp_path):
    ink = np.zeros((40, 30), np.uint8)
    ink[5:35, 12:18] = 255
    ink[5:10, 5:25] = 200
    expected = pr.prepare(ink.astype(float))
    rgba_dark = np.zeros((40, 30, 4), np.uint8)
    rgba_dark[..., 3] = ink  # black ink, transparent paper
    rgba_light = rgba_dark.copy()
    rgba_light[..., :3] = 255  # white ink, transparent paper
    red = np.stack([np.full_like(ink, 255), 255 - ink, 255 - ink], axis=-1)
    files = {
        "plain.png": save(Image, tmp_path / "plain.png", ink),
        "paper.bmp": save(Image, tmp_path / "paper.bmp", 255 - ink),
        "red-ink.png": save(Image, tmp_path / "red-ink.png", red),
        "dark-on-transparent.png": save(Image, tmp_path / "dark-on-transparent.png", rgba_dark),
        "light-on-transparent.png": save(Image, tmp_path / "light-on-transparent.png", rgba_light),
        "sixteen-bit.png": save(Image, tmp_path / "sixteen-bit.png", ink.astype(np.uint16) * 257),
        "palette.png": tmp_path / "palette.png",
        "grey-alpha.png": tmp_path / "grey-alpha.png",
        "animation.gif": tmp_path / "animation.gif",
    }
    Image.fromarray(255 - ink).convert("P").save(files["palette.png"])
    Image.fromarray(255 - ink).convert("LA").save(files["grey-alpha.png"])
    Image.fromarray(ink).save(files["animation.gif"], save_all=True, append_images=[Image.fromarray(255 - ink[::-1])])
    with Image.open(files["sixteen-bit.png"]) as sixteen:
        assert sixteen.mode.startswith("I")
    for name, path in files.items():  # the colour conversion to grey rounds: +-1 or 2
        assert np.abs(pr.load_digit(path).astype(int) - expected).max() <= 2, name
    assert (pr.load_digit(files["sixteen-bit.png"]) == expected).all()


def test_jpeg_and_exif_orientation(Image, tmp_path):
    ink = np.zeros((40, 30), np.uint8)
    ink[5:35, 12:18] = 255
    ink[30:35, 5:25] = 255  # an upside-down T: orientation matters
    expected = pr.prepare(ink.astype(float))
    rotated = Image.fromarray(255 - ink).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    rotated.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    digit = pr.load_digit(tmp_path / "phone.jpg")
    assert np.abs(digit.astype(int) - expected).mean() < 3


def test_unreadable_files_are_clear_errors(Image, tmp_path):
    good = save(Image, tmp_path / "good.png", np.full((50, 50), 255, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "folder.png").mkdir()
    cases = {
        "notes.txt": "not an image file",
        "cut.png": "unreadable or corrupt image",
        "folder.png": "is a directory",
        "missing.png": "no such file",
    }
    for name, message in cases.items():
        with pytest.raises(pr.ImageError, match=message) as error:
            pr.read_image(tmp_path / name)
        assert str(error.value).startswith(str(tmp_path / name))
    with pytest.raises(pr.ImageError, match=r"good.png: blank image"):
        pr.load_digit(good)


def test_only_the_documented_formats_are_decoded(Image, tmp_path):
    """PNG, JPEG, BMP, GIF, TIFF and WebP are read; a format Pillow knows but cnnfast does not
    promise (PPM, ICO, EPS, which Pillow hands to Ghostscript) is refused before decoding."""
    ink = np.zeros((40, 30), np.uint8)
    ink[5:35, 12:18] = 255
    expected = pr.prepare(ink.astype(float))
    for name in ("d.png", "d.jpg", "d.bmp", "d.gif", "d.tiff", "d.webp"):
        options = {".jpg": {"quality": 95}, ".webp": {"lossless": True}}.get(Path(name).suffix, {})
        assert np.abs(pr.load_digit(save(Image, tmp_path / name, ink, **options)).astype(int) - expected).max() <= 8, (
            name
        )
    save(Image, tmp_path / "d.ppm", ink)
    save(Image, tmp_path / "d.ico", np.repeat(np.repeat(ink[:30], 2, 0), 2, 1)[:48, :48])
    (tmp_path / "d.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 30 40\nshowpage\n")
    for name in ("d.ppm", "d.ico", "d.eps"):
        with pytest.raises(pr.ImageError, match=r"not an image file in a format read here \(PNG, JPEG, BMP, GIF"):
            pr.read_image(tmp_path / name)


def test_an_image_in_memory_reads_as_its_file_does(Image, tmp_path):
    import io

    path = save(Image, tmp_path / "bar.png", bar_image().astype(np.uint8))
    np.testing.assert_array_equal(pr.read_image(io.BytesIO(path.read_bytes())), pr.read_image(path))
    with pytest.raises(pr.ImageError, match=r"^image: not an image file"):
        pr.read_image(io.BytesIO(b"not an image"))


def test_huge_images_are_refused_before_decoding(Image, tmp_path, monkeypatch):
    monkeypatch.setattr(pr, "MAX_PIXELS", 100)
    path = save(Image, tmp_path / "big.png", np.zeros((20, 20), np.uint8))
    with pytest.raises(pr.ImageError, match="too large"):
        pr.read_image(path)


# ---------------------------------------------------------------------------- the command


@pytest.fixture
def untrained(tmp_path):
    """A saved (untrained, seeded) model: deterministic probabilities, no data needed."""
    path = tmp_path / "untrained.npz"
    mnist_cnn(3).save(path)
    return path


def run(capsys, *argv):
    status = pr.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def digit_files(Image, directory, count=3):
    files = []
    for k in range(count):
        image = np.full((60, 50), 255, np.uint8)
        image[10:50, 20 + k : 26 + k] = 0
        image[10 + 10 * k : 16 + 10 * k, 10:40] = 0
        files.append(save(Image, directory / f"d{k}.png", image))
    return files


def test_json_matches_the_model_on_the_prepared_images(Image, tmp_path, untrained, capsys):
    files = digit_files(Image, tmp_path)
    status, out, err = run(capsys, "--model", untrained, "--json", *files)
    assert status == 0 and err.count("\n") == 3 and str(files[0]) in err  # the text goes to stderr
    data = json.loads(out)
    assert data["model"] == str(untrained) and data["predicted"] == 3 and data["failed"] == 0
    proba = mnist.probabilities(cnnfast.load_model(untrained), np.stack([pr.load_digit(f) for f in files]))
    for entry, path, p in zip(data["predictions"], files, proba):
        assert entry["file"] == str(path) and entry["inverted"] is True and "image" not in entry
        assert entry["probabilities"] == pytest.approx(p.tolist(), abs=1e-12)
        assert entry["digit"] == int(p.argmax()) == entry["top3"][0]["digit"]
        assert [t["digit"] for t in entry["top3"]] == np.argsort(-p, kind="stable")[:3].tolist()


def test_text_output_and_show(Image, tmp_path, untrained, capsys):
    files = digit_files(Image, tmp_path, 2)
    proba = mnist.probabilities(cnnfast.load_model(untrained), np.stack([pr.load_digit(f) for f in files]))
    status, out, err = run(capsys, "--model", untrained, *files)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    for line, path, p in zip(lines, files, proba):
        best = pr.top_k(p)
        assert line.startswith(str(path)) and line.split()[1] == str(best[0][0])
        assert f"{best[1][0]}: {100 * best[1][1]:6.2f}%" in line
    status, out, _ = run(capsys, "--model", untrained, "--show", files[0])
    rows = out.splitlines()
    assert status == 0 and rows[1].strip() == "\u250c" + "\u2500" * 28 + "\u2510" and len(rows[2].strip()) == 30
    assert "the 28x28 image the model saw (inverted: dark ink on a light background)" in out
    status, out, _ = run(capsys, "--model", untrained, "--show", "--json", files[0])
    assert json.loads(out)["predictions"][0]["image"] == pr.load_digit(files[0]).tolist()


def test_bad_files_are_reported_and_the_others_still_predicted(Image, tmp_path, untrained, capsys):
    good = digit_files(Image, tmp_path, 2)
    (tmp_path / "notes.txt").write_text("hello")
    blank = save(Image, tmp_path / "blank.png", np.full((30, 30), 255, np.uint8))
    argv = [good[0], tmp_path / "notes.txt", blank, tmp_path / "missing.jpg", good[1]]
    status, out, err = run(capsys, "--model", untrained, *argv)
    assert status == 1
    assert [line.split()[0] for line in out.splitlines()] == [str(good[0]), str(good[1])]
    errors = err.splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "notes.txt: not an image file" in errors[0] and "blank.png: blank image" in errors[1]
    assert "missing.jpg: no such file" in errors[2]
    status, out, err = run(capsys, "--model", untrained, "--json", *argv)
    data = json.loads(out)
    assert status == 1 and data["predicted"] == 2 and data["failed"] == 3
    assert [("digit" in e, "error" in e) for e in data["predictions"]] == [
        (True, False),
        (False, True),
        (False, True),
        (False, True),
        (True, False),
    ]


def test_all_files_bad(Image, tmp_path, untrained, capsys):
    status, out, err = run(capsys, "--model", untrained, tmp_path / "a.png", tmp_path / "b.png")
    assert status == 1 and out == "" and err.count("no such file") == 2


def test_without_pillow_a_clear_error(monkeypatch, tmp_path, untrained, capsys):
    for name in ("PIL", "PIL.Image", "PIL.ImageOps"):
        monkeypatch.setitem(sys.modules, name, None)
    status, out, err = run(capsys, "--model", untrained, tmp_path / "x.png")
    assert status == 1 and out == "" and "pip install cnnfast[image]" in err
    with pytest.raises(ImportError, match="needs Pillow"):
        pr.read_image(tmp_path / "x.png")


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "the following arguments are required: IMAGE"),
        (["--model", "/", "x.png"], "is a directory"),
        (["--bogus", "x.png"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        pr.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_help_is_wrapped(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        pr.main(["--help"])
    out = capsys.readouterr().out
    assert "centre of mass" in out and "Exit status" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_missing_and_bad_model(Image, tmp_path, capsys):
    files = digit_files(Image, tmp_path, 1)
    status, out, err = run(capsys, "--model", tmp_path / "none.npz", *files)
    assert status == 1 and out == "" and "no model file" in err and "python -m cnnfast.train" in err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    status, out, err = run(capsys, "--model", tmp_path / "bad.npz", *files)
    assert status == 1 and out == "" and "cannot load the model" in err


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pr.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for words in (
        "--model",
        "--show",
        "--json",
        "PNG, JPEG, BMP",
        "centre of mass",
        "20x20",
        "28x28",
        "light-on-dark",
        "pip install cnnfast[image]",
    ):
        assert words in out


# ---------------------------------------------------------------------------- real MNIST digits


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return trained_model_path(tmp_path_factory)


def variants(Image, digit, rng):
    """The digit as someone might save it: as is, inverted, scaled up 3x on paper, scaled 4x
    off-centre on a larger dark-on-light page, and as a JPEG."""
    big3 = np.asarray(Image.fromarray(digit).resize((84, 84), Image.Resampling.BICUBIC))
    big4 = np.asarray(Image.fromarray(digit).resize((112, 112), Image.Resampling.BILINEAR))
    page = np.zeros((180, 260), np.uint8)
    top, left = rng.integers(0, 180 - 112), rng.integers(0, 260 - 112)
    page[top : top + 112, left : left + 112] = big4
    return {
        "plain.png": digit,
        "inverted.png": 255 - digit,
        "paper-3x.png": 255 - big3,
        "page-4x-off-centre.png": 255 - page,
        "paper-3x.jpg": 255 - big3,
    }


@pytest.mark.slow
def test_mnist_test_digits_saved_as_images_are_predicted_like_the_raw_arrays(Image, model_path, tmp_path, capsys):
    x_test = real_mnist()[2][:60]
    model = cnnfast.load_model(model_path)
    raw = mnist.probabilities(model, x_test)
    rng = np.random.default_rng(0)
    paths, owners = [], []
    for i, digit in enumerate(x_test):
        for name, array in variants(Image, digit, rng).items():
            path = tmp_path / f"{i:02d}-{name}"
            Image.fromarray(array).save(path, **({"quality": 90} if name.endswith(".jpg") else {}))
            paths.append(path)
            owners.append(i)
    status, out, err = run(capsys, "--model", model_path, "--json", *paths)
    assert status == 0 and "error" not in err
    got = np.array([entry["digit"] for entry in json.loads(out)["predictions"]])
    expected = raw.argmax(axis=1)[owners]
    confident = raw.max(axis=1)[owners] >= 0.9
    assert confident.sum() > 150  # most of the 60 digits: a test that checks something
    assert (got == expected)[confident].all(), [str(p.name) for p in np.array(paths)[confident & (got != expected)]]
    assert (got == expected).mean() >= 0.95
