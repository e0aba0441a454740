# Lianxin (连心) — the two front-door commands are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: up test test-main test-nameko venv proto proto-check lint demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Start the embedded federation (6 nodes + national simulator) on loopback; Ctrl-C stops it.
up: venv
	$(BIN)/lianxin up

## Every test session: the main (grpcio) session, then the nameko session under eventlet.
test: venv test-main test-nameko

# A crash of the test process (a signal in a C extension) is reported last: the test and its stack.
test-main: venv
	@rm -rf var/crash
	LIANXIN_CRASH_DIR=var/crash $(BIN)/python -m pytest -p no:pytest_nameko -p no:cacheprovider tests --ignore=tests/nameko -q -rfEs $(PYTEST_ARGS) \
	  || { status=$$?; $(BIN)/python -m tests.support.crash var/crash; exit $$status; }

test-nameko: venv
	$(BIN)/python -m tests.eventlet_pytest -p no:cacheprovider tests/nameko -q -rfEs $(PYTEST_ARGS)

## Regenerate the Python protobuf modules into gen/python (the one place).
proto: venv
	$(BIN)/python scripts/gen_proto.py

proto-check: venv
	$(BIN)/python scripts/gen_proto.py --check

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services tests
	$(BIN)/hadolint Dockerfile

demo: venv
	$(BIN)/lianxin demo

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
