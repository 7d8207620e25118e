"""Pipeline configuration: one YAML file validated by pydantic, overridable per run.

``configs/pipeline.yaml`` holds the defaults; ``configs/models/<name>.yaml`` holds each model's
hyperparameters. Airflow Params and CLI flags override single keys (``load_config(overrides=...)``).
Every path the pipeline writes lives under ``RECFORGE_HOME`` (default: ``<repo>/.recforge``).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"

SplitProtocol = Literal["temporal", "leave_last_out", "random_holdout"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SourceConfig(_Strict):
    """Where the raw data comes from.

    ``recbole_ml100k``: MovieLens-100K atomic files from the recbole wheel (fetched offline by pip).
    ``grouplens_100k``: the official ``u.data``/``u.user``/``u.item`` layout in ``path``.
    ``movielens_dat``: the GroupLens ML-1M/ML-10M layout (``ratings.dat``, ``users.dat``, ``movies.dat``).
    ``events``: a generic CSV/Parquet events file at ``path`` (user_id,item_id,timestamp[,rating]),
    with optional ``users`` and ``items`` attribute tables.
    """

    @property
    def data_schema(self) -> Any:
        """The resolved ``DataSchema`` (pipeline.schema) of this source."""
        from pipeline.schema import resolve_schema

        return resolve_schema(self.schema_)

    def path_problem(self) -> str | None:
        """What is wrong with the source's paths, in one line (None: nothing found wrong): a ``path`` its
        kind needs and does not have, or a file or directory that does not exist (with the nearest names
        beside it). Checked before a run starts, and again when the source is read."""
        needs_dir = self.kind != "events"
        if not self.path and self.kind in ("grouplens_100k", "movielens_dat"):
            files = (
                "u.data, u.user, u.item, u.genre"
                if self.kind == "grouplens_100k"
                else "ratings.dat, movies.dat"
            )
            return f"source.path must name the directory holding {files} (source.kind={self.kind})"
        if not self.path and self.kind == "events":
            return "source.path must name the events file (CSV or Parquet), e.g. --set source.path=events.csv"
        for key, value, is_dir in (
            ("path", self.path, needs_dir),
            ("users", self.users, False),
            ("items", self.items, False),
        ):
            if value and not (Path(value).is_dir() if is_dir else Path(value).is_file()):
                return f"source.{key}={value}: no such {'directory' if is_dir else 'file'}{_nearest_paths(Path(value))}"
        return None

    kind: Literal["recbole_ml100k", "grouplens_100k", "movielens_dat", "events"] = "recbole_ml100k"
    path: str | None = None
    users: str | None = None
    items: str | None = None
    name: str = "ml-100k"
    # Keep only the events of the first N users (sorted by id): a small, real slice for quick runs.
    sample_users: int | None = Field(None, ge=1)
    # The user/item attribute columns (pipeline/schema.py): a file path, the name of a file in
    # configs/schemas/, or the mapping itself. None = the built-in "movielens" schema.
    schema_: str | dict[str, Any] | None = Field(None, alias="schema")
    # Also ingest the events pushed to the service since (``$RECFORGE_HOME/event_log``, see
    # ingestion/event_log.py); events the source already holds are not ingested twice.
    event_log: bool = True


class ValidationConfig(_Strict):
    max_rejected_share: float = Field(0.05, ge=0.0, le=1.0)
    rating_min: float = 0.0
    rating_max: float = 5.0
    # Events must not lie after "now" plus this tolerance (clock skew between producers).
    future_tolerance_seconds: int = 3600
    # Drop events whose user/item has no attribute row (when attribute tables are given).
    require_known_entities: bool = True


class FeatureConfig(_Strict):
    history_length: int = Field(50, ge=1)
    feature_repo: str = "feature_repo"


class SplitConfig(_Strict):
    protocol: SplitProtocol = "temporal"
    valid_share: float = Field(0.1, gt=0.0, lt=0.5)
    test_share: float = Field(0.1, gt=0.0, lt=0.5)
    seed: int = 2026


class TrainerConfig(_Strict):
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(6, ge=1)
    seed: int = 2026
    num_threads: int = 2
    deterministic: bool = True
    # Early stopping and checkpoints on a fixed, seeded sample of at most this many validation users
    # (None: all of them). Full ranking of every validation user after every epoch is what dominates an
    # epoch at 10^5+ users; the test is always every user.
    valid_users: int | None = Field(None, ge=1)

    # A misspelt accelerator or strategy would otherwise fail only inside the training task, after the
    # data stages ran; checked here, a run or --check refuses it at once. Lightning's registries are
    # imported only for a value other than the defaults, so loading a config stays light.
    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, value: str) -> str:
        if value in ("cpu", "auto", "gpu"):
            return value
        from lightning.pytorch.accelerators import AcceleratorRegistry

        known = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
        if value not in known:
            raise ValueError(f"unknown accelerator {value!r}{did_you_mean(value, known)}")
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value == "auto":
            return value
        from lightning.pytorch.strategies import StrategyRegistry

        known = ["auto", *sorted(StrategyRegistry.available_strategies())]
        if value not in known:
            raise ValueError(f"unknown strategy {value!r}{did_you_mean(value, known)}")
        return value


class TuningConfig(_Strict):
    """``recsys_tune_<model>`` / ``make tune``: how hyperparameters are searched (orchestration.tuning)."""

    search: Literal["grid", "tpe"] = "grid"  # grid: the tuning_grid; tpe: Optuna's TPE (orchestration.search)
    # TPE asks its trials in this many rounds, each trained in parallel; the tuning DAG has one task
    # group per round, so a change shows in the DAG when its file is next parsed.
    rounds: int = Field(3, ge=1, le=20)
    # TPE samples at random, and the pruner waits, until this many trials have finished.
    startup_trials: int = Field(3, ge=1)
    # Train every candidate this many times, with training seeds trainer.seed, +1, ..., and judge it by
    # the mean of their validation NDCG@10: one seed's score can rank two settings the wrong way round
    # when they are closer than the seed-to-seed noise (sequential models especially). Costs that many
    # trainings per candidate; 1 = the candidate's one training at trainer.seed.
    training_seeds: int = Field(1, ge=1, le=10)


Baseline = Literal["popularity", "itemknn", "userknn"]  # every baseline recforge evaluates
BASELINES: tuple[Baseline, ...] = get_args(Baseline)


class EvaluationConfig(_Strict):
    ks: list[int] = [10, 20]
    batch_users: int = 512
    # The baselines every evaluation reports beside the model. UserKNN's fit correlates every pair of
    # users, so its cost grows with the square of the user count (docs/scaling.md).
    baselines: list[Baseline] = list(BASELINES)
    # Session-based protocol (training/session_eval.py): a user's events further apart than this gap
    # start a new session; the last session_test_share of sessions by start time are the test sessions.
    session_gap_minutes: float = Field(30.0, gt=0.0)
    session_test_share: float = Field(0.1, gt=0.0, lt=0.5)

    @field_validator("baselines")
    @classmethod
    def _popularity_and_no_repeats(cls, value: list[str]) -> list[str]:
        if "popularity" not in value:
            raise ValueError("must include 'popularity': the promotion gate judges the lift over it")
        if len(set(value)) != len(value):
            raise ValueError(f"{value}: a baseline is listed twice")
        return value


class GateConfig(_Strict):
    # The candidate's NDCG@10 must be at least this multiple of Popularity's.
    min_lift_over_popularity: float = Field(1.05, ge=1.0)
    # It may fall below the champion's NDCG@10 by at most this much (absolute) and still replace it.
    champion_tolerance: float = Field(0.0, ge=0.0)
    build_bento: bool = True


class DeploymentConfig(_Strict):
    """A named serving slot and the fixed key its champion is judged by.

    A run competes for one deployment (``PipelineConfig.deployment``). It can be promoted into it only
    when the run's data source (every field of ``source``, the ``sample_users`` slice included), split
    protocol and selection metric equal the deployment's; other runs are trained, evaluated and
    recorded, never promoted there. ``source`` and ``protocol`` left empty mean the config *file*'s
    ``source`` section and ``split.protocol`` (before any per-run override), so a
    ``--set source.path=...`` never matches by accident.
    """

    protocol: SplitProtocol | None = None
    metric: str = Field("ndcg@10", pattern=r"^[a-z_]+@\d+$")
    source: SourceConfig | None = None
    description: str = ""


class ServingConfig(_Strict):
    # Default of /recommend's `diversity` (MMR re-ranking, serving.recommender): 0 = relevance order.
    # A value other than 0 is a choice of the accuracy/diversity trade-off: make it on validation data.
    diversity: float = Field(0.0, ge=0.0, le=1.0)
    # Packaging builds an ANN index (serving.ann) for a model that scores by a dot product when its
    # catalogue holds at least this many items; the service then retrieves by it instead of scoring
    # every item. Smaller catalogues are scored exactly (cheap there, and exact).
    ann_min_items: int = Field(100_000, ge=1)
    # Worker processes of `bentoml serve` (each holds its own model copy and event loop; the
    # environment variable RECFORGE_SERVE_WORKERS wins). More workers than cores only add contention.
    workers: int = Field(1, ge=1, le=64)
    # OpenTelemetry spans for the API endpoints. Off: BentoML's tracing middleware skips them (it is
    # a large share of a worker's event-loop work per request, docs/serving-performance.md); no
    # traces are collected anyway unless BentoML's tracing exporter and sample rate are configured.
    trace_requests: bool = False


class RunIndexConfig(_Strict):
    # SQLAlchemy URL of the run index; empty = ``sqlite:///$RECFORGE_HOME/run_index.db``. The
    # environment variable RECFORGE_RUN_INDEX_URL wins (secrets stay out of the repo), e.g.
    # postgresql+psycopg://user@127.0.0.1:5432/recforge for the production profile.
    url: str = ""


class MonitoringConfig(_Strict):
    # The drift thresholds below were chosen on stationary MovieLens-100K windows by bench/bench_drift.py;
    # bench/results/drift_calibration.md says how, and what false-alarm and detection rates they give.
    # Data drift: a monitored column drifts when its distance between the two windows reaches its
    # threshold (normed Wasserstein for numbers, Jensen-Shannon for categories); the report counts as
    # drift when the share of drifted columns exceeds data_drift_share_threshold (0: any one column).
    num_drift_threshold: float = Field(0.1, gt=0.0)
    cat_drift_threshold: float = Field(0.1, gt=0.0, le=1.0)
    column_drift_thresholds: dict[str, float] = Field(default_factory=dict)  # per-column overrides
    data_drift_share_threshold: float = Field(0.0, ge=0.0, lt=1.0)
    # A monitored column whose share of missing values grew by more than this is a broken feed.
    missing_share_increase: float = Field(0.1, gt=0.0, le=1.0)
    # Prediction drift: share of drifted recommendation columns above which it counts as drift.
    drift_share_threshold: float = Field(0.5, ge=0.0, le=1.0)
    # Ranking quality on the newest window below this NDCG@10 also counts as drift.
    min_current_ndcg10: float = Field(0.0, ge=0.0)
    # The current window is the newest share of events; the reference is as many events before it.
    current_window_share: float = Field(0.1, gt=0.0, le=0.5)
    max_users: int = 500
    # Served quality (monitoring/online_quality.py): the champion's served lists, judged by the events
    # that followed within the horizon. Its newest day's hit rate@k falling more than this share below
    # its first days' asks for retraining too (0 switches it off); days with fewer lists are not judged.
    served_quality_k: int = Field(10, ge=1)
    served_quality_horizon_hours: float = Field(24.0, gt=0)
    max_served_quality_drop: float = Field(0.3, ge=0.0, lt=1.0)
    min_served_lists: int = Field(100, ge=1)
    # Prediction drift of the served answers (monitoring/served_drift.py): the newest this many of the
    # champion's logged answers against as many before them.
    served_window: int = Field(500, ge=10)


class PipelineConfig(_Strict):
    home: str = ""
    source: SourceConfig = SourceConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeatureConfig = FeatureConfig()
    split: SplitConfig = SplitConfig()
    trainer: TrainerConfig = TrainerConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    gate: GateConfig = GateConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    serving: ServingConfig = ServingConfig()
    tuning: TuningConfig = TuningConfig()
    # The deployment this run competes for, and every deployment's judging key.
    deployment: str = "default"
    deployments: dict[str, DeploymentConfig] = Field(default_factory=lambda: {"default": DeploymentConfig()})

    @field_validator("deployments")
    @classmethod
    def _deployment_names(cls, value: dict[str, DeploymentConfig]) -> dict[str, DeploymentConfig]:
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name)]
        if bad:
            raise ValueError(f"deployment names may hold letters, digits, '_', '.', '-' (1-64): {bad}")
        if not value:
            raise ValueError("declare at least one deployment")
        return value

    run_index: RunIndexConfig = RunIndexConfig()

    @property
    def home_dir(self) -> Path:
        return Path(self.home or os.environ.get("RECFORGE_HOME") or REPO_ROOT / ".recforge").resolve()


def _deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted_to_nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"split.protocol": "x"}`` -> ``{"split": {"protocol": "x"}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


class ConfigError(ValueError):
    """A config file or override is wrong; the message says which key and what would fix it."""


def nearest(word: str, choices: list[str]) -> list[str]:
    """The (at most two) ``choices`` nearest to ``word`` by difflib's ratio, nearest first."""
    return difflib.get_close_matches(word, choices, n=2)


