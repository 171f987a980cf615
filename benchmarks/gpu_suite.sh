#!/usr/bin/env bash
# The GPU suite (docs/design.md#6-benchmarks): one command on a GPU machine, no network needed.
#
#   bash benchmarks/gpu_suite.sh OUTDIR
#
# 1. builds amc_kernels._C in place (pip install --no-build-isolation --no-deps -e .);
# 2. runs the whole test suite on the GPU, without the Triton interpreter;
# 3. runs every benchmarks/bench_<op>.py at GPU sizes, each within its share of the time left;
# 4. plots the CSV; prints a short summary last.
# OUTDIR receives suite.log (everything), build.log, info.log, tests.log, bench.log,
# <gpu>.csv, plots/ and summary.txt. Time boxes keep the whole run under 9 minutes on an H100:
# the benchmarks stop starting cases SUITE_SECONDS (default 450) after the start.
# Environment: PYTHON (default python3), SUITE_SECONDS.
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
export PIP_DISABLE_PIP_VERSION_CHECK=1
deadline=$((started + ${SUITE_SECONDS:-450}))
left() { echo $((deadline - $(date +%s))); }
failed=0

echo "== build: pip install --no-build-isolation --no-deps -e . (build.log)"
if timeout 300 "$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 \
    && "$PYTHON" -m amc_kernels info >"$out/info.log" 2>&1; then
    build="ok; $(grep -m1 '^amc_kernels._C:' "$out/info.log" || echo 'amc_kernels._C: ?')"
else
    build="FAILED (see build.log, info.log)"
    failed=1
fi
echo "$build"

echo "== tests: python -m pytest (tests.log)"
missing=$("$PYTHON" -c 'import importlib.util as u
print(" ".join(m for m in ("pytest", "hypothesis", "expecttest") if u.find_spec(m) is None))')
if [[ " $missing " == *" pytest "* ]]; then
    tests="not run: pytest is not installed"
    failed=1
else
    budget=$(($(left) - 150))  # leave the benchmarks at least 150 s
    budget=$((budget > 300 ? 300 : budget))
    budget=$((budget < 30 ? 30 : budget))
    set +e
    timeout "$budget" "$PYTHON" -m pytest -q -p no:cacheprovider >"$out/tests.log" 2>&1
    code=$?
    set -e
    tests=$(grep -E '(passed|failed|error)' "$out/tests.log" | tail -n 1 || true)
    if [[ $code -eq 124 ]]; then
        tests="timed out after ${budget} s (${tests:-no summary})"
    fi
    if [[ $code -ne 0 ]]; then
        failed=1
    fi
    if [[ -n $missing ]]; then
        tests="$tests; not installed here: $missing (their tests cannot run)"
    fi
fi
echo "$tests"

echo "== benchmarks at GPU sizes (bench.log)"
ops=(angular_distance amc_loss supcon_loss gradcam class_activation_map cgc_loss saliency_mask)
benches=()
for i in "${!ops[@]}"; do
    op=${ops[$i]}
    share=$(($(left) / (${#ops[@]} - i)))
    if ((share < 10)); then
        benches+=("$op: not run, no time left")
        continue
    fi
    echo "-- $op: ${share} s"
    set +e
    timeout $((share + 45)) "$PYTHON" "benchmarks/bench_$op.py" --device cuda --sweep full \
        --time-budget "$share" --out "$out/" -q >>"$out/bench.log" 2>&1
    code=$?
    set -e
    case $code in
        0) benches+=("$op: ok") ;;
        124) benches+=("$op: stopped by the suite's time box (rows so far are kept)") ;;
        *) benches+=("$op: FAILED (exit $code, see bench.log)"); failed=1 ;;
    esac
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
    for line in "${benches[@]}"; do
        echo "bench:      $line"
    done
    if [[ -n $csv ]]; then
        echo "csv:        $csv ($(($(wc -l <"$csv") - 1)) rows)"
    fi
    echo "plots:      $plots"
    echo "logs:       $out/{suite,build,info,tests,bench}.log"
    if ((failed)); then echo "result:     FAILED"; else echo "result:     ok"; fi
} | tee "$out/summary.txt"
exit "$failed"
