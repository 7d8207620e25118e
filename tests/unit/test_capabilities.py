"""One contract test per declared capability, over every registered model that declares it.

Models state what they can do by inheriting the mixins of ``training.models.capabilities``; these tests
hold each declaration to its contract, so a model cannot claim an ability it does not have (and the
trainer, evaluator and service can rely on the declaration instead of probing for methods).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from orchestration.runs import model_params as load_model_params
from pipeline.artifacts import FeatureSet
from pipeline.config import SplitConfig
from pipeline.layout import Layout
from training.attributes import attributes_for
from training.data import build_example_set
from training.knowledge_graph import knowledge_graph_for
from training.models import MODELS, build_model, get_spec
from training.models.capabilities import (
    ALL,
    AddsHistoryToKnownUser,
    EmbedsItems,
    EmbedsNewItems,
    Explains,
    ItemSimilarity,
    NeedsTrainMatrix,
    PointwiseMetrics,
    RanksCandidates,
    RanksTopK,
    ScoresByDotProduct,
    ScoresColdItems,
    ScoresFromAttributes,
    ScoresFromHistory,
    UsesAttributes,
    UsesKnowledgeGraph,
    can,
)
from training.split import SplitIndex, make_split, train_matrix

torch.set_num_threads(1)


def declaring(capability: type) -> list[str]:
    return sorted(name for name, spec in MODELS.items() if capability in spec.capabilities)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import synthetic_examples

    root = tmp_path_factory.mktemp("capabilities")
    path = root / "examples.parquet"
    synthetic_examples(n_users=24, n_items=32, n_events=600, seed=1).to_parquet(path, index=False)
    feature_set = FeatureSet(
        "capabilities-v1", root, path, [], "recsys_training", "2024-12-31T00:00:00+00:00"
    )
    return make_split(feature_set, SplitConfig(protocol="leave_last_out"), Layout(root / "home"))


def built(name: str, split, matrix: sp.csr_matrix | None = None, with_attributes: bool = True, **overrides):
    """The model as the trainer builds it (its YAML, the split's data), fitted if closed-form, in eval mode."""
    torch.manual_seed(0)
    index = SplitIndex.load(split)
    matrix = train_matrix(split) if matrix is None else matrix
    params = load_model_params(name, overrides)
    attributes = (
        attributes_for(split) if with_attributes and can(get_spec(name).factory, UsesAttributes) else None
    )
    graph = knowledge_graph_for(split) if can(get_spec(name).factory, UsesKnowledgeGraph) else None
    module = build_model(name, index.n_users, index.n_items, attributes, graph, **params)
    if can(module, NeedsTrainMatrix):
        module.set_train_matrix(matrix)
    if not get_spec(name).trainable:
        module = module.fit(matrix)
    return module.eval()


def _history(*rows: list[int]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[0] * (width - len(r)) + r for r in rows])


def test_every_declared_method_is_implemented() -> None:
    """A declaration without its method would fail at serving time; catch it here, for every model."""
    for name, spec in MODELS.items():
        cls = spec.factory
        for capability in spec.capabilities:
            for method, member in vars(capability).items():
                if callable(member) and not method.startswith("_") and capability is not EmbedsItems:
                    assert getattr(cls, method) is not member, (
                        f"{name} declares {capability.__name__} without {method}"
                    )
    assert {c for spec in MODELS.values() for c in spec.capabilities} <= set(ALL)


@pytest.mark.parametrize("name", declaring(UsesAttributes))
def test_uses_attributes(name: str, split) -> None:
    """Built from the attributes it has inputs for them; without any (ids-only data) it still works, or,
    for a model made of nothing but attributes, says what to do."""
    with_attributes = built(name, split)
    try:
        ids_only = built(name, split, with_attributes=False)
    except ValueError as exc:
        assert "declares none" in str(exc)
        ids_only = None
    size = lambda m: sum(t.numel() for t in [*m.parameters(), *m.buffers()])  # noqa: E731
    history = _history([1, 2], [3])
    for module in (with_attributes, ids_only):
        if module is None:
            continue
        assert module is with_attributes or size(with_attributes) > size(module)
        with torch.no_grad():
            assert torch.isfinite(module.full_sort_predict(torch.tensor([0, 1]), history)[:, 1:]).all()


