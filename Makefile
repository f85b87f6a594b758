# Set-up is automatic: every target below installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= Why is the sky blue?

.PHONY: install demo dev test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# llama-cpp-python compiles from source once (~4 min); pip caches the wheel afterwards.
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the main job: a Mixture-of-Agents answer on the embedded model, offline
	$(BIN)/moa ask "$(PROMPT)" --preset local

dev: install  ## the LangGraph dev server for Studio and the SDK, offline (no browser, no telemetry)
	LANGSMITH_TRACING=false LANGGRAPH_CLI_NO_ANALYTICS=1 LANGGRAPH_NO_VERSION_CHECK=true \
		$(BIN)/langgraph dev --no-browser --host 127.0.0.1 --port 2024 \
		--n-jobs-per-worker 10 --no-reload

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy langgraph_moa

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/bench_orchestration.py
	$(BIN)/python bench/bench_failures.py
	$(BIN)/python bench/bench_checkpoints.py
	$(BIN)/python bench/bench_serve.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
