# The README's two commands: `make run` and `make test`. Both work on a fresh machine
# with nothing but Python: they create .venv, install torch pinned by constraints.txt
# first (the CPU wheel), then this package with its dev extras.
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
	# MovieLens-100k ships inside recbole's wheel; its dependencies are not needed (and would pull CUDA torch)
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
