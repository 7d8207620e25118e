"""The run index on SQLite: run records, deployment history, and the compare-and-swap of champions."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from pipeline.run_index import ChampionChanged, RunIndex
from tests.records import make_event, make_record


def test_runs_are_saved_updated_and_listed_newest_first(tmp_path: Path) -> None:
    index = RunIndex(f"sqlite:///{tmp_path}/index.db")
    index.save_run(make_record("bpr/r1", "2026-01-01T00:00:00"))
    index.save_run(make_record("sasrec/r2", "2026-01-02T00:00:00"))
    updated = index.update_run("bpr/r1", status="completed", metrics={"ndcg@10": 0.2}, promoted=True)
    assert index.run("bpr/r1") == updated and updated.metrics == {"ndcg@10": 0.2}
    assert [r.run_uid for r in index.runs()] == ["sasrec/r2", "bpr/r1"]
    assert [r.run_uid for r in index.runs(model="bpr")] == ["bpr/r1"]
    assert updated.run_key == "bpr/dv1/temporal/1/abc/deadbeef"
    with pytest.raises(KeyError, match="not in the run index"):
        index.update_run("nope/x", status="failed")


def test_champion_is_the_newest_event_of_its_deployment(tmp_path: Path) -> None:
    index = RunIndex(f"sqlite:///{tmp_path}/index.db")
    assert index.champion("default") is None
    index.append_event(make_event("m:1"), expected_tag=None)
    index.append_event(make_event("other:1", deployment="shop-b"), expected_tag=None)
    second = index.append_event(make_event("m:2"), expected_tag="m:1")
    assert index.champion("default") == second and second.id is not None
    assert [e.model_tag for e in index.history("default")] == ["m:1", "m:2"]
    assert index.champion("shop-b").model_tag == "other:1"
    assert index.deployments() == ["default", "shop-b"]
    with pytest.raises(ChampionChanged, match="champion is m:2, not m:1"):
        index.append_event(make_event("m:3"), expected_tag="m:1")
    assert index.champion("default").model_tag == "m:2"


def _contend(url: str, tag: str, start, results) -> None:
    index = RunIndex(url)
    start.wait()
    try:
        index.append_event(make_event(tag), expected_tag=None)
        results.put(("won", tag))
    except ChampionChanged:
        results.put(("lost", tag))


def race(url: str, contenders: int = 6) -> list[tuple[str, str]]:
    """``contenders`` processes judged against the same (absent) champion promote at once."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    RunIndex(url)  # create the tables once, before the race
    processes = [
        context.Process(target=_contend, args=(url, f"m:{i}", start, results)) for i in range(contenders)
    ]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(60)
    return [results.get(timeout=5) for _ in processes]


@pytest.mark.slow  # six spawned processes
def test_concurrent_promotions_against_the_same_champion_have_one_winner(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/index.db"
    outcomes = race(url)
    winners = [tag for outcome, tag in outcomes if outcome == "won"]
    assert len(winners) == 1 and len(outcomes) == 6
    assert [e.model_tag for e in RunIndex(url).history("default")] == winners
