"""python -m cnnfast.demo: its JSON API through Starlette's test client, and the command.

The browser test (the page itself, driven in Chromium) is tests/test_demo_browser.py.
"""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the demo needs Starlette: pip install 'cnnfast[demo]'")
pytest.importorskip("httpx2", reason="Starlette's test client needs httpx2: pip install httpx2")
from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import cnnfast.functional as F  # noqa: E402
from _trained_model import real_mnist, trained_model_path  # noqa: E402
from cnnfast import backprop, nn  # noqa: E402
from cnnfast.demo import __main__ as demo_main  # noqa: E402
from cnnfast.demo import api  # noqa: E402
from cnnfast.demo.server import create_app  # noqa: E402
from cnnfast.mnist import as_model_input, probabilities  # noqa: E402
from cnnfast.predict import prepare  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return trained_model_path(tmp_path_factory)


@pytest.fixture(scope="module")
def model(model_path):
    return nn.load_model(model_path)


@pytest.fixture(scope="module")
def client(model):
    _, _, x_test, y_test = real_mnist()
    with TestClient(create_app(model, (x_test[:2000], y_test[:2000])), base_url="http://127.0.0.1") as c:
        yield c


def png(gray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.asarray(gray, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def own_answer(model, gray):
    """What python -m cnnfast.predict computes for an image: (digit, probabilities, the 28x28 it saw)."""
    digit = prepare(np.asarray(gray, np.float64))
    proba = probabilities(model, digit[None])[0]
    return int(proba.argmax()), proba, digit


# ----------------------------------------------------------------------------- /api/predict


def test_predict_gives_the_models_own_answer_on_mnist_test_digits(client, model):
    _, _, x_test, y_test = real_mnist()
    seen = [own_answer(model, x_test[i])[0] for i in range(300)]
    wrong = [i for i in range(300) if seen[i] != y_test[i]]
    assert wrong, "the small test model reads every one of the first 300 test digits right"
    for i in [0, 1, 2, 3, 4, 7] + wrong[:3]:
        digit, proba, input_28x28 = own_answer(model, x_test[i])
        for response in (
            client.post("/api/predict", json={"image": x_test[i].tolist()}),
            client.post("/api/predict", content=png(x_test[i]), headers={"Content-Type": "image/png"}),
        ):
            assert response.status_code == 200, response.text
            answer = response.json()
            assert set(answer) == {"digit", "probabilities", "input_28x28", "inverted", "feature_maps"}
            assert answer["digit"] == digit
            np.testing.assert_allclose(answer["probabilities"], proba, rtol=1e-12, atol=1e-15)
            np.testing.assert_array_equal(answer["input_28x28"], input_28x28)
            assert answer["inverted"] is False  # MNIST: light ink on black
    assert sum(own_answer(model, x_test[i])[0] == y_test[i] for i in range(300)) > 250


def test_feature_maps_are_each_convolutions_output_after_its_relu(client, model):
    _, _, x_test, _ = real_mnist()
    answer = client.post("/api/predict", json={"image": x_test[0].tolist()}).json()
    layers = answer["feature_maps"]
    assert [(m["layer"], m["name"], m["channels"], m["height"], m["width"]) for m in layers] == [
        (0, "Conv2d(1, 32, 3x3) + ReLU", 32, 26, 26),
        (3, "Conv2d(32, 64, 3x3) + ReLU", 64, 11, 11),
    ]
    # recomputed here from the 28x28 input, kernel by kernel
    x = as_model_input(np.asarray(answer["input_28x28"], np.uint8)[None])
    conv1, conv2 = model.layers[0], model.layers[3]
    first = F.relu(F.conv2d(x, conv1.weight.data, conv1.bias.data))
    second = F.relu(F.conv2d(F.max_pool2d(first, 2)[0], conv2.weight.data, conv2.bias.data))
    for layer, want in zip(layers, (first[0], second[0])):
        assert layer["min"] == pytest.approx(float(want.min()), abs=1e-6)
        assert layer["max"] == pytest.approx(float(want.max()), rel=1e-6) and layer["max"] > 0
        levels = np.asarray(layer["maps"], np.float64)
        assert levels.shape == want.shape and levels.min() >= 0 and levels.max() == 255
        values = layer["min"] + levels / 255 * (layer["max"] - layer["min"])
        np.testing.assert_allclose(values, want, atol=0.51 / 255 * layer["max"])


def test_predict_takes_drawings_of_any_size_in_either_polarity(client, model):
    paper = np.full((300, 180), 255.0)
    paper[40:260, 80:100] = 0.0  # a dark "1" on white paper
    answer = client.post("/api/predict", json={"image": paper.tolist()}).json()
    assert answer["inverted"] is True and answer["digit"] == own_answer(model, paper)[0]
    small = np.zeros((9, 7), np.uint8)
    small[1:8, 3] = 255
    response = client.post("/api/predict", content=png(small), headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.json()["digit"] == own_answer(model, small)[0]


def big_png(width, height) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"GIF89a not really", "image/png", 400, "not an image"),
        (b"", "image/png", 400, "body is empty"),
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"image": [[NaN, 1], [2, 3]]}', "application/json", 400, "NaN is not a number"),
        (b'{"image": [[1e999, 1], [2, 3]]}', "application/json", 400, "grey levels"),
        (b'{"image": [[300, 1], [2, 3]]}', "application/json", 400, "grey levels from 0"),
        (b'{"image": [[1, 2, 3], [4, 5]]}', "application/json", 400, "rectangular"),
        (b'{"image": [[[1]]]}', "application/json", 400, "numbers only"),
        (b'{"image": [["a", 1]]}', "application/json", 400, "numbers only"),
        (b'{"image": []}', "application/json", 400, "2-D list"),
        (b"[[1, 2], [3, 4]]", "application/json", 400, '{"image"'),
        (b'{"image": [[0, 0], [0, 0]], "path": "/etc/passwd"}', "application/json", 400, '{"image"'),
        (b'{"image": [[0, 0], [0, 0]]}', "application/json", 400, "blank image"),
        (json.dumps({"image": [[0] * 4097]}).encode(), "application/json", 400, "4096x4096"),
        (big_png(5000, 20), "image/png", 400, "5000x20 pixels; at most 4096x4096"),
        (b"\x89PNG" + b"0" * (api.MAX_BODY + 10), "image/png", 413, "at most 2,097,152"),
    ],
)
def test_bad_images_get_a_400_and_the_server_goes_on(client, body, content_type, status, message):
    response = client.post("/api/predict", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    _, _, x_test, _ = real_mnist()
    assert client.post("/api/predict", json={"image": x_test[0].tolist()}).status_code == 200


def test_a_post_from_another_site_is_refused(client):
    """A page elsewhere can make the browser POST here (fetch with mode "no-cors"); the browser
    names that page in Origin: 403, before the body is read."""
    _, _, x_test, _ = real_mnist()
    image = png(x_test[0])
    for origin in ("https://evil.example", "null", "http://127.0.0.1:9999", "http://localhost"):
        for content_type in ("text/plain", "image/png"):
            response = client.post(
                "/api/predict", content=image, headers={"Content-Type": content_type, "Origin": origin}
            )
            assert response.status_code == 403, (origin, content_type, response.text)
            assert "another site" in response.json()["error"]
        response = client.post("/api/backprop", json={}, headers={"Origin": origin})
        assert response.status_code == 403, origin
    own = {"Content-Type": "image/png", "Origin": "http://127.0.0.1"}  # the page's own requests
    assert client.post("/api/predict", content=image, headers=own).status_code == 200
    assert client.post("/api/backprop", json={}, headers={"Origin": "http://127.0.0.1"}).status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "image/svg+xml"]
)
def test_only_image_and_json_content_types_are_read(client, content_type):
    """(text/plain and forms are what another site's page can send without a CORS preflight)"""
    _, _, x_test, _ = real_mnist()
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/api/predict", content=png(x_test[0]), headers=headers)
    assert response.status_code == 415, response.text
    assert "image/png" in response.json()["error"] and "application/json" in response.json()["error"]
    response = client.post("/api/backprop", content=b"{}", headers=headers)
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    ok = client.post("/api/predict", content=png(x_test[0]), headers={"Content-Type": "image/png; charset=binary"})
    assert ok.status_code == 200


