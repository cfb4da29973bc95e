# The two commands of the README: `make run` (set up and start the dashboard on the embedded
# default) and `make test` (set up and pass the tests). Everything else is a helper of those.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup setup-dev system-deps bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime

setup-dev: $(VENV)/.dev system-deps

# Debian's chromium (+ driver) for the browser tests and CJK fonts for readable screenshots.
system-deps:
	@bash .ci/system-deps

run: setup
	$(BIN)/python app.py

test: setup-dev
	$(BIN)/python -m pytest -p no:cacheprovider

bench: setup-dev
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) data/serving data/*.duckdb data/*.db data/*.wal
