"""Serving every model family: cold start from attributes, retrieve-then-rank, explanations, packaging.

The logic is tested with tiny torch modules that implement the model contract (/work/notes/contract.md)
with hand-set scores, registered for the test only, so an expected ranking can be written down. The
last test trains the real TwoTower and DIN on the synthetic split and serves them through the same code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from pipeline.artifacts import Evaluation, TrainResult
from pipeline.layout import Layout
from pipeline.schema import DataSchema
from serving.package import ARTIFACT_SUBDIR, RETRIEVER_SUBDIR, choose_retriever, package_model
from serving.recommender import Recommender, load_recommender
from tests.serving_fixtures import RANKER_HPARAMS, passed
from training.artifact import save_model_artifact
from training.attributes import Attributes, encode_side
from training.models import MODELS, ModelSpec
from training.models.capabilities import (
    Explains,
    RanksCandidates,
    RanksCandidatesFromAttributes,
    ScoresColdItems,
    ScoresFromAttributes,
    ScoresFromHistory,
    UsesAttributes,
)

N_USERS, N_ITEMS = 4, 10
ITEM_IDS = [f"i{j}" for j in range(1, N_ITEMS + 1)]  # index j -> "i{j}"
USER_IDS = [f"u{u}" for u in range(N_USERS)]
SEEN = {0: [1, 2], 1: [9, 10], 2: [5], 3: [6]}
GENDER_F, GENDER_M = 1, 2  # codes of vocab["gender"] = ["F", "M"]


def _attributes() -> Attributes:
    """Users' age / gender / occupation; gender is the second code column (F = 1, M = 2)."""
    schema = DataSchema.model_validate(
        {
            "user_features": {
                "age": {"type": "numeric", "bins": [18, 25, 35]},
                "gender": {"type": "categorical"},
                "occupation": {"type": "categorical"},
            }
        }
    )
    users = pd.DataFrame(
        {
            "age": [20, 40, 20, 40],
            "gender": ["F", "M", "F", "M"],
            "occupation": ["artist", "doctor", "doctor", "artist"],
        },
        index=USER_IDS,
    )
    items = pd.DataFrame(index=ITEM_IDS)
    return Attributes(
        schema,
        encode_side("user", schema, users, USER_IDS, padding=False),
        encode_side("item", schema, items, ITEM_IDS, padding=True),
    )


