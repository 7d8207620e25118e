"""The lifecycle scenarios that used to replace a good live model, on a real slice of MovieLens-100K.

Each run goes through every real stage in-process (``orchestration.stages.run_all``, the CLI's path): ingest,
validation, Feast features, split, training, evaluation, gate, packaging, promotion, Evidently drift.
The deployment ``default`` is fixed by the home's config file: an events file, random-holdout
protocol (on 120 users the temporal protocol makes Popularity unbeatable), NDCG@10. After the first promotion, none of these may change the champion or any online value in the
champion's Feast namespace:

1. a run on a ``sample_users`` slice (used to replace the full-data champion);
2. a run on another split protocol (used to replace it, then be replaced by a worse temporal retrain);
3. a run on a different events file that fails the gate (used to rewrite the served online store);
4. a temporal run on NEWER data of the same source that is worse than the champion once the champion
   is re-scored on the new split (used to win because the champion's old number was "not comparable").
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from features.store import feature_store, online_user_features
from orchestration import stages
from pipeline.layout import Layout
from pipeline.run_index import RunIndex
from tests.integration.pipeline_home import make_home, ml100k_raw

pytestmark = pytest.mark.integration

USERS = 120
PROBE_USERS = ["1", "2", "3", "5", "8", "13", "21", "34", "55", "89"]


def _ml100k_events(users: int) -> pd.DataFrame:
    inter = pd.read_csv(ml100k_raw() / "ml-100k.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter = inter[inter["user_id"].astype(int) <= users]
    return (
        inter[["user_id", "item_id", "rating", "timestamp"]].sort_values("timestamp").reset_index(drop=True)
    )


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A home whose deployment reads ``events.csv``: the older 85% of the slice's events for now."""
    root = tmp_path_factory.mktemp("lifecycle")
    events = _ml100k_events(USERS)
    cut = int(len(events) * 0.85)
    events.iloc[:cut].to_csv(root / "events.csv", index=False)
    source = {"kind": "events", "path": str(root / "events.csv"), "name": "shop", "sample_users": None}
    env = make_home(
        root / "home",
        source=source,
        split={"protocol": "random_holdout"},
        trainer={"max_epochs": 2, "patience": 2, "num_threads": 1},
    )
    patch = pytest.MonkeyPatch()
    for key in ("RECFORGE_HOME", "RECFORGE_CONFIG", "BENTOML_HOME"):
        patch.setenv(key, env[key])
    request.addfinalizer(patch.undo)
    return root, events, cut


def _online(layout: Layout, namespace: str) -> dict:
    return online_user_features(feature_store(layout, namespace), PROBE_USERS)


def test_nothing_but_a_better_model_on_the_same_data_replaces_the_champion(shop) -> None:
    root, events, cut = shop
    _, first = stages.run_all("userknn", "champion")
    assert first.promoted and first.eligible, first.reason
    cfg, layout = stages.context()
    index = RunIndex.for_layout(layout, cfg.run_index.url)
    champion = index.champion("default")
    assert champion.model_tag == first.bento_tag and champion.model == "userknn"
    served = _online(layout, champion.feature_namespace)
    assert served["1"]["recent_items"]  # a real history is being served

    def unchanged(after: str) -> None:
        assert index.champion("default") == champion, f"the champion changed after {after}"
        assert _online(layout, champion.feature_namespace) == served, f"online values changed after {after}"

    # 1. A sample_users slice: trained, evaluated, recorded; never promoted.
    _, sliced = stages.run_all("userknn", "slice", {"source.sample_users": 60})
    assert not sliced.promoted and not sliced.eligible
    assert "source.sample_users 60 != None" in sliced.reason
    unchanged("the slice")

    # 2. Another split protocol.
    _, temporal = stages.run_all("popularity", "temporal", {"split.protocol": "temporal"})
    assert not temporal.promoted and "split protocol temporal != random_holdout" in temporal.reason
    unchanged("the temporal run")

    # 3. A different events file (older events only); its features land in a namespace of their own.
    events.iloc[: cut // 2].to_csv(root / "other.csv", index=False)
    _, other = stages.run_all("popularity", "other-file", {"source.path": str(root / "other.csv")})
    assert not other.promoted and "source.path" in other.reason
    other_record = index.run("popularity/other-file")
    assert other_record.feature_namespace != champion.feature_namespace
    unchanged("the run on another events file")

    # 4. Newer data of the same source; the challenger must beat the champion re-scored on it (test
    #    events the champion trained on are withheld from both, so memorising them does not count).
    events.to_csv(root / "events.csv", index=False)
    _, retrain = stages.run_all("popularity", "newer-data")
    assert retrain.eligible and retrain.champion_judged == "rescored"
    record = index.run("popularity/newer-data")
    assert record.data_version != champion.data_version and record.split_dir != champion.split_dir
    assert retrain.champion_value != champion.value  # the number the gate used is the re-scored one
    assert "withheld from both" in retrain.reason
    assert not retrain.promoted and retrain.candidate_value <= retrain.champion_value, retrain.reason
    unchanged("the worse retrain on newer data")

    # The record of every run says what happened; the summary says what is live.
    statuses = {r.run_uid: (r.status, r.promoted, r.eligible) for r in index.runs()}
    assert statuses == {
        "userknn/champion": ("completed", True, True),
        "userknn/slice": ("completed", False, False),
        "popularity/temporal": ("completed", False, False),
        "popularity/other-file": ("completed", False, False),
        "popularity/newer-data": ("completed", False, True),
    }
    summary = json.loads(Path(layout.summary).read_text())
    assert summary["deployments"]["default"]["model_tag"] == champion.model_tag
    assert (
        f"deployment `default`: userknn ({champion.model_tag})"
        in (layout.home / "leaderboard.md").read_text()
    )
