# Two commands for a new user: `make demo` (train MMCAF-Net on the built-in
# Lung-PET-CT-Dx phantom) and `make test` (the whole test suite). Both create and
# reuse one local virtual environment in .venv; each installs only its own set:
# `make demo` requirements-demo.txt (CPU torch, the package, the trainer's extras),
# `make test` requirements-dev.txt (all of that plus the test, docs and lint tools).
# A stamp file per set records what is installed; editing a requirements file,
# constraints.txt or pyproject.toml reinstalls that set.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# --no-compile: no .pyc files for all of torch up front (modules compile on import)
PIP_INSTALL := $(PY) -m pip install --quiet --no-compile --disable-pip-version-check

.PHONY: demo test bench lint docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-demo: requirements-demo.txt constraints.txt pyproject.toml | $(PY)
	$(PIP_INSTALL) -r requirements-demo.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt constraints.txt pyproject.toml | $(PY)
	$(PIP_INSTALL) -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed-demo
	$(PY) examples/lung_pet_ct/train.py $(ARGS)

test: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/attention_speed.py $(ARGS)

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check mmscale tests benchmarks examples

docs: $(VENV)/.installed-dev
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
