# posbench: `make help` lists the targets. Every target sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
ARGS ?=
PYTEST_ARGS ?= -n 2 --dist loadfile
BIN := $(VENV)/bin
STAMP := $(VENV)/.posbench-installed

.PHONY: help setup data train test test-fast lint format smoke clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'
	@echo "  variables: TORCH=$(TORCH) (torch requirement), ARGS='...' (extra overrides for train), PYTEST_ARGS"

setup: $(STAMP) ## create .venv and install posbench with its test tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

data: setup ## fetch and check the built-in Shakespeare corpus into the cache
	$(BIN)/python -m posbench.data.shakespeare

train: data ## train ALiBi at 2K on the built-in corpus, evaluate at 2K, 4K, 8K, 16K
	$(BIN)/python -m posbench train encoding=alibi $(ARGS)

test: data lint ## lint, then run the whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: data ## the tests not marked slow: a quick loop while editing (make test stays the whole suite)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow"

lint: setup ## ruff: lint rules and formatting (configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

smoke: data ## a few training steps of a tiny model, in seconds
	$(BIN)/python -m posbench train debug=smoke $(ARGS)

clean: ## remove the virtual environment and local runs (the data cache stays)
	rm -rf $(VENV) runs multirun outputs
