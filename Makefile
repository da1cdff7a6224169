# The two commands (README): `make train` and `make test`. Both set up the virtualenv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl

.PHONY: setup train test test-slow lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "[1/3] creating the virtualenv $(VENV)"
	python3 -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip
	@echo "[2/3] installing torch 2.13.0 (the CPU wheel; see README, set-up)"
	$(PY) -m pip install --progress-bar on torch==2.13.0
	@echo "[3/3] installing metarl and its dependencies (editable, with dev, baselines, ray and metaworld extras)"
	$(PY) -m pip install --progress-bar on -e ".[dev,baselines,ray,metaworld]"
	@echo "      and metaworld 3.1.1 without its mujoco==3.3.0 pin (metarl runs it on MuJoCo 4; docs/ray_and_metaworld.md)"
	$(PY) -m pip install --progress-bar on --no-deps metaworld==3.1.1
	touch $@
	@echo "set-up done: $(VENV)"

train: setup  ## short meta-training run on the default config (2D navigation)
	$(VENV)/bin/metarl train --config configs/navigation2d.yaml --run-dir runs/quickstart --overwrite

test: setup  ## the default (fast) test suite
	$(PY) -m pytest

test-slow: setup  ## heavier end-to-end tests
	$(PY) -m pytest -m slow

lint: setup  ## ruff lint and format check, mypy on the library and the benchmarks
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
