# Set-up and checks for lesion. Everything a fresh machine needs is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Small models and a 2-core machine: one torch thread per test process.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 LESION_NO_PROGRESS=1

.PHONY: install demo demo-compare test test-gpu test-all bench lint data clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The zoo of real architectures the tests build (timm, transformers), without their dependencies so that torch
# stays at 2.13.0 and torchvision (a different torch build) is not pulled; then their small dependencies.
ZOO_NODEPS := timm==1.0.31 transformers==5.23.0 huggingface_hub==2.4.0 tokenizers safetensors
ZOO_DEPS   := pyyaml regex click typer httpx2 hf-xet

# torch is installed first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	$(BIN)/python -m pip install --quiet --no-deps $(ZOO_NODEPS)
	$(BIN)/python -m pip install --quiet $(ZOO_DEPS)
	touch $(STAMP)

install: $(STAMP) data

# Full Fashion-MNIST comes from the Debian package dataset-fashion-mnist. Best effort: without root or
# apt the rest still works, and `lesion.data.load("fashion-mnist")` says how to install it.
data:
	@if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then echo "note: apt-get not found; fashion-mnist unavailable"; \
	else SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
	  || { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
	  || echo "note: could not install dataset-fashion-mnist (apt-get install dataset-fashion-mnist as root)"; fi

# The main job on the bundled data: trains the default network on mnist5k and writes demo-report/report.html.
demo: install
	$(BIN)/lesion report --out demo-report

# Two models side by side: mlp2 trained with and without dropout, quick reports, one comparison page.
demo-compare: install
	mkdir -p demo-compare
	$(BIN)/lesion train --net mlp2 --data mnist5k --epochs 10 --dropout 0.2 --out demo-compare/mlp2-dropout.pt
	$(BIN)/lesion train --net mlp2 --data mnist5k --epochs 10 --out demo-compare/mlp2-plain.pt
	$(BIN)/lesion report --model demo-compare/mlp2-dropout.pt --model demo-compare/mlp2-plain.pt --data mnist5k \
	  --quick --out demo-compare

test: install
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow and not gpu"

# The GPU checks (on a machine with CUDA): campaign, spectrum and recovery on cuda against the CPU.
test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

# The slow tests include rendering the report in headless Chromium (Debian packages chromium, chromium-driver).
browser:
	@command -v chromium >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
	  || { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
	  || echo "note: could not install chromium; the browser test will be skipped"; }

test-all: install browser
	$(TEST_ENV) LESION_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q -m "not gpu"

# Benchmark-only dependencies (the curvature peers, and pytorchfi and mrfi for benchmarks/campaign.py), without
# their own dependencies so that torch stays at 2.13.0.
BENCH_DEPS := curvlinops-for-pytorch backpack-for-pytorch einops einconv linear_operator opt-einsum pytorchfi==0.6.0 mrfi==2.1.0

bench: install
	$(BIN)/python -m pip install --quiet --no-deps $(BENCH_DEPS)
	@set -e; for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b; done

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
