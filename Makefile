# imagegraph: `make demo` builds the bundled example layers, `make test` runs the suite.
# Both set up everything they need on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export BUILDAH_ISOLATION ?= chroot

.PHONY: all system venv demo plan test lint bench clean

all: test

system:
	./scripts/install-system-deps.sh

$(BIN)/imagegraph: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/imagegraph

demo: system venv
	$(BIN)/imagegraph plan layers/
	$(BIN)/imagegraph up layers/
	$(BIN)/imagegraph plan layers/

lint: venv
	$(BIN)/ruff check imagegraph tests bench
	$(BIN)/ruff format --check imagegraph tests bench

test: system venv lint
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/plan_bench.py
	$(BIN)/python bench/scheduler_bench.py
	$(BIN)/python bench/noop_up_bench.py
	$(BIN)/python bench/picture_bench.py

clean:
	rm -rf $(VENV) .imagegraph layers/.imagegraph out
