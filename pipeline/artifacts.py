"""Typed, versioned records that cross a stage boundary: manifests, run records, deployment history.

Every stage writes its outputs under a directory and describes them in a small JSON manifest.
Airflow tasks pass only the manifest path through XCom; tests and the CLI use the dataclasses.
The run index (``pipeline.run_index``) stores ``RunRecord`` and ``DeploymentEvent`` rows in the same
shapes. Each class is a pydantic dataclass (fields are validated when a record is built or loaded)
with a ``SCHEMA_VERSION``; the JSON carries ``kind`` and ``schema_version`` so a reader can refuse a
record written by a newer recforge instead of misreading it.
All writes go to a temporary file first and are renamed into place, so a crash never leaves a
half-written artifact where the next stage (or the previous champion) would read it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write (a file or a directory); rename it to ``path`` on success.

    An existing ``path`` is replaced only after the block finished without an exception.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            # os.replace cannot swap a non-empty directory: move the old one aside first.
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Serialises writers of shared state across processes: concurrent DAG runs building Feast state,
    swapping the champion pointer or creating an Evidently project.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _encode(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


class ManifestError(ValueError):
    """A record cannot be read: wrong kind, or written by a newer schema than this code knows."""


class Manifest:
    """Mixin for the record dataclasses: versioned JSON round trip.

    Unknown keys are ignored on load (a field added within a schema version is optional by rule);
    a missing ``schema_version`` reads as 1 (records written before versioning).
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return {"kind": type(self).__name__, "schema_version": self.SCHEMA_VERSION, **body}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        kind = data.get("kind", cls.__name__)
        version = int(data.get("schema_version", 1))
        if kind != cls.__name__:
            raise ManifestError(f"expected a {cls.__name__} record, got a {kind}")
        if version > cls.SCHEMA_VERSION:
            raise ManifestError(
                f"{cls.__name__} record has schema_version {version}; this recforge reads up to "
                f"{cls.SCHEMA_VERSION} (written by a newer version?)"
            )
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: Path) -> Path:
        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> Self:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except ManifestError as exc:
            raise ManifestError(f"{path}: {exc}") from None


# Records hold paths and numbers; numpy scalars are accepted where floats are expected.
RECORD = ConfigDict(arbitrary_types_allowed=True)


@dataclass(frozen=True, config=RECORD)
class Snapshot(Manifest):
    """A validated, normalised copy of the input data (the offline source of truth).

    ``data_version`` is a content hash of the kept rows; the same input always gives the same version.
    Files follow the schema in ``ingestion.schema``.
    """

    data_version: str
    dataset: str
    interactions: Path
    users: Path
    items: Path
    quarantine: Path
    rows_in: int
    rows_kept: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int]
    time_min: str
    time_max: str
    # Item knowledge graph (columns item_id, item_entity, relation, entity; see ingestion/validate.py)
    # when the source has one; None for sources without it and for manifests written before it existed.
    knowledge_graph: Path | None = None
    # The data schema the attribute tables follow (pipeline/schema.py; None = the built-in movielens).
    schema: Path | None = None
    values_quarantined: int = 0  # attribute values set to unknown (quarantined with their reason)


@dataclass(frozen=True, config=RECORD)
class FeatureSet(Manifest):
    """Feast state for one snapshot plus the training examples drawn from it point-in-time."""

    data_version: str
    feature_repo: Path
    examples: Path  # one row per interaction, features as of the interaction's timestamp
    feature_views: list[str]
    feature_service: str
    materialized_until: str
    knowledge_graph: Path | None = None  # passed through from the snapshot (None: no item knowledge)
    # The Feast project this feature set lives in (one per data version and feature config, see
    # features.store.namespace_for); "" for example sets built without Feast (tests, benchmarks).
    namespace: str = ""
    schema: Path | None = None  # the data schema (None: the built-in movielens schema)
    users: Path | None = None  # the snapshot's attribute tables: every catalogue user and item,
    items: Path | None = None  # with or without events (cold items are scored from these)


