# The README's two commands: `make run` and `make test`. Both work on a fresh clone with
# nothing beside it; prerequisites: make and Python 3.11+ with venv/ensurepip (Debian/Ubuntu:
# python3-venv). They create .venv, install torch pinned by constraints.txt first (the CPU
# wheel), then this package with its dev extras (recbole, whose wheel ships MovieLens-100k, included).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt torch
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cimflow run

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

# ruff (style and likely bugs), mypy (types), lint-imports (the layer contract in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
