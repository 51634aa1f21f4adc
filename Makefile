# Two commands do all the set-up on a fresh machine (Python >= 3.10, package registries reachable):
#   make run   - create .venv, install with the pinned constraints, fetch the data packs, run the main job
#   make test  - the same install, then the whole test suite
#   make demo  - the teaching demo: runs/demo/demo.html
# Both are idempotent: a second run reuses .venv and the verified data cache.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA_PACKS ?= mnist cifar100 cifar10

.PHONY: install data run test demo clean-venv

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

test: data
	$(PY) -m pytest

demo: data
	$(PY) scripts/demo.py --out runs/demo

clean-venv:
	rm -rf $(VENV)
