# The two commands of the README: `make run` and `make test`. Everything else is a helper of theirs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint install unit integration bench translations clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: install, migrate, seed the demo shop when empty, train, and serve both APIs, a worker and beat.
run: install
	$(BIN)/segrec run

## lint: the import rules of pyproject.toml's [tool.importlinter] (shared never imports services, pure domain modules).
lint: install
	$(BIN)/lint-imports

## test: the whole suite on SQLite, and on PostgreSQL when it is reachable, with a real Redis (CI lints first).
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install
	$(BIN)/python -m pytest -q tests/integration

## bench: the benchmarks under tests/perf (long; not part of `make test`).
bench: install
	for script in tests/perf/bench_*.py; do $(BIN)/python -m tests.perf.$$(basename $$script .py) || exit 1; done

## translations: re-extract the console's strings into its catalogues and compile them (the .mo files are committed).
CONSOLE := services/segmentation/console
translations: install
	$(BIN)/pybabel extract -F $(CONSOLE)/babel.cfg -k lazy_gettext -o $(CONSOLE)/messages.pot $(CONSOLE)
	$(BIN)/pybabel update -i $(CONSOLE)/messages.pot -d $(CONSOLE)/translations --width 120
	$(BIN)/pybabel compile -d $(CONSOLE)/translations
	rm $(CONSOLE)/messages.pot

clean:
	rm -rf $(VENV) var build *.egg-info
