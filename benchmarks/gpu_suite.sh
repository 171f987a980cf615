#!/usr/bin/env bash
# The GPU suite (docs/design.md#6-benchmarks): one command on a bare GPU machine (no network).
#
#   bash benchmarks/gpu_suite.sh OUTDIR
#
# 1. build: amc_kernels._C in place for TORCH_CUDA_ARCH_LIST (default 9.0) with MAX_JOBS (16);
#    ptxas's registers and spills of every kernel into resources.log;
# 2. tests: the cuda, triton and CUDA-build tests (pytest -m "cuda or triton or cuda_build"),
#    without the Triton interpreter, on pytest-xdist workers when installed; `amc-kernels check`;
# 3. compute-sanitizer memcheck and racecheck over benchmarks/sanitizer_workload.py (every
#    variant of every op on the cuda backend, fp32 and bf16, forward and backward);
# 4. benchmarks: the headline cases first (supcon_loss and amc_loss, N = 32768, D = 128, bf16,
#    forward+backward), then every op's CUDA sweep in the time left; plots.
# OUTDIR receives suite.log (everything), build.log, info.log, resources.log, tests.log,
# check.log, memcheck.log, racecheck.log, bench.log, <gpu>.csv, plots/ and summary.txt. Each
# stage has a time box; the benchmarks start no case after SUITE_SECONDS (default 500) from the
# start, so the whole run fits in one 10-minute command on an H100.
# Environment: PYTHON (default python3), SUITE_SECONDS, TORCH_CUDA_ARCH_LIST, MAX_JOBS.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bash benchmarks/gpu_suite.sh OUTDIR" >&2
    exit 2
fi
PYTHON=${PYTHON:-python3}
started=$(date +%s)
"$PYTHON" - <<'EOF'
import sys

try:
    import torch
except ImportError as error:
    sys.exit(f"{sys.executable} cannot import torch ({error})")
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU present: gpu_suite.sh is meant for the GPU machines")
EOF

mkdir -p "$1"
out=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
exec > >(tee "$out/suite.log") 2>&1
unset TRITON_INTERPRET
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
deadline=$((started + ${SUITE_SECONDS:-500}))
left() { echo $((deadline - $(date +%s))); }
failed=0
has_module() { "$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)"; }

# `timed LIMIT LOG COMMAND...`: runs COMMAND into LOG within LIMIT seconds; sets `code`.
timed() {
    local limit=$1 log=$2
    shift 2
    set +e
    timeout "$limit" "$@" >"$log" 2>&1
    code=$?
    set -e
}

echo "== build: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS (build.log)"
build_started=$(date +%s)
timed 300 "$out/build.log" "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
if [[ $code -eq 0 ]] && "$PYTHON" -m amc_kernels info >"$out/info.log" 2>&1; then
    build="ok in $(($(date +%s) - build_started)) s; $(grep -m1 '^amc_kernels._C:' "$out/info.log" || echo '_C: ?')"
    "$PYTHON" - >"$out/resources.log" <<'EOF' || true
import json
from pathlib import Path

import amc_kernels

report = json.loads((Path(amc_kernels.__file__).parent / "_cuda_resources.json").read_text())
kernels = report["kernels"]
spill = max(max(k["spill_stores"], k["spill_loads"]) for k in kernels)
print(f"{len(kernels)} kernels for {report['arch_list']}: at most "
      f"{max(k['registers'] for k in kernels)} registers, {spill} spill bytes")
for k in sorted(kernels, key=lambda k: -k["registers"]):
    print(f"{k['registers']:>4} {k['spill_stores']:>5} {k['spill_loads']:>5} {k['stack_frame']:>5}"
          f"  {k['arch']}  {k['source']}  {k['kernel']}")
EOF
    build="$build; $(head -n 1 "$out/resources.log")"
else
    build="FAILED (see build.log, info.log)"
    failed=1
fi
echo "$build"

echo "== tests: cuda and triton (tests.log), amc-kernels check (check.log)"
if ! has_module pytest; then
    tests="not run: pytest is not installed"
    failed=1
