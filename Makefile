# Every target bootstraps .venv itself: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BUF := $(VENV)/buf/node_modules/.bin/buf
PROTOS := protos/genjobs/v1/jobs.proto protos/genjobs/v1/bulk.proto

.PHONY: run test lint proto bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/genjobs-server

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP) $(BUF)
	$(BUF) lint protos
	$(BIN)/ruff check server client tests bench
	$(BIN)/ruff format --check server client tests bench
	$(BIN)/mypy

$(BUF):
	npm install --silent --prefix $(VENV)/buf @bufbuild/buf@1

proto: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=protos --grpc_python_out=protos --mypy_out=protos --mypy_grpc_out=protos \
		$(PROTOS)

bench: $(STAMP)
	for name in service dispatch bulk watch notify http observability; do $(BIN)/python bench/$${name}_bench.py || exit 1; done

clean:
	rm -rf $(VENV) .genjobs .pytest_cache .mypy_cache .ruff_cache