def did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``choices``, else ``""``."""
    close = nearest(word, choices)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _nearest_paths(path: Path) -> str:
    if not path.parent.is_dir():
        return f" (nor is there a directory {path.parent})"
    hint = did_you_mean(path.name, sorted(p.name for p in path.parent.iterdir()))
    return hint.replace("'", "").replace("mean ", f"mean {path.parent}/") if hint else ""


def config_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[str]:
    """Every dotted key an override may set (``split.protocol``, ``source.schema``, ...), in file order."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            keys.extend(config_keys(nested, key + "."))
        else:
            keys.append(key)
    return keys


def check_override_keys(overrides: dict[str, Any]) -> None:
    """Raise ``ConfigError`` for an override key the config does not have: the nearest keys, and the
    keys of its section (a key below a mapping setting, like ``monitoring.column_drift_thresholds.age``,
    is fine)."""
    keys = config_keys()
    for key in overrides:
        if key in keys or any(key.startswith(known + ".") for known in keys):
            continue
        section = key.split(".")[0]
        siblings = [k for k in keys if k.startswith(section + ".")]
        where = (
            f"{section} takes {', '.join(k.removeprefix(section + '.') for k in siblings)}"
            if siblings
            else f"the sections are {', '.join(dict.fromkeys(k.split('.')[0] for k in keys))}"
        )
        raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, keys)}; {where}")


