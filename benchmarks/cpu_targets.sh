#!/usr/bin/env bash
# The CPU targets of the C++ kernels (issue 5), measured side by side with the harness:
# fp32, forward+backward, every provider of a target in one run, rows appended to OUT.
#
#   bash benchmarks/cpu_targets.sh [OUT] [--largest]
#
# OUT: a CSV file or a folder (default benchmarks/results/, i.e. <folder>/cpu-<cpu>.csv).
# --largest adds the 16 GiB study of supcon_loss (about 25 minutes on 2 cores): the reference at
# 13312 and 14336 samples × 2 views (their peaks bracket 16 GiB) and cpp at 8 × 14336.
# Environment: PYTHON (default python3). Run it on an otherwise idle machine.
set -euo pipefail

OUT=benchmarks/results/
LARGEST=0
for arg in "$@"; do
    case "$arg" in
        --largest) LARGEST=1 ;;
        *) OUT=$arg ;;
    esac
done
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."

bench() {
    "$PYTHON" -m amc_kernels bench --device cpu --dtype float32 --modes forward+backward \
        --max-ms 1e9 --out "$OUT" "$@"
}

bench --op supcon_loss --variants supcon --sizes 4096 --dims 128 --compile \
    --providers reference,reference+compile,cpp,pml-SupConLoss
bench --op amc_loss --sizes 8192 --dims 128 --compile --providers reference,reference+compile,cpp
bench --op angular_distance --variants self --sizes 4096 --dims 128 --compile \
    --providers reference,reference+compile,cpp
bench --op gradcam --variants mean-14 --sizes 64 --dims 512 --compile \
    --providers reference,reference+compile,cpp
bench --op cgc_loss --sizes 64 --dims 7 --providers reference,cpp  # no compile: see bench_cgc_loss

if [[ $LARGEST == 1 ]]; then
    largest() {
        bench --op supcon_loss --variants supcon --dims 128 --min-time 0 --case-timeout 3000 "$@"
    }
    largest --sizes 13312,14336 --providers reference
    largest --sizes 114688 --providers cpp
fi
