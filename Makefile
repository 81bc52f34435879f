# The two commands of the README: `make run` and `make test`. Everything else is a helper of theirs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements/lock.txt
RUNTIME_LOCK := requirements/runtime.txt
COMPILE := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --no-header --annotation-style line --quiet

.PHONY: run test lint install unit integration bench translations lock openapi clean

# Installs exactly the pinned versions, then segrec itself without dependencies; check_lock.py fails
# (naming what is missing) when pyproject.toml declares something the lock does not hold: run `make lock`.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python requirements/check_lock.py dev local
	touch $(STAMP)

install: $(STAMP)

## lock: regenerate the pinned versions from pyproject.toml (after adding or changing a dependency).
##       requirements/lock.txt: runtime + dev + local (make, CI); requirements/runtime.txt: the image's.
lock:
	test -x $(BIN)/uv || { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); $(BIN)/python -m pip install --quiet uv; }
	$(COMPILE) --extra dev --extra local -o $(LOCK)
	$(COMPILE) -o $(RUNTIME_LOCK)

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

## openapi: rewrite docs/openapi/*.json from the apps (a test fails when they drift).
openapi: install
	$(BIN)/python -m tests.openapi_documents --write

## bench: the benchmarks under tests/perf (long; not part of `make test`). Needs `pip install -e .[bench]`.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
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
