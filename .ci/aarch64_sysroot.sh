#!/usr/bin/env bash
# Builds OUTDIR/sysroot: Debian 12's arm64 Python 3.11 (from its .debs) plus cp311 aarch64 wheels
# (numpy, pytest, hypothesis), runnable on an x86-64 host under qemu-user, and OUTDIR/python3.11-aarch64,
# a wrapper that runs it. Idempotent: finished steps are skipped (rm -rf OUTDIR to start over).
# Usage: aarch64_sysroot.sh OUTDIR
# Env:   WHEELS       pip requirements for the sysroot (default "numpy pytest hypothesis tqdm": tqdm is a dependency of the commands)
#        HOST_PYTHON  host python whose pip installs the aarch64 wheels (default python3)
# Needs: qemu-user, apt and dpkg, host apt sources that serve arm64 (deb.debian.org does), PyPI;
#        a Debian 12 (bookworm) host: its arm64 archive has python3.11.
# Copied from shared/tools/aarch64_sysroot.sh (our own tool) so that the repository is self-contained;
# changes: a clear error where the archive has no python3.11, and the self-check marker is dropped
# whenever the wheels are reinstalled.
# shellcheck disable=SC2086  # package lists ($RUNTIME, $pkgs, $WHEELS) are split on purpose
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$1"; OUT=$(cd "$1" && pwd)
SYSROOT=$OUT/sysroot A=$OUT/apt
SITE=$SYSROOT/usr/local/lib/python3.11/dist-packages   # on Debian python's default sys.path
WHEELS=${WHEELS:-numpy pytest hypothesis tqdm}
HOST_PYTHON=${HOST_PYTHON:-python3}
PY=$OUT/python3.11-aarch64
die() { echo "aarch64_sysroot: $*" >&2; exit 1; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
command -v qemu-aarch64 >/dev/null || die "qemu-aarch64 not found (apt-get install -y qemu-user)"
T0=$(date +%s%N)

# A private apt state in OUTDIR with arm64 as the native architecture: the host's sources are used,
# but its dpkg/apt configuration is left alone (no dpkg --add-architecture needed).
APT=(-o APT::Architecture=arm64 -o APT::Architectures=arm64 -o Dir::State="$A/state"
     -o Dir::State::status="$A/state/status" -o Dir::Cache="$A/cache" -o Debug::NoLocking=1
     -o APT::Sandbox::User=root -o Acquire::Languages=none)

# 1. arm64 package lists.
if [ ! -e "$A/.updated" ]; then
  mkdir -p "$A/state/lists/partial" "$A/cache/archives/partial"; : > "$A/state/status"
  apt-get "${APT[@]}" update >"$A/update.log" 2>&1 || die "apt-get update failed: $(tail -1 "$A/update.log")"
  touch "$A/.updated"
fi

# 2. The .debs: apt resolves the Depends closure of the runtime packages against an empty system
#    (libc6, libssl3, libffi8, ... come out of it); libpython3.11-dev (headers, the aarch64
#    pyconfig.h) is taken alone, without the -dev packages it depends on.
RUNTIME="python3.11 libpython3.11-stdlib libstdc++6 libgomp1 libgcc-s1"
if [ ! -e "$OUT/debs/.done" ]; then
  mkdir -p "$OUT/debs"
  pkgs=$(apt-get "${APT[@]}" install -s --no-install-recommends $RUNTIME | awk '/^Inst /{print $2}') \
    || die "apt-get could not resolve the arm64 packages $RUNTIME (a Debian 12 host? stale lists? rm -rf $A to refresh them)"
  [ -n "$pkgs" ] || die "no arm64 packages resolved (do the host's apt sources serve arm64?)"
  grep -qx python3.11 <<<"$pkgs" || die "the arm64 archive has no python3.11 (a Debian 12 host is needed; /etc/debian_version: $(cat /etc/debian_version 2>/dev/null))"
  (cd "$OUT/debs" && apt-get "${APT[@]}" download $pkgs libpython3.11-dev) >"$OUT/debs/download.log" 2>&1 \
    || die "apt-get download failed: $(tail -1 "$OUT/debs/download.log") (stale lists? rm -rf $A)"
  touch "$OUT/debs/.done"
fi

# 3. Unpack them: a plain file tree, no maintainer scripts run. Absolute symlinks (such as
#    usr/lib/python3.11/sitecustomize.py -> /etc/...) would reach the host's files: made relative.
if [ ! -e "$SYSROOT/.unpacked" ]; then
  mkdir -p "$SYSROOT"
  for deb in "$OUT"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  find "$SYSROOT" -type l -lname '/*' | while read -r l; do ln -sfnr "$SYSROOT$(readlink "$l")" "$l"; done
  touch "$SYSROOT/.unpacked"
fi

# 4. The wrapper, sysroot/usr/bin/python3.11-qemu (OUTDIR/python3.11-aarch64 links to it): qemu-user
#    with the sysroot as its -L prefix (the aarch64 ld.so and libraries come from there) and the
#    wrapper as argv[0], so it is also sys.executable and python's subprocesses run under qemu too.
#    The user site dir (~/.local, x86 packages) is kept out. QEMU_CPU picks the CPU model.
cat > "$SYSROOT/usr/bin/python3.11-qemu" <<'EOF'
#!/bin/sh
# AArch64 python3.11 of this sysroot under qemu-user; PYTHONPATH adds directories, QEMU_CPU the CPU model.
b=$(dirname "$(readlink -f "$0")")
unset PYTHONHOME
export PYTHONNOUSERSITE=1
exec qemu-aarch64 -L "$(cd "$b/../.." && pwd)" -0 "$b/python3.11-qemu" "$b/python3.11" "$@"
EOF
chmod +x "$SYSROOT/usr/bin/python3.11-qemu"
ln -sfn sysroot/usr/bin/python3.11-qemu "$PY"

# 5. Wheels for cp311 / manylinux aarch64 (glibc 2.36 here, so manylinux_2_17 .. _2_36), installed
#    by pip into the site dir; then everything is byte-compiled by the emulated python itself
#    (Debian's postinst would do that for the stdlib): import numpy gets ~3x faster.
if [ "$(cat "$SITE/.wheels" 2>/dev/null)" != "$WHEELS" ]; then
  plats=(); for y in $(seq 36 -1 17); do plats+=(--platform "manylinux_2_${y}_aarch64"); done
  rm -f "$SYSROOT/.verified"; rm -rf "$SITE"; mkdir -p "$SITE"
  "$HOST_PYTHON" -m pip install --target "$SITE" --no-compile --only-binary=:all: --implementation cp \
      --python-version 3.11 --abi cp311 "${plats[@]}" $WHEELS >"$OUT/pip.log" 2>&1 \
    || die "pip install of '$WHEELS' for aarch64 failed: $(grep -m1 ERROR "$OUT/pip.log" || tail -1 "$OUT/pip.log")"
  rm -rf "${SITE:?}/bin"   # console scripts with host shebangs
  PYTHONDONTWRITEBYTECODE='' "$PY" -m compileall -q -j0 "$SYSROOT/usr/lib/python3.11" "$SITE" >"$OUT/compileall.log" 2>&1 \
    || echo "aarch64_sysroot: warning: compileall failed (see $OUT/compileall.log); imports will be slower" >&2
  echo "$WHEELS" > "$SITE/.wheels"
fi
echo "sysroot ready in $(ms "$T0") ms: $(du -sh "$SYSROOT" | cut -f1) in $SYSROOT"

# 6. Self-check under qemu: the interpreter, numpy's import, a small matmul.
t=$(date +%s%N)
"$PY" -c 'import platform, sys, numpy; print("python", platform.python_version(), platform.machine(), sys.implementation.cache_tag, "numpy", numpy.__version__)' \
  || die "numpy does not import under qemu"
echo "  (emulated python + import numpy: $(ms "$t") ms)"
t=$(date +%s%N)
"$PY" -c '
import numpy as np
a = np.arange(12.0).reshape(3, 4); c = a @ a.T
assert c.tolist() == [[14, 38, 62], [38, 126, 214], [62, 214, 366]], c
r = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
assert np.allclose(r @ np.linalg.inv(r.astype(np.float64)), np.eye(64), atol=1e-4)
print("numpy matmul ok:", c.tolist())' || die "numpy matmul check failed under qemu"
echo "  (matmul check: $(ms "$t") ms)"
touch "$SYSROOT/.verified"
cat <<EOF
Run the AArch64 Python:
  $PY -c "import numpy; print(numpy.__version__)"
which is, but for -0 (argv[0], so that sys.executable, used by subprocesses, is the wrapper):
  PYTHONNOUSERSITE=1 qemu-aarch64 -L $SYSROOT $SYSROOT/usr/bin/python3.11 -c "import numpy; print(numpy.__version__)"
More packages: PYTHONPATH=DIR (extension modules named *.cpython-311-aarch64-linux-gnu.so).
Headers for cross builds: $SYSROOT/usr/include/python3.11 (its pyconfig.h includes
  <aarch64-linux-gnu/python3.11/pyconfig.h>, so also put $SYSROOT/usr/include on the include path).
EOF
