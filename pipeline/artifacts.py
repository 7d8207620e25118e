"""Typed manifests that stages hand to each other.

Every stage writes its outputs under a directory and describes them in a small JSON manifest.
Airflow tasks pass only the manifest path through XCom; tests and the CLI use the dataclasses.
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
from typing import Any, Self


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


class Manifest:
    """Mixin for dataclasses: JSON round trip with ``Path`` fields restored."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        kwargs = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if field.name not in data:
                continue
            value = data[field.name]
            if value is not None and "Path" in str(field.type) and "dict" not in str(field.type):
                value = Path(value)
            kwargs[field.name] = value
        return cls(**kwargs)

    def save(self, path: Path) -> Path:
        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> Self:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class FeatureSet(Manifest):
    """Feast state for one snapshot plus the training examples drawn from it point-in-time."""

    data_version: str
    feature_repo: Path
    examples: Path  # one row per interaction, features as of the interaction's timestamp
    feature_views: list[str]
    feature_service: str
    materialized_until: str
    knowledge_graph: Path | None = None  # passed through from the snapshot (None: no item knowledge)


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class TrainResult(Manifest):
    model: str
    run_dir: Path
    checkpoint: Path
    hparams: dict[str, Any]
    epochs: int
    epoch_seconds: float
    interactions_per_second: float
    best_valid_ndcg10: float
    peak_rss_mb: float


@dataclasses.dataclass(frozen=True)
class Evaluation(Manifest):
    model: str
    metrics_path: Path  # metrics.json of the candidate
    leaderboard_path: Path  # markdown: candidate and baselines on the same split
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    protocol: str
    data_version: str


@dataclasses.dataclass(frozen=True)
class GateDecision(Manifest):
    model: str
    promoted: bool
    reason: str
    candidate_ndcg10: float
    popularity_ndcg10: float
    champion_ndcg10: float | None
    bento_tag: str | None = None
