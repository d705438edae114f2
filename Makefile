# The README's commands. `make test` and `make demo` build everything they need from nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.preftune-installed
# torch is pinned and installed first: 2.13.0 is the CPU wheel already on this machine's disk,
# while an unpinned `torch` would pull a CUDA build of several GB.
TORCH  ?= torch==2.13.0

.PHONY: setup system-deps test test-slow demo bench lint clean

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

test-slow: setup system-deps
	$(PY) -m pytest -m slow

demo: setup
	$(VENV)/bin/preftune demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