@dataclass(frozen=True, config=RECORD)
class Split(Manifest):
    """One split of the examples, shared by every model and baseline of a run.

    ``train``/``valid``/``test`` are Parquet files of examples (same columns as ``FeatureSet.examples``).
    ``item_ids``/``user_ids`` fix the index space: item index ``i`` (1-based; 0 is padding) is
    ``item_ids[i - 1]``; user index ``u`` (0-based) is ``user_ids[u]``.
    """

    data_version: str
    protocol: str
    seed: int
    dir: Path
    train: Path
    valid: Path
    test: Path
    item_ids: Path  # JSON list of item id strings
    user_ids: Path  # JSON list of user id strings
    counts: dict[str, int]
    knowledge_graph: Path | None = None  # the split's copy of the snapshot's item knowledge graph
    feature_namespace: str = ""  # FeatureSet.namespace of the examples this split was cut from
    schema: Path | None = None  # the split's copy of the data schema (None: built-in movielens)
    users: Path | None = None  # the split's copies of the attribute tables (None: read attributes
    items: Path | None = None  # from the examples, for splits built without a snapshot)
    # Each part's ``recent_items`` holds only entries of the parts a model may see when it trains on,
    # is validated on or is tested on that part (training.split.VISIBLE_PARTS). A split without it
    # predates that; training refuses it rather than read the test part to clean validation histories.
    visible_histories: bool = False


@dataclass(frozen=True, config=RECORD)
class TrainResult(Manifest):
    model: str
    run_dir: Path
    checkpoint: Path
    hparams: dict[str, Any]
    epochs: int
    epoch_seconds: float
    interactions_per_second: float
    best_valid_ndcg10: float
    peak_rss_mb: float  # of the process that called train_model (a spawned DDP worker's not included)
    processes: int = 1  # training processes (DDP world size); epochs and scores are the whole run's
    valid_users: int | None = None  # validation users best_valid_ndcg10 is over (trainer.valid_users)


@dataclass(frozen=True, config=RECORD)
class Evaluation(Manifest):
    model: str
    metrics_path: Path  # metrics.json of the candidate
    leaderboard_path: Path  # markdown: candidate and baselines on the same split
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    protocol: str
    data_version: str
    report_path: Path | None = None  # report.html: metrics with bootstrap intervals, lifts, drift links
    # Where the stage's time went: "inputs" (test users, truth, exclusions), "model" (its full
    # ranking), one entry per baseline (its fit and ranking, or the read of its cache).
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, config=RECORD)
class GateDecision(Manifest):
    """What the promotion gate decided for one run, with every number it decided on.

    ``eligible`` is False when the run's data source, split protocol or metric differ from its
    deployment's key: such a run is never promoted, whatever its numbers. ``champion_judged`` says
    where the champion's number comes from: ``"recorded"`` (judged on this very split) or
    ``"rescored"`` (re-scored by the gate on this run's split: same test users, same exclusions).
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    model: str
    deployment: str
    eligible: bool
    promoted: bool
    reason: str
    metric: str
    candidate_value: float | None = None
    popularity_value: float | None = None
    champion_tag: str | None = None
    champion_value: float | None = None
    champion_judged: str | None = None
    champion_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    bento_tag: str | None = None  # the candidate's BentoML model (set by the package stage)
    bento: str | None = None  # the service Bento built for a promoted candidate

    def headline(self) -> str:
        """One line for people: the CLI's last line, the Airflow run note."""
        verdict = "PROMOTED" if self.promoted else "NOT PROMOTED"
        return f"{verdict} {self.model} into deployment {self.deployment!r}: {self.reason}"


@dataclass(frozen=True, config=RECORD)
class RunConfig(Manifest):
    """A run's resolved settings, written once when the run starts (``run_config.json``).

    Every later stage of the run (and every retry of a stage) reads its settings from here, so an edit
    of a YAML file while a run is in flight cannot give one run two configurations.
    """

    model: str
    run_id: str
    created_at: str
    config: dict[str, Any]  # PipelineConfig.model_dump(), overrides applied
    hparams: dict[str, Any]  # the model's hyperparameters (its YAML plus overrides)
    config_hash: str  # sha256 of config + hparams (canonical JSON), first 16 hex digits
    code_commit: str  # git commit of the code, "+dirty" when the work tree had changes
    deployment: str
    eligible: bool
    eligibility: str  # why (not) eligible for the deployment, one line


