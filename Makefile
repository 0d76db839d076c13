# servelane: `make run` runs the whole stack (servelane up examples/), `make test` runs the test suite, `make bench` the benchmarks.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8080
GRPC_PORT ?= 8081

.PHONY: install run test bench proto clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	exec $(VENV)/bin/servelane up examples/ --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install
	$(PY) -m bench

proto: install
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info
