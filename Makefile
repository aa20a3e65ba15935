# quantsearch: `make demo` and `make test` each create .venv if missing, install, fetch the data, and run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# kfp pins protobuf and requests below the main environment's: it gets a venv of its own (`quantsearch k8s pipeline`)
KFP_VENV ?= .venv-kfp
KFP_STAMP := $(KFP_VENV)/.installed-stamp
export RAY_AUTH_MODE := disabled
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast gpu-check lint install kfp data benchmarks clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,export,k8s,peer]"
	@touch $(STAMP)

install: $(STAMP)

# pyproject's kfp extra (kfp, kfp-kubernetes) alone, for compiling k8s/kubeflow/pipeline.py
$(KFP_STAMP): pyproject.toml
	@test -x $(KFP_VENV)/bin/python || python3 -m venv $(KFP_VENV)
	$(KFP_VENV)/bin/python -m pip install -q $$(python3 -c "import tomllib; \
	  print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['kfp']))")
	@touch $(KFP_STAMP)

kfp: $(KFP_STAMP)

# Fashion-MNIST: QUANTSEARCH_DATA, or Debian's package (installed when we are root), or a clear message.
data:
	@if [ -n "$$QUANTSEARCH_DATA" ] || [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
	    || [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Fashion-MNIST (apt-get install -y dataset-fashion-mnist)"; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install -y dataset-fashion-mnist' or set QUANTSEARCH_DATA" >&2; \
	  exit 2; \
	fi

demo: install data
	$(PY) -m quantsearch run jobs/demo.yaml

# The whole suite: fast unit tests and the slow integration tests.
test: install kfp data
	$(PY) -m pytest -q tests

test-fast: install kfp data
	$(PY) -m pytest -q -m "not slow" tests

# FP32 -> QAT -> DQSS-PTQ -> supernet (1 Ray worker with a GPU) on CUDA; asserts every stage's tensors were there.
gpu-check: install data
	@$(PY) -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu-check needs a CUDA GPU; torch sees none')"
	$(PY) -m pytest -q -m gpu tests/gpu

lint: install
	$(VENV)/bin/ruff check platform tests benchmarks

benchmarks: install data
	$(PY) benchmarks/fp32_baseline.py
	$(PY) benchmarks/quant_overhead.py
	$(PY) benchmarks/lsq_baseline.py
	$(PY) benchmarks/eqnet_quality.py --epochs 3
	$(PY) benchmarks/train_scaling.py
	$(PY) benchmarks/dqss_speed.py
	$(PY) benchmarks/dqss_quality.py

clean:
	rm -rf runs .pytest_cache build dist
