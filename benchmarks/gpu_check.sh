#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py says what it runs), at most 9 minutes on one H100:
#
#   benchmarks/gpu_check.sh              # on the GPU machine; writes benchmarks/results/<device>-<date>.md
#   benchmarks/gpu_check.sh --tiny       # the CPU rehearsal (a minute), as the tests run it
#   benchmarks/gpu_check.sh --minutes 6  # another budget
#
# It needs the CIFAR-10 JPEG copy at ../shared/data/cifar10-jpeg.tar.gz or .data/cifar10-jpeg.tar.gz (or --data),
# and the project's Python packages. Where some are missing (a GPU machine without internet), carry their wheels in
# .whl/ (benchmarks/gpu_wheels.sh downloads them here): they are installed into /tmp/site first.
#
# On a lent GPU machine that only gets the working tree (tracked files plus carried ignored folders), prepare here:
#   benchmarks/gpu_wheels.sh                                   # .whl/: kornia, kornia_rs, POT for Python 3.12 (39 MB)
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/   # 19 MB
# then run `bash benchmarks/gpu_check.sh --out "$OUT"` there carrying .whl and .data (about 61 MB with the tree),
# with a time limit of 600 s (the check itself ends within its 9 minutes); copy the <device>-<date>.md and .json
# that come back into benchmarks/results/ and commit them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing the carried wheels in .whl/ failed" >&2; exit 2; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
