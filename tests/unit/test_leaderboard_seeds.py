"""bench/leaderboard.py over several seeds: mean/std aggregation, the noise rule, the README block."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _rec(model: str, protocol: str, seed: int, ndcg: float, **extra) -> dict:
    return {
        "model": model,
        "protocol": protocol,
        "seed": seed,
        "status": "ok",
        "metrics": {"ndcg@10": ndcg, "recall@10": ndcg * 2},
        **extra,
    }


def test_aggregate_gives_mean_and_sample_std_per_model_and_protocol(leaderboard) -> None:
    records = [
        _rec("bpr", "random_holdout", 1, 0.28),
        _rec("bpr", "random_holdout", 2, 0.30),
        _rec("bpr", "random_holdout", 3, 0.32),
        _rec("bpr", "leave_last_out", 1, 0.06),
        {"model": "bpr", "protocol": "random_holdout", "seed": 4, "status": "failed", "error": "x"},
    ]
    stats = leaderboard.aggregate(records)
    a = stats[("bpr", "random_holdout")]
    assert a["n"] == 3 and a["seeds"] == [1, 2, 3]  # the failed seed is not averaged in
    assert a["mean"]["ndcg@10"] == pytest.approx(0.30)
    assert a["std"]["ndcg@10"] == pytest.approx(0.02)  # sample std (n - 1), not population
    assert a["mean"]["recall@10"] == pytest.approx(0.60)
    one = stats[("bpr", "leave_last_out")]
    assert one["n"] == 1 and one["std"]["ndcg@10"] is None
    assert leaderboard._mean_pm(one, "ndcg@10") == "0.0600"
    assert leaderboard._mean_pm(a, "ndcg@10") == "0.3000 ± 0.0200"


def test_seen_included_metrics_aggregate_separately(leaderboard) -> None:
    records = [
        _rec("sasrec", "leave_last_out", s, 0.09, metrics_seen_included={"ndcg@10": 0.08 + s / 100})
        for s in (1, 2)
    ] + [_rec("bpr", "leave_last_out", 1, 0.06)]
    stats = leaderboard.aggregate(records, "metrics_seen_included")
    assert list(stats) == [("sasrec", "leave_last_out")]
    assert stats[("sasrec", "leave_last_out")]["mean"]["ndcg@10"] == pytest.approx(0.095)


def test_noise_rule(leaderboard) -> None:
    verdict = leaderboard.noise_verdict
    assert verdict((0.30, 0.01, 3), (0.25, 0.02, 3)) == "beats"  # 0.05 > max std 0.02
    assert verdict((0.30, 0.01, 3), (0.29, 0.02, 3)) == "within noise"
    assert verdict((0.29, 0.02, 3), (0.30, 0.01, 3)) == "within noise"
    assert verdict((0.20, 0.01, 3), (0.30, 0.02, 3)) == "below"
    assert verdict((0.30, None, 1), (0.299, None, 1)) == "beats"  # one seed: the numbers alone


def test_target_checks_report_within_noise_as_its_own_result(leaderboard) -> None:
    records = (
        [_rec("popularity", "random_holdout", s, v) for s, v in ((1, 0.15), (2, 0.16), (3, 0.14))]
        + [_rec("userknn", "random_holdout", s, v) for s, v in ((1, 0.30), (2, 0.31), (3, 0.29))]
        + [_rec("bpr", "random_holdout", s, v) for s, v in ((1, 0.29), (2, 0.31), (3, 0.30))]
    )
    checks = leaderboard.target_checks(records, ["popularity", "userknn", "bpr"], ["random_holdout"])
    by = {(c["target"], c["model"]): c for c in checks}
    assert by[("beats Popularity", "bpr")]["result"] == "PASS"
    noisy = by[("beats userknn", "bpr")]
    assert noisy["result"] == "WITHIN NOISE" and "within noise" in noisy["detail"]
    assert "± 0.0100 (n=3)" in noisy["detail"]
    single = leaderboard.target_checks(
        [_rec("popularity", "random_holdout", 1, 0.15), _rec("bpr", "random_holdout", 1, 0.29)],
        ["popularity", "bpr"],
        ["random_holdout"],
    )
    assert single[0]["result"] == "PASS" and "noise cannot be judged" in single[0]["detail"]


def test_best_deep_and_best_sequential_checks(leaderboard) -> None:
    records = [
        _rec("ease", "random_holdout", 1, 0.33),
        _rec("bpr", "random_holdout", 1, 0.29),
        _rec("lightgcn", "random_holdout", 1, 0.31),
        _rec("twotower", "random_holdout", 1, 0.32),  # trains on examples, not the "general" kind
        _rec("sasrec", "random_holdout", 1, 0.40),  # sequential: never the "best deep" of this check
        _rec("sasrec", "leave_last_out", 1, 0.09),
        _rec("gru4rec", "leave_last_out", 1, 0.10),
        _rec("narm", "leave_last_out", 1, 0.08),
    ]
    models = ["bpr", "lightgcn", "twotower", "sasrec", "gru4rec", "narm", "ease"]
    checks = leaderboard.target_checks(records, models, ["random_holdout", "leave_last_out"])
    by = {c["target"]: c for c in checks}
    assert by["best deep beats EASE"]["model"] == "twotower"
    assert by["best deep beats EASE"]["result"] == "FAIL"
    assert by["best sequential beats SASRec"]["model"] == "gru4rec"
    assert by["best sequential beats SASRec"]["result"] == "PASS"


def test_readme_table_bolds_the_best_mean_and_names_seeds_and_commit(leaderboard) -> None:
    records = (
        [_rec("bpr", "random_holdout", s, v) for s, v in ((1, 0.29), (2, 0.31))]
        + [_rec("sasrec", "random_holdout", s, v) for s, v in ((1, 0.18), (2, 0.20))]
        + [_rec("sasrec", "leave_last_out", s, v) for s, v in ((1, 0.09), (2, 0.09))]
    )
    meta = {"protocols": ["random_holdout", "leave_last_out"], "code_commit": "abc1234"}
    table = leaderboard.readme_table(records, meta)
    lines = table.splitlines()
    std = math.sqrt(2 * 0.01**2)
    assert lines[2] == f"| BPR-MF | **0.3000 ± {std:.4f}** | – |"
    assert lines[3].startswith("| SASRec | 0.1900 ± ") and lines[3].endswith("| **0.0900 ± 0.0000** |")
    assert "2 seeds (1, 2) at commit `abc1234`" in table
    one = leaderboard.readme_table([_rec("bpr", "random_holdout", 1, 0.29)], meta)
    assert "| BPR-MF | **0.2900** | – |" in one and "1 seed (1)" in one


def test_readme_block_is_replaced_and_the_rest_untouched(leaderboard, tmp_path: Path) -> None:
    start, end = leaderboard.README_START, leaderboard.README_END
    text = f"# Title\n\nbefore\n{start}\n| old | table |\n{end}\nafter\n"
    out = leaderboard.replace_block(text, "| new |\n")
    assert out == f"# Title\n\nbefore\n{start}\n| new |\n{end}\nafter\n"
    assert leaderboard.replace_block(out, "| new |\n") == out  # idempotent
    with pytest.raises(ValueError, match="leaderboard-table:start"):
        leaderboard.replace_block("# no markers here\n", "| new |\n")
    with pytest.raises(ValueError):
        leaderboard.replace_block(f"{end}\n{start}\n", "x\n")  # out of order


def test_seeds_argument(leaderboard) -> None:
    assert leaderboard.parse_seeds("2026, 2027,2028", None, 7) == [2026, 2027, 2028]
    assert leaderboard.parse_seeds(None, 5, 7) == [5]
    assert leaderboard.parse_seeds(None, None, 7) == [7, 8, 9]
    with pytest.raises(SystemExit):
        leaderboard.parse_seeds("1,1", None, 7)


def _meta(seeds: list[int], **extra) -> dict:
    return {
        "dataset": "ml-100k",
        "data_version": "v1",
        "events": 100,
        "generated": f"2026-12-0{seeds[0] % 9 + 1} 00:00 UTC",
        "code_commit": "abc1234",
        "command": f"python bench/leaderboard.py --seeds {seeds[0]}",
        "machine": "test",
        "cpu_count": 2,
        "cpu_affinity": 2,
        "python": "3.11",
        "torch": "2",
        "workers": 2,
        "threads": 1,
        "max_epochs": 30,
        "patience": 6,
        "seeds": seeds,
        "protocols": ["random_holdout"],
        "wall_seconds": 60.0,
        "n_ok": 1,
        "n_failed": 0,
        "n_skipped": 0,
        **extra,
    }


def test_runs_of_other_seeds_merge_into_one_leaderboard(leaderboard, tmp_path: Path) -> None:
    import json

    runs = []
    for seed, ndcg in ((1, 0.30), (2, 0.32), (3, 0.34)):
        run = tmp_path / f"run{seed}.json"
        run.write_text(json.dumps([_rec("bpr", "random_holdout", seed, ndcg, test_users=9, learned=True)]))
        leaderboard.meta_path(run).write_text(json.dumps(_meta([seed])))
        runs.append(run)
    out_json, out_md = tmp_path / "out" / "leaderboard.json", tmp_path / "out" / "leaderboard.md"
    assert leaderboard.merge_runs(runs, out_json, out_md) == 0
    meta = json.loads(leaderboard.meta_path(out_json).read_text())
    assert meta["seeds"] == [1, 2, 3] and meta["wall_seconds"] == 180.0 and meta["n_ok"] == 3
    assert [r["seed"] for r in json.loads(out_json.read_text())] == [1, 2, 3]
    mean, std, n = leaderboard._stats(json.loads(out_json.read_text()), "bpr", "random_holdout")
    assert n == 3 and mean == pytest.approx(0.32) and std == pytest.approx(0.02)
    assert "0.3200 ± 0.0200" in out_md.read_text()
    # Runs at another commit, or repeating a seed, are not one leaderboard.
    with pytest.raises(ValueError, match="code_commit"):
        leaderboard.merge_meta([_meta([1]), _meta([2], code_commit="def5678")])
    with pytest.raises(ValueError, match="share a seed"):
        leaderboard.merge_meta([_meta([1]), _meta([1])])
