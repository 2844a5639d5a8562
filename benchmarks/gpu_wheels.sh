#!/usr/bin/env bash
# Download, here, the wheels of the packages selfsup needs that a GPU machine without internet may lack, into .whl/
# (ignored by git), for benchmarks/gpu_check.sh to install there. Python 3.12 on x86-64 Linux by default.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
mkdir -p .whl
for pkg in kornia kornia_rs pot; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$pkg"
done
ls -1 .whl
