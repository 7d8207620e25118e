"""bench/leaderboard.py's report logic: target checks, evidence notes, re-rendering from saved records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _record(model: str, protocol: str, ndcg: float) -> dict:
    return {"model": model, "protocol": protocol, "status": "ok", "metrics": {"ndcg@10": ndcg}}


def test_targets_compare_the_measured_numbers(leaderboard) -> None:
    records = [
        _record("popularity", "random_holdout", 0.15),
        _record("userknn", "random_holdout", 0.30),
        _record("itemknn", "random_holdout", 0.25),
        _record("bpr", "random_holdout", 0.29),
        _record("lightgcn", "random_holdout", 0.31),
    ]
    checks = leaderboard.target_checks(
        records, ["popularity", "bpr", "lightgcn", "twotower"], ["random_holdout"]
    )
    result = {(c["target"], c["model"]): c["result"] for c in checks}
    assert result[("beats Popularity", "bpr")] == "PASS"
    assert result[("beats userknn", "bpr")] == "FAIL" and result[("beats itemknn", "bpr")] == "PASS"
    assert result[("beats userknn", "lightgcn")] == "PASS"
    assert result[("beats Popularity", "twotower")] == "N/A"  # not run: reported, never silently passed
    assert "popularity" not in {c["model"] for c in checks}  # baselines are not checked against themselves


def test_notes_are_read_by_model_and_protocol(leaderboard, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text(
        "# Title\n\nintro\n\n## bpr random_holdout\nline one\n\nline two\n## mf leave_last_out\nx\n"
    )
    assert leaderboard.read_notes(notes) == {
        ("bpr", "random_holdout"): "line one\n\nline two",
        ("mf", "leave_last_out"): "x",
    }


def test_every_failing_target_of_the_committed_leaderboard_has_evidence(leaderboard, tmp_path: Path) -> None:
    records_path = REPO / "bench" / "results" / "leaderboard.json"
    records = json.loads(records_path.read_text())
    meta = json.loads(leaderboard.meta_path(records_path).read_text())
    models = list(dict.fromkeys(r["model"] for r in records))
    checks = leaderboard.target_checks(records, models, meta["protocols"])
    notes = leaderboard.read_notes(leaderboard.NOTES_MD)
    missing = [
        (c["model"], c["protocol"])
        for c in checks
        if c["result"] == "FAIL" and not notes.get((c["model"], c["protocol"]))
    ]
    assert not missing, f"failing targets without evidence in {leaderboard.NOTES_MD.name}: {missing}"

    # Re-rendering from the saved records reproduces the committed report (no training needed).
    shutil.copy(records_path, tmp_path / "leaderboard.json")
    shutil.copy(leaderboard.meta_path(records_path), tmp_path / "leaderboard.meta.json")
    assert leaderboard.render_only(tmp_path / "leaderboard.json", tmp_path / "leaderboard.md") == 0
    assert (tmp_path / "leaderboard.md").read_text() == (REPO / "bench" / "leaderboard.md").read_text()


def test_label_placement_leaves_no_two_labels_overlapping(leaderboard) -> None:
    # A crowded corner: eight points within a few pixels of each other, as sasrec/deepfm/gru4rec were.
    points = [
        (300.0 + i % 3, 200.0 + 2 * i, name)
        for i, name in enumerate(
            ["sasrec", "deepfm", "gru4rec", "content", "popularity", "din", "dien", "itemknn"]
        )
    ]
    positions = leaderboard.place_labels(points, top=30, bottom=400)
    boxes = [
        leaderboard.label_box(x, y, text) for (x, y), (_, _, text) in zip(positions, points, strict=True)
    ]
    for i, a in enumerate(boxes):
        assert 30 <= a[1] and a[3] <= 400
        for b in boxes[i + 1 :]:
            assert not leaderboard._overlaps(a, b), (a, b)


def test_plot_marks_models_without_training_and_names_their_floor(leaderboard) -> None:
    records = [
        {**_record("popularity", "random_holdout", 0.15), "learned": False, "train_seconds": 0.3},
        {**_record("bpr", "random_holdout", 0.29), "learned": True, "train_seconds": 9.3},
    ]
    svg = leaderboard.svg_scatter(records, ["random_holdout"])
    assert svg.count("<path") == 2  # popularity's diamond and the legend's
    assert f"drawn at {leaderboard.NO_TRAINING_SECONDS:g} s" in svg
