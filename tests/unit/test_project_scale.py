"""The scale projection: each stage along its own slope, the whole pipeline summed and maxed from them."""

from __future__ import annotations

import math

import pytest

from tests.bench_modules import load_bench


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    return load_bench("project_scale")


def _run(events: int, scale: float, items: int) -> dict:
    """A bench_scale run record: ingest linear, features at slope 1.5 in time and flat in memory."""
    grow = events / 1_000_000
    stages = {
        "ingest": {"status": "ok", "wall_s": 10.0 * grow, "peak_rss_mb": 100.0 * grow},
        "validate": {"status": "ok", "wall_s": 1.0, "peak_rss_mb": 50.0},
        "features": {
            "status": "ok",
            "wall_s": 20.0 * grow**1.5,
            "peak_rss_mb": 3000.0,
            "parts_s": {"historical_s": 5.0 * grow**1.5},
        },
        "split": {"status": "ok", "wall_s": 2.0 * grow, "peak_rss_mb": 200.0 * grow / scale},
        "train": {"status": "ok", "wall_s": 3.0 * grow, "peak_rss_mb": 10.0},
        "evaluate": {
            "status": "ok",
            "wall_s": 4.0 * grow,
            "peak_rss_mb": 10.0,
            "parts_s": {"model": 1.0 * grow},
        },
    }
    return {"events": events, "items": items, "users": items, "models": ["bpr"], "stages": stages}


def _scale() -> dict:
    meta = {
        "code_commit": "a" * 40,
        "command": "bench",
        "machine": "m",
        "cpus": 2,
        "memory_gb": 1.0,
        "generated": "t",
    }
    return {"meta": meta, "runs": [_run(1_000_000, 1.0, 1000), _run(4_000_000, 1.0, 2000)]}


def test_each_stage_follows_its_own_slope_and_the_pipeline_adds_them_up(bench) -> None:  # type: ignore[no-untyped-def]
    projection = bench.project(_scale(), [16_000_000])
    rows = {row["stage"]: row for row in projection["rows"]}
    at = "16000000"
    assert rows["ingest"]["wall_s"]["slope"] == pytest.approx(1.0)
    assert rows["ingest"]["wall_s"]["projected"][at] == pytest.approx(160.0)
    assert rows["features"]["wall_s"]["projected"][at] == pytest.approx(20.0 * 16**1.5)
    assert rows["features: point-in-time"]["wall_s"]["projected"][at] == pytest.approx(5.0 * 16**1.5)
    assert rows["features"]["peak_rss_mb"]["projected"][at] == pytest.approx(3000.0)  # slope 0: flat
    total = rows["**whole pipeline (bpr)**"]
    stages = [
        20.0 * 16**1.5,
        160.0,
        1.0,
        32.0,
        48.0,
        64.0,
    ]  # features, ingest, validate, split, train, evaluate
    assert total["wall_s"]["projected"][at] == pytest.approx(sum(stages))
    # Its memory is the largest stage's at that size: the split's 3.2 GB (linear) passes the features'
    # flat 3 GB, the largest at the measured sizes.
    assert total["peak_rss_mb"]["measured"] == pytest.approx(3000.0)
    assert total["peak_rss_mb"]["projected"][at] == pytest.approx(3200.0)
    assert projection["catalogue"][at]["items"] == 4000  # items grew as events ** 0.5


def test_a_shrinking_cost_is_projected_flat_and_the_markdown_marks_what_passes_the_machine(bench) -> None:  # type: ignore[no-untyped-def]
    scale = _scale()
    scale["runs"][1]["stages"]["validate"]["wall_s"] = 0.5  # measured slope < 0: noise, not a saving
    projection = bench.project(scale, [100_000_000])
    rows = {row["stage"]: row for row in projection["rows"]}
    assert rows["validate"]["wall_s"]["slope"] < 0
    assert rows["validate"]["wall_s"]["projected"]["100000000"] == pytest.approx(0.5)
    text = bench.markdown(projection)
    # 1 GiB of memory: ingest's projected 9.8 GB is past it, validate's 50 MB is not.
    ingest = next(line for line in text.splitlines() if line.startswith("| ingest |"))
    validate = next(line for line in text.splitlines() if line.startswith("| validate |"))
    assert "**9.8 GB**" in ingest and "**" not in validate
    assert math.isclose(rows["ingest"]["peak_rss_mb"]["projected"]["100000000"], 10_000.0)


def test_one_size_cannot_be_projected(bench) -> None:  # type: ignore[no-untyped-def]
    scale = _scale()
    scale["runs"] = scale["runs"][:1]
    with pytest.raises(SystemExit, match="two sizes"):
        bench.project(scale, [100_000_000])
