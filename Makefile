# recforge: `make demo` runs the whole pipeline on MovieLens-100K; `make test` runs the test suite.
# Both create .venv and install the pinned dependencies first (requirements.lock).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export RECFORGE_HOME ?= $(CURDIR)/.recforge
export OMP_WAIT_POLICY ?= PASSIVE
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast airflow serve drift-ui leaderboard bench lint format clean

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

demo: $(BIN)/.installed  ## the main job: both DAGs end to end through Airflow (SQLite, local Feast)
	$(BIN)/recforge demo

test: $(BIN)/.installed  ## the whole suite (unit + integration against the real stack)
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout 900 tests

test-fast: $(BIN)/.installed  ## unit tests only
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not integration" tests

airflow: $(BIN)/.installed  ## Airflow UI (standalone) on a free local port; prints URL and login
	$(BIN)/recforge airflow-ui

# Every registered model and baseline x {random_holdout, leave_last_out} on ML-100K, 2 processes x 1 thread
# (under 60 min on 2 cores): bench/results/leaderboard.json + bench/leaderboard.md. Extra flags, e.g.
# LEADERBOARD_ARGS="--models bpr,sasrec --max-epochs 5" or "--dataset ml-1m --data-path /data/ml-1m".
LEADERBOARD_ARGS ?=
leaderboard: $(BIN)/.installed  ## train + evaluate every model; leaderboard with target checks
	$(BIN)/python bench/leaderboard.py $(LEADERBOARD_ARGS)

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
