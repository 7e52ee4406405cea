# Every target sets itself up: a fresh machine needs only python3 (3.10+) with venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-busy lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## demo: one Poisson load level against the embedded Triton server (started and stopped for you)
demo: $(STAMP)
	$(BIN)/loadgen run --name demo --arrival poisson --rate 8 --duration 30 --warmup 3s \
		--input-tokens 128 --output-tokens 64 --slo ttft=500ms,tpot=80ms

## test: the whole test suite (unit + integration against a real Triton server)
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

## test-busy: the whole suite while another process keeps one core busy (it must hold on a busy machine)
test-busy: $(STAMP)
	$(BIN)/python tests/with_busy_core.py -- $(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check loadgen servers tests benchmarks scenarios

bench: $(STAMP)
	$(BIN)/python benchmarks/generator_capacity.py

clean:
	rm -rf $(VENV) runs .pytest_cache
