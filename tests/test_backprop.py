"""Tests for cnnfast.backprop: the worked backpropagation example, exact.

The reference below is written out by hand with plain formulas (no Node
type), so it checks the module independently.
"""

import json
import random
import re
import shutil
import subprocess
import sys
from fractions import Fraction as Q

import pytest

from cnnfast import backprop as bp

W_NAMES = ["w1", "w2", "w3", "w4", "w5"]


def reference(x, y, w, lr):
    """The graph's forward pass, gradients and update, formula by formula."""
    x, y, lr = Q(x), Q(y), Q(lr)
    w1, w2, w3, w4, w5 = (Q(v) for v in w)
    za, zb = w1 * x, w1 * x
    a, ra = (za, 1) if za > 0 else (Q(0), 0)
    b, rb = (zb, 1) if zb > 0 else (Q(0), 0)
    zc, ze = w2 * a, w3 * b
    c, rc = (zc, 1) if zc > 0 else (Q(0), 0)
    e, re_ = (ze, 1) if ze > 0 else (Q(0), 0)
    o = w4 * c + w5 * e
    L = (o - y) ** 2 / 2
    go = o - y
    gc, ge = w4 * go, w5 * go
    ga, gb = rc * w2 * gc, re_ * w3 * ge
    g = {
        "w5": e * go,
        "w4": c * go,
        "w3": re_ * b * ge,
        "w2": rc * a * gc,
        "w1": ra * x * ga + rb * x * gb,
    }
    return {
        "forward": {"a": a, "b": b, "c": c, "e": e, "o": o},
        "loss": L,
        "grads": {"o": go, "c": gc, "e": ge, "a": ga, "b": gb, **g},
        "updated": {n: v - lr * g[n] for n, v in zip(W_NAMES, (w1, w2, w3, w4, w5))},
    }


def squash(text):
    """Collapse runs of spaces so tests don't depend on column alignment."""
    return "\n".join(re.sub(r" +", " ", line.strip()) for line in text.splitlines())


# ----------------------------------------------------------------------------
# The defaults: every number from the issue, exactly
# ----------------------------------------------------------------------------

ISSUE = {
    "forward": {"a": Q(4), "b": Q(4), "c": Q(4), "e": Q(8), "o": Q(24)},
    "loss": Q(441, 2),
    "grads": {
        "o": Q(21),
        "c": Q(84),
        "e": Q(21),
        "a": Q(84),
        "b": Q(42),
        "w5": Q(168),
        "w4": Q(84),
        "w3": Q(84),
        "w2": Q(336),
        "w1": Q(252),
    },
    "updated": {"w1": Q(-232, 10), "w2": Q(-326, 10), "w3": Q(-64, 10), "w4": Q(-44, 10), "w5": Q(-158, 10)},
}

ISSUE_STRINGS = {
    "forward": {"a": "4", "b": "4", "c": "4", "e": "8", "o": "24"},
    "loss": "220.5",
    "grads": {
        "o": "21",
        "c": "84",
        "e": "21",
        "a": "84",
        "b": "42",
        "w5": "168",
        "w4": "84",
        "w3": "84",
        "w2": "336",
        "w1": "252",
    },
    "updated": {"w1": "-23.2", "w2": "-32.6", "w3": "-6.4", "w4": "-4.4", "w5": "-15.8"},
}


def test_defaults_exact_fractions():
    r = bp.run()
    assert r == ISSUE
    for group in ("forward", "grads", "updated"):
        for v in r[group].values():
            assert type(v) is Q
    assert r == bp.run(2, 3, [2, 1, 2, 4, 1], Q(1, 10))
    assert r == reference(2, 3, [2, 1, 2, 4, 1], Q(1, 10))


def test_defaults_exact_strings():
    assert bp.to_json(bp.run()) == ISSUE_STRINGS


