// The demo page's script: plain JavaScript, no libraries. Two independent parts:
//   1. the drawing pad: send what is drawn to POST /api/predict, show what comes back;
//   2. the worked example: send the values to POST /api/backprop, draw the graph and the tables.
// The server does all the computing (cnnfast's C++ kernels, exact fractions); this file only draws.
"use strict";

// ------------------------------------------------------------------ small helpers

const $ = (id) => document.getElementById(id);

// An HTML element: el("div", {class: "bar"}, "text").
function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// An SVG element, the same way.
function svg(tag, attrs = {}, text = "") {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// POST a body; the parsed JSON answer, or an Error carrying the server's message.
async function post(url, body, contentType) {
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": contentType }, body });
  const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function setStatus(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

// Paint grey levels (rows of 0..255) into a canvas of the same size.
function paintGrey(canvas, rows) {
  const h = rows.length, w = rows[0].length;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = 4 * (y * w + x);
      image.data[i] = image.data[i + 1] = image.data[i + 2] = rows[y][x];
      image.data[i + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
}

// ------------------------------------------------------------------ 1. draw a digit

const pad = $("pad");
const pen = pad.getContext("2d");
const PEN_WIDTH = 20; // on a 280x280 pad: strokes about 2 pixels wide once scaled to MNIST's 20x20 box

let inked = false; // anything on the pad?
let example = null; // the MNIST example on the pad, until the user draws over it
let version = 0; // counts changes to the pad; #digit's data-version says which one it shows
let busy = false, again = false; // one request at a time; `again`: the pad changed meanwhile
let lastPoint = null;

function clearPad() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, pad.width, pad.height);
  inked = false;
  example = null;
  version += 1;
  pad.dataset.version = version;
  $("digit").textContent = "?";
  $("digit").dataset.version = version;
  $("bars").replaceChildren();
  $("seen").getContext("2d").clearRect(0, 0, 28, 28);
  $("maps").replaceChildren();
  setStatus("status", "draw a digit 0..9 with the mouse or a finger");
}

// The pointer's position in the pad's own pixels (the pad may be shown at another size).
function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

// Ink from the last point to `point` (a round dot where a stroke starts: a line of length zero draws nothing).
function strokeTo(point) {
  pen.fillStyle = pen.strokeStyle = "#fff";
  pen.lineWidth = PEN_WIDTH;
  pen.lineCap = pen.lineJoin = "round";
  pen.beginPath();
  if (lastPoint) {
    pen.moveTo(...lastPoint);
    pen.lineTo(...point);
    pen.stroke();
  } else {
    pen.arc(...point, PEN_WIDTH / 2, 0, 2 * Math.PI);
    pen.fill();
  }
  lastPoint = point;
  inked = true;
  example = null; // the pad now holds a drawing (perhaps over an example): send the pad
  version += 1;
  pad.dataset.version = version;
  requestPrediction();
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  lastPoint = null;
  strokeTo(padPoint(event));
});
pad.addEventListener("pointermove", (event) => {
  if (lastPoint) strokeTo(padPoint(event));
});
for (const end of ["pointerup", "pointercancel"]) {
  pad.addEventListener(end, () => { lastPoint = null; });
}
$("clear").addEventListener("click", clearPad);

// Ask the server about the pad (or the example on it); while a request is out, remember to ask
// again when it returns, so the answer catches up with the drawing without piling up requests.
function requestPrediction() {
  if (!inked) return;
  if (busy) { again = true; return; }
  busy = true;
  const asked = version;
  const reply = example
    ? post("/api/predict", JSON.stringify({ image: example.image }), "application/json")
    : new Promise((resolve) => pad.toBlob(resolve, "image/png")).then((png) => post("/api/predict", png, "image/png"));
  reply
    .then((prediction) => { if (inked) showPrediction(prediction, asked); })
    .catch((error) => { if (asked === version) setStatus("status", error.message, true); })
    .finally(() => {
      busy = false;
      if (again) { again = false; requestPrediction(); }
    });
}

function showPrediction(prediction, asked) {
  $("digit").textContent = prediction.digit;
  $("digit").dataset.version = asked;
  const shown = example ? `MNIST test digit #${example.index} (labelled ${example.label})` : "your drawing";
  setStatus("status", `${shown}: ${(100 * prediction.probabilities[prediction.digit]).toFixed(1)}% sure it is a ${prediction.digit}`);

  const bars = $("bars");
  bars.replaceChildren();
  prediction.probabilities.forEach((p, digit) => {
    const bar = el("div", { class: digit === prediction.digit ? "bar best" : "bar" });
    const fill = el("div");
    fill.style.width = `${(100 * p).toFixed(1)}%`; // (set through the DOM: the page allows no inline styles)
    bar.append(fill);
    bars.append(el("span", {}, String(digit)), bar, el("span", { class: "value" }, `${(100 * p).toFixed(1)}%`));
  });

  paintGrey($("seen"), prediction.input_28x28);
  showFeatureMaps(prediction.feature_maps);
}

// One row of tiles per convolution layer; the canvases are kept while the shapes stay the same.
function showFeatureMaps(layers) {
  const maps = $("maps");
  const key = layers.map((l) => `${l.layer}:${l.channels}x${l.height}x${l.width}`).join(",");
  if (maps.dataset.key !== key) {
    maps.replaceChildren();
    maps.dataset.key = key;
    for (const layer of layers) {
      const block = el("div", { class: "layer" });
      const title = `layer ${layer.layer}, ${layer.name}: ${layer.channels} maps of ${layer.height}x${layer.width}`;
      block.append(el("h4", {}, title));
      const tiles = el("div", { class: "tiles" });
      const zoom = Math.max(2, Math.round(52 / layer.width));
      for (let c = 0; c < layer.channels; c++) {
        const tile = el("canvas", { width: layer.width, height: layer.height, class: "pixels", title: `filter ${c}` });
        tile.style.width = `${layer.width * zoom}px`;
        tile.style.height = `${layer.height * zoom}px`;
        tiles.append(tile);
      }
      block.append(tiles, el("p", { class: "note range" }));
      maps.append(block);
    }
  }
  layers.forEach((layer, i) => {
    const block = maps.children[i];
    block.querySelectorAll("canvas").forEach((tile, c) => paintGrey(tile, layer.maps[c]));
    block.querySelector(".range").textContent = `values from ${layer.min.toPrecision(3)} (black) to ${layer.max.toPrecision(3)} (white)`;
  });
}

// Load an MNIST test digit: show it on the pad (scaled up) and send its own 28x28 grey levels.
function loadExample(chosen) {
  const small = el("canvas", { width: 28, height: 28 });
  paintGrey(small, chosen.image);
  pen.imageSmoothingEnabled = true;
  pen.drawImage(small, 0, 0, pad.width, pad.height);
  inked = true;
  example = chosen;
  version += 1;
  pad.dataset.version = version;
  requestPrediction();
}

async function showExamples() {
  const answer = await fetch("/api/examples").then((r) => r.json());
  const box = $("examples");
  if (answer.note) $("examples-note").textContent = answer.note;
  for (const chosen of answer.examples) {
    const wrong = chosen.predicted !== chosen.label;
    const button = el("button", { type: "button", class: wrong ? "example wrong" : "example" });
    button.title = `test digit #${chosen.index}: labelled ${chosen.label}, the model reads ${chosen.predicted}`;
    const picture = el("canvas", { width: 28, height: 28, class: "pixels" });
    paintGrey(picture, chosen.image);
    button.append(picture, el("span", {}, wrong ? `${chosen.label}, read ${chosen.predicted}` : String(chosen.label)));
    button.addEventListener("click", () => loadExample(chosen));
    box.append(button);
  }
  if (answer.examples.some((e) => e.predicted !== e.label)) {
    $("examples-note").textContent = "Click one to load it. Red: digits the model reads wrong (its label, then its answer).";
  }
}

// ------------------------------------------------------------------ 2. the worked example

const DEFAULTS = { x: "2", y: "3", w1: "2", w2: "1", w3: "2", w4: "4", w5: "1", lr: "0.1" };
const WEIGHTS = ["w1", "w2", "w3", "w4", "w5"];
let result = null; // the last /api/backprop answer
let showGradients = false; // after "backward"
let history = []; // the loss before and after each step

// Where each node of the graph is drawn: the centre of its box in the SVG's 1170x410 viewBox.
const PLACES = { x: [120, 210], a: [380, 100], b: [380, 320], c: [670, 100], e: [670, 320], o: [910, 210], L: [1090, 210], y: [1090, 350] };
// The drawn edges: value `from` -> `to`, the weight that multiplies it (if any), and where its
// label goes: [x, y] of the line nearest the edge, text-anchor, and the direction further lines go
// (-1 up, +1 down).
const EDGES = [
  { from: "x", to: "a", weight: "w1", label: [240, 148, "end", -1] },
  { from: "x", to: "b", weight: "w1", label: [240, 284, "end", 1] },
  { from: "a", to: "c", weight: "w2", label: [525, 70, "middle", -1] },
  { from: "b", to: "e", weight: "w3", label: [525, 360, "middle", 1] },
  { from: "c", to: "o", weight: "w4", label: [802, 148, "start", -1] },
  { from: "e", to: "o", weight: "w5", label: [802, 284, "start", 1] },
  { from: "o", to: "L", label: [1000, 180, "middle", -1] },
  { from: "y", to: "L", label: [1080, 252, "end", 1] },
];

function readValues() {
  const form = $("values").elements;
  return {
    x: form.x.value, y: form.y.value, lr: form.lr.value,
    weights: WEIGHTS.map((w) => form[w].value),
  };
}

function writeValues(values) {
  const form = $("values").elements;
  for (const [name, value] of Object.entries(values)) form[name].value = value;
}

// A long exact number shortened for the drawing (the tooltip keeps it whole).
function short(text) {
  if (text.length <= 12) return text;
  const [p, q] = text.split("/");
  const value = q ? Number(p) / Number(q) : Number(text);
  return `≈${value.toPrecision(6)}`;
}

async function runExample() {
  const inputs = $("values").querySelectorAll("input");
  try {
    result = await post("/api/backprop", JSON.stringify(readValues()), "application/json");
    setStatus("bp-status", showGradients ? "forward and backward done" : "forward done: press backward for the gradients");
    inputs.forEach((input) => input.classList.remove("bad"));
  } catch (error) {
    setStatus("bp-status", error.message, true);
    const field = /^(x|y|lr|w[1-5])\b/.exec(error.message); // the server's messages start with the value's name
    inputs.forEach((input) => input.classList.toggle("bad", field !== null && input.name === field[1]));
    return false;
  }
  drawGraph();
  fillTable();
  return true;
}

function drawGraph() {
  const graph = $("graph");
  graph.replaceChildren();
  const defs = svg("defs");
  const arrow = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto" });
  arrow.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8390a3" }));
  defs.append(arrow);
  graph.append(defs);

  const nodes = Object.fromEntries(result.graph.nodes.map((n) => [n.name, n]));
  const edges = result.graph.edges; // {from, to, local, formula, numbers, upstream, gradient}
  const find = (from, to) => edges.find((e) => e.from === from && e.to === to);
  const W = 120, H = 44; // node boxes

  for (const edge of EDGES) {
    const [x1, y1] = PLACES[edge.from], [x2, y2] = PLACES[edge.to];
    const dx = x2 - x1, dy = y2 - y1;
    // from the border of one box to the border of the other
    const cut = (sign) => Math.min(Math.abs((W / 2 + 2) / (dx || 1e-9)), Math.abs((H / 2 + 2) / (dy || 1e-9))) * sign;
    const s = cut(1), t = 1 + cut(-1);
    graph.append(svg("line", { class: "edge", x1: x1 + dx * s, y1: y1 + dy * s, x2: x1 + dx * t, y2: y1 + dy * t }));

    const lines = [];
    if (edge.weight) lines.push({ text: `${edge.weight} = ${short(nodes[edge.weight].value)}`, cls: "weight" });
    if (showGradients) {
      if (edge.weight) {
        const g = find(edge.weight, edge.to);
        const via = edge.weight === "w1" ? ` (via ${edge.to})` : "";
        lines.push({ text: `dL/d${edge.weight}${via} = ${short(g.local)} × ${short(g.upstream)} = ${short(g.gradient)}`, cls: "grad", tip: g });
      }
      const g = find(edge.from, edge.to);
      lines.push({ text: `to ${edge.from}: ${short(g.local)} × ${short(g.upstream)} = ${short(g.gradient)}`, cls: "grad", tip: g });
    }
    const [lx, ly, anchor, direction] = edge.label;
    lines.forEach((line, i) => {
      const text = svg("text", { x: lx, y: ly + direction * 15 * i, "text-anchor": anchor, class: line.cls }, line.text);
      if (line.tip) {
        const g = line.tip;
        const how = `d${g.to}/d${g.from} = ${g.formula} = ${g.numbers} = ${g.local}`;
        text.append(svg("title", {}, `${how}; upstream dL/d${g.to} = ${g.upstream}; local × upstream = ${g.gradient}`));
      }
      graph.append(text);
    });
  }

  for (const [name, [cx, cy]] of Object.entries(PLACES)) {
    const node = nodes[name];
    const kind = node.op ? (node.relu_off ? "node off" : "node") : "node input";
    const group = svg("g", { class: kind });
    group.append(svg("rect", { x: cx - W / 2, y: cy - H / 2, width: W, height: H }));
    group.append(svg("text", { x: cx, y: cy - 4, "text-anchor": "middle", class: "name" }, `${name} = ${short(node.value)}`));
    const second = showGradients ? `dL/d${name} = ${short(node.grad)}` : node.relu_off ? "ReLU off" : "";
    if (second) group.append(svg("text", { x: cx, y: cy + 13, "text-anchor": "middle", class: showGradients ? "grad" : "" }, second));
    const how = node.op ? `${name} = ${node.op} = ${node.numbers} = ${node.value}` : `${name} = ${node.value} (an input)`;
    group.append(svg("title", {}, how + (node.relu_off ? ` (ReLU off: pre-activation ${node.preact} <= 0)` : "")));
    graph.append(group);
  }
}

function fillTable() {
  const body = $("bp-table").querySelector("tbody");
  body.replaceChildren();
  const kernel = result.kernel;
  // float32 values to 9 significant digits: enough to show where float32 rounded (-23.2000008)
  const number = (v) => (v === undefined ? "not replayed" : v === null ? "overflow" : String(Number(v.toPrecision(9))));
  const row = (label, exact, replay) => {
    const tr = el("tr");
    tr.append(el("td", {}, label), el("td", { title: exact }, short(exact)), el("td", {}, number(replay)));
    body.append(tr);
  };
  for (const name of ["a", "b", "c", "e", "o"]) row(name, result.forward[name], kernel.forward?.[name]);
  row("L", result.loss, kernel.loss);
  if (showGradients) {
    for (const name of Object.keys(result.grads)) row(`dL/d${name}`, result.grads[name], kernel.grads?.[name]);
    for (const name of WEIGHTS) row(`new ${name}`, result.updated[name], kernel.updated?.[name]);
  }
  const check = kernel.check;
  $("kernel-check").textContent = check.note
    ? `The float32 kernels cannot replay this step: ${check.note}.`
    : check.ok
      ? `Every value of the kernels' float32 replay agrees with the exact one within float32 rounding (the worst is ${check.worst.toPrecision(2)} of the tolerance).`
      : `${check.mismatches.length} values of the kernels' replay disagree with the exact ones: ${check.mismatches.map((m) => m.name).join(", ")}.`;
}

$("forward").addEventListener("click", () => { showGradients = false; runExample(); });
$("backward").addEventListener("click", () => { showGradients = true; runExample(); });
$("step").addEventListener("click", async () => {
  if (!result && !(await runExample())) return;
  const before = result.loss;
  const updated = result.updated;
  writeValues(updated);
  showGradients = false;
  if (await runExample()) {
    history.push(`L = ${short(before)} → ${short(result.loss)}`);
    $("history").replaceChildren(...history.map((h) => el("li", {}, h)));
    setStatus("bp-status", `step ${history.length} done: the weights are now w - lr·dL/dw; press backward for the new gradients`);
  }
});
$("reset").addEventListener("click", () => {
  writeValues(DEFAULTS);
  history = [];
  $("history").replaceChildren();
  showGradients = false;
  runExample();
});
let typing = null;
$("values").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(runExample, 300); });
$("values").addEventListener("submit", (event) => { event.preventDefault(); runExample(); });

// ------------------------------------------------------------------ start

clearPad();
showExamples().catch((error) => { $("examples-note").textContent = `examples unavailable: ${error.message}`; });
runExample();
