# The GPU acceptance run and its rehearsal on the CPU (issue 25); included from the Makefile (PYTHON from there).
#
# make gpu-wheels     what travels to the GPU machine: wheels/py312, the carried wheels for the image's Python 3.12
#                     (~43 MiB, bitsandbytes whole; run's carry: ["wheels/py312"]), and the same versions for this
#                     machine's Python (wheels/py311 here), which the rehearsal installs. Needs the network; a rerun
#                     downloads nothing.
# make gpu-rehearsal  the GPU run rehearsed here, from scratch: a fresh venv with the GPU image's versions as recorded,
#                     then acceptance/device_run.sh for every part of acceptance/gpu_check.py at --smoke shapes, as on
#                     the GPU machine: versions printed, the carried wheels that fail to import installed offline
#                     (pip --no-index --no-deps --target), the part run. Every step after the venv runs with no
#                     network (unshare -n: a network namespace with no interface up; OFFLINE= where it is refused).
#                     Prints the wall time of each part (also in runs/rehearsal/times.txt).
GPU_WHEELS ?= wheels
REHEARSAL ?= runs/rehearsal
REHEARSAL_VENV ?= $(REHEARSAL)/venv
OFFLINE ?= unshare -n
HOST_PY := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
HOST_WHEELS := $(GPU_WHEELS)/py$(subst .,,$(HOST_PY))
# The GPU image's versions as last listed (../shared/FACTS.md; device KINDS.md 2026-11): transformers 5.17,
# accelerate 1.15, huggingface_hub 1.33, peft, pyarrow, tensorboard, scikit-learn, rich, typer, pyyaml; no trl,
# datasets, bitsandbytes, dill or multiprocess (those are carried). torch is the CPU 2.13 the Makefile installs (no
# CPU build of the image's 2.11+cu130 is reachable here); numpy and the rest resolve for this Python.
IMAGE_PINS := 'transformers==5.17.*' 'accelerate==1.15.*' 'huggingface_hub==1.33.0' 'tokenizers==0.23.*' \
	'safetensors==0.8.*' 'peft==0.22.*' pyarrow pandas numpy scipy scikit-learn tensorboard rich typer pyyaml \
	matplotlib psutil jinja2 fsspec filelock tqdm requests packaging setuptools

.PHONY: gpu-wheels gpu-rehearsal

gpu-wheels:
	$(PYTHON) -m acceptance.wheels download --dest $(GPU_WHEELS)/py312 --python-version 3.12
	$(PYTHON) -m acceptance.wheels download --dest $(HOST_WHEELS) --python-version $(HOST_PY)

gpu-rehearsal: gpu-wheels
	rm -rf $(REHEARSAL)
	mkdir -p $(REHEARSAL)
	$(PYTHON) -m venv $(REHEARSAL_VENV)
	$(REHEARSAL_VENV)/bin/pip install -q torch==2.13.0
	$(REHEARSAL_VENV)/bin/pip install -q $(IMAGE_PINS)
	@set -e; for part in $$($(REHEARSAL_VENV)/bin/python -m acceptance.gpu_check --smoke --parts | cut -f1); do \
		started=$$(date +%s); \
		$(OFFLINE) env CUDA_VISIBLE_DEVICES= PYTHON=$(REHEARSAL_VENV)/bin/python WHEELS=$(HOST_WHEELS) \
			SITE=$(REHEARSAL)/site WORKDIR=$(REHEARSAL)/work OUT=$(REHEARSAL)/out STATE=$(REHEARSAL)/state \
			acceptance/device_run.sh $$part --smoke; \
		echo "part $$part: $$(( $$(date +%s) - started )) s" | tee -a $(REHEARSAL)/times.txt; \
	done
	@echo "gpu-rehearsal: every part passed offline on the image's versions; report in $(REHEARSAL)/out/gpu-check"
	@cat $(REHEARSAL)/times.txt