class TinyRetriever(nn.Module, UsesAttributes, ScoresColdItems, ScoresFromAttributes):
    """Known users prefer high item ids; a cold user scores from gender: F -> low ids, M -> high ids."""

    def __init__(self, n_users: int, n_items: int, attributes: Attributes | None = None) -> None:
        super().__init__()
        self.item_bias = nn.Parameter(torch.arange(n_items + 1, dtype=torch.float32))

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.item_bias.expand(users.shape[0], -1).clone()

    def full_sort_predict_from_attributes(
        self, codes: torch.Tensor, numbers: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        sign = torch.where(codes[:, 1:2] == GENDER_F, -1.0, 1.0)
        return sign * self.item_bias


class TinyRanker(nn.Module, RanksCandidates, ScoresFromHistory, ScoresColdItems, Explains):
    """Prefers low item ids; explains each candidate by the newest history items (newest first)."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.item_bias = nn.Parameter(-torch.arange(n_items + 1, dtype=torch.float32))

    def score_candidates(
        self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        return self.item_bias[candidates]

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        everything = torch.arange(self.n_items + 1).expand(users.shape[0], -1)
        return self.score_candidates(users, history, everything)

    def explain(
        self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor, top: int = 3
    ) -> torch.Tensor:
        newest = history[:, -top:].flip(1)  # (B, top), padding (0) where the history is shorter
        return newest.unsqueeze(1).expand(-1, candidates.shape[1], -1)


class TinyRankerNoColdPath(TinyRanker):
    """A ranker that needs a known user index: unknown users keep the retrieval order."""

    scores_from_history = False


class TinyRankerWithAttributes(TinyRankerNoColdPath, RanksCandidatesFromAttributes):
    """The optional hook: ranks a cold user's candidates from attributes (M -> high ids first)."""

    def score_candidates_from_attributes(
        self, codes: torch.Tensor, numbers: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        sign = torch.where(codes[:, 1:2] == GENDER_M, -1.0, 1.0)
        return sign * self.item_bias[candidates]


TINY = {
    "tiny_retriever": TinyRetriever,
    "tiny_ranker": TinyRanker,
    "tiny_ranker_nocold": TinyRankerNoColdPath,
    "tiny_ranker_attr": TinyRankerWithAttributes,
}


@pytest.fixture(autouse=True)
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the tiny modules for this test only (the registry is restored afterwards)."""
    for name, cls in TINY.items():
        spec = ModelSpec(name, "example", f"{__name__}:{cls.__name__}", cls.__doc__ or name)
        monkeypatch.setitem(MODELS, name, spec)


def _train_matrix() -> sp.csr_matrix:
    rows, cols = zip(*[(u, i) for u, items in SEEN.items() for i in items], strict=True)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS + 1))


def _save(directory: Path, name: str, split_dir: str = "/splits/a", item_ids: list[str] = ITEM_IDS) -> Path:
    module = TINY[name](N_USERS, N_ITEMS)
    meta = {"split_dir": split_dir, "protocol": "leave_last_out", "data_version": "dv"}
    return save_model_artifact(
        directory,
        name,
        module,
        {},
        item_ids,
        USER_IDS,
        _train_matrix(),
        meta=meta,
        attributes=_attributes(),
    )


def _two_stage(tmp_path: Path, ranker: str = "tiny_ranker", n_candidates: int = 200) -> Recommender:
    return load_recommender(
        _save(tmp_path / ranker, ranker),
        retriever_dir=_save(tmp_path / "retriever", "tiny_retriever"),
        n_candidates=n_candidates,
    )


def _ids(rec) -> list[str]:
    return [i.item_id for i in rec.items]


def test_known_user_is_retrieved_then_ranked_with_exclusions_and_explanations(tmp_path: Path) -> None:
    rec = _two_stage(tmp_path)
    assert rec.retriever is not None and rec.retriever.name == "tiny_retriever"
    full = rec.recommend("u0", history=["i3", "i4"], k=3)
    # Every item but the seen (1, 2) and the online history (3, 4) is a candidate; the ranker wants low ids.
    assert _ids(full) == ["i5", "i6", "i7"]
    assert full.stages == ["retrieve:tiny_retriever@200", "rank:tiny_ranker"]
    assert full.strategy == "known_user" and not full.fallback and full.history_used == 2
    assert all(i.because_you_interacted_with == ["i4", "i3"] for i in full.items)

    # Only the retriever's top 3 (10, 9, 8: it prefers high ids) reach the ranker, which reverses them.
    shallow = rec.recommend("u0", history=["i3", "i4"], k=3, candidates=3)
    assert _ids(shallow) == ["i8", "i9", "i10"]
    assert shallow.stages == ["retrieve:tiny_retriever@3", "rank:tiny_ranker"]
    # The retrieval depth is never below k.
    assert len(rec.recommend("u0", history=None, k=5, candidates=2).items) == 5
    # Without an online history a known user's training items are the context (and the explanation).
    no_history = rec.recommend("u3", history=None, k=2)
    assert no_history.items[0].because_you_interacted_with == ["i6"]


def test_default_depth_and_describe(tmp_path: Path) -> None:
    rec = _two_stage(tmp_path, n_candidates=4)
    assert _ids(rec.recommend("u1", history=None, k=2)) == ["i5", "i6"]  # from retrieved 8, 7, 6, 5
    info = rec.describe()
    assert info["two_stage"] and info["is_ranker"] and info["explanations"]
    assert info["stages"] == [
        {"stage": "retrieve", "model": "tiny_retriever", "candidates": 4},
        {"stage": "rank", "model": "tiny_ranker", "method": "score_candidates"},
    ]
    assert info["cold_start"] == ["attributes", "popularity"]


def test_ranker_without_retriever_ranks_the_catalogue(tmp_path: Path) -> None:
    rec = load_recommender(_save(tmp_path / "r", "tiny_ranker"))
    out = rec.recommend("u0", history=["i3"], k=2)
    assert _ids(out) == ["i4", "i5"] and out.stages == ["full_ranking:tiny_ranker"]
    assert out.items[0].because_you_interacted_with == ["i3"]
    assert rec.describe()["stages"] == [{"stage": "full_ranking", "model": "tiny_ranker"}]


def test_cold_user_from_attributes_then_ranked(tmp_path: Path) -> None:
    rec = _two_stage(tmp_path, n_candidates=3)
    assert rec.wants_attributes("brand-new") and not rec.wants_attributes("u0")
    out = rec.recommend("brand-new", history=None, k=3, user_features={"gender": "M", "age": 30})
    # Retrieved from attributes (M -> 10, 9, 8), ranked by the ranker's cold path (index -1).
    assert _ids(out) == ["i8", "i9", "i10"]
    assert out.strategy == "attributes" and not out.fallback and out.fallback_reason is None
    assert out.stages[-1] == "rank:tiny_ranker"
    female = rec.recommend("brand-new", history=["i1"], k=3, user_features={"gender": "F"})
    assert _ids(female) == ["i2", "i3", "i4"]  # retrieved 2, 3, 4 (i1 is the history: excluded)
    assert female.items[0].because_you_interacted_with == ["i1"]


def test_cold_user_ranker_without_cold_path_keeps_retrieval_order(tmp_path: Path) -> None:
    rec = _two_stage(tmp_path, "tiny_ranker_nocold", n_candidates=3)
    out = rec.recommend("brand-new", history=["i1"], k=3, user_features={"gender": "M"})
    assert _ids(out) == ["i10", "i9", "i8"] and out.strategy == "attributes"
    assert out.stages == ["retrieve:tiny_retriever@3"] and "cannot score users unknown" in out.note
    assert all(i.because_you_interacted_with is None for i in out.items)  # the ranker did not score them
    assert rec.describe()["ranks_unknown_users"] is False


def test_cold_user_ranked_from_attributes_by_the_optional_hook(tmp_path: Path) -> None:
    rec = _two_stage(tmp_path, "tiny_ranker_attr", n_candidates=3)
    out = rec.recommend("brand-new", history=None, k=3, user_features={"gender": "M"})
    assert _ids(out) == ["i10", "i9", "i8"] and out.stages[-1] == "rank:tiny_ranker_attr"


def test_cold_user_without_usable_attributes_falls_back(tmp_path: Path) -> None:
    rec = _two_stage(tmp_path)
    for features in (None, {}, {"gender": "X", "occupation": "astronaut"}):  # unknown values -> code 0
        out = rec.recommend("brand-new", history=["not-an-item"], k=2, user_features=features)
        assert out.fallback and out.strategy == "popularity"
        assert out.fallback_reason == "unknown user without history or known attributes"
    # With a history but no known attribute, the attribute path still scores the history.
    out = rec.recommend("brand-new", history=["i2"], k=2, user_features={"gender": "X"})
    assert out.strategy == "attributes" and not out.fallback


def test_single_stage_attribute_model_serves_cold_users(tmp_path: Path) -> None:
    rec = load_recommender(_save(tmp_path / "ret", "tiny_retriever"))
    assert rec.uses_attributes and not rec.is_ranker
    out = rec.recommend("brand-new", history=None, k=2, user_features={"gender": "F", "occupation": "artist"})
    assert _ids(out) == ["i1", "i2"] and out.strategy == "attributes"
    assert out.items[0].because_you_interacted_with is None  # no explain() on this model
    known = rec.recommend("u0", history=None, k=2, user_features={"gender": "F"})  # attributes unused
    assert _ids(known) == ["i10", "i9"] and known.strategy == "known_user"


def test_retriever_must_index_the_same_items(tmp_path: Path) -> None:
    ranker = _save(tmp_path / "ranker", "tiny_ranker")
    other = _save(tmp_path / "other", "tiny_retriever", item_ids=[f"x{j}" for j in range(N_ITEMS)])
    with pytest.raises(ValueError, match="same split"):
        load_recommender(ranker, retriever_dir=other)
    with pytest.raises(ValueError, match="not a ranker"):
        load_recommender(_save(tmp_path / "ret", "tiny_retriever"), retriever_dir=other)


# ---- packaging -----------------------------------------------------------------------------------


def _run(
    layout: Layout, model: str, run_id: str, valid_ndcg: float, split_dir: str = "/splits/a"
) -> TrainResult:
    run_dir = layout.run(model, run_id)
    if model == "popularity":
        from training.models import build_model

        module = build_model("popularity", N_USERS, N_ITEMS).fit(_train_matrix())
        meta = {"split_dir": split_dir}
        save_model_artifact(
            run_dir / "model", model, module, {}, ITEM_IDS, USER_IDS, _train_matrix(), meta=meta
        )
    else:
        _save(run_dir / "model", model, split_dir)
    result = TrainResult(model, run_dir, run_dir / "model" / "weights.pt", {}, 1, 0.1, 1.0, valid_ndcg, 1.0)
    result.save(run_dir / "train.json")
    return result


def _package(layout: Layout, result: TrainResult) -> Path:
    evaluation = Evaluation(
        result.model,
        result.run_dir / "metrics.json",
        result.run_dir / "lb.md",
        {"ndcg@10": 0.3},
        {},
        "p",
        "dv",
    )
    decision = passed(result.model, 0.3)
    tag = package_model(result, evaluation, decision, layout, build_bento=False).bento_tag
    name, version = tag.split(":")
    return layout.bentoml_home / "models" / name / version


def test_packaging_a_ranker_stores_the_best_retriever_of_its_split(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    _run(layout, "tiny_retriever", "worse", 0.2)
    best = _run(layout, "tiny_retriever", "best", 0.4)
    _run(layout, "tiny_retriever", "other-split", 0.9, split_dir="/splits/b")  # other split: ignored
    _run(layout, "tiny_ranker_nocold", "r", 0.95)  # rankers do not retrieve
    _run(layout, "popularity", "p", 0.99)  # nor do baselines
    ranker = _run(layout, "tiny_ranker", "r1", 0.5)

    choice = choose_retriever(layout, ranker.run_dir / "model")
    assert choice is not None and choice.run_dir == best.run_dir and choice.best_valid_ndcg10 == 0.4

    model_dir = _package(layout, ranker)
    assert json.loads((model_dir / RETRIEVER_SUBDIR / "model.json").read_text())["name"] == "tiny_retriever"
    serving = json.loads((model_dir / "recforge.json").read_text())["serving"]
    assert [s["stage"] for s in serving["stages"]] == ["retrieve", "rank"]
    assert serving["retriever"]["run_dir"] == str(best.run_dir)
    # What the service does with the packaged model directory.
    rec = load_recommender(model_dir / "artifact", retriever_dir=model_dir / RETRIEVER_SUBDIR)
    assert rec.describe()["two_stage"] and rec.recommend("u0", None, 2).stages[-1] == "rank:tiny_ranker"


def test_packaging_a_ranker_without_retrieval_runs_says_so(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "home")
    _run(layout, "tiny_retriever", "other-split", 0.9, split_dir="/splits/b")
    model_dir = _package(layout, _run(layout, "tiny_ranker", "r1", 0.5))
    assert not (model_dir / RETRIEVER_SUBDIR).exists()
    serving = json.loads((model_dir / "recforge.json").read_text())["serving"]
    assert "retriever" not in serving and "whole catalogue" in serving["note"]
    assert serving["stages"] == [{"stage": "full_ranking", "model": "tiny_ranker"}]
    # A non-ranker is packaged alone whatever runs exist.
    plain = _package(layout, _run(layout, "tiny_retriever", "plain", 0.3))
    assert not (plain / RETRIEVER_SUBDIR).exists()
    assert (
        json.loads((plain / "recforge.json").read_text())["serving"]["stages"][0]["stage"] == "full_ranking"
    )


# ---- the real models -----------------------------------------------------------------------------

# The small but real hyperparameters the serving fixtures train with (tests/serving_fixtures.py).
REAL_HPARAMS = RANKER_HPARAMS


def test_trained_twotower_and_din_serve_two_stage_with_explanations(
    feature_set, layout: Layout, examples_parquet: Path
) -> None:
    """Train TwoTower and DIN on the synthetic split, package DIN: TwoTower retrieves, DIN ranks."""
    import pandas as pd

    from pipeline.config import SplitConfig, TrainerConfig
    from training.split import make_split
    from training.train import train_model

    torch.set_num_threads(1)
    split = make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout)
    cfg = TrainerConfig(max_epochs=3, patience=3, num_threads=1)
    for name in ("twotower", "din"):
        result = train_model(name, split, REAL_HPARAMS[name], cfg, layout.run(name, "t1"))
    model_dir = _package(layout, result)  # the DIN run
    rec = load_recommender(
        model_dir / "artifact", retriever_dir=model_dir / RETRIEVER_SUBDIR, n_candidates=20
    )
    assert rec.retriever is not None and rec.retriever.name == "twotower" and rec.name == "din"
    assert rec.describe()["cold_start"] == ["attributes", "history", "popularity"]

    examples = pd.read_parquet(examples_parquet)
    newest = examples.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")
    user = next(u for u in rec.user_index if len(newest.loc[u, "recent_items"]) >= 3)
    history = list(newest.loc[user, "recent_items"])
    out = rec.recommend(user, history, k=5)
    assert out.stages == ["retrieve:twotower@20", "rank:din"] and out.strategy == "known_user"
    # Exactly DIN's order of TwoTower's top 20 (seen and history excluded).
    user_idx, hist = rec.user_index[user], rec.map_history(history)
    retrieval = rec.retriever.artifact.score(torch.tensor([user_idx]), rec.retriever.history_tensor(hist))[0]
    retrieval[torch.as_tensor(np.concatenate([rec.seen_indices(user_idx), hist]))] = -torch.inf
    pool = torch.topk(retrieval, 20).indices
    with torch.no_grad():
        ranked = rec.artifact.module.score_candidates(
            torch.tensor([user_idx]), rec.history_tensor(hist), pool[None]
        )
    order = pool[torch.argsort(ranked[0], descending=True)][:5]
    expected = [rec.item_ids[int(i) - 1] for i in order]
    assert _ids(out) == expected
    for item in out.items:  # DIN's attention picks come from the user's own (newest 10) history
        assert item.because_you_interacted_with and set(item.because_you_interacted_with) <= set(
            history[-10:]
        )

    # A brand-new user described only by attributes: TwoTower retrieves from them, DIN ranks (no user id).
    profiles = examples.drop_duplicates("user_id").set_index("user_id")[["age", "gender", "occupation"]]
    pools = []
    for _, profile in profiles.drop_duplicates(["age", "occupation"]).iterrows():
        features = profile.to_dict()
        cold = rec.recommend("brand-new", None, k=5, user_features=features)
        assert cold.strategy == "attributes" and not cold.fallback and cold.stages[-1] == "rank:din"
        assert len(cold.items) == 5 and all(i.because_you_interacted_with is None for i in cold.items)
        pool = _ids(rec.retriever.recommend("brand-new", None, k=20, user_features=features))
        assert set(_ids(cold)) <= set(pool)  # DIN re-ranks what TwoTower retrieved from the attributes
        pools.append(pool)
    assert len({tuple(p) for p in pools}) > 1  # the attributes, not popularity, decide the candidates
    # Unknown user with a history but no attributes: TwoTower's history path.
    by_history = rec.recommend("brand-new", history, k=5)
    assert by_history.strategy == "history" and not {i.item_id for i in by_history.items} & set(history)


@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory: pytest.TempPathFactory):
    """One leave-last-out split of the synthetic examples, shared by the every-model test."""
    from pipeline.artifacts import FeatureSet
    from pipeline.config import SplitConfig
    from tests.conftest import synthetic_examples
    from training.split import make_split

    tmp = tmp_path_factory.mktemp("every-model")
    synthetic_examples().to_parquet(tmp / "examples.parquet", index=False)
    feature_set = FeatureSet(
        "synthetic-v1",
        tmp / "repo",
        tmp / "examples.parquet",
        [],
        "recsys_training",
        "2024-12-31T00:00:00+00:00",
    )
    layout = Layout(tmp / "home")
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), layout), layout


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_serves(name: str, synthetic_split) -> None:
    """Each model family, trained one epoch with its configs/models defaults, serves every request path.

    Training and validation run with the split's test part gone: no model's data path reads it."""
    from pipeline.config import TrainerConfig, load_model_params
    from training.train import train_model

    torch.set_num_threads(1)
    split, layout = synthetic_split
    cfg = TrainerConfig(max_epochs=1, patience=1, num_threads=1)
    hidden = split.test.with_name(f"test-hidden-{name}.parquet")
    split.test.rename(hidden)
    try:
        result = train_model(name, split, load_model_params(name), cfg, layout.run(name, "serve"))
    finally:
        hidden.rename(split.test)
    rec = load_recommender(result.run_dir / "model")
    user = rec.artifact.user_ids[1]
    history = [rec.item_ids[i] for i in (2, 6)]

    known = rec.recommend(user, history, k=5)
    assert known.strategy == "known_user" and not known.fallback and len(known.items) == 5
    excluded = {rec.item_ids[i - 1] for i in rec.seen_indices(rec.user_index[user])} | set(history)
    assert not {i.item_id for i in known.items} & excluded
    assert all(np.isfinite(i.score) for i in known.items)

    features = {"age": 27, "gender": "F", "occupation": "occupation1"}
    cold = rec.recommend("brand-new", history, k=5, user_features=features)
    expected = "attributes" if rec.uses_attributes else "history" if rec.uses_history else "popularity"
    assert cold.strategy == expected and cold.fallback == (expected == "popularity")
    assert len(cold.items) == 5 and not {i.item_id for i in cold.items} & set(history)
    assert rec.describe()["cold_start"][0] == expected

    if rec.can_explain:  # DIN, DIEN: explanations name items of the history
        for item in known.items:
            assert item.because_you_interacted_with and set(item.because_you_interacted_with) <= set(history)
    else:
        assert all(i.because_you_interacted_with is None for i in known.items)
    similar = rec.similar_items(history[0], 3)
    assert history[0] not in {i.item_id for i in similar}

    # The BentoML model store round trip, loaded exactly as the service loads it: identical scores.
    evaluation = Evaluation(
        name, result.run_dir / "m.json", result.run_dir / "l.md", {"ndcg@10": 0.5}, {}, "leave_last_out", "v"
    )
    decision = dataclasses.replace(passed(name, 0.5), promoted=False, reason="round-trip test")
    tag = package_model(result, evaluation, decision, layout, build_bento=False).bento_tag
    stored = layout.bentoml_home / "models" / Path(*tag.split(":"))
    served = load_recommender(stored / ARTIFACT_SUBDIR, retriever_dir=stored / RETRIEVER_SUBDIR)
    users = torch.arange(min(4, len(rec.artifact.user_ids)))
    hist = rec.history_tensor([2, 6]).expand(len(users), -1)
    assert torch.equal(served.artifact.score(users, hist), rec.artifact.score(users, hist))
