#!/usr/bin/env bash
# Cross-compiles the C++ extension of a scikit-build-core + pybind11 + CMake project (SRC, e.g. the
# cnnfast checkout) for AArch64 against the Python 3.11 headers of OUTDIR/sysroot (made by
# aarch64_sysroot.sh beside this script, run first if needed), lays the package out in OUTDIR/site as
# its wheel would be, and checks it under qemu-user with the sysroot's python: by default cnnfast's
# build_info() and conv2d / conv2d_backward against a float64 NumPy reference, or CHECK.py if given.
# Usage: aarch64_build_cnnfast.sh SRC OUTDIR [CHECK.py]
# Env:   HOST_PYTHON  host Python >= 3.11 for the venv with pybind11, cmake, ninja (default python3)
#        JOBS         parallel compile jobs (default 2)
# Copied from shared/tools/aarch64_build_cnnfast.sh (our own tool) so that the repository is
# self-contained; changes: the compile is limited to $JOBS jobs (ninja's default is cores + 2), and
# extension modules already in the checkout's package dir are not copied into OUTDIR/site.
set -euo pipefail
shopt -s nullglob
[ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: $0 SRC OUTDIR [CHECK.py]" >&2; exit 2; }
SRC=$(cd "$1" && pwd); mkdir -p "$2"; OUT=$(cd "$2" && pwd)
CHECK=${3:+$(cd "$(dirname "$3")" && pwd)/$(basename "$3")}
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOABI=cpython-311-aarch64-linux-gnu SYSROOT=$OUT/sysroot HV=$OUT/hostvenv SITE=$OUT/site
die() { echo "aarch64_build: $*" >&2; exit 1; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# 1. The sysroot (idempotent; skipped once it has passed its own check).
[ -e "$SYSROOT/.verified" ] || "$TOOLS/aarch64_sysroot.sh" "$OUT"

# 2. Host tools in a venv: pybind11 (headers, CMake config), cmake >= 4.1 (CMP0190, below), ninja.
if ! "$HV/bin/python" -c 'import pybind11' 2>/dev/null || [ ! -x "$HV/bin/cmake" ] || [ ! -x "$HV/bin/ninja" ]; then
  "${HOST_PYTHON:-python3}" -m venv "$HV"
  "$HV/bin/pip" install pybind11 'cmake>=4.1' ninja >"$OUT/hostvenv.log" 2>&1 \
    || die "pip install pybind11 cmake ninja failed: $(tail -1 "$OUT/hostvenv.log")"
fi
export PATH=$HV/bin:$PATH

# 3. What scikit-build-core would use from pyproject.toml: name, build type, package dirs.
read -r NAME BTYPE PKGS < <("$HV/bin/python" - "$SRC" <<'EOF'
import os, sys, tomllib
root = sys.argv[1]
cfg = tomllib.load(open(os.path.join(root, "pyproject.toml"), "rb"))
sk = cfg.get("tool", {}).get("scikit-build", {})
name = cfg["project"]["name"].replace("-", "_")
pkgs = sk.get("wheel", {}).get("packages") or [p for p in (f"src/{name}", f"python/{name}", name)
                                               if os.path.isdir(os.path.join(root, p))][:1]
print(name, sk.get("cmake", {}).get("build-type", "Release"), *pkgs)
EOF
) || die "cannot read $SRC/pyproject.toml"
[ -n "$PKGS" ] || die "no Python package dir found in $SRC (tool.scikit-build.wheel.packages)"
BUILD=$OUT/build/$NAME LOG=$OUT/build/$NAME.log   # configure log; $BUILD.build.log: compiler output

# 4. Cross configure + build with aarch64 gcc. FindPython asks the target python itself, run under
#    qemu (CMP0190 NEW + emulator: CMake >= 4.1), so the module gets the aarch64 SOABI (with a host
#    python, CMake 4 ignores -DPython_SOABI when cross-compiling and names it _core.so); pybind11 runs
#    no python in its cross mode. The sysroot's pyconfig.h wrapper includes
#    <aarch64-linux-gnu/python3.11/pyconfig.h>, hence $SYSROOT/usr/include last on the include path.
grep -qs "^CMAKE_HOME_DIRECTORY:INTERNAL=$SRC\$" "$BUILD/CMakeCache.txt" || rm -rf "$BUILD"  # other SRC
for p in $PKGS; do rm -rf "${SITE:?}/$(basename "$p")"; done   # no stale package if the build fails
mkdir -p "$OUT/build"; t=$(date +%s%N)
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE="$BTYPE" \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  -DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER -DPYBIND11_USE_CROSSCOMPILING=ON \
  -DCMAKE_POLICY_DEFAULT_CMP0190=NEW -DCMAKE_CROSSCOMPILING_EMULATOR="qemu-aarch64;-L;$SYSROOT" \
  -DPython_EXECUTABLE="$SYSROOT/usr/bin/python3.11" -DPython_INCLUDE_DIR="$SYSROOT/usr/include/python3.11" \
  -DCMAKE_C_STANDARD_INCLUDE_DIRECTORIES="$SYSROOT/usr/include" \
  -DCMAKE_CXX_STANDARD_INCLUDE_DIRECTORIES="$SYSROOT/usr/include" \
  -Dpybind11_DIR="$("$HV/bin/python" -m pybind11 --cmakedir)" >"$LOG" 2>&1 \
  || die "CMake configure of $NAME for aarch64 failed: $(grep -m1 -A2 'CMake Error' "$LOG" | tr -s ' \n' ' ' | cut -c1-300)(log: $LOG)"
cmake --build "$BUILD" --parallel "${JOBS:-2}" -- -k 0 >"$BUILD.build.log" 2>&1 \
  || die "AArch64 build of $NAME failed ($(grep -c '^FAILED' "$BUILD.build.log") failed steps); first compile error: $( (grep -m1 'error:' "$BUILD.build.log" || grep -m1 '^FAILED' "$BUILD.build.log") | sed "s|$SRC/||") (log: $BUILD.build.log)"
echo "built $NAME for aarch64 in $(ms "$t") ms"

# 5. OUTDIR/site as in the wheel: the package dirs, then the module where install() puts it.
mkdir -p "$SITE"
for p in $PKGS; do cp -r "$SRC/$p" "$SITE/"; done
find "$SITE" -name __pycache__ -prune -exec rm -rf {} +
find "$SITE" -name '*.so' -exec rm -f {} +   # a developer's in-place (x86-64) build in the checkout
cmake --install "$BUILD" --prefix "$SITE" >>"$LOG" 2>&1 || die "cmake --install failed (log: $LOG)"
sos=(); for p in $PKGS; do sos+=("$SITE/$(basename "$p")"/*."$SOABI".so); done   # (nullglob)
[ ${#sos[@]} -gt 0 ] || die "no *.$SOABI.so was installed into the package dirs ($PKGS) in $SITE"
for so in "${sos[@]}"; do echo "  ${so#"$OUT"/}: $(file -b "$so" | cut -d, -f1-2)"; done

# 6. Check under qemu with the sysroot's python.
export PYTHONPATH=$SITE
t=$(date +%s%N)
if [ -n "$CHECK" ]; then
  "$OUT/python3.11-aarch64" "$CHECK" || die "$CHECK failed under qemu"
else
  "$OUT/python3.11-aarch64" - <<'EOF' || die "cnnfast check failed under qemu"
import platform
import numpy as np
import cnnfast
import cnnfast.functional as F
print("build_info:", cnnfast.build_info())
def pad(x, p): return np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
def ref_conv(x, w, b, p):  # float64 reference: y[n,k] = b[k] + sum_c,r,s w[k,c,r,s] xp[n,c,h+r,w+s]
    xp, (K, C, R, S) = pad(x, p), w.shape
    Ho, Wo = xp.shape[2] - R + 1, xp.shape[3] - S + 1
    y = np.zeros((x.shape[0], K, Ho, Wo)) + b[None, :, None, None]
    for r in range(R):
        for s in range(S): y += np.einsum("nchw,kc->nkhw", xp[:, :, r:r + Ho, s:s + Wo], w[:, :, r, s])
    return y
def ref_back(x, w, dy, p):
    xp, (K, C, R, S), (Ho, Wo) = pad(x, p), w.shape, dy.shape[2:]
    dxp, dw, dy = np.zeros_like(xp), np.zeros(w.shape), dy.astype(np.float64)
    for r in range(R):
        for s in range(S):
            dw[:, :, r, s] = np.einsum("nkhw,nchw->kc", dy, xp[:, :, r:r + Ho, s:s + Wo])
            dxp[:, :, r:r + Ho, s:s + Wo] += np.einsum("nkhw,kc->nchw", dy, w[:, :, r, s])
    return dxp[:, :, p:p + x.shape[2], p:p + x.shape[3]], dw, dy.sum(axis=(0, 2, 3))
def close(got, want):  # the tolerance of the project's tests (assert_close)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-4 * scale)
    return float(np.abs(got - want).max(initial=0.0)) / scale
rng = np.random.default_rng(0)
for N, C, H, W, K, R, S, p in [(3, 2, 7, 6, 4, 3, 2, 1), (4, 32, 13, 13, 64, 3, 3, 0), (5, 1, 28, 28, 32, 3, 3, 0)]:
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (0.3 * rng.standard_normal((K, C, R, S))).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    dy = rng.standard_normal((N, K, H + 2 * p - R + 1, W + 2 * p - S + 1)).astype(np.float32)
    errs = [close(F.conv2d(x, w, b, padding=p), ref_conv(x, w, b, p))]
    errs += [close(g, r) for g, r in zip(F.conv2d_backward(x, w, dy, padding=p), ref_back(x, w, dy, p))]
    assert F.conv2d_backward(x, w, dy, padding=p, input_grad=False)[0] is None
    print(f"conv2d + backward {(N, C, H, W, K, R, S, p)}: max scaled error {max(errs):.1e}")
print("cnnfast conv2d / conv2d_backward match the float64 reference on", platform.machine())
EOF
fi
echo "check passed under qemu in $(ms "$t") ms; use: PYTHONPATH=$SITE $OUT/python3.11-aarch64 ..."
