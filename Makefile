# The two commands a new user runs (see README):
#   make demo   install, then run the embedded default workflow (snakemake --cores all)
#   make test   install, then run the test suite
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test install

# The locks (requirements/*.lock, refreshed by scripts/lock.sh) are what gets installed.
$(VENV)/.installed: pyproject.toml scripts/install.sh scripts/locks.py requirements/cpu.lock requirements/cuda.lock
	VENV=$(VENV) bash scripts/install.sh
	touch $@

install: $(VENV)/.installed

demo: install
	snakemake --cores all

test: install
	python -m pytest -v -rs
