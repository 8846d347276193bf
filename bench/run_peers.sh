#!/usr/bin/env bash
# Run cnnfast's end-to-end benchmark and the peer programs (bench/peers: PyTorch eager, Keras on
# TensorFlow, JAX/XLA) one after another on this machine, with the same threads and data, and
# collect their JSON lines.
#
#   bench/run_peers.sh                     # cnnfast (+ PyTorch interleaved), torch, torch_cl, keras, jax
#   bench/run_peers.sh keras jax           # only these
#   THREADS=1 LIMIT=10000 bench/run_peers.sh cnnfast torch
#
# Each framework gets its own virtual environment under $VENV_ROOT (default /tmp/cnnfast-peers),
# created on first use (PyTorch 2.13.0 CPU, TensorFlow-CPU 2.21.0 + Keras 3.15.1, JAX 0.10.2 +
# optax 0.2.8: the versions each peer program names as measured with). None of them is a dependency of
# cnnfast. The PyTorch venv also gets cnnfast itself, rebuilt from this tree (CNNFAST_REINSTALL=0
# to keep the one installed), for bench/bench_train.py.
#
# Environment: THREADS (2), MNIST_DIR (../shared/data/mnist beside the repository), LIMIT (training
# images, default all 60,000), VENV_ROOT, TORCH_VENV / TF_VENV / JAX_VENV (to reuse existing venvs),
# PEERS_DIR (bench/peers), OUT (results file, default $VENV_ROOT/results.jsonl; appended to).
# Every JSON line a script prints is stored with "peer" (which run) and "loadavg" (at its end)
# added; a summary table closes the run. Timings are only comparable if nothing else runs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
THREADS=${THREADS:-2}
LIMIT=${LIMIT:-60000}
PEERS_DIR=${PEERS_DIR:-$HERE/peers}
MNIST_DIR=${MNIST_DIR:-$REPO/../shared/data/mnist}
VENV_ROOT=${VENV_ROOT:-/tmp/cnnfast-peers}
TORCH_VENV=${TORCH_VENV:-$VENV_ROOT/torch}
TF_VENV=${TF_VENV:-$VENV_ROOT/tf}
JAX_VENV=${JAX_VENV:-$VENV_ROOT/jax}
OUT=${OUT:-$VENV_ROOT/results.jsonl}
PYTHON=${PYTHON:-python3}
export THREADS MNIST_DIR LIMIT

if [ $# -eq 0 ]; then set -- cnnfast torch torch_cl keras jax; fi
[ -d "$PEERS_DIR" ] || { echo "run_peers: no peer scripts at $PEERS_DIR (set PEERS_DIR)" >&2; exit 2; }
[ -d "$MNIST_DIR" ] || { echo "run_peers: no MNIST at $MNIST_DIR (set MNIST_DIR)" >&2; exit 2; }
MNIST_DIR=$(cd "$MNIST_DIR" && pwd)
mkdir -p "$VENV_ROOT" "$(dirname "$OUT")"

# venv DIR PACKAGES...: create DIR and install PACKAGES unless it already imports them.
venv() {
  local dir=$1; shift
  if [ ! -x "$dir/bin/python" ]; then
    echo "run_peers: creating $dir: pip install $*" >&2
    "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install -q "$@"
  fi
}

torch_venv() {
  venv "$TORCH_VENV" numpy torch==2.13.0
  if [ "${CNNFAST_REINSTALL:-1}" != 0 ] || ! "$TORCH_VENV/bin/python" -c 'import cnnfast' 2>/dev/null; then
    echo "run_peers: installing cnnfast from $REPO into $TORCH_VENV" >&2
    "$TORCH_VENV/bin/pip" install -q --force-reinstall --no-deps "$REPO"
  fi
}

# tagged NAME COMMAND...: run COMMAND, store each JSON object line of its stdout in $OUT with
# "peer": NAME and the load average added; everything else goes to stderr.
tagged() {
  local name=$1; shift
  echo "run_peers: $name: $*" >&2
  if ! "$@" | "$PYTHON" -c '
import json, os, sys
name, out = sys.argv[1], sys.argv[2]
with open(out, "a") as f:
    for line in sys.stdin:
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            sys.stderr.write(line)
            continue
        obj = {"peer": name, "loadavg": [round(x, 2) for x in os.getloadavg()], **obj}
        f.write(json.dumps(obj) + "\n")
        print(json.dumps(obj), flush=True)
' "$name" "$OUT"; then
    echo "run_peers: $name FAILED (exit status above); going on with the next" >&2
  fi
}

pin() {  # run on the first $THREADS CPUs: JAX's CPU client takes no thread count
  if command -v taskset >/dev/null; then taskset -c "0-$((THREADS - 1))" "$@"; else "$@"; fi
}

start_line=$( [ -f "$OUT" ] && wc -l < "$OUT" || echo 0 )
for which in "$@"; do
  case $which in
    cnnfast)
      torch_venv
      tagged cnnfast "$TORCH_VENV/bin/python" "$HERE/bench_train.py" --threads "$THREADS" --limit "$LIMIT" \
        --data-dir "$MNIST_DIR" --repeats "${REPEATS:-1}" --json ;;
    torch)
      torch_venv
      tagged torch_eager env EPOCHS=1 "$TORCH_VENV/bin/python" "$PEERS_DIR/torch_eager.py" ;;
    torch_cl)
      torch_venv
      tagged torch_channels_last env MEMORY=channels_last EPOCHS=1 "$TORCH_VENV/bin/python" "$PEERS_DIR/torch_eager.py" ;;
    keras)
      venv "$TF_VENV" tensorflow-cpu==2.21.0 keras==3.15.1
      tagged keras_tf env EPOCHS=1 "$TF_VENV/bin/python" "$PEERS_DIR/keras_tf.py" ;;
    jax)
      venv "$JAX_VENV" jax==0.10.2 jaxlib==0.10.2 optax==0.2.8
      tagged jax_xla pin env EPOCHS=1 "$JAX_VENV/bin/python" "$PEERS_DIR/jax_xla.py" ;;
    *)
      echo "run_peers: unknown run '$which' (cnnfast, torch, torch_cl, keras, jax)" >&2; exit 2 ;;
  esac
done

# Summary of this invocation's lines.
tail -n +"$((start_line + 1))" "$OUT" | "$PYTHON" -c '
import json, sys
rows = []
for line in sys.stdin:
    d = json.loads(line)
    if d.get("benchmark") == "cnnfast bench_train":
        for key, label in (("cnnfast", "cnnfast"), ("torch", "PyTorch (in bench_train)")):
            s = d.get(key) or {}
            if "train_img_s" in s:
                rows.append((label, s["train_img_s"], s["infer_img_s"], s["test_accuracy"], d["machine"]["loadavg_end"]))
    elif "train_img_s" in d:
        rows.append((d.get("framework", d["peer"]), d["train_img_s"], d.get("infer_img_s"), d.get("test_acc"), d["loadavg"]))
print("\n%-34s %12s %12s %9s  %s" % ("run", "train img/s", "infer img/s", "test acc", "load average"))
for name, tr, inf, acc, load in rows:
    acc_s = f"{100 * acc:.2f}%" if acc is not None else "-"
    print(f"{name:<34} {tr:>12,.0f} {inf or 0:>12,.0f} {acc_s:>9}  {load}")
'
echo "run_peers: results appended to $OUT" >&2
