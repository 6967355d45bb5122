# featurelm developer entry points. `make serve` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test test-fast lint bench eval-live schema clean

# Re-install only when the project metadata changes; pip's wheel cache keeps
# the llama-cpp-python build (several minutes the first time) for later runs.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(BIN)/featurelm serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check engine serving evals tests
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

schema: install
	$(BIN)/featurelm schema > schemas/feature.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