def _validated(data: dict[str, Any], origin: str = "") -> PipelineConfig:
    """``PipelineConfig`` of ``data``; a wrong value is one ``ConfigError`` line naming key, value and
    what is accepted (the nearest allowed value of a choice); ``origin``: the file, when it is at fault."""
    prefix = f"{origin}: " if origin else ""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            raise ConfigError(
                f"{prefix}unknown config key {key!r}{did_you_mean(key, config_keys())}"
            ) from None
        allowed = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        hint = did_you_mean(str(error["input"]), allowed) if allowed else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{prefix}{key}={error['input']!r}: {error['msg']}{hint}{more}") from None


# Deployment keys are fixed by the config file: a run may choose *which* deployment it competes for
# (``deployment=...``) but may not redefine what a deployment judges on.
FROZEN_OVERRIDE_PREFIXES = ("deployments", "run_index")


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load ``configs/pipeline.yaml`` (or ``path``, or ``$RECFORGE_CONFIG``) and apply dotted overrides.

    Deployments without a ``source`` get the file's ``source`` section, resolved before the overrides.
    """
    path = Path(path or os.environ.get("RECFORGE_CONFIG") or CONFIG_DIR / "pipeline.yaml")
    data = yaml.safe_load(path.read_text()) or {} if path.exists() else {}
    frozen = sorted(k for k in overrides or {} if k.split(".")[0] in FROZEN_OVERRIDE_PREFIXES)
    if frozen:
        raise ConfigError(
            f"{', '.join(frozen)}: deployments and the run index are fixed in the config file ({path}); "
            "edit it there, or pick another deployment with deployment=NAME"
        )
    base = _validated(data, str(path))
    check_override_keys(overrides or {})
    merged = _deep_update(data, dotted_to_nested(overrides)) if overrides else data
    cfg = _validated(merged)  # the file passed: what fails now is an override
    deployments = {
        name: d.model_copy(
            update={"source": d.source or base.source, "protocol": d.protocol or base.split.protocol}
        )
        for name, d in cfg.deployments.items()
    }
    if cfg.deployment not in deployments:
        raise ConfigError(
            f"deployment={cfg.deployment!r} is not declared; declared in {path}: {sorted(deployments)}"
        )
    return cfg.model_copy(update={"deployments": deployments})


# Keys of configs/models/<model>.yaml that configure the pipeline around the model, not the model:
# they are never passed to the model's constructor.
TUNING_GRID_KEY = "tuning_grid"
SEARCH_SPACE_KEY = "search_space"


def _model_yaml(model: str) -> dict[str, Any]:
    path = CONFIG_DIR / "models" / f"{model}.yaml"
    data = yaml.safe_load(path.read_text()) or {} if path.exists() else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameter -> value, got {type(data).__name__}")
    return data


def load_model_params(model: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hyperparameters of ``model``: ``configs/models/<model>.yaml`` plus overrides, as written
    (``orchestration.runs.model_params`` checks them against what the model accepts).

    The ``tuning_grid`` and ``search_space`` keys (what ``recsys_tune_<model>`` searches) are stripped:
    they describe the search, not the model, and the model's constructor would reject them.
    """
    params = _model_yaml(model)
    params.pop(TUNING_GRID_KEY, None)
    params.pop(SEARCH_SPACE_KEY, None)
    params.update(overrides or {})
    return params


