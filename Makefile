# Two commands for a fresh machine: `make test` and `make demo`. Each creates .venv when it is
# missing and installs the pinned development set. `make demo` builds amc_kernels._C in place
# and runs the demo; `make test` builds the sdist and the wheel from it, installs the wheel in a
# fresh environment beside the pinned torch, and runs `amc-kernels check` and the whole test
# suite against that installed wheel (.ci/wheel_check.sh). `make test-dev` runs the suite on
# the in-place build (quicker while editing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUILT := $(VENV)/.built
SOURCES := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' 2>/dev/null)

.PHONY: test test-dev demo lint build wheel sdist wheel-check clean

test: wheel-check

test-dev: $(BUILT)
	$(PY) -m pytest

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, so the CPU demo stays
# fast when another process shares the cores (spinning threads slowed it down 20 times there).
demo: $(BUILT)
	$(VENV)/bin/amc-kernels info
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/amc-kernels compare --dataset shapes --losses ce,amc,cgc --out out/demo

lint: $(INSTALLED)
	$(VENV)/bin/ruff check amc_kernels python_tests benchmarks setup.py

build: $(BUILT)

# dist/amc_kernels-<version>+<cpu|cuNNN>.torch<X.Y>-cp310-abi3-manylinux_*.whl, against the torch of
# .venv: the CPU kernels, and the CUDA kernels for TORCH_CUDA_ARCH_LIST (default 8.0;9.0+PTX)
# when a toolkit is found (docs/design.md#8-build-and-wheels).
wheel: $(INSTALLED)
	$(PY) -m build --wheel --no-isolation

sdist: $(INSTALLED)
	$(PY) -m build --sdist --no-isolation

# The sdist, the wheel built from it, and that wheel installed into a fresh environment beside
# the pinned torch: `amc-kernels check` and the test suite run there (.ci/wheel_check.sh).
wheel-check: $(INSTALLED)
	BUILD_PYTHON=$(PY) .ci/wheel_check.sh

$(INSTALLED): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(BUILT): $(INSTALLED) $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build dist *.egg-info amc_kernels/_C*.so amc_kernels/_build_info.json $(BUILT)
