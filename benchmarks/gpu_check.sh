#!/usr/bin/env bash
# One check for a lent GPU machine (see DEVELOPERS.md / the device tool): install what is
# missing from carried wheels, run the `gpu` tests, run the latency benchmark, and leave
# the results in $OUT -- all within 8 minutes.
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]        # WHEEL_DIR default: .whl (skipped if absent)
#
# Results (at most 8 files, flat, so the device tool brings them all back):
#   $OUT/env.txt          GPU, driver, Python packages seen, what was installed
#   $OUT/gpu-tests.log    pytest -m gpu output (parity figures are printed with -s)
#   $OUT/latency.json     benchmarks/latency.py --synthetic default (every runtime available)
#   $OUT/latency.log      its progress log
#   $OUT/summary.txt      exit codes and timings of each step
# OUT defaults to benchmarks/results/gpu when unset.
#
# Wheels: the machine has no network. Missing packages (onnxruntime-gpu for the CUDA and
# TensorRT execution providers; tensorrt for the native engine) are installed from
# WHEEL_DIR/*.whl into /tmp/site (pip --no-index --no-deps), which goes first on
# PYTHONPATH. Note that the TensorRT libraries wheel alone is far larger than what one
# device call can carry (64 MiB): where it cannot travel, the `trt` and `ort_trt` tests
# and runtimes are skipped and reported as such, and torch_cuda (and ort_cuda, if
# onnxruntime-gpu came along) are still measured.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
OUT=${OUT:-$REPO/benchmarks/results/gpu}
mkdir -p "$OUT"
WHEELS=${1:-.whl}
PY=${PYTHON:-python3}
T0=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME TIMEOUT_S LOG CMD...: run with a deadline, record exit code and seconds
    local name=$1 limit=$2 log=$3
    shift 3
    local t=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $(( $(date +%s) - t )) s (limit $limit s)" | tee -a "$SUMMARY"
    return $rc
}

# -- 1. environment and wheels (<= 60 s) -------------------------------------------------
{
    echo "# $(date -u +%FT%TZ) on $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not available"
    echo "python: $($PY --version 2>&1) at $(command -v $PY)"
} > "$OUT/env.txt"

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "installing from $WHEELS: $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')" >> "$OUT/env.txt"
    step install 60 "$OUT/env.txt" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
else
    echo "no wheels in $WHEELS: using the machine's packages only" >> "$OUT/env.txt"
fi
"$PY" - >> "$OUT/env.txt" 2>&1 <<'EOF'
import importlib
for name in ("torch", "onnx", "onnxruntime", "tensorrt", "numpy", "typer", "cv2", "sklearn"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as err:  # missing or broken
        print(f"{name}: MISSING ({type(err).__name__}: {err})")
import torch, onnxruntime as ort
print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("onnxruntime providers:", ort.get_available_providers())
EOF

# -- 2. gpu tests (<= 240 s) -------------------------------------------------------------
step gpu-tests 240 "$OUT/gpu-tests.log" "$PY" -m pytest -m gpu tests/test_export.py -q -s -rs -p no:cacheprovider -o addopts=""

# -- 3. latency benchmark (whatever is left, <= 150 s) ----------------------------------------
LEFT=$(( 460 - ($(date +%s) - T0) ))
if [ "$LEFT" -gt 60 ]; then
    [ "$LEFT" -gt 150 ] && LEFT=150
    step latency "$LEFT" "$OUT/latency.log" "$PY" benchmarks/latency.py --synthetic default --seconds 2 --min-iters 50 \
        --out "$OUT/latency.json"
else
    echo "latency: skipped, only $LEFT s left" | tee -a "$SUMMARY"
fi

echo "total: $(( $(date +%s) - T0 )) s" | tee -a "$SUMMARY"
