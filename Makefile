# The README's two commands: `make run` and `make test`. Both work on a fresh clone with
# nothing beside it; prerequisites: make and Python 3.11+ with venv/ensurepip (Debian/Ubuntu:
# python3-venv). They create .venv, install torch pinned by constraints.txt first (the CPU
# wheel), then this package with its dev extras, then the recbole wheel (MovieLens-100k).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt torch
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	# MovieLens-100k ships inside recbole's wheel (its terms forbid copying it here). recbole's own
	# requirements are not needed to read it, and its ray<=2.6.3 pin has no wheel for Python >= 3.12
	$(BIN)/pip install --no-deps recbole==1.2.1
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cimflow run

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
