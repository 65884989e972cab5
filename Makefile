# vaerun: two commands do everything from a fresh clone: `make train` and `make test`.
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
STAMP   := $(VENV)/.installed

.PHONY: install train test test-all bench clean

install: $(STAMP)

# Each stamp is redone only when pyproject.toml changes (the stamp is older than it).
# `make train` needs only the runtime; `make install`/`make test` add the dev extras.
$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: $(RUNTIME)
	$(BIN)/vaerun train $(ARGS)

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ARGS)

test-all: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "" $(ARGS)

# Speed benchmarks on MNIST (../shared/data, or DATA=...): prints a table, writes
# benchmarks/results.json and docs/performance.md. About 6 minutes on 2 CPU cores (11 on the earlier, slower machine).
DATA ?= ../shared/data
bench: install
	$(BIN)/python benchmarks/bench.py --data $(DATA) $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info vaerun.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
