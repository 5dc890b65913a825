#!/usr/bin/env bash
# Build with CUDA, run the whole test suite (GPU tests included) and the benchmarks on a CUDA
# machine, in one go. Logs go to $OUT (default ./gpu-run). Usage: bash benchmarks/run_on_gpu.sh [bench...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-run}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
t0=$(date +%s)
$PY -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
grep -E '^ *autogaze_ext:' "$OUT/build.log"
echo "build: $(( $(date +%s) - t0 ))s"
$PY -c 'import autogaze_ext.ops as o; print(o.build_info())'
t1=$(date +%s)
$PY -m pytest -q -s -p no:cacheprovider -m cuda tests 2>&1 | tee "$OUT/pytest-cuda.log" | grep -E "passed|failed|FAILED|Error|µs|us\b" | tail -40
echo "cuda tests: $(( $(date +%s) - t1 ))s"
for b in "${@:-bench_gaze}"; do
  $PY "benchmarks/$b.py" 2>&1 | tee "$OUT/$b.log"
done