def _search_mapping(model: str, key: str, shape: str) -> dict[str, Any] | None:
    """The ``key:`` mapping of the model's YAML (None when absent); ``shape`` tells what it must hold."""
    value = _model_yaml(model).get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError(f"configs/models/{model}.yaml: {key} must be a non-empty mapping {shape}")
    return {str(name): spec for name, spec in value.items()}


def load_tuning_grid(model: str) -> dict[str, list[Any]] | None:
    """The ``tuning_grid:`` mapping (hyperparameter -> list of values) of the model's YAML, if any."""
    grid = _search_mapping(
        model,
        TUNING_GRID_KEY,
        "hyperparameter -> list of values, e.g. {lr: [0.001, 0.002], embedding_size: [32, 64]}",
    )
    return None if grid is None else {k: v if isinstance(v, list) else [v] for k, v in grid.items()}


def load_search_space(model: str) -> dict[str, Any] | None:
    """The ``search_space:`` mapping of the model's YAML (hyperparameter -> list of values or
    ``{low, high[, log, step]}``), the space of the TPE search; None when it declares none."""
    return _search_mapping(
        model,
        SEARCH_SPACE_KEY,
        "hyperparameter -> list of values or {low, high[, log, step]}, "
        "e.g. {lr: {low: 0.0005, high: 0.01, log: true}}",
    )
