# Two commands do all the set-up on a fresh machine (Python >= 3.10, package registries reachable):
#   make run   - create .venv, install with the pinned constraints, fetch the data packs, run the main job
#   make test  - the same install, then the quality gates (lint, typecheck) and the whole test suite
#   make test-fast - lint and the tests that are not slow and start neither Flower nor Ray (for development)
#   make demo  - the teaching demo: runs/demo/demo.html
# Both are idempotent: a second run reuses .venv and the verified data cache.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA_PACKS ?= mnist cifar100 cifar10

.PHONY: install data run lint typecheck test test-fast demo clean-venv

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,flower,dp,ray]'
	touch $(STAMP)

data: $(STAMP)
	$(PY) scripts/fetch_data.py $(DATA_PACKS)

run: data
	$(PY) scripts/invert.py --labels ilrg

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

test: data lint typecheck
	$(PY) -m pytest

test-fast: data lint
	$(PY) -m pytest -m "not slow and not flower and not ray"

demo: data
	$(PY) scripts/demo.py --out runs/demo

clean-venv:
	rm -rf $(VENV)
