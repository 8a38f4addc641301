# fieldlink — the two commands are `make run` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup setup-test run test bench lint clean

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh runtime
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed tests/node/package-lock.json
	bash scripts/setup.sh test
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

## run the hub with its embedded broker and 5 simulated devices; free ports are chosen if the defaults are taken
run: setup
	$(VENV)/bin/fieldlink up --simulate 5 --http-port auto --mqtt-port auto $(ARGS)

## install everything the suite needs (server binaries included) and run every test
test: setup-test
	$(VENV)/bin/ruff check src
	$(VENV)/bin/mypy
	$(PY) -m pytest $(ARGS)

bench: setup-test
	$(VENV)/bin/fieldlink bench $(ARGS)

lint: setup-test
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
