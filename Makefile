# servelane: `make run` serves the example model, `make test` runs the test suite, `make bench` the benchmarks.
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
	@echo "serving examples/models on http://$(HOST):$(PORT) (gRPC $(GRPC_PORT)); try:"
	@echo "  curl -s http://$(HOST):$(PORT)/v1/models/sklearn-iris:predict -H 'Content-Type: application/json' -d '{\"instances\": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}'"
	exec $(VENV)/bin/servelane model-server --model-repository examples/models --host $(HOST) --http-port $(PORT) --grpc-port $(GRPC_PORT)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install
	$(PY) -m bench

proto: install
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info