else
    workers=()
    if has_module xdist; then workers=(-n 8); fi
    missing=$("$PYTHON" -c 'import importlib.util as u
print(" ".join(m for m in ("hypothesis", "expecttest", "pytorch_metric_learning") if u.find_spec(m) is None))')
    timed 240 "$out/tests.log" "$PYTHON" -m pytest -q -p no:cacheprovider "${workers[@]}" \
        -m "cuda or triton or cuda_build" python_tests
    tests=$(grep -E '(passed|failed|error)' "$out/tests.log" | tail -n 1 || true)
    if [[ $code -eq 124 ]]; then tests="timed out after 240 s (${tests:-no summary})"; fi
    if [[ $code -ne 0 ]]; then failed=1; fi
    if [[ -n $missing ]]; then tests="$tests; not installed here: $missing"; fi
fi
echo "$tests"
timed 120 "$out/check.log" "$PYTHON" -m amc_kernels check
check="$(tail -n 1 "$out/check.log") (exit $code)"
if [[ $code -ne 0 ]]; then failed=1; fi
echo "check: $check"

echo "== compute-sanitizer (memcheck.log, racecheck.log)"
sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
sanitize=()
for tool in memcheck racecheck; do
    if [[ ! -x $sanitizer ]]; then
        sanitize+=("$tool: not run, compute-sanitizer not found")
        continue
    fi
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timed 100 "$out/$tool.log" "$sanitizer" --tool "$tool" \
        --error-exitcode 99 "$PYTHON" benchmarks/sanitizer_workload.py
    errors=$(grep -m1 -E '(ERROR SUMMARY|RACECHECK SUMMARY).*' -o "$out/$tool.log" || echo "no summary")
    case $code in
        0) sanitize+=("$tool: clean ($errors)") ;;
        124) sanitize+=("$tool: stopped by its 100 s time box ($errors; see $tool.log)") ;;
        99) sanitize+=("$tool: FOUND ERRORS ($errors; see $tool.log)"); failed=1 ;;
        *) sanitize+=("$tool: FAILED (exit $code; see $tool.log)"); failed=1 ;;
    esac
done
printf '%s\n' "${sanitize[@]}"

echo "== benchmarks (bench.log)"
benches=()
bench() {  # bench NAME SECONDS bench_<op>.py options...
    local name=$1 share=$2
    shift 2
    if ((share < 10)); then
        benches+=("$name: not run, no time left")
        return
    fi
    echo "-- $name: ${share} s"
    set +e
    timeout $((share + 45)) "$PYTHON" "$@" --device cuda --time-budget "$share" --out "$out/" -q \
        >>"$out/bench.log" 2>&1
    local status=$?
    set -e
    case $status in
        0) benches+=("$name: ok") ;;
        124) benches+=("$name: stopped by the suite's time box (rows so far are kept)") ;;
        *) benches+=("$name: FAILED (exit $status, see bench.log)"); failed=1 ;;
    esac
}
headline=(--sizes 32768 --dims 128 --dtype bfloat16 --modes forward+backward --no-compile)
bench "supcon_loss headline" 60 benchmarks/bench_supcon_loss.py --variants supcon "${headline[@]}"
bench "amc_loss headline" 45 benchmarks/bench_amc_loss.py "${headline[@]}"
ops=(angular_distance gradcam saliency_mask class_activation_map cgc_loss supcon_loss amc_loss)
for i in "${!ops[@]}"; do
    bench "${ops[$i]}" $(($(left) / (${#ops[@]} - i))) "benchmarks/bench_${ops[$i]}.py" --sweep full
done

csv=$(find "$out" -maxdepth 1 -name '*.csv' | head -n 1)
plots="not drawn: no CSV"
if [[ -n $csv ]]; then
    if "$PYTHON" benchmarks/plot.py "$csv" --out "$out/plots" >/dev/null 2>>"$out/bench.log"; then
        plots="$(find "$out/plots" -name '*.png' | wc -l) PNGs in $out/plots"
    else
        plots="not drawn (matplotlib missing? see bench.log)"
    fi
fi

{
    echo
    echo "== gpu_suite.sh summary ($(($(date +%s) - started)) s)"
    "$PYTHON" -c 'import torch, triton
print(f"device:     {torch.cuda.get_device_name()} (torch {torch.__version__}, "
      f"triton {triton.__version__}, CUDA {torch.version.cuda})")' 2>/dev/null || true
    echo "build:      $build"
    echo "tests:      $tests"
    echo "check:      $check"
    for line in "${sanitize[@]}"; do echo "sanitizer:  $line"; done
    for line in "${benches[@]}"; do echo "bench:      $line"; done
    if [[ -n $csv ]]; then
        echo "csv:        $csv ($(($(wc -l <"$csv") - 1)) rows)"
    fi
    echo "plots:      $plots"
    echo "logs:       $out/{suite,build,info,resources,tests,check,memcheck,racecheck,bench}.log"
    if ((failed)); then echo "result:     FAILED"; else echo "result:     ok"; fi
} | tee "$out/summary.txt"
exit "$failed"
