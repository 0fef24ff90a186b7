# make demo: set up .venv (once) and render heatmaps of the bundled demo cells, offline.
# make test: set up .venv (once), lint (ruff, mypy, the import layers), then run the whole test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick lint format benchmark clean

# Reinstall only when a requirements file changed, so a second run installs nothing.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(PY) where_to_look.py demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

test: lint
	MPLBACKEND=Agg $(PY) -m pytest

test-quick: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -m "not slow"

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

benchmark: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/cam_speed.py
	$(PY) benchmarks/feature_speed.py
	$(PY) benchmarks/cli_start.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .mypy_cache .ruff_cache .hypothesis
