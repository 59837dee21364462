#!/usr/bin/env bash
# Builds the C++ reference client: examples/cpp/build.sh BUILD_DIR  ->  BUILD_DIR/tr0n_client
#
# Everything comes from package registries, nothing is installed by hand:
#   ONNX Runtime C/C++ headers  npm com.github.asus4.onnxruntime@0.4.9 (onnxruntime 1.29's headers,
#                               ORT_API_VERSION 29), its tarball pinned by sha256 below
#   libonnxruntime.so           the PyPI onnxruntime wheel of the active `python` (the C API is backward
#                               compatible: built against 1.29's headers, it runs on any newer library)
#   nlohmann/json               the PyPI package nlohmann-json==3.12.0 (header-only), in the active `python`
#   zlib                        the system's (zlib.h, -lz)
# Environment: TR0N_CPP_DOWNLOADS=DIR keeps the npm tarball in DIR (default: BUILD_DIR) so that several
# builds download it once; CXX (default g++).
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
BUILD=$(cd "$1" && pwd)
DOWNLOADS=${TR0N_CPP_DOWNLOADS:-$BUILD}
mkdir -p "$DOWNLOADS"
DOWNLOADS=$(cd "$DOWNLOADS" && pwd)
CXX=${CXX:-g++}
PYTHON=${PYTHON:-python}

NPM_PACKAGE=com.github.asus4.onnxruntime@0.4.9
TARBALL=$DOWNLOADS/com.github.asus4.onnxruntime-0.4.9.tgz
TARBALL_SHA256=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d  # 149,786,233 bytes
HEADERS_IN_TARBALL='package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/'

seconds() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(seconds)" 'BEGIN { printf "%.1f s", b - a }'; }
sha256_of() { "$PYTHON" -c 'import hashlib, sys; h = hashlib.sha256(); f = open(sys.argv[1], "rb")
for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

# 1. The ONNX Runtime headers, from the npm tarball (downloaded once, checked against its pinned sha256).
t=$(seconds)
if [[ -f $TARBALL ]]; then
  echo "npm tarball: $TARBALL (already downloaded)"
else
  command -v npm >/dev/null || { echo "error: npm is needed to download $NPM_PACKAGE" >&2; exit 1; }
  echo "npm tarball: downloading $NPM_PACKAGE (150 MB) into $DOWNLOADS"
  (cd "$DOWNLOADS" && npm pack "$NPM_PACKAGE" --pack-destination "$DOWNLOADS" --silent >/dev/null)
  echo "  downloaded in $(since "$t")"
fi
got=$(sha256_of "$TARBALL")
if [[ $got != "$TARBALL_SHA256" ]]; then
  echo "error: $TARBALL has sha256 $got, expected $TARBALL_SHA256 (delete it to download it again)" >&2
  exit 1
fi
echo "  sha256 $got: ok ($(stat -c %s "$TARBALL") bytes)"
INCLUDE=$BUILD/include/onnxruntime
if [[ ! -f $INCLUDE/.from-$TARBALL_SHA256 ]]; then
  t=$(seconds)
  rm -rf "$INCLUDE"
  mkdir -p "$INCLUDE"
  tar xzf "$TARBALL" -C "$INCLUDE" --strip-components=7 "$HEADERS_IN_TARBALL"
  touch "$INCLUDE/.from-$TARBALL_SHA256"
  echo "onnxruntime headers: extracted into $INCLUDE in $(since "$t")"
else
  echo "onnxruntime headers: $INCLUDE (already extracted)"
fi
echo "  $(grep -m1 '#define ORT_API_VERSION' "$INCLUDE/onnxruntime_c_api.h")"

# 2. nlohmann/json from the PyPI package in the active Python (its get_include() needs importlib_resources).
JSON_INCLUDE=$("$PYTHON" -c 'import os, nlohmann_json
print(os.path.join(os.path.dirname(nlohmann_json.__file__), "include"))' 2>/dev/null) || true
if [[ -z $JSON_INCLUDE || ! -f $JSON_INCLUDE/nlohmann/json.hpp ]]; then
  echo "error: nlohmann/json.hpp not found; install it with: $PYTHON -m pip install nlohmann-json==3.12.0" >&2
  exit 1
fi
JSON_VERSION=$(awk '/#define NLOHMANN_JSON_VERSION_(MAJOR|MINOR|PATCH) / {printf "%s%s", sep, $3; sep="."}' \
  "$JSON_INCLUDE/nlohmann/detail/abi_macros.hpp" 2>/dev/null || true)
echo "nlohmann/json: $JSON_INCLUDE (${JSON_VERSION:-version unknown})"

# 3. libonnxruntime from the onnxruntime wheel of the active Python (SONAME libonnxruntime.so.1).
ORT_LIB=$("$PYTHON" -c 'import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*")))
print(libs[0] if libs else "")') || true
if [[ -z $ORT_LIB ]]; then
  echo "error: no libonnxruntime.so.* in the onnxruntime package of $PYTHON (pip install onnxruntime)" >&2
  exit 1
fi
mkdir -p "$BUILD/lib"
ln -sfn "$ORT_LIB" "$BUILD/lib/libonnxruntime.so"
ln -sfn "$ORT_LIB" "$BUILD/lib/libonnxruntime.so.1"
echo "libonnxruntime: $ORT_LIB (onnxruntime $("$PYTHON" -c 'import onnxruntime; print(onnxruntime.__version__)'))"

# 4. Compile. -ffp-contract=off is required for bit-exactness: no fused multiply-add in the noise math.
t=$(seconds)
CMD=("$CXX" -std=c++17 -O2 -ffp-contract=off -Wall -Wextra
     -isystem "$INCLUDE" -isystem "$JSON_INCLUDE"
     "$HERE/tr0n_client.cpp" -o "$BUILD/tr0n_client"
     -L "$BUILD/lib" -lonnxruntime -lz -Wl,-rpath,"$BUILD/lib")
echo "compiling: ${CMD[*]}"
"${CMD[@]}"
echo "  compiled in $(since "$t")"
echo "built $BUILD/tr0n_client"
