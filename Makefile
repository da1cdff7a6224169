# The two commands (README): `make train` and `make test`. Both set up the virtualenv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl

.PHONY: setup train test test-slow bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0   # the CPU wheel; see README "Set-up"
	$(PY) -m pip install --quiet -e ".[dev,baselines]"
	touch $@

train: setup  ## short meta-training run on the default config (2D navigation)
	$(PY) scripts/train.py --config configs/navigation2d.yaml --output-dir runs/quickstart

test: setup  ## the default (fast) test suite
	$(PY) -m pytest

test-slow: setup  ## heavier end-to-end tests
	$(PY) -m pytest -m slow
