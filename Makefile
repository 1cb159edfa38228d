# Set-up and entry points. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CLIM := $(VENV)/bin/clim

.PHONY: demo inspect test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned here (pyproject keeps ranges so users' own installs work).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# `make` does not put $(VENV)/bin on your PATH: run clim as $(CLIM) (the demo's "next:" line does), or
# `. $(VENV)/bin/activate` first to type plain `clim`.
demo: $(STAMP)
	$(PY) -m clim demo --out runs/demo
	@echo "clim is $(CLIM) (not on PATH; '. $(VENV)/bin/activate' puts it there)"

inspect: $(STAMP)
	$(CLIM) inspect runs/demo

test: $(STAMP)
	# two workers: the suite is mostly single-threaded processes (OMP_NUM_THREADS=1), so 2 cores halve it
	$(PY) -m pytest -n 2

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/throughput.py --quick

clean:
	rm -rf runs .pytest_cache
