# videojobs developer commands. Strict shell, no built-in rules, and a target
# that fails leaves no half-made file behind.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTO_FILES := $(sort $(wildcard proto/videojobs/v1/*.proto))
GEN_DIR := gen/python
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: install
install: $(INSTALLED) ## Create .venv and install videojobs with its dev tools (idempotent).

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: proto
proto: $(INSTALLED) ## Regenerate the Python code in gen/python from proto/.
	rm -rf $(GEN_DIR)/videojobs
	$(MAKE) --no-print-directory gen-into OUT=$(GEN_DIR)

# Generates the Python package videojobs.v1 (messages, stubs and .pyi) into $(OUT).
.PHONY: gen-into
gen-into:
	mkdir -p $(OUT)
	$(PY) -m grpc_tools.protoc -I proto -I third_party/googleapis \
	  --python_out=$(OUT) --pyi_out=$(OUT) --grpc_python_out=$(OUT) $(PROTO_FILES)
	printf '"""Generated from proto/videojobs/v1 by `make proto`. Do not edit."""\n' > $(OUT)/videojobs/v1/__init__.py

.PHONY: check-proto
check-proto: $(INSTALLED) ## Fail when gen/python is stale (differs from what `make proto` makes).
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(MAKE) --no-print-directory gen-into OUT=$$tmp >/dev/null; \
	if ! diff -r -x __pycache__ "$$tmp/videojobs" $(GEN_DIR)/videojobs; then \
	  echo "gen/python is stale: run 'make proto' and commit the result" >&2; exit 1; fi

.PHONY: lint
lint: $(INSTALLED) ## buf lint + buf format check on the contract, ruff on the Python code.
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: test
test: $(INSTALLED) check-proto ## Run the whole test suite.
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: run
run: $(INSTALLED) ## Start job-service and one worker on SQLite + ./var in the foreground (Ctrl-C stops both).
	$(PY) -m videojobs.stack

.PHONY: demo
demo: $(INSTALLED) ## Make a sample video, start the pair, submit it, follow it live, stop.
	$(PY) -m videojobs.stack --demo

.PHONY: bench
bench: $(INSTALLED) ## Run the benchmarks.
	$(PY) bench/bench_service.py
	$(PY) bench/bench_storage.py
	$(PY) bench/bench_pipelines.py
	$(PY) bench/bench_replicas.py
	$(PY) bench/bench_latency.py
	$(PY) bench/bench_calls.py
	$(PY) bench/bench_upload.py
	$(PY) bench/bench_submit_growth.py
	$(PY) bench/bench_peers.py $(BENCH_PEERS_ARGS)

BENCH_PEERS_ARGS ?=

.PHONY: bench-peers
bench-peers: $(INSTALLED) ## videojobs against Celery, RQ, Dramatiq and a process pool (BENCH_PEERS_ARGS=--quick).
	$(PY) bench/bench_peers.py $(BENCH_PEERS_ARGS)

.PHONY: clean
clean: ## Remove the virtualenv and local data.
	rm -rf $(VENV) var
