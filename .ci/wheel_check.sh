#!/usr/bin/env bash
# The wheel as a user gets it (docs/design.md#8-build-and-wheels):
#   1. build the sdist, then the wheel from that sdist (python -m build --no-isolation), so the
#      sdist is proven to build offline, in a clean folder;
#   2. with CUDA kernels, check that the wheel's _C holds a cubin for each arch of
#      TORCH_CUDA_ARCH_LIST and PTX for its "+PTX" arch (amc_kernels/_elf.py; cuobjdump as well
#      where it is installed);
#   3. install the wheel into a fresh virtual environment beside the pinned torch
#      (requirements-dev.txt) and the test extras, from the configured package index;
#   4. there, from a folder outside the source tree: `amc-kernels info`, `amc-kernels check`,
#      `amc-kernels check --json`, and the test suite, importing amc_kernels from site-packages.
# Nothing is cached between runs: the work folder is fresh (removed at the end unless KEEP=1).
#
# Environment:
#   BUILD_PYTHON  the interpreter that builds: it needs torch, setuptools, wheel, build and
#                 ninja (default .venv/bin/python, made by `make build`)
#   VENV_PYTHON   the interpreter of the fresh environment (default: python3)
#   WORK          the work folder (default: a new temporary folder)
#   PYTEST_ARGS   extra pytest arguments (default: none: the whole suite)
#   and the build switches of setup.py: AMC_KERNELS_SKIP_CUDA, TORCH_CUDA_ARCH_LIST, MAX_JOBS...
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_PYTHON=${BUILD_PYTHON:-$ROOT/.venv/bin/python}
[[ $BUILD_PYTHON != */* ]] || BUILD_PYTHON=$(realpath -s "$BUILD_PYTHON")  # the steps change folder
VENV_PYTHON=${VENV_PYTHON:-python3}
WORK=${WORK:-$(mktemp -d /tmp/amc-wheel-check.XXXXXX)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0+PTX}
export AMC_KERNELS_LOCAL_VERSION=1  # the wheel built from the sdist still names its build
START=$SECONDS
step() { echo; echo "=== [$((SECONDS - START)) s] $*"; }
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

step "build the sdist and, from it, the wheel (into $WORK/dist)"
"$BUILD_PYTHON" -m build --no-isolation --outdir "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/amc_kernels-*.whl)
mkdir -p "$WORK/unpacked" && (cd "$WORK/unpacked" && "$BUILD_PYTHON" -m zipfile -e "$WHEEL" .)
echo "wheel: $(basename "$WHEEL") ($(du -h "$WHEEL" | cut -f1))"
ls -l "$WORK"/unpacked/amc_kernels/_C* "$WORK"/unpacked/amc_kernels/*.json
cat "$WORK/unpacked/amc_kernels/_build_info.json"

if grep -q '"cuda_kernels": true' "$WORK/unpacked/amc_kernels/_build_info.json"; then
  step "the CUDA code images in the wheel's _C (cubins and PTX per arch)"
  SO=$(ls "$WORK"/unpacked/amc_kernels/_C*.so)
  # amc_kernels/_elf.py reads the .nv_fatbin section as `cuobjdump --list-elf --list-ptx` does;
  # cuobjdump itself is not part of every toolkit install (not of CI's), so it is a cross-check.
  "$BUILD_PYTHON" - "$ROOT/amc_kernels/_elf.py" "$SO" "$TORCH_CUDA_ARCH_LIST" <<'EOF_PY'
import runpy, sys
from collections import Counter
elf = runpy.run_path(sys.argv[1])
images = Counter(elf["read_cuda_images"](sys.argv[2]))
for image, count in sorted(images.items()):
    print(f"  {image.kind} {image.arch}: {count} images")
for arch in sys.argv[3].split(";"):
    sm = "sm_" + arch.removesuffix("+PTX").replace(".", "")
    wanted = [("elf", sm)] + ([("ptx", sm)] if arch.endswith("+PTX") else [])
    for kind, arch_name in wanted:
        if not any(i.kind == kind and i.arch == arch_name for i in images):
            sys.exit(f"no {kind} image for {arch_name} in the wheel's _C")
EOF_PY
  if command -v cuobjdump >/dev/null; then
    ELF=$(cuobjdump --list-elf "$SO")
    for arch in sm_80 sm_90; do
      grep -q "$arch" <<<"$ELF" || { echo "cuobjdump: no $arch code in _C" >&2; exit 1; }
    done
    echo "cuobjdump --list-elf agrees: sm_80 and sm_90 cubins"
  fi
fi

step "a fresh virtual environment with the wheel and the pinned torch"
TORCH_PINS=$(grep -E '^(torch|torchvision)==' "$ROOT/requirements-dev.txt" | cut -d' ' -f1)
env -u PYTHONPATH "$VENV_PYTHON" -m venv "$WORK/venv"
VENV=$WORK/venv/bin
env -u PYTHONPATH "$VENV/python" -m pip install --quiet --no-cache-dir \
  "$WHEEL[test,train,bench]" $TORCH_PINS

step "amc-kernels from the installed wheel, outside the source tree"
mkdir -p "$WORK/run"
# The tests, the benchmark scripts some of them run, and pytest's settings; no amc_kernels/.
cp -r "$ROOT/python_tests" "$ROOT/benchmarks" "$ROOT/pyproject.toml" "$WORK/run/"
cd "$WORK/run"
unset PYTHONPATH
"$VENV/python" - "$WORK/venv" <<'EOF'
import sys
from importlib.metadata import version
from pathlib import Path

import amc_kernels

where = Path(amc_kernels.__file__).resolve()
print(f"amc_kernels {version('amc-kernels')} imported from {where}")
assert Path(sys.argv[1]).resolve() in where.parents, "not the installed wheel"
assert amc_kernels._extension.available(), amc_kernels._extension.load_error()
EOF
"$VENV/amc-kernels" info
"$VENV/amc-kernels" check
"$VENV/amc-kernels" check --json >"$WORK/check.json"
"$VENV/python" -c "import json, sys; r = json.load(open(sys.argv[1])); print('check --json:', r['passed'], 'passed,', r['failed'], 'failed'); sys.exit(not r['ok'])" "$WORK/check.json"

step "the test suite against the installed wheel"
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
"$VENV/python" -m pytest python_tests -p no:cacheprovider -q ${PYTEST_ARGS:-}

step "done: the wheel passed (total $((SECONDS - START)) s)"
