# imagegraph: `make demo` builds the bundled example layers, `make test` runs the suite.
# Both set up everything they need on a fresh Debian/Ubuntu machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export BUILDAH_ISOLATION ?= chroot

PREFIX ?= /usr/local
MAN := $(VENV)/share/man/man1/imagegraph.1

.PHONY: all system system-run venv test-venv demo test lint bench man install clean

all: test

system:
	./scripts/install-system-deps.sh

system-run:
	./scripts/install-system-deps.sh --run

# Running needs only the runtime dependencies; `make test` adds the test extras.
$(BIN)/imagegraph: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-extras: $(BIN)/imagegraph
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/imagegraph

test-venv: $(VENV)/.test-extras

# The man page is generated from the same parser as --help (argparse-manpage), never hand-written.
$(MAN): $(BIN)/imagegraph imagegraph/cli.py
	$(BIN)/pip install -q -e '.[docs]'
	mkdir -p $(dir $@)
	$(BIN)/python -c 'from imagegraph.cli import man_include; print(man_include())' > $(VENV)/man.include
	$(BIN)/argparse-manpage --module imagegraph.cli --function build_parser --prog imagegraph \
	  --project-name imagegraph --version "$$($(BIN)/imagegraph --version | cut -d' ' -f2)" \
	  --description "make for diskless boot images" --manual-title "imagegraph manual" \
	  --include $(VENV)/man.include --output $@

man: $(MAN)

# The command on PATH (a link to the venv's), its man page and bash/zsh completion.
install: venv man
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions
	ln -sf $(abspath $(BIN))/imagegraph $(DESTDIR)$(PREFIX)/bin/imagegraph
	install -m 644 $(MAN) $(DESTDIR)$(PREFIX)/share/man/man1/imagegraph.1
	$(BIN)/imagegraph completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/imagegraph
	$(BIN)/imagegraph completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_imagegraph

demo: system-run venv
	$(BIN)/imagegraph plan layers/
	$(BIN)/imagegraph up layers/
	$(BIN)/imagegraph plan layers/

lint: test-venv
	$(BIN)/ruff check imagegraph tests bench
	$(BIN)/ruff format --check imagegraph tests bench

test: system test-venv lint
	$(BIN)/pytest -q -ra $(PYTEST_ARGS)

bench: test-venv
	$(BIN)/python bench/plan_bench.py
	$(BIN)/python bench/scheduler_bench.py
	$(BIN)/python bench/noop_up_bench.py
	$(BIN)/python bench/picture_bench.py
	$(BIN)/python bench/silent_registry_bench.py

clean:
	rm -rf $(VENV) .imagegraph layers/.imagegraph out
