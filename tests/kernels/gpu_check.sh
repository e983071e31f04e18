#!/usr/bin/env bash
# Every GPU check of the CUDA fast path in one go (expected 5-8 minutes on an H100/H200; the
# per-step time limits below add up to 9.5 minutes, so one 10-minute device call always returns):
#
#   1. tests/kernels (the GPU tests run; the CPU ones too);
#   2. the conformance suite on CuPy arrays, and on torch CUDA tensors (fast path);
#   3. compute-sanitizer memcheck, racecheck, initcheck and synccheck on tests/kernels/sanitize.py;
#   4. the benchmark (GPT-2 124M and the 1e9-element set) with copy and norm-pass bandwidths.
#
# Run from the repository root in an environment with the package installed
# (pip install -e ".[cupy,torch,test]" with a CUDA build of torch):
#
#   bash tests/kernels/gpu_check.sh            # logs in ./gpu-check-logs
#   OUT=/some/dir bash tests/kernels/gpu_check.sh
#
# Each step has a time limit; the script goes on after a failure and exits 1 if any step
# failed (2 when there is no GPU at all). PYTHON picks the interpreter (default: python).
set -u
OUT=${OUT:-$(pwd)/gpu-check-logs}
PY=${PYTHON:-python}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

if ! "$PY" -c "import adagc.backends.cupy" 2>"$OUT/import.log"; then
    note "$PY cannot import adagc.backends.cupy (see $OUT/import.log): pip install -e '.[cupy,torch,test]'"
    exit 2
fi
if ! "$PY" -c "import sys, adagc.backends.cupy as c; sys.exit(0 if c.device_available() else 1)"; then
    note "no CUDA device visible to CuPy: nothing to check"
    exit 2
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import cupy, sys; p = cupy.cuda.runtime.getDeviceProperties(0); print(p['name'].decode() if isinstance(p['name'], bytes) else p['name'], 'cupy', cupy.__version__, 'python', sys.version.split()[0])" >"$OUT/device.txt" 2>&1
note "device: $(cat "$OUT/device.txt")"

status=0
step() {  # step NAME LIMIT_SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        note "ok      $name ($((SECONDS - t0)) s)"
    else
        note "FAILED  $name (exit $?, $((SECONDS - t0)) s): see $OUT/$name.log"
        status=1
    fi
}

step kernel-tests 140 "$PY" -m pytest tests/kernels -q -rs -p no:cacheprovider
step conformance-cupy 90 "$PY" -m adagc.conformance --backend cupy -- -q -p no:cacheprovider
step conformance-torch-cuda 70 "$PY" -m adagc.conformance --backend torch --device cuda -- -q -p no:cacheprovider

SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
if [ -x "$SANITIZER" ]; then
    for tool in memcheck racecheck initcheck synccheck; do
        step "sanitizer-$tool" 40 "$SANITIZER" --tool "$tool" --error-exitcode 1 "$PY" tests/kernels/sanitize.py
    done
else
    note "SKIPPED sanitizers: compute-sanitizer not found (set CUDA_HOME)"
    status=1
fi

step bench 110 "$PY" -m adagc.bench --backend cupy --sets gpt2,big --repeats 15 --quiet
grep -E "^(gpt2|big)|^#" "$OUT/bench.log" >>"$SUMMARY" 2>/dev/null || true

note "logs: $OUT"
exit $status
