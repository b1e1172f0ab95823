# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
TORCH_CPU ?= torch==2.13.0
export TNEDIT_MODELS ?= $(CURDIR)/.cache/models

.PHONY: install test models bench bench-apply bench-identify bench-identify-gpus bench-distributed bench-repeat-apply bench-langid bench-tune bench-moe lint demo clean

install: $(VENV)/.installed

# On machines without a CUDA driver, install the CPU build of torch first so the `torch>=` range
# in pyproject.toml is already satisfied and pip never pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
		if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
		else $(PY) -m pip install -q $(TORCH_CPU); fi; fi
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

models: install
	$(PY) scripts/make_models.py

test: install models
	$(PY) -m pytest -q

bench: bench-apply bench-repeat-apply bench-identify bench-distributed bench-langid bench-moe

bench-apply: install
	$(PY) benchmarks/bench_apply.py

# a second apply of the same edit on a 1.2 GB, 3-shard checkpoint (digest cache filled) ÷ cp -r.
bench-repeat-apply: install
	$(PY) benchmarks/bench_repeat_apply.py

bench-identify: install models
	$(PY) benchmarks/bench_identify.py

# identify in one process against 2 ranks of torchrun on CPU (gloo), on Gemma-3-270M: speed-up and equality.
bench-distributed: install models
	$(PY) benchmarks/bench_distributed.py

# identify on a random Llama-3-8B-shaped model over GPUS GPUs of this machine (torchrun, NCCL), for GPU machines.
GPUS ?= 2
bench-identify-gpus: install
	$(PY) -m torch.distributed.run --standalone --nproc-per-node $(GPUS) benchmarks/bench_identify.py \
		--random-llama8b --device cuda

bench-langid: install
	$(PY) benchmarks/bench_langid.py

# tnedit's experts implementation (and its neuron reading) against transformers' default, on a random MoE model.
bench-moe: install
	$(PY) benchmarks/bench_moe.py

# `tnedit tune` on Gemma-3-270M with the 1,000 shared en–ja pairs (about 15 min on 2 cores): not part of `make bench`.
bench-tune: install models
	$(PY) benchmarks/bench_tune.py

lint: install
	$(VENV)/bin/ruff check tnedit tests benchmarks scripts

demo: install models
	$(VENV)/bin/tnedit run recipes/gemma3-270m-demo.yaml

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
