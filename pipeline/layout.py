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

    def staging(self, run_id: str) -> Path:  # ingest output before validation
        return self.home / "staging" / run_id

    def snapshot(self, data_version: str) -> Path:
        return self.home / "data" / data_version

    @property
    def feast(self) -> Path:  # registry, online store and offline feature tables
        return self.home / "feast"

    @property
    def feast_offline(self) -> Path:
        return self.feast / "offline"

    def features(self, data_version: str) -> Path:
        return self.home / "features" / data_version

    def split(self, data_version: str, protocol: str, seed: int) -> Path:
        return self.home / "splits" / data_version / f"{protocol}-seed{seed}"

    def run(self, model: str, run_id: str) -> Path:
        return self.home / "runs" / model / run_id

    @property
    def champion(self) -> Path:  # the promoted-model pointer, swapped atomically
        return self.home / "champion.json"

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
