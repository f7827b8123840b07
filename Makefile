# The README's two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Everything runs offline: the default model is bundled, nothing is fetched from a hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Ask for torch first and by exact version: on machines that carry its CPU wheel locally pip takes
	# that file instead of a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/leaninfer demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# The edit-test loop: all but the tests marked slow (servers or Ray as processes, notebooks, long runs).
test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

lint: setup
	$(BIN)/ruff check leaninfer tests

clean:
	rm -rf $(VENV) leaninfer-out