def test_images_in_other_formats_than_the_documented_ones_are_refused(client):
    """(Pillow would otherwise try every decoder it has: EPS goes to Ghostscript)"""
    _, _, x_test, _ = real_mnist()
    for pillow_format in ("PPM", "ICO", "TGA"):
        out = io.BytesIO()
        Image.fromarray(x_test[0]).save(out, format=pillow_format)
        response = client.post("/api/predict", content=out.getvalue(), headers={"Content-Type": "image/png"})
        assert response.status_code == 400, pillow_format
        assert "format read here (PNG, JPEG, BMP, GIF, TIFF or WebP" in response.json()["error"]
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n"
    response = client.post("/api/predict", content=eps, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 400 and "format read here" in response.json()["error"]


@pytest.mark.parametrize("image", [[[255]], [[0, 255, 0, 0, 0]], [[255, 255, 0, 255, 255]]])
def test_images_one_pixel_high_are_answered_not_a_server_error(client, image):
    """(predict.background took the rows between the first and the last, h - 2 of them: -1)"""
    response = client.post("/api/predict", json={"image": image})
    assert response.status_code in (200, 400), response.text
    assert "digit" in response.json() or "error" in response.json()


def test_a_body_too_large_is_refused_even_without_a_length(client):
    def chunks():  # (streamed: no Content-Length header to refuse it by)
        for _ in range(40):
            yield b"0" * 65536

    response = client.post("/api/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413 and "more than 2,097,152 bytes" in response.json()["error"]


# ----------------------------------------------------------------------------- /api/backprop


def test_backprop_gives_the_seeds_numbers(client):
    for payload in ({}, {"x": 2, "y": 3, "weights": [2, 1, 2, 4, 1], "lr": 0.1}):
        response = client.post("/api/backprop", json=payload)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["inputs"] == {"x": "2", "y": "3", "weights": ["2", "1", "2", "4", "1"], "lr": "0.1"}
        assert answer["forward"] == {"a": "4", "b": "4", "c": "4", "e": "8", "o": "24"}
        assert answer["loss"] == "220.5"
        assert answer["grads"] == {
            "o": "21", "c": "84", "e": "21", "a": "84", "b": "42",
            "w5": "168", "w4": "84", "w3": "84", "w2": "336", "w1": "252",
        }  # fmt: skip
        assert answer["updated"] == {"w1": "-23.2", "w2": "-32.6", "w3": "-6.4", "w4": "-4.4", "w5": "-15.8"}
        kernel = answer["kernel"]
        assert kernel["check"]["ok"] is True and kernel["check"]["mismatches"] == []
        assert kernel["loss"] == 220.5 and kernel["grads"]["w1"] == 252.0
        assert kernel["updated"]["w1"] == pytest.approx(-23.2, rel=1e-6)
        # every edge: local derivative x upstream gradient
        edges = {(e["from"], e["to"]): e for e in answer["graph"]["edges"]}
        assert edges["w2", "c"] | {} == {
            "from": "w2", "to": "c", "local": "4", "formula": "relu'(w2 * a) * a", "numbers": "1 * 4",
            "upstream": "84", "gradient": "336",
        }  # fmt: skip
        assert (edges["w1", "a"]["gradient"], edges["w1", "b"]["gradient"]) == ("168", "84")  # 168 + 84 = 252
        assert all(Fraction(e["local"]) * Fraction(e["upstream"]) == Fraction(e["gradient"]) for e in edges.values())
        assert len(edges) == 14


def test_backprop_takes_fractions_decimals_and_named_weights(client):
    payload = {"x": "1/3", "y": -0.5, "weights": {"w1": "2", "w2": "-1", "w3": 2.5, "w4": "1e-1", "w5": 1}, "lr": "3/7"}
    answer = client.post("/api/backprop", json=payload).json()
    want = backprop.to_json(
        backprop.run(Fraction(1, 3), Fraction(-1, 2), [2, -1, Fraction(5, 2), Fraction(1, 10), 1], Fraction(3, 7))
    )
    assert {k: answer[k] for k in want} == want
    assert answer["inputs"]["x"] == "1/3" and answer["inputs"]["weights"][3] == "0.1"
    off = {n["name"]: n for n in answer["graph"]["nodes"]}["c"]
    assert off["relu_off"] is True and off["preact"] == "-2/3"  # w2 < 0: the ReLU at c is off


def test_backprop_beyond_float32_says_the_kernels_cannot_replay_it(client):
    answer = client.post("/api/backprop", json={"x": "1e9", "weights": ["1e9", "1e9", "1e9", "1e9", "1e9"]}).json()
    assert answer["kernel"]["check"]["ok"] is False and "float32" in answer["kernel"]["check"]["note"]
    assert "loss" not in answer["kernel"] and answer["loss"]  # the exact step is still there


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"x": NaN}', "NaN is not a number"),
        (b'{"x": Infinity}', "Infinity is not a number"),
        (b'{"x": 1e999}', "finite"),
        (b'{"x": "nan"}', "not a number"),
        (b'{"x": "inf"}', "not a number"),
        (b'{"x": "abc"}', "not a number"),
        (b'{"x": "1/0"}', "not a number"),
        (b'{"x": 1e10}', "too large"),
        (b'{"lr": "-2e9"}', "too large"),
        (b'{"x": "1e999999999"}', "exponents beyond"),
        (b'{"x": "' + b"1" * 300 + b'"}', "longer than 200"),
        (b'{"y": ' + b"9" * 4000 + b"}", "too large"),
        (b'{"x": true}', "must be a number"),
        (b'{"x": [1]}', "must be a number"),
        (b'{"weights": [1, 2, 3, 4]}', "five weights"),
        (b'{"weights": {"w1": 1}}', "exactly the keys"),
        (b'{"weights": [1, 2, 3, 4, null]}', "w5 must be a number"),
        (b'{"w1": 1}', "unknown keys ['w1']"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_backprop_values_get_a_400(client, body, message):
    response = client.post("/api/backprop", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


# ----------------------------------------------------------------------------- the page and the rest


def test_the_page_and_its_files_are_served_and_nothing_else(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="pad"', 'id="digit"', 'id="clear"', 'id="graph"', 'id="step"', 'src="/static/app.js"'):
        assert element in page.text
    assert "http" not in page.text.replace("http://www.w3.org", "")  # nothing from the network
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "/api/predict" in client.get("/static/app.js").text
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    for path in ("/static/index.html", "/static/../__init__.py", "/static/%2e%2e/api.py", "/api.py", "/etc/passwd"):
        assert client.get(path).status_code == 404, path
    assert client.get("/api/predict").status_code == 405


def test_a_request_naming_another_host_is_refused(client):
    # (a page elsewhere reaching the server through DNS rebinding names its own host)
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 400
    assert client.get("/", headers={"Host": "localhost:8000"}).status_code == 200


def test_examples_include_digits_the_model_reads_wrong(client, model):
    examples = client.get("/api/examples").json()
    assert examples["note"] == ""
    chosen = examples["examples"]
    right = [e for e in chosen if e["predicted"] == e["label"]]
    wrong = [e for e in chosen if e["predicted"] != e["label"]]
    assert sorted(e["label"] for e in right) == list(range(10)) and 1 <= len(wrong) <= 4
    _, _, x_test, y_test = real_mnist()
    for e in chosen:
        assert np.array_equal(e["image"], x_test[e["index"]]) and e["label"] == y_test[e["index"]]
        assert client.post("/api/predict", json={"image": e["image"]}).json()["digit"] == e["predicted"]


def test_without_mnist_there_are_no_examples_and_a_note(model):
    with TestClient(create_app(model), base_url="http://127.0.0.1") as c:
        answer = c.get("/api/examples").json()
    assert answer["examples"] == [] and "--data-dir" in answer["note"]


# ----------------------------------------------------------------------------- the command


def test_without_a_model_the_command_says_to_train_one(tmp_path, capsys):
    assert demo_main.main(["--model", str(tmp_path / "none.npz")]) == 1
    err = capsys.readouterr().err
    assert "no model file" in err and "python -m cnnfast.train" in err and "Traceback" not in err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        demo_main.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--host", "--allow-host", "--port", "--data-dir", "127.0.0.1", "warning", "cnnfast[demo]"):
        assert flag in out
    with pytest.raises(SystemExit) as exit_:
        demo_main.main(["--port", "70000"])
    assert exit_.value.code == 2 and "0..65535" in capsys.readouterr().err


def ctrl_c_delivered():
    """In the child: SIGINT to its default, as in a command run from a terminal (a shell's
    background jobs, such as a CI script started with &, inherit SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def serve(args, env=None):
    """Start python -m cnnfast.demo; (the process, its first line of stdout)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnfast.demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=ctrl_c_delivered,
    )
    return process, process.stdout.readline()


def test_the_command_prints_the_address_and_ctrl_c_ends_it_with_one_line(model_path):
    process, line = serve(["--model", str(model_path), "--port", "0"])
    try:
        assert line.startswith("cnnfast demo: open http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[3]
        import urllib.request

        with urllib.request.urlopen(url + "api/examples", timeout=60) as response:
            assert len(json.load(response)["examples"]) >= 10
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "python -m cnnfast.demo: stopped by SIGINT; no file was left half-written"
    assert "Traceback" not in err


def test_another_host_than_this_machine_gets_a_warning(model_path):
    env = {k: v for k, v in os.environ.items() if k != "CNNFAST_DATA"}
    env["XDG_CACHE_HOME"] = "/nonexistent"  # (no MNIST anywhere: no examples, and a note that says so)
    process, line = serve(["--model", str(model_path), "--port", "0", "--host", "0.0.0.0"], env=env)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert line.startswith("cnnfast demo: open http://127.0.0.1:")
    assert "warning: listening on 0.0.0.0: anyone who can reach this machine" in err
    assert "no MNIST found" in err and process.returncode == 143


EARLY_SIGNAL = """
import os, signal, sys
import uvicorn
from cnnfast._cli import run_command
from cnnfast.demo.__main__ import main

class SignalledWhileFinalized:  # Python prints an exception raised in __del__ and goes on
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)

serve = uvicorn.Server.serve

async def serve_after_a_signal(self, sockets=None):  # before uvicorn's own handlers are in place
    SignalledWhileFinalized()
    await serve(self, sockets)

uvicorn.Server.serve = serve_after_a_signal
sys.argv[1:] = ["--model", sys.argv[1], "--port", "0"]
sys.exit(run_command(main))
"""


def test_a_signal_before_the_server_is_up_still_stops_it(model_path):
    # (CI once caught SIGTERM where the handler's exception could only be printed, and the
    # server then served on: the demo's handlers never raise, they ask the server to stop)
    process = subprocess.Popen(
        [sys.executable, "-c", EARLY_SIGNAL, str(model_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert err.strip().splitlines()[-1] == "python -m cnnfast.demo: stopped by SIGTERM; no file was left half-written"
    assert "Traceback" not in err and "Exception ignored" not in err


def test_the_hosts_answered_are_the_listening_one_and_this_machines_never_any():
    local = ["127.0.0.1", "localhost", "[::1]"]
    assert demo_main.allowed_hosts("127.0.0.2") == [*local, "127.0.0.2"]
    assert demo_main.allowed_hosts("::1") == local
    assert demo_main.allowed_hosts("192.0.2.7", ["Demo.Example"]) == [*local, "192.0.2.7", "demo.example"]
    assert demo_main.allowed_hosts("fd00::7") == [*local, "[fd00::7]"]
    everywhere = demo_main.allowed_hosts("0.0.0.0")
    assert "*" not in everywhere and everywhere[:3] == local
    assert socket.gethostname().lower() in everywhere


def test_a_public_address_does_not_answer_every_host_name(model):
    """(["*"] let a page elsewhere reach a demo on 0.0.0.0 or a LAN address by DNS rebinding)"""
    app = create_app(model, None, allowed_hosts=demo_main.allowed_hosts("192.0.2.7"))
    with TestClient(app, base_url="http://192.0.2.7:8000") as client:
        assert client.get("/").status_code == 200
        assert client.get("/", headers={"Host": "localhost:8000"}).status_code == 200
        assert client.get("/", headers={"Host": "attacker.example:8000"}).status_code == 400


def test_another_loopback_address_is_served_and_connections_are_bounded(model_path):
    """--host 127.0.0.2 answered 400 to every request (its Host header was not in the allowed
    names); beyond MAX_CONNECTIONS open connections a request gets 503 (each could buffer 2 MB)."""
    import urllib.error
    import urllib.request

    process, line = serve(["--model", str(model_path), "--port", "0", "--host", "127.0.0.2"])
    idle = []
    try:
        assert line.startswith("cnnfast demo: open http://127.0.0.2:"), line + process.stderr.read()
        url = line.split()[3]
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.2", port), timeout=30) for _ in range(demo_main.MAX_CONNECTIONS)]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=60)
        refused.value.close()
        assert refused.value.code == 503
        for connection in idle:
            connection.close()
        idle = []
        for _ in range(100):  # (until the server has seen them closed)
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    assert response.status == 200
                break
            except urllib.error.HTTPError as error:
                error.close()
                assert error.code == 503
                time.sleep(0.05)
        else:
            raise AssertionError("the server still refused requests after the idle connections closed")
    finally:
        for connection in idle:
            connection.close()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 143 and "Traceback" not in err and "warning" not in err