@pytest.mark.parametrize("name", declaring(EmbedsNewItems))
def test_embeds_new_items(name: str, split) -> None:
    """An item given only by its attributes (not in the catalogue) embeds exactly as a catalogue item with
    the same attributes and no training events, and different attributes give different vectors."""
    matrix = train_matrix(split).tolil()
    cold = [1, 2, 5]  # clusters 1, 2, 1 (conftest: cluster = item number % 4)
    matrix[:, cold] = 0
    module = built(name, split, matrix.tocsr())
    items = attributes_for(split).items
    codes, numbers = torch.from_numpy(items.codes[cold]), torch.from_numpy(items.numbers[cold])
    with torch.no_grad():
        new = module.item_embeddings_from_attributes(codes, numbers)
        catalogue = module.item_embeddings()[cold]
    assert new.shape == catalogue.shape
    assert torch.allclose(new, catalogue, atol=1e-5)
    assert not torch.allclose(new[0], new[1], atol=1e-3)


@pytest.mark.parametrize("name", declaring(ScoresColdItems))
def test_scores_cold_items(name: str, split) -> None:
    """Items with no training interaction get finite scores that depend on their attributes."""
    index = SplitIndex.load(split)
    matrix = train_matrix(split).tolil()
    cold = [1, 2, 5]  # items i0000.. of different clusters (conftest: cluster = item number % 4)
    matrix[:, cold] = 0
    module = built(name, split, matrix.tocsr())
    with torch.no_grad():
        scores = module.full_sort_predict(torch.tensor([0, 1]), _history([3, 4], [6]))[:, cold]
    assert torch.isfinite(scores).all()
    assert not torch.allclose(scores[:, 0], scores[:, 1])  # different attributes, different scores
    assert index.n_items >= max(cold)


@pytest.mark.parametrize("name", declaring(ScoresFromHistory))
def test_scores_from_history(name: str, split) -> None:
    """A user unknown to the model (-1) is scored from the history given."""
    module = built(name, split)
    if not can(module, ScoresFromHistory):  # switched off per instance by its YAML: test it switched on
        module = built(name, split, pool_history=True)
    with torch.no_grad():
        a = module.full_sort_predict(torch.tensor([-1]), _history([1, 5, 9]))
        b = module.full_sort_predict(torch.tensor([-1]), _history([2, 6, 10]))
    assert torch.isfinite(a[:, 1:]).all() and not torch.allclose(a[:, 1:], b[:, 1:])


@pytest.mark.parametrize("name", declaring(AddsHistoryToKnownUser))
def test_adds_history_to_known_user(name: str, split) -> None:
    """A known user's scores move with the history given, and an empty history leaves its training profile."""
    module = built(name, split)
    user = torch.tensor([0])
    with torch.no_grad():
        alone = module.full_sort_predict(user, _history([0]))
        with_history = module.full_sort_predict(user, _history([1, 5, 9]))
        unknown = module.full_sort_predict(torch.tensor([-1]), _history([0]))
    assert torch.isfinite(with_history[:, 1:]).all() and not torch.allclose(alone[:, 1:], with_history[:, 1:])
    assert not torch.allclose(alone[:, 1:], unknown[:, 1:])  # the training items count without a history


