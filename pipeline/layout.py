"""Where every artifact lives under ``RECFORGE_HOME``.

One place decides the layout so that stages, the service, the monitors and the tests agree.
Datasets, features and splits are keyed by content (data version), so two DAG runs of different
models reuse them instead of recomputing; runs are keyed by (model, run id).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    home: Path

    @property
    def cache(self) -> Path:  # downloaded raw files (never committed)
        return self.home / "cache"

    @property
    def event_log(
        self,
    ) -> Path:  # events pushed to the service, read by every ingest (ingestion/event_log.py)
        return self.home / "event_log"

    @property
    def served_log(self) -> Path:  # every /recommend answer (serving/served_log.py)
        return self.home / "served_log"

    def staging(self, run_id: str) -> Path:  # ingest output before validation
        return self.home / "staging" / run_id

    def snapshot(self, data_version: str) -> Path:
        return self.home / "data" / data_version

    @property
    def feast(self) -> Path:  # one directory per Feast namespace (see feast_namespace)
        return self.home / "feast"

    def feast_namespace(self, namespace: str) -> Path:
        """Registry, SQLite online store and offline tables of one Feast namespace (embedded profile).

        A namespace holds the features of one data version and feature config; runs on other data
        build their own, so the namespace a deployment's champion was judged with is never rewritten.
        """
        return self.feast / namespace

    def feast_offline(self, namespace: str) -> Path:
        return self.feast_namespace(namespace) / "offline"

    def features(self, data_version: str) -> Path:
        return self.home / "features" / data_version

    def split(self, feature_namespace: str, split_name: str) -> Path:
        return self.home / "splits" / feature_namespace / split_name

    def run(self, model: str, run_id: str) -> Path:
        return self.home / "runs" / model / run_id

    @property
    def run_index(self) -> Path:  # the embedded run index (SQLite): runs and deployment histories
        return self.home / "run_index.db"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def evidently_workspace(self) -> Path:
        return self.home / "evidently"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def summary(self) -> Path:
        return self.home / "summary.json"
