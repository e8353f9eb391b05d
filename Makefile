# copycatch — every target sets itself up on a fresh machine (virtual environment, install, data).
#   make demo    protect a model, steal it, verify the stolen copy and an innocent model, print the verdicts
#   make test    lint (ruff), the import contract (import-linter), the docs site (strict), then the test suite
#   make bench   run the quick benchmark grid (see benchmarks/)
#   make reproduce PAPER=margin   one paper's grid at the CPU scale of docs/reproductions.md

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The lean CPU wheel that lies on these machines; override for a GPU build, e.g. TORCH_SPEC='torch'.
TORCH_SPEC ?= torch==2.13.0
# extras per target: the demo needs only the small data sets, the quick grid those and the report's plots; the tests
# exercise every optional part
TEST_EXTRAS ?= dev,datasets,audio,serve,redis,onnx,report,ray,images,docs
DEMO_EXTRAS ?= datasets
BENCH_EXTRAS ?= datasets,report
FASHION_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && echo sudo)

.PHONY: demo test test-interop lint docs bench reproduce setup data redis-server standin-tools browser clean help

help:
	@sed -n '2,6p' Makefile

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# one stamp per set of extras, so `make demo` stays light and `make test` adds what it needs. --no-compile: Python
# compiles a module when it is first imported; compiling all of torch up front took 10 s more of every fresh setup
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check '$(TORCH_SPEC)'
	$(BIN)/pip install --quiet --no-compile --disable-pip-version-check -e '.[$*]'
	@touch $@

setup: $(VENV)/.installed-$(TEST_EXTRAS)

# Fashion-MNIST from Debian's package, unless it (or $$COPYCATCH_DATA_DIR) is already there.
data:
	@if [ -n "$$COPYCATCH_DATA_DIR" ] || [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST: not found and no apt-get; see README (Data)"; \
	fi

# Debian's redis-server for the shared-limits tests (tests/test_serve_redis.py starts its own; skipped without it).
redis-server:
	@if command -v redis-server >/dev/null 2>&1; then \
	  echo "redis-server: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "redis-server: installing Debian's redis-server"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server >/dev/null; \
	else \
	  echo "redis-server: not found and no apt-get; tests/test_serve_redis.py will be skipped"; \
	fi

# Debian's WordNet and espeak-ng, from which `copycatch data prepare` builds the text and audio stand-ins (the tests
# that generate tiny ones are skipped without them).
standin-tools:
	@if [ -f /usr/share/wordnet/data.noun ] && command -v espeak-ng >/dev/null 2>&1; then \
	  echo "wordnet-base, espeak-ng: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "wordnet-base, espeak-ng: installing Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wordnet-base espeak-ng >/dev/null; \
	else \
	  echo "wordnet-base, espeak-ng: not found and no apt-get; the stand-in tests will be skipped"; \
	fi

# Debian's chromium and chromium-driver for the browser test of the evidence page and the bench report
# (tests/test_report_browser.py; skipped without them).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "chromium, chromedriver: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "chromium, chromedriver: installing Debian's chromium and chromium-driver"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
	  echo "chromium, chromedriver: not found and no apt-get; tests/test_report_browser.py will be skipped"; \
	fi

demo: $(VENV)/.installed-$(DEMO_EXTRAS) data
	$(BIN)/copycatch demo

test: $(VENV)/.installed-$(TEST_EXTRAS) data redis-server standin-tools browser lint docs
	$(BIN)/python -m pytest
	@$(MAKE) --no-print-directory test-interop

# Real serving stacks (KServe, MLServer, MLflow; tests/test_interop.py), each in its own cached environment: installed
# beside copycatch's dependencies, or beside each other, the resolvers pick old or broken releases. A stack that
# cannot be installed here is skipped with a visible message; its test then skips and says why. Part of `make test`.
INTEROP_VENVS ?= $(HOME)/.cache/copycatch-interop
INTEROP_STACKS := kserve:kserve==0.21.0 mlserver:mlserver==1.7.1 mlflow:mlflow==3.17.2

test-interop: $(VENV)/.installed-$(TEST_EXTRAS)
	@for stack in $(INTEROP_STACKS); do \
	  name=$${stack%%:*}; spec=$${stack#*:}; env=$(INTEROP_VENVS)/$$name; \
	  if [ -f $$env/.installed-$$spec ]; then continue; fi; \
	  echo "interop: installing $$spec into $$env"; \
	  if { [ -x $$env/bin/python ] || $(PYTHON) -m venv $$env; } && \
	     $$env/bin/pip install --quiet --no-compile --disable-pip-version-check "$$spec" numpy 2>$$env.log; then \
	    touch $$env/.installed-$$spec; \
	  else \
	    echo "interop: SKIPPED $$name: $$spec could not be installed (see $$env.log)"; \
	  fi; \
	done
	COPYCATCH_INTEROP_VENVS=$(INTEROP_VENVS) $(BIN)/python -m pytest -m interop tests/test_interop.py -rs

# ruff (lint and format) and the layers contract of pyproject.toml ([tool.importlinter]); part of `make test`.
lint: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml: docs/ and the API reference from the docstrings) into site/; --strict makes a
# broken link, a missing reference or a docstring it cannot read fail the build. Part of `make test`.
docs: $(VENV)/.installed-$(TEST_EXTRAS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Resumable: interrupt it and run `make bench` again; finished cells are kept (see benchmarks/README.md).
# The report is written even when some cells failed; make then exits with bench's status.
bench: $(VENV)/.installed-$(BENCH_EXTRAS) data
	$(BIN)/copycatch bench fmnist-quick -o bench-out/fmnist-quick; status=$$?; \
	$(BIN)/copycatch report bench-out/fmnist-quick -o bench-out/fmnist-quick/report && exit $$status

# One seed paper's grid at the CPU scale docs/reproductions.md documents (about 10-45 min each on 2 cores):
# PAPER = margin, feature-sharing, mea-defender, frontier-stitching, dynamarks or margin-mixup. Resumable; the
# models are shared between papers through one cache; the report and cells.csv go to benchmarks/results/PAPER.
PAPER ?= margin
REPRODUCE_SCALE ?= --max-train 10000 --epochs-factor 0.5
reproduce: $(VENV)/.installed-$(TEST_EXTRAS) data
	OMP_NUM_THREADS=1 $(BIN)/copycatch bench $(PAPER) $(REPRODUCE_SCALE) -o bench-out/reproduce/$(PAPER) \
	  --cache bench-out/reproduce/cache; status=$$?; \
	$(BIN)/copycatch report bench-out/reproduce/$(PAPER) -o benchmarks/results/$(PAPER) && exit $$status

clean:
	rm -rf demo-out bench-out site .pytest_cache
