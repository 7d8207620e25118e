"""Builders of the run index's records for tests: every field has a plain default, overridable by name."""

from __future__ import annotations

from typing import Any

from pipeline.artifacts import DeploymentEvent, RunRecord


def make_record(uid: str, started_at: str = "2026-01-01T00:00:00", **fields: Any) -> RunRecord:
    """A ``RunRecord`` for run ``"<model>/<run id>"``."""
    model, run_id = uid.split("/")
    values: dict[str, Any] = {
        "run_uid": uid,
        "model": model,
        "run_id": run_id,
        "deployment": "default",
        "status": "running",
        "started_at": started_at,
        "run_dir": f"/runs/{uid}",
        "config_hash": "abc",
        "code_commit": "deadbeef",
        "protocol": "temporal",
        "seed": 1,
        "eligible": True,
        "eligibility": "competes",
        "data_version": "dv1",
    }
    return RunRecord(**{**values, **fields})


def make_event(tag: str, deployment: str = "default", value: float = 0.1, **fields: Any) -> DeploymentEvent:
    """A ``promote`` event making BentoML model ``tag`` the champion of ``deployment``."""
    model = tag.split(":")[0].removeprefix("recforge-")
    values: dict[str, Any] = {
        "deployment": deployment,
        "action": "promote",
        "at": "2026-01-01T00:00:00",
        "run_uid": f"{model}/{tag.split(':')[-1]}",
        "model": model,
        "model_tag": tag,
        "feature_namespace": "ns",
        "data_version": "dv1",
        "protocol": "temporal",
        "split_dir": "/s",
        "artifact_dir": "/a",
        "metric": "ndcg@10",
        "value": value,
        "reason": "test",
        "metrics": {"ndcg@10": value},
    }
    return DeploymentEvent(**{**values, **fields})
