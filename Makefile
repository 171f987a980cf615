# Two commands for a fresh machine: `make test` and `make demo`. Each creates .venv when it is
# missing, installs the pinned development set, builds amc_kernels._C in place, then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUILT := $(VENV)/.built
SOURCES := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' 2>/dev/null)

.PHONY: test demo lint build clean

test: $(BUILT)
	$(PY) -m pytest

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, so the CPU demo stays
# fast when another process shares the cores (spinning threads slowed it down 20 times there).
demo: $(BUILT)
	$(VENV)/bin/amc-kernels info
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/amc-kernels compare --dataset shapes --losses ce,amc,cgc --out out/demo

lint: $(INSTALLED)
	$(VENV)/bin/ruff check amc_kernels python_tests benchmarks setup.py

build: $(BUILT)

$(INSTALLED): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(BUILT): $(INSTALLED) $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build *.egg-info amc_kernels/_C*.so $(BUILT)