@dataclass(frozen=True, config=RECORD)
class RunRecord(Manifest):
    """One row of the run index: what a run is, how far it got and what it decided."""

    run_uid: str  # "<model>/<run id>"
    model: str
    run_id: str
    deployment: str
    status: str  # running | completed | failed
    started_at: str
    run_dir: str
    config_hash: str
    code_commit: str
    protocol: str
    seed: int
    eligible: bool
    eligibility: str
    data_version: str | None = None
    finished_at: str | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    split_dir: str | None = None
    feature_namespace: str | None = None
    artifact_dir: str | None = None
    bento_tag: str | None = None
    gate: dict[str, Any] | None = None  # GateDecision.to_dict()
    promoted: bool = False
    error: str | None = None

    @property
    def run_key(self) -> str:
        """(model, data version, protocol, seed, config hash, code commit): equal keys, equal runs."""
        parts = (self.model, self.data_version, self.protocol, self.seed, self.config_hash, self.code_commit)
        return "/".join(str(p) for p in parts)


@dataclass(frozen=True, config=RECORD)
class DeploymentEvent(Manifest):
    """One entry of a deployment's history; the newest entry is the deployment's champion.

    ``action`` is ``promote`` (a run passed the gate) or ``rollback`` (a person restored an earlier
    champion). Everything the service needs to serve the champion is here: the BentoML model tag and
    the Feast namespace whose online store holds the features it was judged with.
    """

    deployment: str
    action: str
    at: str
    run_uid: str
    model: str
    model_tag: str  # BentoML model the service loads
    feature_namespace: str
    data_version: str
    protocol: str
    split_dir: str
    artifact_dir: str  # the training artifact inside the stored BentoML model (the gate re-scores it)
    metric: str
    value: float
    reason: str
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    bento: str | None = None  # the built service Bento, when one was built
    previous_tag: str | None = None
    id: int | None = None  # position in the history (assigned by the run index)


@dataclass(frozen=True, config=RECORD)
class DriftResult(Manifest):
    """Outcome of one drift run; saved as ``out_dir/drift.json`` and read by the drift DAG.

    ``drift_detected`` is the one bit the DAG acts on (retraining is requested); ``reasons`` says which
    check fired and with which numbers, ``verdict`` sums them up in one sentence and ``action`` says
    what to do, so an on-call reader need not open the HTML to know why retraining started (or why it
    did not, e.g. for a broken upstream column).
    """

    drift_detected: bool
    reasons: list[str]
    model: str
    data_version: str
    created_at: str
    # Windows of equal event counts, reference right before current: row counts and [first, last]
    # event timestamps (ISO, UTC).
    reference_rows: int
    current_rows: int
    reference_window: list[str]
    current_window: list[str]
    # Data drift (DataDriftPreset over user/item features and interaction statistics).
    data_drift_share: float
    data_drifted_columns: list[str]
    data_columns: list[str]
    # Prediction drift (DataDriftPreset over the top-10 recommendations of sampled users).
    prediction_drift_share: float
    prediction_drifted_columns: list[str]
    prediction_columns: list[str]
    prediction_users: dict[str, int]
    # Ranking quality on the current window (RecsysPreset, k=10).
    current_ndcg10: float
    ranking_metrics: dict[str, float]
    ranking_users: int
    thresholds: dict[str, float]
    # Artifacts.
    out_dir: Path
    data_drift_html: Path
    data_drift_json: Path
    prediction_drift_html: Path
    prediction_drift_json: Path
    ranking_html: Path | None  # None when ranking quality was not measurable
    ranking_json: Path | None
    workspace: Path
    project: str
    project_id: str
    run_ids: dict[str, str]
    seconds: float
    timings: dict[str, float]  # seconds per step: load, data_drift, prediction_drift, ranking, save
    verdict: str = ""  # one sentence: what the checks found
    action: str = ""  # what to do about it
    data_drift_distances: dict[str, float] = dataclasses.field(default_factory=dict)
    data_drift_thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    # Monitored column -> [share missing in reference, share missing in current].
    missing_shares: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    broken_columns: list[str] = dataclasses.field(default_factory=list)