@pytest.mark.parametrize("name", declaring(ScoresFromAttributes))
def test_scores_from_attributes(name: str, split) -> None:
    """A user unknown to the model is scored from encoded attributes; the attributes matter."""
    module = built(name, split)
    users = attributes_for(split).users
    codes, numbers = (torch.from_numpy(a) for a in users.encode([{"occupation": "occupation0", "age": 15},
                                                                  {"occupation": "occupation3", "age": 51}]))  # fmt: skip
    with torch.no_grad():
        scores = module.full_sort_predict_from_attributes(codes, numbers, _history([1], [1]))
    assert scores.shape == (2, SplitIndex.load(split).n_items + 1)
    assert not torch.allclose(scores[0, 1:], scores[1, 1:])


@pytest.mark.parametrize("name", declaring(RanksCandidates))
def test_ranks_candidates(name: str, split) -> None:
    """Scoring candidates is the same function as full ranking, read at the candidates."""
    module = built(name, split)
    users, history = torch.tensor([0, 3]), _history([1, 2, 3], [7])
    candidates = torch.tensor([[4, 9, 1], [2, 2, 30]])
    with torch.no_grad():
        picked = module.score_candidates(users, history, candidates)
        full = module.full_sort_predict(users, history)
    torch.testing.assert_close(picked, full.gather(1, candidates), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", declaring(Explains))
def test_explains(name: str, split) -> None:
    """Explanations are history items (or 0 where the history is shorter), never other items."""
    module = built(name, split)
    history = _history([5, 9, 2], [11])
    candidates = torch.arange(1, 9).repeat(2, 1)
    with torch.no_grad():
        top = module.explain(torch.tensor([0, 1]), history, candidates, top=2)
    assert top.shape == (2, 8, 2)
    assert set(top[0].unique().tolist()) <= {5, 9, 2} and (top[0] > 0).all()
    assert (top[1, :, 0] == 11).all() and (top[1, :, 1] == 0).all()


@pytest.mark.parametrize("name", declaring(EmbedsItems))
def test_embeds_items(name: str, split) -> None:
    module = built(name, split)
    with torch.no_grad():
        vectors = module.item_embeddings()
    assert vectors.shape[0] == SplitIndex.load(split).n_items + 1 and vectors.dim() == 2
    assert torch.isfinite(vectors).all()


@pytest.mark.parametrize("name", declaring(ItemSimilarity))
def test_item_similarity(name: str, split) -> None:
    module = built(name, split)
    n = SplitIndex.load(split).n_items + 1
    assert tuple(module.similarity.shape) == (n, n)


@pytest.mark.parametrize("name", declaring(NeedsTrainMatrix))
def test_needs_train_matrix(name: str, split) -> None:
    """What it is given changes what it scores (a graph, the items it may trust)."""
    full = built(name, split)
    sparse = train_matrix(split).tolil()
    sparse[:, 1::2] = 0
    other = built(name, split, sparse.tocsr())
    history = _history([1, 2], [3])
    with torch.no_grad():
        a = full.full_sort_predict(torch.tensor([0, 1]), history)
        b = other.full_sort_predict(torch.tensor([0, 1]), history)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", declaring(UsesKnowledgeGraph))
def test_uses_knowledge_graph(name: str, split) -> None:
    from training.knowledge_graph import KnowledgeGraph

    module = built(name, split)
    assert isinstance(module.knowledge_graph, KnowledgeGraph)
    # Built without a graph (a dataset without one) it still scores; the stored graph rebuilds it.
    index = SplitIndex.load(split)
    bare = build_model(name, index.n_users, index.n_items, None, None, **load_model_params(name)).eval()
    assert isinstance(bare.knowledge_graph, KnowledgeGraph)
    rebuilt = build_model(
        name, index.n_users, index.n_items, None, module.knowledge_graph, **load_model_params(name)
    )
    rebuilt.load_state_dict(module.state_dict())
    with torch.no_grad():
        assert torch.isfinite(bare.full_sort_predict(torch.tensor([0]), _history([1]))[:, 1:]).all()
        torch.testing.assert_close(
            rebuilt.eval().full_sort_predict(torch.tensor([0]), _history([1])),
            module.full_sort_predict(torch.tensor([0]), _history([1])),
        )


@pytest.mark.parametrize("name", declaring(PointwiseMetrics))
def test_pointwise_metrics(name: str, split) -> None:
    module = built(name, split)
    length = load_model_params(name).get("history_length", 10)
    metrics = module.pointwise_metrics(build_example_set(split, "test", length, num_negatives=1, seed=0))
    assert metrics and all(np.isfinite(v) for v in metrics.values()), metrics


def test_every_model_declares_at_least_the_contract_it_is_served_by() -> None:
    """Rankers explain or not, but every ranker must rank; every attribute model must embed items."""
    for name in declaring(RanksCandidates):
        assert ScoresFromHistory in MODELS[name].capabilities  # the service scores their cold users
    for name in declaring(UsesAttributes):
        assert EmbedsItems in MODELS[name].capabilities


@pytest.mark.parametrize("name", declaring(ScoresByDotProduct))
def test_scores_by_dot_product(name: str, split) -> None:
    """Queries times items reproduce full_sort_predict for known and unknown (history) users."""
    module = built(name, split)
    users, history = torch.tensor([0, 3, -1]), _history([1, 5, 9], [2], [4, 7])
    with torch.no_grad():
        expected = module.full_sort_predict(users, history)[:, 1:]
        queries, items = module.dot_product_queries(users, history), module.dot_product_items()
    assert items.shape[0] == SplitIndex.load(split).n_items + 1 and queries.shape[1] == items.shape[1]
    torch.testing.assert_close(queries @ items[1:].T, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("by_blocks", [False, True], ids=["dense", "by-blocks"])
@pytest.mark.parametrize("name", declaring(ScoresByDotProduct))
def test_evaluation_by_dot_product_equals_ranking_full_sort_predict(
    name: str, by_blocks: bool, split, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation scores a dot-product model by its queries and items, into a reused buffer or (from
    ``lists_min_items`` on) block by block of the catalogue with sparse truth and exclusions: the same
    metrics, per user, as ranking its ``full_sort_predict``."""
    import functools

    import training.train
    from training.data import build_eval_inputs
    from training.metrics import RankingAccumulator, ranking_exclusions
    from training.topk import top_k_of_dot_product

    module = built(name, split).eval()
    inputs = build_eval_inputs(split, "test", load_model_params(name).get("history_length", 10))
    # Blocks of 7 items: the catalogue is small, and every list is merged across many blocks.
    monkeypatch.setattr(
        training.train, "top_k_of_dot_product", functools.partial(top_k_of_dot_product, block_items=7)
    )
    by_product = training.train.evaluation_accumulator(
        module, inputs, [3, 5], batch_users=7, keep_per_user=True, lists_min_items=0 if by_blocks else 10**9
    )
    # k up to 5, where every user of this split has that many rankable items: dense ranking lists
    # excluded items at the end of a shorter list, where the lists by blocks end in padding.
    by_predict = RankingAccumulator(inputs.n_items, [3, 5], keep_per_user=True)
    with torch.no_grad():
        for batch in inputs.batches(7):
            scores = module.full_sort_predict(batch["users"], batch["history"]).float()
            by_predict.update(scores, batch["truth"], ranking_exclusions(module, batch))
    assert inputs.n_users > 7  # several batches, the last one smaller
    assert by_product.compute() == pytest.approx(by_predict.compute(), rel=1e-6)
    for metric, values in by_predict.per_user_values().items():
        np.testing.assert_allclose(by_product.per_user_values()[metric], values, rtol=1e-6, err_msg=metric)


def _stable_lists(module, split, users: torch.Tensor, history: torch.Tensor, blocked: np.ndarray, k: int):
    """The reference of ``RanksTopK``: a stable descending sort of full_sort_predict (ties to the lower
    index) without padding, blocked and untrained items; 0 where fewer than k items are rankable."""
    with torch.no_grad():
        scores = module.full_sort_predict(users, history).double().numpy().copy()
    untrained = np.asarray(train_matrix(split).sum(axis=0)).ravel() == 0
    scores[:, 0] = -np.inf
    scores[blocked | untrained[None, :]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    lists = np.where(np.isfinite(np.take_along_axis(scores, order, axis=1)), order, 0)
    return np.pad(lists, ((0, 0), (0, k - lists.shape[1])))


@pytest.mark.parametrize("name", declaring(RanksTopK))
def test_ranks_top_k(name: str, split) -> None:
    """``top_k`` gives the stable-sort list of full_sort_predict, blocked and untrained items left out, for
    known and unknown users; a list longer than the rankable items ends in padding."""
    module = built(name, split)
    index = SplitIndex.load(split)
    users, history = torch.tensor([0, 3, 5, -1]), _history([1, 5, 9], [2], [], [4, 7])
    blocked = np.zeros((4, index.n_items + 1), dtype=bool)
    blocked[0, [1, 5, 9, 12]] = True
    blocked[1, 2:20] = True  # most of the catalogue: the list reaches the zero-score tail
    for k in (5, 10, index.n_items + 3):
        got = module.top_k(users, history, sp.csr_matrix(blocked), k).numpy()
        np.testing.assert_array_equal(
            got, _stable_lists(module, split, users, history, blocked, k), err_msg=f"k={k}"
        )
    assert (got[1] == 0).any()  # the longest list ran out of rankable items


@pytest.mark.parametrize("name", declaring(RanksTopK))
def test_evaluation_by_top_k_equals_ranking_full_sort_predict(name: str, split) -> None:
    """The evaluation ranks a ``RanksTopK`` model by its lists (sparse truth and exclusions): the same
    metrics, per user, as the dense evaluation of full_sort_predict with the same tie rule."""
    from training.data import build_eval_inputs
    from training.metrics import RankingAccumulator
    from training.train import evaluation_accumulator

    module = built(name, split).eval()
    inputs = build_eval_inputs(split, "test", 10)
    by_lists = evaluation_accumulator(
        module, inputs, [3, 5], batch_users=7, keep_per_user=True, lists_min_items=0
    )
    dense = RankingAccumulator(inputs.n_items, [3, 5], keep_per_user=True)
    for batch in inputs.batches(7):
        lists = _stable_lists(module, split, batch["users"], batch["history"], batch["exclude"].numpy(), 5)
        assert (lists > 0).all()  # every list full: the dense ranking has no padding
        # Scores that put the reference lists on top, in order, and every other item below them.
        ranked = torch.full((len(lists), inputs.n_items + 1), -1.0e9)
        ranked.scatter_(
            1, torch.from_numpy(lists), -torch.arange(5, dtype=torch.float32).expand(len(lists), 5)
        )
        dense.update(ranked, batch["truth"], None)
    assert inputs.n_users > 7
    assert by_lists.compute() == pytest.approx(dense.compute(), rel=1e-6)
    for metric, values in dense.per_user_values().items():
        np.testing.assert_allclose(by_lists.per_user_values()[metric], values, rtol=1e-6, err_msg=metric)


def test_only_large_catalogues_are_ranked_by_lists(split) -> None:
    """Below ``lists_min_items`` the evaluation ranks dense scores (the recorded small-catalogue numbers
    came from that ranking), from it on by the model's own lists."""
    from training.data import build_eval_inputs
    from training.train import evaluation_accumulator

    module = built("popularity", split)
    inputs = build_eval_inputs(split, "test", 10)

    def refuse(*args, **kwargs):
        raise AssertionError("ranked by lists")

    module.top_k = refuse
    evaluation_accumulator(module, inputs, [3], batch_users=7, lists_min_items=inputs.n_items + 1)
    with pytest.raises(AssertionError, match="ranked by lists"):
        evaluation_accumulator(module, inputs, [3], batch_users=7, lists_min_items=inputs.n_items)
