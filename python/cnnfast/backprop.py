"""Backpropagation on a small worked graph, every step of the chain rule shown exactly.

Before cnnfast trains a CNN it teaches the one idea that training rests on:
the chain rule, applied backwards through a graph.  This module replays a
graph small enough to check by hand::

    a = relu(w1 * x)      b = relu(w1 * x)          (w1 is shared by a and b)
    c = relu(w2 * a)      e = relu(w3 * b)
    o = w4 * c + w5 * e
    L = 1/2 * (o - y)^2
    w <- w - lr * dL/dw

    x --w1--> a --w2--> c --w4--\\
      \\                          o --> L  (with target y)
       --w1--> b --w3--> e --w5-/

Run it as ``python -m cnnfast.backprop`` (see ``--help``).  With the default
numbers (x = 2, y = 3, w1..w5 = 2, 1, 2, 4, 1, lr = 0.1) it prints::

    dL/do  = o - y                           = 24 - 3      = 21
    dL/dc  = do/dc * dL/do                   = 4 * 21      = 84
    ...
    dL/dw1 = da/dw1 * dL/da + db/dw1 * dL/db = 2*84 + 2*42 = 252
    ...
    w1 = w1 - lr * dL/dw1 = 2 - 0.1 * 252 = -23.2

How it works (micrograd style):

* Every number in the graph is a :class:`Node` holding an exact
  :class:`fractions.Fraction`, its gradient ``dL/dnode``, the nodes it was
  made from, and an ``_op`` label such as ``relu(w2 * a)``.
* Each operation (:func:`neuron`, :func:`weighted_sum`,
  :func:`half_squared_error`) computes its forward value and, right next to
  it, its ``_backward``: the *local* derivatives of its output with respect
  to each input.  A ReLU that is off (pre-activation <= 0) has local
  derivative 0, so it passes zero gradient back.
* :func:`backward` is the chain rule: visit the nodes from the loss back to
  the inputs and add ``local derivative * upstream gradient`` into each
  input's gradient.  A node used twice (w1, x) collects the sum.

Because all arithmetic is exact, every printed number is exact: ``-23.2``,
never ``-23.200000000000003``; a value with no finite decimal is printed as
a fraction such as ``1/3``.

The same graph is then replayed through cnnfast's own float32 C++ kernels
(``cnnfast.functional.linear``/``relu`` and their backward functions) and
every value is checked against the exact one; the command exits 1 if any
disagrees beyond float32 rounding.

Command line: ``--x --y --weights w1,w2,w3,w4,w5 --lr`` take decimals or
fractions (``2``, ``-0.5``, ``1/3``); ``--steps N`` repeats the step N times;
``--dot FILE`` writes the first step's graph for Graphviz.  ``--json`` prints,
every number an exact string::

    {"forward": {"a": "4", "b": "4", "c": "4", "e": "8", "o": "24"},
     "loss": "220.5",
     "grads": {"o": "21", "c": "84", "e": "21", "a": "84", "b": "42",
               "w5": "168", "w4": "84", "w3": "84", "w2": "336", "w1": "252"},
     "updated": {"w1": "-23.2", "w2": "-32.6", "w3": "-6.4", "w4": "-4.4",
                 "w5": "-15.8"}}

and with ``--steps N`` (N > 1) ``{"steps": [one such object per step]}``.
Exit status: 0 when the kernels agree, 1 when they don't (or can't be
checked) or --dot cannot be written, 2 for bad input.

Python API: :func:`run` (one step, exact Fractions), :func:`train`
(several steps), :func:`kernel_replay`, :func:`check_kernels`,
:func:`explain` (the printout), :func:`to_dot`, :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from fractions import Fraction
from typing import Callable, NamedTuple

__all__ = [
    "Node",
    "Local",
    "neuron",
    "weighted_sum",
    "half_squared_error",
    "backward",
    "build",
    "step",
    "run",
    "train",
    "fmt",
    "parse_number",
    "explain",
    "to_dot",
    "to_json",
    "graph_json",
    "kernel_replay",
    "check_kernels",
    "main",
    "DEFAULT_X",
    "DEFAULT_Y",
    "DEFAULT_WEIGHTS",
    "DEFAULT_LR",
]

DEFAULT_X = Fraction(2)
DEFAULT_Y = Fraction(3)
DEFAULT_WEIGHTS = (Fraction(2), Fraction(1), Fraction(2), Fraction(4), Fraction(1))
DEFAULT_LR = Fraction(1, 10)

WEIGHT_NAMES = ("w1", "w2", "w3", "w4", "w5")
FORWARD_NAMES = ("a", "b", "c", "e", "o")
# The order the backward pass is printed in (and the keys of result["grads"]):
# the hidden values from the output back, then the weights from w5 back to w1.
GRAD_NAMES = ("o", "c", "e", "a", "b", "w5", "w4", "w3", "w2", "w1")


# --------------------------------------------------------------------------
# Exact numbers in and out
# --------------------------------------------------------------------------


def fmt(q) -> str:
    """Print a Fraction exactly: as a short decimal if it has one, else p/q.

    A reduced fraction p/q has a finite decimal iff q = 2^i * 5^j.  Then
    q divides 10^k for k = max(i, j), and p/q = (p * 10^k / q) / 10^k has
    exactly k decimals, the last one non-zero.
    """
    q = Fraction(q)
    rest, twos, fives = q.denominator, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{q.numerator}/{q.denominator}"
    k = max(twos, fives)
    digits = str(abs(q.numerator) * (10**k // q.denominator)).rjust(k + 1, "0")
    sign = "-" if q < 0 else ""
    if k == 0:
        return sign + digits
    return f"{sign}{digits[:-k]}.{digits[-k:]}"


def parse_number(text: str) -> Fraction:
    """'2', '-0.5', '1/3', '1e-3' -> exact Fraction; ValueError otherwise."""
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"not a number: {text!r} (use e.g. 2, -0.5 or 1/3)") from exc


def _n(q) -> str:
    """A number inside a formula: negatives get parentheses, '4 * (-2)'."""
    s = fmt(q)
    return f"({s})" if s.startswith("-") else s


# --------------------------------------------------------------------------
# The node type and its operations
# --------------------------------------------------------------------------


class Local(NamedTuple):
    """One local derivative d(output)/d(input), with how it was computed."""

    input: Node
    value: Fraction
    formula: str  # e.g. "relu'(w2 * a) * w2"
    numbers: str  # e.g. "1 * 1"


class Node:
    """A value in the graph: exact value, gradient dL/dnode, and its origin."""

    _count = 0

    def __init__(self, value, name: str, inputs: Sequence[Node] = (), op: str = "", numbers: str = ""):
        self.value = Fraction(value)
        self.name = name
        self.grad = Fraction(0)
        self._inputs = tuple(inputs)
        self._op = op  # symbolic recipe, e.g. "relu(w2 * a)"; "" for an input
        self._numbers = numbers  # the recipe with numbers, e.g. "relu(1 * 4)"
        self.relu_off = False  # True for a ReLU whose pre-activation is <= 0
        self.preact: Fraction | None = None
        self._backward: Callable[[], list[Local]] = lambda: []
        Node._count += 1
        self._id = Node._count  # creation order, to print sums in a stable order

    def __repr__(self) -> str:
        return f"Node({self.name}={fmt(self.value)}, grad={fmt(self.grad)})"


def neuron(w: Node, inp: Node, name: str) -> Node:
    """name = relu(w * inp)."""
    z = w.value * inp.value
    on = z > 0
    out = Node(z if on else 0, name, (w, inp), f"relu({w.name} * {inp.name})", f"relu({_n(w.value)} * {_n(inp.value)})")
    out.preact, out.relu_off = z, not on

    def _backward() -> list[Local]:
        r = 1 if on else 0  # relu'(z): 1 if the ReLU is on, else 0
        gate = f"relu'({w.name} * {inp.name})"
        return [
            Local(w, r * inp.value, f"{gate} * {inp.name}", f"{r} * {_n(inp.value)}"),
            Local(inp, r * w.value, f"{gate} * {w.name}", f"{r} * {_n(w.value)}"),
        ]

    out._backward = _backward
    return out


def weighted_sum(pairs: Sequence[tuple[Node, Node]], name: str) -> Node:
    """name = w_1 * v_1 + w_2 * v_2 + ...  (a linear output, no ReLU)."""
    value = sum((w.value * v.value for w, v in pairs), Fraction(0))
    op = " + ".join(f"{w.name} * {v.name}" for w, v in pairs)
    numbers = " + ".join(f"{_n(w.value)} * {_n(v.value)}" for w, v in pairs)
    out = Node(value, name, [n for pair in pairs for n in pair], op, numbers)

    def _backward() -> list[Local]:
        locals_ = []
        for w, v in pairs:  # d(w*v)/dv = w and d(w*v)/dw = v
            locals_.append(Local(v, w.value, w.name, fmt(w.value)))
            locals_.append(Local(w, v.value, v.name, fmt(v.value)))
        return locals_

    out._backward = _backward
    return out


def half_squared_error(o: Node, y: Node, name: str = "L") -> Node:
    """name = 1/2 * (o - y)^2, the MSE loss of one sample."""
    d = o.value - y.value
    out = Node(d * d / 2, name, (o, y), f"1/2 * ({o.name} - {y.name})^2", f"1/2 * ({fmt(o.value)} - {_n(y.value)})^2")

    def _backward() -> list[Local]:
        return [
            Local(o, d, f"{o.name} - {y.name}", f"{fmt(o.value)} - {_n(y.value)}"),
            Local(y, -d, f"{y.name} - {o.name}", f"{fmt(y.value)} - {_n(o.value)}"),
        ]

    out._backward = _backward
    return out


def topological_order(root: Node) -> list[Node]:
    """Every node after the nodes it was made from."""
    order: list[Node] = []
    seen = set()

    def visit(node: Node) -> None:
        if id(node) not in seen:
            seen.add(id(node))
            for inp in node._inputs:
                visit(inp)
            order.append(node)

    visit(root)
    return order


def backward(root: Node) -> None:
    """The chain rule: dL/dinput += d(node)/d(input) * dL/dnode, from L back."""
    order = topological_order(root)
    for node in order:
        node.grad = Fraction(0)
    root.grad = Fraction(1)  # dL/dL = 1
    for node in reversed(order):  # a node's users come before it
        for local in node._backward():
            local.input.grad += local.value * node.grad


# --------------------------------------------------------------------------
# The worked graph
# --------------------------------------------------------------------------


def build(x, y, weights) -> dict[str, Node]:
    """Build the forward graph; returns every node by name ('L' is the loss)."""
    weights = tuple(Fraction(w) for w in weights)
    if len(weights) != 5:
        raise ValueError(f"need exactly 5 weights (w1..w5), got {len(weights)}")
    X, Y = Node(x, "x"), Node(y, "y")
    w1, w2, w3, w4, w5 = (Node(v, n) for v, n in zip(weights, WEIGHT_NAMES))
    a = neuron(w1, X, "a")
    b = neuron(w1, X, "b")  # w1 is shared by a and b
    c = neuron(w2, a, "c")
    e = neuron(w3, b, "e")
    o = weighted_sum([(w4, c), (w5, e)], "o")
    L = half_squared_error(o, Y, "L")
    return {n.name: n for n in (X, Y, w1, w2, w3, w4, w5, a, b, c, e, o, L)}


def step(x, y, weights, lr) -> tuple[dict[str, Node], dict]:
    """One forward/backward/update step: (the graph's nodes, exact result)."""
    nodes = build(x, y, weights)
    backward(nodes["L"])
    lr = Fraction(lr)
    result = {
        "forward": {n: nodes[n].value for n in FORWARD_NAMES},
        "loss": nodes["L"].value,
        "grads": {n: nodes[n].grad for n in GRAD_NAMES},
        "updated": {w: nodes[w].value - lr * nodes[w].grad for w in WEIGHT_NAMES},
    }
    return nodes, result


def run(x=DEFAULT_X, y=DEFAULT_Y, weights=DEFAULT_WEIGHTS, lr=DEFAULT_LR) -> dict:
    """One step, exactly.  Returns Fractions::

    {"forward": {a, b, c, e, o}, "loss": L,
     "grads": {o, c, e, a, b, w5, w4, w3, w2, w1}   (each dL/d...),
     "updated": {w1, ..., w5}}                       (w - lr * dL/dw)
    """
    return step(x, y, weights, lr)[1]


def train(
    x=DEFAULT_X, y=DEFAULT_Y, weights=DEFAULT_WEIGHTS, lr=DEFAULT_LR, steps: int = 1
) -> list[tuple[dict[str, Node], dict]]:
    """`steps` steps, each starting from the previous step's updated weights."""
    out = []
    weights = tuple(Fraction(w) for w in weights)
    for _ in range(steps):
        nodes, result = step(x, y, weights, lr)
        out.append((nodes, result))
        weights = tuple(result["updated"][w] for w in WEIGHT_NAMES)
    return out


def loss_at(x, y, weights) -> Fraction:
    """The loss of a forward pass alone."""
    return build(x, y, weights)["L"].value


# --------------------------------------------------------------------------
# The printout
# --------------------------------------------------------------------------


def _table(rows: list[list[str | None]], indent: str = "  ", notes: list[str] | None = None) -> list[str]:
    """Align rows of cells into columns joined by ' = ', each row's note after it.
    A cell that is None is left blank (no '=' before it)."""
    cols = [max(len(r[i] or "") for r in rows) for i in range(len(rows[0]))]
    notes = notes or [""] * len(rows)
    lines = []
    for r, note in zip(rows, notes):
        line = indent + r[0].ljust(cols[0])
        for cell, w in zip(r[1:], cols[1:]):
            line += " " * (w + 3) if cell is None else " = " + cell.ljust(w)
        lines.append((line + note).rstrip())
    return lines


def _consumers(node: Node, nodes: dict[str, Node]) -> list[tuple[Node, Local]]:
    """The nodes made from `node`, each with its local derivative d(user)/d(node)."""
    users = []
    for user in sorted(nodes.values(), key=lambda n: n._id):
        for local in user._backward():
            if local.input is node:
                users.append((user, local))
    return users


def explain(nodes: dict[str, Node], lr) -> str:
    """The text trace of one step: forward, loss, backward, updates."""
    lr = Fraction(lr)
    out: list[str] = []

    out.append("Forward pass")
    rows, notes = [], {}
    for n in FORWARD_NAMES + ("L",):
        node = nodes[n]
        rows.append([node.name, node._op, node._numbers, fmt(node.value)])
        if node.relu_off:
            notes[len(rows) - 1] = (
                f"   <- ReLU off: pre-activation {fmt(node.preact)} <= 0, so {n} = 0 and {n} passes zero gradient"
            )
    out.extend(_table(rows, "  ", [notes.get(i, "") for i in range(len(rows))]))

    out.append("")
    out.append("Backward pass")
    out.append("  local derivatives (relu'(z) = 1 if z > 0, else 0):")
    rows, notes, chain, chain_notes = [], [], [], []
    for n in GRAD_NAMES:
        node = nodes[n]
        users = _consumers(node, nodes)
        if len(users) == 1 and users[0][0] is nodes["L"]:
            # dL/do: the loss's own local derivative (times dL/dL = 1).
            local = users[0][1]
            chain.append([f"dL/d{n}", local.formula, local.numbers, fmt(node.grad)])
            chain_notes.append("")
            continue
        for u, loc in users:
            same = loc.numbers == fmt(loc.value)  # "do/dc = w4 = 4", not "= 4 = 4"
            rows.append([f"d{u.name}/d{n}", loc.formula, None if same else loc.numbers, fmt(loc.value)])
            notes.append(f"   <- ReLU at {u.name} is off" if u.relu_off else "")
        sym = " + ".join(f"d{u.name}/d{n} * dL/d{u.name}" for u, _ in users)
        if len(users) == 1:
            num = f"{_n(users[0][1].value)} * {_n(users[0][0].grad)}"
        else:
            num = " + ".join(f"{_n(loc.value)}*{_n(u.grad)}" for u, loc in users)
        chain.append([f"dL/d{n}", sym, num, fmt(node.grad)])
        off = [u.name for u, _ in users if u.relu_off]
        chain_notes.append(f"   <- zero gradient through the ReLU at {', '.join(off)} (off)" if off else "")
    out.extend(_table(rows, "    ", notes))
    out.append("  chain rule (dL/dv = sum over each v' made from v of dv'/dv * dL/dv'):")
    out.extend(_table(chain, "    ", chain_notes))

    out.append("")
    out.append(f"Update (w <- w - lr * dL/dw, lr = {fmt(lr)})")
    rows = []
    for w in WEIGHT_NAMES:
        node = nodes[w]
        rows.append(
            [
                w,
                f"{w} - lr * dL/d{w}",
                f"{fmt(node.value)} - {_n(lr)} * {_n(node.grad)}",
                fmt(node.value - lr * node.grad),
            ]
        )
    out.extend(_table(rows))
    return "\n".join(out)


def _header(x, y, weights, lr) -> str:
    return "\n".join(
        [
            "Backpropagation on a small graph, in exact arithmetic",
            "  a = relu(w1 * x)   b = relu(w1 * x)   (w1 shared by a and b)",
            "  c = relu(w2 * a)   e = relu(w3 * b)",
            "  o = w4 * c + w5 * e,   L = 1/2 * (o - y)^2,   w <- w - lr * dL/dw",
            "Inputs: x = {}, y = {}, w1..w5 = {}, lr = {}".format(
                fmt(x), fmt(y), ", ".join(fmt(w) for w in weights), fmt(lr)
            ),
        ]
    )


# --------------------------------------------------------------------------
# JSON and Graphviz
# --------------------------------------------------------------------------


def to_json(result: dict) -> dict:
    """A run() result with every Fraction as its exact string ("-23.2", "1/3")."""
    return {
        "forward": {k: fmt(v) for k, v in result["forward"].items()},
        "loss": fmt(result["loss"]),
        "grads": {k: fmt(v) for k, v in result["grads"].items()},
        "updated": {k: fmt(v) for k, v in result["updated"].items()},
    }


def graph_json(nodes: dict[str, Node]) -> dict:
    """The graph of one step (as step() returns it, after backward) with every number an exact
    string, for a page that draws it: {"nodes": [{"name", "op", "numbers", "value", "grad",
    "relu_off", "preact"}], "edges": [{"from", "to", "local", "formula", "numbers", "upstream",
    "gradient"}]}; an edge input -> user carries back gradient = local * upstream, where local
    is d(user)/d(input) (its formula and the formula with numbers) and upstream is dL/d(user)."""
    order = sorted(nodes.values(), key=lambda n: n._id)
    return {
        "nodes": [
            {
                "name": n.name,
                "op": n._op,
                "numbers": n._numbers,
                "value": fmt(n.value),
                "grad": fmt(n.grad),
                "relu_off": n.relu_off,
                "preact": None if n.preact is None else fmt(n.preact),
            }
            for n in order
        ],
        "edges": [
            {
                "from": local.input.name,
                "to": user.name,
                "local": fmt(local.value),
                "formula": local.formula,
                "numbers": local.numbers,
                "upstream": fmt(user.grad),
                "gradient": fmt(local.value * user.grad),
            }
            for user in order
            for local in user._backward()
        ],
    }


def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(nodes: dict[str, Node]) -> str:
    """The graph in Graphviz DOT: nodes show op, value and gradient; each edge
    input -> user shows the gradient it carries back, d(user)/d(input) * dL/d(user)."""
    lines = [
        "digraph backprop {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="monospace"];',
        '  edge [fontname="monospace", fontsize=10];',
    ]
    order = sorted(nodes.values(), key=lambda n: n._id)
    for node in order:
        if node._op:
            label = f"{node.name} = {node._op}\nvalue {fmt(node.value)}\ndL/d{node.name} = {fmt(node.grad)}"
            if node.relu_off:
                label += "\nReLU off: zero gradient"
            attrs = "style=rounded" if node.name != "L" else "style=bold"
        else:
            label = f"{node.name}\nvalue {fmt(node.value)}\ndL/d{node.name} = {fmt(node.grad)}"
            attrs = "shape=ellipse"
        lines.append(f"  {node.name} [label={_dot_str(label)}, {attrs}];")
    for user in order:
        for local in user._backward():
            g = local.value * user.grad
            label = (
                f"d{user.name}/d{local.input.name} * dL/d{user.name}\n= {_n(local.value)} * {_n(user.grad)} = {fmt(g)}"
            )
            lines.append(f"  {local.input.name} -> {user.name} [label={_dot_str(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Replay through cnnfast's C++ kernels
# --------------------------------------------------------------------------

# How close float32 must be.  The kernels round every input to float32
# (relative error u = 2^-24 ~ 6e-8) and then do at most ~12 float32
# operations on the longest path (x*w1, w2*a, w4*c + w5*e, o - y, three
# backward products, the sum of w1's two branches, lr*g, w - lr*g).  The
# classic bound for such a computation is
#     |float - exact| <= k*u * (the same computation done on |values|),
# with k ~ 12, i.e. ~1e-6 times a "scale" that is the value itself when there
# is no cancellation, but larger when e.g. o - y nearly cancels (then the
# absolute error follows |o| + |y|, not |o - y|).  So the tolerance is
#     |kernel - exact| <= 1e-5 * scale,
# ~10x above the bound (room for any summation order or FMA in the kernels)
# and still tight enough to catch a wrong kernel (a 0.01% error fails).  (A
# plain 1e-5 * max(1, |exact|) would be too loose for values much below 1 and
# would cry wolf when o - y cancels: y = 1000.001 isn't even a float32.)
# The scale comes from the exact graph itself, rerun with the inputs made
# non-negative (|x|, |w1|..|w5|) and the subtracted ones non-positive (-|y|,
# -|lr|): then every sum adds magnitudes, every ReLU is on, and each value is
# exactly the |values| computation above.  Magnitudes outside float32's normal
# range (above ~3.4e38, overflow; below ~1.2e-38, underflow, where the bound
# no longer holds) can't be replayed faithfully: reported, exit status 1.
FLOAT32_REL_TOL = Fraction(1, 10**5)
FLOAT32_MAX = Fraction(340282346638528859811704183484516925440)  # largest float32
FLOAT32_TINY = Fraction(1, 2**126)  # smallest normal float32


def _flat(result: dict) -> dict[str, Fraction]:
    """{"a": .., "loss": .., "dL/dw1": .., "new w1": ..} from a run() result."""
    flat = {k: v for k, v in result["forward"].items()}
    flat["L"] = result["loss"]
    flat.update({f"dL/d{k}": v for k, v in result["grads"].items()})
    flat.update({f"new {k}": v for k, v in result["updated"].items()})
    return flat


def kernel_replay(x, y, weights, lr, F=None) -> dict:
    """One step through cnnfast.functional's float32 kernels; same shape as run()
    (with Python floats).  F defaults to cnnfast.functional."""
    import numpy as np

    if F is None:
        import cnnfast.functional as F

    f32 = np.float32

    def m(*rows) -> np.ndarray:  # a float32 matrix from numbers
        return np.ascontiguousarray(np.array([[float(v) for v in r] for r in rows], dtype=f32))

    w1, w2, w3, w4, w5 = weights
    X, W1, W2, W3, W45 = m([x]), m([w1]), m([w2]), m([w3]), m([w4, w5])
    zero = np.zeros(1, dtype=f32)
    # forward: each ReLU node is relu(linear(input, w)), no bias
    za = F.linear(X, W1, zero)
    a = F.relu(za)
    zb = F.linear(X, W1, zero)
    b = F.relu(zb)  # the same w1
    zc = F.linear(a, W2, zero)
    c = F.relu(zc)
    ze = F.linear(b, W3, zero)
    e = F.relu(ze)
    ce = np.ascontiguousarray(np.concatenate([c, e], axis=1), dtype=f32)
    o = F.linear(ce, W45, zero)
    # loss: not a kernel; float32 NumPy
    do = np.ascontiguousarray((o - f32(float(y))).astype(f32))
    loss = f32(0.5) * do * do
    # backward through the kernels
    dce, dW45, _ = F.linear_backward(ce, W45, do)
    dc = np.ascontiguousarray(dce[:, 0:1], dtype=f32)
    de = np.ascontiguousarray(dce[:, 1:2], dtype=f32)
    dc_pre = F.relu_backward(zc, dc)
    da, dW2, _ = F.linear_backward(a, W2, dc_pre)
    de_pre = F.relu_backward(ze, de)
    db, dW3, _ = F.linear_backward(b, W3, de_pre)
    _, dW1a, _ = F.linear_backward(X, W1, F.relu_backward(za, da))
    _, dW1b, _ = F.linear_backward(X, W1, F.relu_backward(zb, db))
    dW1 = (np.asarray(dW1a, dtype=f32) + np.asarray(dW1b, dtype=f32)).astype(f32)  # tied w1
    grads_w = {"w1": dW1[0, 0], "w2": dW2[0, 0], "w3": dW3[0, 0], "w4": dW45[0, 0], "w5": dW45[0, 1]}
    w_now = {"w1": W1[0, 0], "w2": W2[0, 0], "w3": W3[0, 0], "w4": W45[0, 0], "w5": W45[0, 1]}
    lr32 = f32(float(lr))
    return {
        "forward": {
            "a": float(a[0, 0]),
            "b": float(b[0, 0]),
            "c": float(c[0, 0]),
            "e": float(e[0, 0]),
            "o": float(o[0, 0]),
        },
        "loss": float(loss[0, 0]),
        "grads": {
            "o": float(do[0, 0]),
            "c": float(dc[0, 0]),
            "e": float(de[0, 0]),
            "a": float(da[0, 0]),
            "b": float(db[0, 0]),
            **{w: float(grads_w[w]) for w in ("w5", "w4", "w3", "w2", "w1")},
        },
        "updated": {w: float(f32(w_now[w] - lr32 * f32(grads_w[w]))) for w in WEIGHT_NAMES},
    }


class KernelCheck(NamedTuple):
    ok: bool
    count: int  # values compared
    worst: float  # max |kernel - exact| / tolerance
    mismatches: list[tuple[str, Fraction, float, Fraction]]  # name, exact, kernel, tolerance
    note: str = ""  # why the replay could not be compared


def check_kernels(x, y, weights, lr, F=None) -> KernelCheck:
    """Replay one step through the kernels and compare every value with run()."""
    exact = _flat(run(x, y, weights, lr))
    scale = _flat(run(abs(Fraction(x)), -abs(Fraction(y)), [abs(Fraction(w)) for w in weights], -abs(Fraction(lr))))
    too_big = [name for name, s in scale.items() if s > FLOAT32_MAX]
    too_small = [name for name, s in scale.items() if 0 < s < FLOAT32_TINY]
    if too_big or too_small:
        where = (
            "beyond float32's range (~3.4e38) at " + ", ".join(too_big)
            if too_big
            else "below float32's normal range (~1.2e-38) at " + ", ".join(too_small)
        )
        return KernelCheck(
            False,
            len(exact),
            float("inf"),
            [],
            f"the step involves magnitudes {where}, so float32 kernels cannot replay it faithfully",
        )
    import numpy as np

    with np.errstate(all="ignore"):
        kernel = _flat(kernel_replay(x, y, weights, lr, F))
    mismatches, worst = [], 0.0
    for name, want in exact.items():
        got, tol = kernel[name], FLOAT32_REL_TOL * scale[name]
        if got != got or got in (float("inf"), float("-inf")):
            err = None  # nan or inf: certainly wrong
        else:
            err = abs(Fraction(got) - want)
        if err is None or err > tol:
            mismatches.append((name, want, got, tol))
        ratio = float("inf") if err is None or (err and not tol) else float(err / tol) if tol else 0.0
        worst = max(worst, ratio)
    return KernelCheck(not mismatches, len(exact), worst, mismatches)


def _describe_check(chk: KernelCheck) -> str:
    head = "Kernel replay (cnnfast C++ kernels, float32): "
    if chk.ok:
        return (
            head + f"all {chk.count} values agree with the exact ones within float32 "
            f"rounding (|kernel - exact| <= 1e-5 * scale; worst {chk.worst:.2g} of that)."
        )
    if chk.note:
        return head + "NOT CHECKED: " + chk.note + "."
    lines = [head + f"{len(chk.mismatches)} of {chk.count} values DISAGREE with the exact ones:"]
    for name, want, got, tol in chk.mismatches:
        lines.append(f"  {name}: exact {fmt(want)}, kernel {got!r}, allowed error {float(tol):.3g}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

DESCRIPTION = """\
Backpropagation, step by step, on a small graph, in exact arithmetic.

The graph has one input x, a target y, five weights, no biases, ReLU on the
hidden nodes, a linear output and the MSE loss:

    a = relu(w1 * x)      b = relu(w1 * x)        (w1 is shared by a and b)
    c = relu(w2 * a)      e = relu(w3 * b)
    o = w4 * c + w5 * e
    L = 1/2 * (o - y)^2
    w <- w - lr * dL/dw

It prints the forward values, the loss, every partial derivative as
"local derivative * upstream gradient" with the numbers, and the updated
weights, all exact (-23.2, never -23.200000000000003; 1/3 when there is no
finite decimal).  A ReLU that is off (pre-activation <= 0) passes zero
gradient, and the printout says so.  Then it replays the step through
cnnfast's float32 C++ kernels and checks every value against the exact one:
exit status 0 if all agree within float32 rounding, 1 if not (or if --dot
cannot be written), 2 on bad input.
"""

EPILOG = """\
numbers: decimals or fractions, e.g. 2, -0.5, 1/3, 1e-3 (a negative value
can be written --x -1/3 or --x=-1/3).

--json prints one JSON object, every number an exact string:
  {"forward": {"a", "b", "c", "e", "o"},
   "loss": "220.5",
   "grads": {"o", "c", "e", "a", "b", "w5", "w4", "w3", "w2", "w1"},   (dL/d...)
   "updated": {"w1", "w2", "w3", "w4", "w5"}}                          (w - lr*dL/dw)
and with --steps N > 1: {"steps": [one such object per step, in order]}.
The trace and the kernel check then go to stderr (the exit status is the same).

--dot FILE writes the graph of the first step in Graphviz DOT ('-' for
stdout): nodes show their value and gradient, an edge input -> v shows the
gradient it carries back, dv/dinput * dL/dv.  Draw it with
  dot -Tpng FILE -o graph.png

example: python -m cnnfast.backprop --x 1/3 --weights 2,-1,2,4,1 --steps 3
"""


def _weights_arg(text: str) -> tuple[Fraction, ...]:
    parts = text.split(",")
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(
            f"need exactly 5 comma-separated weights w1,w2,w3,w4,w5; got {len(parts)} in {text!r}"
        )
    try:
        return tuple(parse_number(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number_arg(text: str) -> Fraction:
    try:
        return parse_number(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _steps_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cnnfast.backprop",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--x", type=_number_arg, default=DEFAULT_X, metavar="NUM", help="the input x (default 2)")
    p.add_argument("--y", type=_number_arg, default=DEFAULT_Y, metavar="NUM", help="the target y (default 3)")
    p.add_argument(
        "--weights",
        type=_weights_arg,
        default=DEFAULT_WEIGHTS,
        metavar="W1,W2,W3,W4,W5",
        help="the five weights (default 2,1,2,4,1)",
    )
    p.add_argument("--lr", type=_number_arg, default=DEFAULT_LR, metavar="NUM", help="the learning rate (default 0.1)")
    p.add_argument(
        "--steps", type=_steps_arg, default=1, metavar="N", help="repeat forward/backward/update N times (default 1)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (the trace goes to stderr)")
    p.add_argument("--dot", metavar="FILE", help="write the graph in Graphviz DOT to FILE")
    return p


_VALUE_OPTIONS = ("--x", "--y", "--weights", "--lr", "--steps")
_NEGATIVE = re.compile(r"^-[0-9.]")


def _join_negative_values(argv: list[str]) -> list[str]:
    """argparse takes '-1/3' or '-1,2,3,4,5' for an option; glue them on: '--x=-1/3'."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _VALUE_OPTIONS and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (bad input raises SystemExit(2))."""
    parser = make_parser()
    args = parser.parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    x, y, weights, lr = args.x, args.y, args.weights, args.lr

    steps = train(x, y, weights, lr, args.steps)
    results = [r for _, r in steps]

    # The kernel replay, each step from that step's exact starting weights (so
    # float32 errors of one step are not carried into the next).
    checks: list[KernelCheck | None] = []
    try:
        import cnnfast.functional as F
    except ImportError as exc:
        unavailable = f"Kernel replay unavailable: cannot import cnnfast.functional ({exc})."
        checks = [None] * len(results)
    else:
        w = tuple(weights)
        for r in results:
            checks.append(check_kernels(x, y, w, lr, F))
            w = tuple(r["updated"][k] for k in WEIGHT_NAMES)
    ok = all(c is not None and c.ok for c in checks)

    def report(i: int, chk: KernelCheck | None) -> str:
        prefix = f"step {i}: " if len(checks) > 1 else ""
        return prefix + (unavailable if chk is None else _describe_check(chk))

    if args.dot:
        text = to_dot(steps[0][0])
        if args.dot == "-":
            sys.stdout.write(text)
        else:
            try:
                from ._files import atomic_write

                with atomic_write(args.dot, "w", encoding="utf-8") as fh:
                    fh.write(text)
            except OSError as exc:
                print(f"error: cannot write {args.dot}: {exc}", file=sys.stderr)
                return 1

    log = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON (and --dot -)
    print(_header(x, y, weights, lr), file=log)
    for i, ((nodes, _), chk) in enumerate(zip(steps, checks), 1):
        print(file=log)
        if len(steps) > 1:
            print(f"===== Step {i} of {len(steps)} =====", file=log)
        print(explain(nodes, lr), file=log)
        print(file=log)
        print(report(i, chk) if len(steps) > 1 else report(1, chk), file=log)
    if len(steps) > 1:
        final = loss_at(x, y, results[-1]["updated"].values())
        print(file=log)
        print("Loss per step (the loss of that step's forward pass, then after its update)", file=log)
        for i, r in enumerate(results, 1):
            after = results[i]["loss"] if i < len(results) else final
            print(f"  step {i}: L = {fmt(r['loss'])}  ->  after its update L = {fmt(after)}", file=log)
    if args.json:
        print(json.dumps(to_json(results[0]) if len(results) == 1 else {"steps": [to_json(r) for r in results]}))
    return 0 if ok else 1


if __name__ == "__main__":
    from ._cli import run_command

    sys.exit(run_command(main))
