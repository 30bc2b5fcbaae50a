# Every target bootstraps .venv itself: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BUF := $(VENV)/buf/node_modules/.bin/buf
PROTOS := protos/genjobs/v1/jobs.proto protos/genjobs/v1/bulk.proto protos/genjobs/v1/schedules.proto protos/genjobs/v1/templates.proto

.PHONY: run test test-min lint proto bench clean

# PYTHONWARNINGS=ignore: setuptools warns at length about every editable install
# that maps folders to other import names (package-dir: genjobs.server is server/).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e '.[dev]'
	@$(MAKE) --no-print-directory $(TYPECHECK)
	touch $(STAMP)

# The import names genjobs.server and genjobs.client map to the folders server/
# and client/ (pyproject.toml's package-dir): the editable install's finder
# follows that at run time, but mypy and import-linter read folders, so they
# read this tree of links instead.
TYPECHECK := $(VENV)/typecheck/genjobs
$(TYPECHECK):
	@mkdir -p $(TYPECHECK)
	@ln -sfn ../../../protos/genjobs/__init__.py $(TYPECHECK)/__init__.py
	@ln -sfn ../../../protos/genjobs/v1 $(TYPECHECK)/v1
	@ln -sfn ../../../server $(TYPECHECK)/server
	@ln -sfn ../../../client $(TYPECHECK)/client

run: $(STAMP)
	$(BIN)/genjobs-server

# Three workers on two cores: most tests wait on servers, timers and
# subprocesses, not on the CPU (on a fresh clone: 5 min 50 s with two, 4 min
# 49 s with three and the long modules first, see tests/conftest.py; one of
# two runs with four failed a test on the loaded machine). Each worker starts its
# own database, and a module's tests stay on one worker (module fixtures).
test: $(STAMP)
	$(BIN)/python -m pytest -n 3 --dist loadscope

# The smoke tests on the lowest versions pyproject.toml allows, in a venv of their own.
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed-stamp
SMOKE := tests/test_auth.py tests/test_contract.py

$(MIN_STAMP): pyproject.toml .ci/lowest.py
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(PYTHON) .ci/lowest.py > $(MIN_VENV)/lowest.txt
	$(MIN_VENV)/bin/python -m pip install --quiet -c $(MIN_VENV)/lowest.txt -e . pytest pytest-timeout
	touch $(MIN_STAMP)

test-min: $(MIN_STAMP)
	$(MIN_VENV)/bin/python -m pip list --format=freeze | grep -iE '^(grpcio|protobuf|googleapis)'
	$(MIN_VENV)/bin/python -m pytest $(SMOKE)

lint: $(STAMP) $(BUF)
	$(BUF) lint protos
	$(BIN)/ruff check server client tests bench examples
	$(BIN)/ruff format --check server client tests bench examples
	$(BIN)/mypy
	PYTHONPATH=$(VENV)/typecheck $(BIN)/lint-imports

$(BUF):
	npm install --silent --prefix $(VENV)/buf @bufbuild/buf@1

proto: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=protos --grpc_python_out=protos --mypy_out=protos --mypy_grpc_out=protos \
		$(PROTOS)

bench: $(STAMP)
	for name in service dispatch bulk watch notify http observability; do $(BIN)/python bench/$${name}_bench.py || exit 1; done

clean:
	rm -rf $(VENV) $(MIN_VENV) .genjobs .pytest_cache .mypy_cache .ruff_cache