def test_default_printout(capsys):
    assert bp.main([]) == 0
    out = squash(capsys.readouterr().out)
    expected_lines = [
        # forward values and the loss
        "a = relu(w1 * x) = relu(2 * 2) = 4",
        "b = relu(w1 * x) = relu(2 * 2) = 4",
        "c = relu(w2 * a) = relu(1 * 4) = 4",
        "e = relu(w3 * b) = relu(2 * 4) = 8",
        "o = w4 * c + w5 * e = 4 * 4 + 1 * 8 = 24",
        "L = 1/2 * (o - y)^2 = 1/2 * (24 - 3)^2 = 220.5",
        # local derivatives, with the ReLU factor
        "do/dc = w4 = 4",
        "dc/da = relu'(w2 * a) * w2 = 1 * 1 = 1",
        "de/db = relu'(w3 * b) * w3 = 1 * 2 = 2",
        "do/dw5 = e = 8",
        "da/dw1 = relu'(w1 * x) * x = 1 * 2 = 2",
        # the chain rule, as in the issue
        "dL/do = o - y = 24 - 3 = 21",
        "dL/dc = do/dc * dL/do = 4 * 21 = 84",
        "dL/de = do/de * dL/do = 1 * 21 = 21",
        "dL/da = dc/da * dL/dc = 1 * 84 = 84",
        "dL/db = de/db * dL/de = 2 * 21 = 42",
        "dL/dw5 = do/dw5 * dL/do = 8 * 21 = 168",
        "dL/dw4 = do/dw4 * dL/do = 4 * 21 = 84",
        "dL/dw3 = de/dw3 * dL/de = 4 * 21 = 84",
        "dL/dw2 = dc/dw2 * dL/dc = 4 * 84 = 336",
        "dL/dw1 = da/dw1 * dL/da + db/dw1 * dL/db = 2*84 + 2*42 = 252",
        # updates
        "w1 = w1 - lr * dL/dw1 = 2 - 0.1 * 252 = -23.2",
        "w2 = w2 - lr * dL/dw2 = 1 - 0.1 * 336 = -32.6",
        "w3 = w3 - lr * dL/dw3 = 2 - 0.1 * 84 = -6.4",
        "w4 = w4 - lr * dL/dw4 = 4 - 0.1 * 84 = -4.4",
        "w5 = w5 - lr * dL/dw5 = 1 - 0.1 * 168 = -15.8",
    ]
    lines = out.splitlines()
    positions = []
    for want in expected_lines:
        assert want in lines, want
        positions.append(lines.index(want))
    # forward, loss, local derivatives, chain rule, updates: in that order
    assert positions == sorted(positions)
    chain = [lines.index(l) for l in expected_lines if l.startswith("dL/d")]
    assert chain == list(range(chain[0], chain[0] + 10))  # issue's order, consecutive
    assert "ReLU off" not in out and "DISAGREE" not in out
    assert "all 21 values agree" in out
    assert "0000" not in out  # no float noise like -23.200000000000003


# ----------------------------------------------------------------------------
# Exact formatting and parsing
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (Q(0), "0"),
        (Q(5), "5"),
        (Q(-7), "-7"),
        (Q(100), "100"),
        (Q(441, 2), "220.5"),
        (Q(-116, 5), "-23.2"),
        (Q(1, 3), "1/3"),
        (Q(-2, 3), "-2/3"),
        (Q(1, 8), "0.125"),
        (Q(1, 40), "0.025"),
        (Q(-1, 20), "-0.05"),
        (Q(7, 1000), "0.007"),
        (Q(1, 1024), "0.0009765625"),
        (Q(10, 6), "5/3"),
        (Q(1, 12), "1/12"),
    ],
)
def test_fmt(value, text):
    assert bp.fmt(value) == text


def test_fmt_round_trips():
    rng = random.Random(1)
    for _ in range(2000):
        q = Q(rng.randint(-(10**6), 10**6), rng.choice([1, 2, 3, 5, 8, 10, 12, 25, 7, 1000, 4096]))
        s = bp.fmt(q)
        assert Q(s) == q
        if "." in s:
            assert not s.endswith("0")
        assert ("/" in s) == bool(set(_prime_factors(q.denominator)) - {2, 5})


