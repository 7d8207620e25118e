# recforge: `make demo` runs the whole pipeline on MovieLens-100K; `make test` runs the test suite.
# Both create .venv and install the pinned dependencies first (requirements.lock).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export RECFORGE_HOME ?= $(CURDIR)/.recforge
export OMP_WAIT_POLICY ?= PASSIVE
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast check check-results airflow cluster cluster-stop serve drift-ui leaderboard tune bench lint format clean

# The lock is the tested pin set. Installed after it, recforge's own requirements (pyproject.toml,
# extras included) are already satisfied, so pip installs only recforge but still checks them all.
$(BIN)/.installed: requirements.lock pyproject.toml
	@echo "installing pinned dependencies into $(VENV) (first run: a few minutes; pip is quiet until it ends)…"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet -e '.[dev,production]'
	touch $@

demo: $(BIN)/.installed  ## the main job: both DAGs end to end through Airflow (SQLite, local Feast)
	$(BIN)/recforge demo

test: $(BIN)/.installed  ## the whole suite (unit + integration against the real stack); what CI runs
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900 --durations=25 tests

# The fast tier: neither `integration` nor `slow` (CONTRIBUTING.md, "Tests"), meant to stay within
# two minutes on two cores; a test in it that starts a process or a server fails (tests/tier_guard.py).
test-fast: $(BIN)/.installed  ## unit tests without the slow ones: pure logic, tiny tensors, no processes
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900 -m "not integration and not slow" tests

# What CI runs before the tests: lint, formatting and the typed modules ([tool.mypy] files).
check: $(BIN)/.installed  ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# bench/check_results.py needs only the standard library and git: no venv to build first.
STDLIB_PYTHON = $(or $(wildcard $(BIN)/python),$(PYTHON))

# Lists committed benchmark results measured at a commit older than the last change to the code they
# measure (or with no commit recorded). Reruns nothing; STRICT=1 exits non-zero when any is listed.
check-results:  ## which bench/results/ predate the code they measure
	$(STDLIB_PYTHON) bench/check_results.py $(if $(STRICT),--strict)

# AIRFLOW_PORT=8080 fixes the UI's port (default: a free one); PORT is make serve's.
AIRFLOW_PORT ?=
airflow: $(BIN)/.installed  ## Airflow UI (standalone) on $(AIRFLOW_PORT) or a free local port; prints URL and login last
	$(BIN)/recforge airflow-ui $(if $(AIRFLOW_PORT),--port $(AIRFLOW_PORT))

# The production profile's Airflow on this machine: CeleryExecutor, metadata DB and result backend on
# Postgres (created if missing), broker Redis; api-server, scheduler, dag-processor, triggerer and two
# Celery workers, each logging to $(RECFORGE_HOME)/airflow/cluster/<name>.log. Connection strings from
# the environment (docs/production.md), local defaults otherwise. Ctrl-C (or make cluster-stop) stops all.
cluster: $(BIN)/.installed  ## Airflow on Celery (Postgres + Redis), 2 workers, UI on $(AIRFLOW_PORT) or a free port
	$(BIN)/recforge cluster $(if $(AIRFLOW_PORT),--port $(AIRFLOW_PORT))

cluster-stop: $(BIN)/.installed  ## stop what make cluster started (from another terminal)
	$(BIN)/recforge cluster stop

# Every registered model and baseline x {random_holdout, leave_last_out} x 3 split seeds on ML-100K, 2
# processes x 1 thread (wall time: bench/results/leaderboard.meta.json): bench/results/leaderboard.json +
# bench/leaderboard.md. Extra flags, e.g.
# LEADERBOARD_ARGS="--models bpr,sasrec --max-epochs 5" or "--dataset ml-1m --data-path /data/ml-1m".
LEADERBOARD_ARGS ?=
leaderboard: $(BIN)/.installed  ## train + evaluate every model; leaderboard with target checks
	$(BIN)/python bench/leaderboard.py $(LEADERBOARD_ARGS)

# Choose a model's hyperparameters on VALIDATION data over its tuning_grid (configs/models/<model>.yaml);
# the winner alone is then evaluated on test. PROTOCOL=leave_last_out for the sequential models.
MODEL ?=
PROTOCOL ?= random_holdout
# SEARCH=tpe: Optuna's TPE over the YAML's search_space (else its tuning_grid), TRIALS trials in the
# config's tuning.rounds rounds, pruned on validation; the study persists in the run's study.db.
# SEEDS=N: every candidate is trained at N training seeds and judged by their mean validation NDCG@10.
SEARCH ?=
TRIALS ?=
SEEDS ?=
tune: $(BIN)/.installed  ## make tune MODEL=lightgcn [PROTOCOL=leave_last_out] [SEARCH=tpe TRIALS=12] [SEEDS=3]: validation-only search
	@test -n "$(MODEL)" || { echo "usage: make tune MODEL=<model> [PROTOCOL=random_holdout|leave_last_out] [SEARCH=grid|tpe] [TRIALS=N] [SEEDS=N]"; exit 2; }
	$(BIN)/python -m orchestration.tuning $(MODEL) --set split.protocol=$(PROTOCOL) $(if $(SEARCH),--search $(SEARCH)) $(if $(TRIALS),--max-candidates $(TRIALS)) $(if $(SEEDS),--set tuning.training_seeds=$(SEEDS))

# Running a benchmark is a decision (minutes to an hour; each rewrites its bench/results/ files).
bench:  ## lists the benchmarks: what each measures, its commands (quick ones too), its results; runs none
	$(STDLIB_PYTHON) bench/check_results.py --list

lint: $(BIN)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:  ## remove every artifact (data cache, stores, runs); keeps the venv
	rm -rf .recforge

drift-ui: $(BIN)/.installed  ## Evidently UI over the drift reports on a free local port (prints the URL)
	$(BIN)/python -m monitoring.ui

# The champion of RECFORGE_DEPLOYMENT (default: the config's deployment), following promotions and
# rollbacks live. Binds 127.0.0.1; HOST=0.0.0.0 exposes it, then also set RECFORGE_API_KEY. Checks the
# model before it starts; Ctrl-C or killing make stops every server process (no orphan holds the port).
PORT ?= 3000
HOST ?= 127.0.0.1
serve: $(BIN)/.installed  ## the deployment's champion as a BentoML service on $(HOST):$(PORT) (prints a curl)
	$(BIN)/python -m serving --host $(HOST) --port $(PORT)
