# Two entry points on a fresh machine: `make test` and `make ablation-schedules`.
# Both create .venv and install the project on first use; the stamp makes later calls instant.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= quick

.PHONY: test test-slow test-full lint format clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: Python 3.11+ is needed ($(PYTHON) is older); run: make PYTHON=python3.11 ..."; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch, torchvision, mlflow, optuna, pandas, scipy, matplotlib, seaborn, pytest, ruff into $(VENV)"
	@echo "(once: about 4 minutes on a fresh machine, several GB with the CUDA build of torch; later calls skip this)"
	$(BIN)/pip install --disable-pip-version-check --progress-bar on -e '.[dev]'
	touch $(STAMP)

# `make test` (under 10 minutes on 2 cores) skips the tests marked slow; CI runs it, then `make test-slow`,
# so every test runs once there. `make test-full` is both in one pytest run.
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

# ruff's rules and line length are in pyproject.toml; `make format` rewrites what `lint` refuses.
# lint-imports checks the layer contracts in pyproject.toml (no upward imports, heavy dependencies at the edges).
lint: $(STAMP)
	$(BIN)/ruff check harness analysis tests
	$(BIN)/ruff format --check harness analysis tests
	$(BIN)/lint-imports --no-cache

format: $(STAMP)
	$(BIN)/ruff check --fix harness analysis tests
	$(BIN)/ruff format harness analysis tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=0

test-full: $(STAMP)
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)

# -- ablations: `make ablation-schedules PROFILE=smoke|quick|full` ------------------------------------
# PROFILE defaults to quick, as `harness run SPEC` without --profile does (harness/config/spec.py DEFAULT_PROFILE);
# `harness run` prints the profile and the estimated time before it trains.
ABLATIONS := ablation-schedules ablation-parameterization ablation-samplers ablation-guidance recognizability \
             ablation-precision ablation-backbone seed-exercise ablation-process ablation-latent ablation-guidance-method
.PHONY: $(ABLATIONS) ui validate

# Run the spec, then write reports/<spec>/index.html and report.md (also when some jobs failed).
$(ABLATIONS): $(STAMP)
	@echo "make $@: profile $(PROFILE) (a pipeline check in about a minute: make $@ PROFILE=smoke)"
	$(BIN)/harness run experiments/$@.yaml --profile $(PROFILE); status=$$?; \
		[ $$status -eq 2 ] && exit 2; \
		$(BIN)/harness report experiments/$@.yaml && exit $$status

# An Optuna sweep: `make sweep PROFILE=smoke WORKERS=2`; run it again to continue the same study.
WORKERS ?= 1
.PHONY: sweep dashboard
# Then write reports/sweep-lr-ema/ for that profile's study (also when some trials failed; 2: bad input).
sweep: $(STAMP)
	$(BIN)/harness sweep experiments/sweep-lr-ema.yaml --profile $(PROFILE) --workers $(WORKERS); status=$$?; \
		[ $$status -eq 2 ] && exit 2; \
		$(BIN)/harness report experiments/sweep-lr-ema.yaml --profile $(PROFILE) && exit $$status

# optuna-dashboard on the sweep's journal storage, if installed (pip install optuna-dashboard).
dashboard: $(STAMP)
	@test -x $(BIN)/optuna-dashboard || { echo "optuna-dashboard is not installed: $(BIN)/pip install optuna-dashboard"; exit 2; }
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port 8080 mlruns/optuna/sweep-lr-ema.log

validate: $(STAMP)
	$(BIN)/harness validate experiments/*.yaml

# The MLflow UI on the default store, bound to this machine only.
ui: $(STAMP)
	@$(BIN)/python -c 'from harness.orchestration.tracking import print_arms_views; print_arms_views("http://127.0.0.1:5000", "sqlite:///$(CURDIR)/mlruns/mlflow.db")'
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port 5000
