"""The Airflow run note: one line per model run, from the run index (what the grid view shows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.run_notes import NOTE_MAX_CHARS, model_of, note_for
from pipeline.artifacts import GateDecision
from pipeline.run_index import RunIndex
from tests.records import make_event, make_record


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunIndex:
    monkeypatch.setenv("RECFORGE_HOME", str(tmp_path))
    monkeypatch.setenv("RECFORGE_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("RECFORGE_RUN_INDEX_URL", raising=False)
    return RunIndex(f"sqlite:///{tmp_path}/run_index.db")


def _decision(promoted: bool, reason: str) -> dict:
    return GateDecision(
        model="bpr", deployment="default", eligible=True, promoted=promoted, reason=reason, metric="ndcg@10"
    ).to_dict()


def test_only_model_pipeline_dags_get_notes() -> None:
    assert model_of("recsys_bpr") == "bpr"
    assert model_of("recsys_tune_bpr") is None and model_of("recsys_drift_monitor") is None
    assert model_of("other_dag") is None


def test_note_says_what_the_gate_decided_and_what_is_live(home: RunIndex) -> None:
    home.save_run(
        make_record("bpr/manual__2026-01-01T00_00_00_00_00", gate=_decision(False, "below popularity"))
    )
    home.append_event(make_event("recforge-sasrec:1"), expected_tag=None)
    note = note_for("recsys_bpr", "manual__2026-01-01T00:00:00+00:00", failed=False)
    assert note == (
        "NOT PROMOTED bpr into deployment 'default': below popularity | now deployment 'default' serves "
        "recforge-sasrec:1"
    )
    assert note_for("recsys_tune_bpr", "x", failed=False) is None


def test_failed_run_is_marked_failed_and_says_nothing_changed(home: RunIndex) -> None:
    home.save_run(make_record("bpr/r1"))
    note = note_for("recsys_bpr", "r1", failed=True)
    assert note.startswith("FAILED after training") and "serves nothing yet (unchanged)" in note
    assert home.run("bpr/r1").status == "failed"
    assert note_for("recsys_bpr", "never-trained", failed=True).startswith("FAILED before training")


def test_long_reasons_fit_airflows_note_column(home: RunIndex) -> None:
    home.save_run(make_record("bpr/r1", gate=_decision(True, "x" * 5000)))
    assert len(note_for("recsys_bpr", "r1", failed=False)) == NOTE_MAX_CHARS
