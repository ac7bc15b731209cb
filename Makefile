# The two commands: `make up` runs the stack, `make test` runs the tests. Both set everything up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The TypeScript client's packages, installed from its lockfile (npm ci) when the lockfile changes.
TS_DIR   := clients/typescript
TS_STAMP := $(TS_DIR)/node_modules/.installed-stamp

.PHONY: up test lint bench docs system-deps clean

up: $(STAMP)
	$(BIN)/boilerhouse up $(ARGS)

# pytest also builds clients/typescript and runs its node tests and the conformance cases with it.
test: system-deps lint $(TS_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# Gates of the test command: lint (rules in pyproject.toml), formatting, and types.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

docs: $(STAMP)
	$(BIN)/python -m services.aggregator.docs > docs/metrics.md

system-deps:
	./scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

$(TS_STAMP): $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund
	touch $(TS_STAMP)

clean:
	rm -rf $(VENV) .boilerhouse .pytest_cache $(TS_DIR)/node_modules $(TS_DIR)/dist
