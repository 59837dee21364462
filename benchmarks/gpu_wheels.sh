#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored through .git/info/exclude) the few wheels that the lent GPU machine's
# image lacks for benchmarks/gpu_session.sh: open_clip (ViT pipelines), ftfy + wcwidth (its text cleaning)
# and polygraphy (imported by the TensorRT tests). That machine has no network and Python 3.12; every wheel
# here is pure Python or abi3 x86-64. Run it once, on a machine with pip and PyPI, before the device call:
#     bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=("open_clip_torch==3.3.0" "ftfy==6.3.1" "wcwidth==0.9.4" "polygraphy==0.53.6")  # the versions CI tests with
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "${WHEELS[@]}"
du -sh .whl && ls .whl
