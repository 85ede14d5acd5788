# The two commands of the README: `make demo` (service + simulator on the local stack) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STACK := deploy/local/stack.sh

.PHONY: venv stack down status demo test test-tools lint bench clean protos

$(BIN)/.installed: pyproject.toml constraints.txt
	@command -v python3 >/dev/null || (apt-get update -q && apt-get install -y -q python3)
	@python3 -m venv $(VENV) 2>/dev/null || (apt-get install -y -q python3-venv && python3 -m venv $(VENV))
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

stack: venv
	CITYKPI_VENV=$(VENV) $(STACK) up

down:
	$(STACK) down

status:
	$(STACK) status

demo: stack
	$(BIN)/citykpi migrate
	$(BIN)/citykpi registry import kpi_rollups/demo_registry.toml
	$(BIN)/citykpi alerts import processors/default_alert_rules.toml
	CITYKPI_SIMULATOR__SPARKPLUG_KIND=electricity $(BIN)/citykpi run --with-simulator

# the Sparkplug B module from the Eclipse Tahu definition; committed, so installs need no protoc
# (tests/unit/test_decoder_sparkplug.py fails when it differs from what this makes)
protos: venv
	cd schemas/sparkplug && $(abspath $(BIN))/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
		sparkplug_b.proto

# headless Chromium renders the KPI report in its test
test-tools:
	@command -v chromium >/dev/null || (apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null))

test: stack test-tools
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check core ingest processors kpi_rollups schemas tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: stack
	$(BIN)/python -m bench.kernels
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.peers
	$(BIN)/python -m bench.stall
	$(BIN)/python -m bench.reader_views
	$(BIN)/python -m bench.refresh
	$(BIN)/python -m bench.sparkplug
	$(BIN)/python -m bench.alerts

clean: down
	rm -rf .stack
