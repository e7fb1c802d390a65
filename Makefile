# Two commands for a new user: `make demo` (train MMCAF-Net on the built-in
# Lung-PET-CT-Dx phantom) and `make test` (the whole test suite). Both create and
# reuse a local virtual environment in .venv with the pinned development install.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench lint docs clean

$(VENV)/.installed: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/lung_pet_ct/train.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(PY) benchmarks/attention_speed.py $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check mmscale tests benchmarks examples

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

docs: $(VENV)/.installed
	$(PY) -m mkdocs build --strict --site-dir site