def _prime_factors(n):
    p, out = 2, []
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@pytest.mark.parametrize(
    "text, value",
    [
        ("2", Q(2)),
        ("-0.5", Q(-1, 2)),
        ("1/3", Q(1, 3)),
        (" -2/6 ", Q(-1, 3)),
        ("1e-3", Q(1, 1000)),
        ("0.1", Q(1, 10)),
    ],
)
def test_parse_number(text, value):
    assert bp.parse_number(text) == value


@pytest.mark.parametrize("text", ["abc", "", "1/0", "nan", "inf", "1,2", "0x10"])
def test_parse_number_rejects(text):
    with pytest.raises(ValueError):
        bp.parse_number(text)


# ----------------------------------------------------------------------------
# Other settings, against the hand-written reference
# ----------------------------------------------------------------------------

SETTINGS = {
    # w2 < 0: c's pre-activation is <= 0, its ReLU is off
    "c_off": (2, 3, [2, -1, 2, 4, 1], Q(1, 10)),
    # fractions everywhere, all ReLUs on
    "fractions": (Q(1, 3), Q(-1, 2), [Q(3, 2), Q(2, 3), Q(5, 7), Q(-1, 2), Q(1, 4)], Q(1, 3)),
    # x < 0 with w1 > 0: both a and b are off, nothing reaches the first layer
    "first_layer_off": (-1, 2, [3, 1, 1, 1, 1], Q(1, 2)),
    # pre-activation exactly 0 counts as off
    "zero_preact": (Q(1, 3), 1, [2, 0, Q(-5, 2), 3, -4], 1),
    # o == y: zero loss, zero gradients
    "perfect": (1, 5, [1, 1, 1, 3, 2], Q(1, 10)),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_settings_match_reference(name):
    x, y, w, lr = SETTINGS[name]
    got, want = bp.run(x, y, w, lr), reference(x, y, w, lr)
    assert got == want
    assert bp.to_json(got) == json.loads(json.dumps(bp.to_json(want)))


def test_random_settings_match_reference():
    rng = random.Random(12345)

    def num():
        return Q(rng.randint(-9, 9), rng.choice([1, 1, 2, 3, 4, 5, 7]))

    for _ in range(300):
        x, y, w, lr = num(), num(), [num() for _ in range(5)], num()
        assert bp.run(x, y, w, lr) == reference(x, y, w, lr)


def test_relu_off_printout(capsys):
    x, y, w, lr = SETTINGS["c_off"]
    assert bp.main(["--x", "2", "--y", "3", "--weights", "2,-1,2,4,1", "--lr", "0.1"]) == 0
    out = squash(capsys.readouterr().out)
    r = bp.run(x, y, w, lr)
    assert r["forward"]["c"] == 0 and r["grads"]["a"] == 0 and r["grads"]["w2"] == 0
    assert r["grads"]["c"] == 4 * r["grads"]["o"] != 0  # dL/dc exists; it stops at c's ReLU
    assert "c = relu(w2 * a) = relu((-1) * 4) = 0 <- ReLU off: pre-activation -4 <= 0" in out
    assert "passes zero gradient" in out
    assert "dc/da = relu'(w2 * a) * w2 = 0 * (-1) = 0 <- ReLU at c is off" in out
    assert "dL/da = dc/da * dL/dc = 0 * 20 = 0 <- zero gradient through the ReLU at c (off)" in out
    assert "dL/dw2 = dc/dw2 * dL/dc = 0 * 20 = 0 <- zero gradient through the ReLU at c (off)" in out
    # the other ReLUs are on and say nothing
    assert "ReLU at e" not in out and "ReLU at a" not in out


def test_fraction_printout(capsys):
    assert bp.main(["--x", "1/3", "--y", "-0.5", "--weights", "3/2,2/3,5/7,-1/2,0.25", "--lr", "1/3"]) == 0
    out = squash(capsys.readouterr().out)
    want = reference(*SETTINGS["fractions"])
    assert "a = relu(w1 * x) = relu(1.5 * 1/3) = 0.5" in out
    assert "c = relu(w2 * a) = relu(2/3 * 0.5) = 1/3" in out
    assert f"L = 1/2 * (o - y)^2 = 1/2 * ({bp.fmt(want['forward']['o'])} - (-0.5))^2 = {bp.fmt(want['loss'])}" in out
    for n, v in want["updated"].items():
        assert re.search(rf"^{n} = {n} - lr \* dL/d{n} = .* = {re.escape(bp.fmt(v))}$", out, re.M)
    for n, v in want["grads"].items():
        assert re.search(rf"^dL/d{n} = .* = {re.escape(bp.fmt(v))}$", out, re.M)


def test_shared_w1_gradient_is_sum_of_branches():
    # make the two branches differ: b's path is off, a's is on
    r = bp.run(1, 0, [1, 1, -1, 1, 1], 1)
    assert r["grads"]["b"] == 0 and r["grads"]["w1"] == r["grads"]["a"] * 1
    nodes, _ = bp.step(2, 3, [2, 1, 2, 4, 1], Q(1, 10))
    # two contributions to w1: 2*84 through a and 2*42 through b
    contributions = [
        loc.value * user.grad for user in nodes.values() for loc in user._backward() if loc.input is nodes["w1"]
    ]
    assert sorted(contributions) == [84, 168]
    assert nodes["w1"].grad == 252


# ----------------------------------------------------------------------------
# --steps
# ----------------------------------------------------------------------------


def reference_losses(x, y, w, lr, steps):
    losses = []
    for _ in range(steps):
        r = reference(x, y, w, lr)
        losses.append(r["loss"])
        w = [r["updated"][n] for n in W_NAMES]
    return losses, w


def test_steps_3_defaults(capsys):
    losses, w_final = reference_losses(2, 3, [2, 1, 2, 4, 1], Q(1, 10), 3)
    assert losses == [Q(441, 2), Q(9, 2), Q(9, 2)]  # after step 1 every ReLU is off
    assert [r["loss"] for _, r in bp.train(steps=3)] == losses
    assert bp.main(["--steps", "3"]) == 0
    out = squash(capsys.readouterr().out)
    assert "===== Step 3 of 3 =====" in out and "Step 4" not in out
    assert "step 1: L = 220.5 -> after its update L = 4.5" in out
    assert "step 2: L = 4.5 -> after its update L = 4.5" in out
    assert "step 3: L = 4.5 -> after its update L = 4.5" in out
    assert out.count("all 21 values agree") == 3


def test_steps_3_fractions(capsys):
    x, y, w, lr = Q(1, 3), 1, [1, 1, 1, 1, 1], Q(1, 4)
    losses, w_final = reference_losses(x, y, w, lr, 3)
    after = reference(x, y, w_final, lr)["loss"]
    assert bp.main(["--x", "1/3", "--y", "1", "--weights", "1,1,1,1,1", "--lr", "0.25", "--steps", "3"]) == 0
    out = squash(capsys.readouterr().out)
    assert losses[0] > losses[1] > losses[2] > after  # it learns
    for i, (before, nxt) in enumerate(zip(losses, losses[1:] + [after]), 1):
        assert f"step {i}: L = {bp.fmt(before)} -> after its update L = {bp.fmt(nxt)}" in out


def test_steps_json(capsys):
    assert bp.main(["--steps", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["steps"] and len(data["steps"]) == 3
    assert data["steps"][0] == ISSUE_STRINGS
    assert [s["loss"] for s in data["steps"]] == ["220.5", "4.5", "4.5"]
    # each step starts from the previous step's updated weights
    r2 = reference(2, 3, [Q(s) for s in ISSUE_STRINGS["updated"].values()], Q(1, 10))
    assert data["steps"][1] == bp.to_json(r2)


# ----------------------------------------------------------------------------
# --json and --dot
# ----------------------------------------------------------------------------


def test_json_defaults(capsys):
    assert bp.main(["--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data == ISSUE_STRINGS
    assert list(data) == ["forward", "loss", "grads", "updated"]
    assert list(data["grads"]) == ["o", "c", "e", "a", "b", "w5", "w4", "w3", "w2", "w1"]
    assert "agree" in captured.err  # the kernel check goes to stderr


def test_json_fractions(capsys):
    assert bp.main(["--json", "--x=1/3", "--y=-0.5", "--weights=3/2,2/3,5/7,-1/2,0.25", "--lr=1/3"]) == 0
    data = json.loads(capsys.readouterr().out)
    want = reference(*SETTINGS["fractions"])
    assert data == bp.to_json(want)
    assert {k: Q(v) for k, v in data["updated"].items()} == want["updated"]
    assert data["forward"]["c"] == "1/3"


def parse_dot(text):
    """A small DOT reader: (nodes {id: label}, edges [(src, dst, label)])."""
    assert text.startswith("digraph ")
    assert text.rstrip().endswith("}") and text.count("{") == text.count("}") == 1
    strings = r'"((?:[^"\\]|\\.)*)"'
    nodes, edges = {}, []
    for line in text.splitlines()[1:-1]:
        line = line.strip()
        if not line or re.match(r"^(rankdir|node|edge)\b", line):
            continue
        m = re.fullmatch(rf"(\w+) -> (\w+) \[label={strings}\];", line)
        if m:
            edges.append((m[1], m[2], m[3].replace("\\n", "\n")))
            continue
        m = re.fullmatch(rf"(\w+) \[label={strings}(, [\w=]+)*\];", line)
        assert m, f"unparsed DOT line: {line}"
        nodes[m[1]] = m[2].replace("\\n", "\n")
    return nodes, edges


def test_dot_file(tmp_path, capsys):
    path = tmp_path / "graph.dot"
    assert bp.main(["--dot", str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    nodes, edges = parse_dot(text)
    assert set(nodes) == {"x", "y", "w1", "w2", "w3", "w4", "w5", "a", "b", "c", "e", "o", "L"}
    assert nodes["a"].splitlines() == ["a = relu(w1 * x)", "value 4", "dL/da = 84"]
    assert nodes["o"].splitlines() == ["o = w4 * c + w5 * e", "value 24", "dL/do = 21"]
    assert "value 220.5" in nodes["L"]
    assert nodes["w1"].splitlines() == ["w1", "value 2", "dL/dw1 = 252"]
    for name, v in ISSUE_STRINGS["forward"].items():
        assert f"value {v}\n" in nodes[name]
    for name, g in ISSUE_STRINGS["grads"].items():
        assert f"dL/d{name} = {g}" in nodes[name]
    pairs = {(s, d) for s, d, _ in edges}
    assert pairs == {
        ("w1", "a"),
        ("x", "a"),
        ("w1", "b"),
        ("x", "b"),
        ("w2", "c"),
        ("a", "c"),
        ("w3", "e"),
        ("b", "e"),
        ("c", "o"),
        ("w4", "o"),
        ("e", "o"),
        ("w5", "o"),
        ("o", "L"),
        ("y", "L"),
    }
    label = {(s, d): lab for s, d, lab in edges}
    # w1's gradient arrives along two edges and sums to 252
    assert label[("w1", "a")].endswith("= 2 * 84 = 168")
    assert label[("w1", "b")].endswith("= 2 * 42 = 84")
    assert label[("b", "e")] == "de/db * dL/de\n= 2 * 21 = 42"
    # the whole run's printout still happened
    assert "dL/dw1" in capsys.readouterr().out


def test_dot_relu_off_and_stdout(capsys):
    assert bp.main(["--weights", "2,-1,2,4,1", "--dot", "-", "--json"]) == 0
    out = capsys.readouterr().out
    text, rest = out.split("}\n", 1)
    nodes, _ = parse_dot(text + "}\n")
    assert "ReLU off" in nodes["c"] and "value 0" in nodes["c"]
    assert "ReLU off" not in nodes["e"]
    assert json.loads(rest)["grads"]["w2"] == "0"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_dot_renders_with_graphviz(tmp_path):
    path = tmp_path / "g.dot"
    path.write_text(bp.to_dot(bp.step(Q(1, 3), 2, [2, -1, 2, 4, 1], 1)[0]), encoding="utf-8")
    done = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "<svg" in done.stdout


# ----------------------------------------------------------------------------
# The kernel replay
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_kernels_agree(name):
    chk = bp.check_kernels(*SETTINGS[name])
    assert chk.ok, chk
    assert chk.count == 21 and chk.worst <= 1


def test_kernel_replay_values_defaults():
    k = bp.kernel_replay(2, 3, [2, 1, 2, 4, 1], Q(1, 10))
    assert k["forward"] == {"a": 4, "b": 4, "c": 4, "e": 8, "o": 24}
    assert k["loss"] == 220.5
    assert k["grads"] == {n: float(v) for n, v in ISSUE["grads"].items()}
    for n, v in ISSUE["updated"].items():
        assert k["updated"][n] == pytest.approx(float(v), rel=1e-6)


def _functional():
    import cnnfast.functional as F

    return F


def test_kernel_disagreement_exits_1(monkeypatch, capsys):
    F = _functional()
    real_relu = F.relu

    def bad_relu(x):  # 0.1% too large: far beyond float32 rounding
        import numpy as np

        return (real_relu(x) * np.float32(1.001)).astype(np.float32)

    monkeypatch.setattr(F, "relu", bad_relu)
    assert bp.main([]) == 1
    out = capsys.readouterr().out
    assert "DISAGREE" in out
    assert re.search(r"^  a: exact 4, kernel 4\.00", out, re.M)
    # the exact trace is still printed in full
    assert "w1 = w1 - lr * dL/dw1 = 2 - 0.1 * 252 = -23.2" in squash(out)


def test_kernel_disagreement_in_backward_exits_1(monkeypatch, capsys):
    F = _functional()
    real = F.linear_backward

    def bad_linear_backward(x, w, dy):  # weight gradients 1.2e-4 too large (~2000 ulp)
        import numpy as np

        dx, dw, db = real(x, w, dy)
        return dx, (dw * np.float32(1 + 2**-13)).astype(np.float32), db

    monkeypatch.setattr(F, "linear_backward", bad_linear_backward)
    assert bp.main(["--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == ISSUE_STRINGS  # exact results are unaffected
    assert "DISAGREE" in captured.err and "dL/dw1" in captured.err


def test_kernel_disagreement_only_in_step_2(monkeypatch, capsys):
    F = _functional()
    real = F.relu_backward

    def bad_relu_backward(x, dy):  # passes gradient through ReLUs that are off
        import numpy as np

        return np.ascontiguousarray(dy, dtype=np.float32) if (x <= 0).all() else real(x, dy)

    monkeypatch.setattr(F, "relu_backward", bad_relu_backward)
    assert bp.main(["--steps", "2"]) == 1
    out = capsys.readouterr().out
    assert "step 1: Kernel replay (cnnfast C++ kernels, float32): all 21 values agree" in out
    assert "step 2: Kernel replay (cnnfast C++ kernels, float32): " in out
    assert out.split("step 2: Kernel replay")[1].split("\n")[0].find("DISAGREE") >= 0


def test_tolerance_follows_cancellation():
    # o - y nearly cancels: float32 can't even hold y = 1000.001 exactly (its
    # spacing there is 6e-5), so dL/do = -0.001 comes out ~2% off.  That is
    # float32 rounding, not a kernel bug: the tolerance follows |o| + |y|.
    x, y, w, lr = 1000, Q(1000001, 1000), [1, 1, 1, Q(1, 2), Q(1, 2)], Q(1, 10)
    assert bp.run(x, y, w, lr)["grads"]["o"] == Q(-1, 1000)
    k = bp.kernel_replay(x, y, w, lr)["grads"]["o"]
    assert abs(Q(k) - Q(-1, 1000)) > Q(1, 10**5)  # a naive 1e-5 check would fail
    assert bp.check_kernels(x, y, w, lr).ok


def test_out_of_float32_range_is_not_agreement(capsys):
    assert bp.main(["--weights", "1e20,1e20,1,1,1"]) == 1
    out = capsys.readouterr().out
    assert "NOT CHECKED" in out and "float32" in out
    assert "dL/dw1 = " in out  # the exact computation is still shown
    chk = bp.check_kernels(Q(1, 10**25), 1, [Q(1, 10**25), 1, 1, 1, 1], 1)
    assert not chk.ok and "below float32's normal range" in chk.note


# ----------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--weights", "1,2,3,4"],
        ["--weights", "1,2,3,4,5,6"],
        ["--weights", "1,2,x,4,5"],
        ["--weights", ""],
        ["--x", "two"],
        ["--y", "1/0"],
        ["--lr", "fast"],
        ["--lr", "nan"],
        ["--steps", "0"],
        ["--steps", "-3"],
        ["--steps", "1.5"],
        ["--steps", "many"],
        ["--x"],
        ["--bogus"],
    ],
)
def test_bad_input_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        bp.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err


def test_bad_weights_message(capsys):
    with pytest.raises(SystemExit):
        bp.main(["--weights", "1,2,3"])
    assert "exactly 5" in capsys.readouterr().err


def test_negative_values_after_option(capsys):
    assert bp.main(["--json", "--x", "-1/3", "--weights", "-1,2,3,4,5", "--lr", "-0.5", "--y", "-2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == bp.to_json(reference(Q(-1, 3), -2, [-1, 2, 3, 4, 5], Q(-1, 2)))


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        bp.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "a = relu(w1 * x)",
        "c = relu(w2 * a)",
        "o = w4 * c + w5 * e",
        "L = 1/2 * (o - y)^2",
        "--weights",
        "--steps",
        "--json",
        "--dot",
        '"steps"',
        "1/3",
    ):
        assert text in out, text


def test_module_runs_as_command(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "cnnfast.backprop"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    out = squash(done.stdout)
    assert "dL/dw1 = da/dw1 * dL/da + db/dw1 * dL/db = 2*84 + 2*42 = 252" in out
    assert "w1 = w1 - lr * dL/dw1 = 2 - 0.1 * 252 = -23.2" in out
    assert "all 21 values agree" in out
    bad = subprocess.run(
        [sys.executable, "-m", "cnnfast.backprop", "--steps", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "--steps" in bad.stderr


def test_graph_json_gives_every_edge_as_local_times_upstream():
    nodes, result = bp.step(bp.DEFAULT_X, bp.DEFAULT_Y, bp.DEFAULT_WEIGHTS, bp.DEFAULT_LR)
    graph = bp.graph_json(nodes)
    assert [n["name"] for n in graph["nodes"]] == ["x", "y", "w1", "w2", "w3", "w4", "w5", "a", "b", "c", "e", "o", "L"]
    a = graph["nodes"][7]
    assert a == {"name": "a", "op": "relu(w1 * x)", "numbers": "relu(2 * 2)", "value": "4", "grad": "84",
                 "relu_off": False, "preact": "4"}  # fmt: skip
    assert len(graph["edges"]) == 14
    into = {}
    for edge in graph["edges"]:
        assert Q(edge["local"]) * Q(edge["upstream"]) == Q(edge["gradient"])
        assert edge["upstream"] == bp.fmt(nodes[edge["to"]].grad)
        into[edge["from"]] = into.get(edge["from"], 0) + Q(edge["gradient"])
    # each node's gradient is the sum of what its edges carry back (w1 and x are used twice)
    assert into == {name: nodes[name].grad for name in into} and into["w1"] == 252 == 168 + 84
    assert json.loads(json.dumps(graph)) == graph


def test_a_closed_pipe_ends_the_command_quietly():
    # `python -m cnnfast.backprop --steps 300 | head -1`: no BrokenPipeError traceback
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnfast.backprop", "--steps", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    with proc:
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
