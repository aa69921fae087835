# distillrank — `make test` (the test suite) and `make demo` (the whole pipeline on SciFact).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned CPU torch keeps installs small; override for GPUs: make install TORCH_SPEC="torch==2.13.0"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Real collections (BEIR format) where the checkout sits beside shared/; override with DATA_DIR=...
DATA_DIR ?= $(abspath ../shared/data)
export DISTILLRANK_DATA_DIR ?= $(if $(wildcard $(DATA_DIR)),$(DATA_DIR),)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-slow lint demo clean bench bench-quick bench-scale

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77" wheel
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check distillrank tests scripts

# Side-by-side benchmarks against sentence-transformers (docs/BENCHMARKS.md); results in docs/bench/.
bench: install
	$(BIN)/python scripts/bench/run.py

bench-quick: install
	$(BIN)/python scripts/bench/run.py --quick

# The pipeline's own stages on a synthetic MS MARCO-shaped collection (1M passages, 10M pairs) with
# tiny models: time and peak RSS per stage, sharded identity (docs/BENCHMARKS.md, "Scale of the pipeline").
bench-scale: install
	$(BIN)/python scripts/bench/scale_pipeline.py

demo: install
	$(BIN)/distillrank run +exp=margin_mse_feature_ensemble experiment=demo

clean:
	rm -rf $(VENV) runs outputs multirun .pytest_cache
