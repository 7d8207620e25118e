"""Shared LightningModule behaviour: full-ranking validation and the optimizer.

Every learned model implements ``calculate_loss(batch)`` and ``full_sort_predict(users, history)``;
validation ranks the whole catalogue for each validation user (never sampled negatives) and logs
``valid/ndcg@10`` (the metric EarlyStopping and ModelCheckpoint watch) plus recall@10 and hr@10.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.metrics import (
    binary_auc,
    binary_logloss,
    list_hits,
    metrics_of_hits,
    never_ranked,
    per_user_metrics,
    ranking_exclusions,
)
from training.models.capabilities import PointwiseMetrics, RanksCandidates
from training.models.optim import adam
from training.topk import RankableVectors, top_k_of_dot_product

VALID_MONITOR = "valid/ndcg@10"
VALID_METRICS = ("ndcg@10", "recall@10", "hr@10")  # logged as valid/<name> after every epoch


def latent_factor_tables(
    n_users: int, n_items: int, size: int, sparse: bool = False
) -> tuple[nn.Embedding, nn.Embedding]:
    """User and item embedding tables of the MF family (BPR, LightGCN, CKE): N(0, 0.1), item row 0
    (padding) zero; ``sparse``: gradients of the looked-up rows only (``training.models.optim``)."""
    users = nn.Embedding(n_users, size, sparse=sparse)
    items = nn.Embedding(n_items + 1, size, padding_idx=0, sparse=sparse)
    nn.init.normal_(users.weight, std=0.1)
    nn.init.normal_(items.weight, std=0.1)
    with torch.no_grad():
        items.weight[0].zero_()
    return users, items


def bpr_loss(
    user: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    reg_terms: tuple[torch.Tensor, ...],
    reg_weight: float,
) -> torch.Tensor:
    """BPR: -log sigmoid(u.p - u.n), plus ``reg_weight`` x the squared norm of ``reg_terms`` (the
    embeddings the batch touched, as in the paper) per batch row."""
    margin = (user * pos).sum(-1) - (user * neg).sum(-1)
    reg = sum(term.pow(2).sum() for term in reg_terms) / user.shape[0]
    return -F.logsigmoid(margin).mean() + reg_weight * reg


def fold_in_users(
    user_table: torch.Tensor, item_table: torch.Tensor, users: torch.Tensor, history: torch.Tensor
) -> torch.Tensor:
    """Rows of ``user_table`` for known users; a user unknown at training time (index -1) is folded in
    as the mean of its history items' rows of ``item_table`` (padding 0 ignored)."""
    n_users = user_table.shape[0]
    known = (users >= 0) & (users < n_users)
    vectors = user_table[users.clamp(min=0, max=n_users - 1)]
    if not bool(known.all()):
        mask = history > 0
        items = item_table[history] * mask.unsqueeze(-1)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1)
        vectors = torch.where(known.unsqueeze(1), vectors, items.sum(dim=1) / count)
    return vectors


def item_train_counts(matrix: Any) -> torch.Tensor:
    """(n_items + 1,) float32: how many users interacted with each item in the training matrix
    (the models that score items without training interactions from attributes tell them apart by it)."""
    return torch.from_numpy(np.asarray((matrix > 0).sum(axis=0)).ravel().astype(np.float32))


class RecommenderModule(L.LightningModule):
    """Base class: subclasses set ``self.lr`` / ``self.weight_decay`` and implement the two methods."""

    lr: float = 1e-3
    weight_decay: float = 0.0

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def eval_cache(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()``, memoised while the module is in eval mode with gradients off.

        For per-catalogue work that does not depend on the request (item tower outputs, item field
        embeddings): computed once per validation pass or per server process instead of per batch or
        per request. Any mode switch (``train()``/``eval()``), weight load or attribute change clears it.
        """
        if self.training or torch.is_grad_enabled():
            return compute()
        cache = self.__dict__.setdefault("_eval_cache", {})
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def clear_eval_cache(self) -> None:
        self.__dict__.pop("_eval_cache", None)

    def train(self, mode: bool = True) -> RecommenderModule:
        self.clear_eval_cache()
        return super().train(mode)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self.clear_eval_cache()
        return super().load_state_dict(*args, **kwargs)

    def full_sort_predict(
        self, users: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def on_train_epoch_start(self) -> None:
        self._train_totals = torch.zeros(2, device=self.device)  # sum of batch loss x rows, rows

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.calculate_loss(batch)
        # The epoch's train loss is summed here and logged once, at the epoch's last batch: a self.log
        # call per step is the largest per-step cost Lightning adds to a small model's step. The sum
        # gives Lightning's batch-size-weighted epoch mean, in the same float32 arithmetic.
        rows = int(next(iter(batch.values())).shape[0])
        self._train_totals[0] += loss.detach() * rows
        self._train_totals[1] += rows
        if self.trainer.is_last_batch:
            totals = self.trainer.strategy.reduce(self._train_totals, reduce_op="sum")  # DDP: every process
            self.log(
                "train/loss",
                totals[0] / totals[1].clamp(min=1.0),
                prog_bar=True,
                on_step=False,
                on_epoch=True,
            )
        return loss

    def on_validation_epoch_start(self) -> None:
        # Per metric: the sum over batches of (batch mean x batch users), then the user count; the same
        # float32 arithmetic Lightning's batch_size-weighted epoch mean does, so values are unchanged.
        self._valid_totals = torch.zeros(len(VALID_METRICS) + 1, device=self.device)
        self.__dict__.pop("_valid_rankable", None)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "truth_rows" in batch:  # sparse rows: a dot-product model of a large catalogue (train.py)
            values = self._metrics_by_blocks(batch)
        else:
            scores = self.full_sort_predict(batch["users"], batch["history"])
            values, _ = per_user_metrics(scores, batch["truth"], ranking_exclusions(self, batch), [10])
        size = int(batch["users"].shape[0])
        for position, name in enumerate(VALID_METRICS):
            self._valid_totals[position] += values[name].mean() * size
        self._valid_totals[-1] += size

    def _metrics_by_blocks(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Validation metrics at 10 of a ``ScoresByDotProduct`` model, ranked as the evaluator ranks
        a large catalogue (``training.topk.top_k_of_dot_product``, sparse truth and exclusions); the
        packed item vectors are built once per validation pass."""
        model: Any = self  # a ScoresByDotProduct subclass (train.py sends sparse rows to no other)
        rankable = self.__dict__.get("_valid_rankable")
        if rankable is None:
            never = never_ranked(self, batch.get("untrained"))
            rankable = self.__dict__["_valid_rankable"] = RankableVectors(
                model.dot_product_items().cpu(), never
            )
        queries = model.dot_product_queries(batch["users"], batch["history"]).cpu()
        top = top_k_of_dot_product(queries, rankable, batch["exclude_rows"], 10)
        hits, n_truth = list_hits(top, batch["truth_rows"])
        return {name: value.to(self.device) for name, value in metrics_of_hits(hits, n_truth, [10]).items()}

    def on_validation_epoch_end(self) -> None:
        self.__dict__.pop("_valid_rankable", None)  # the item vectors change with the next epoch
        # The mean over users of every process. Under DDP each process validates its own users
        # (training.data.UserShard) and the sums and counts are added up across processes, so the value
        # equals the single-process one and every process early-stops and checkpoints on the same
        # number. (Lightning's sync_dist=True would average the counts as integers, truncating them.)
        totals = self.trainer.strategy.reduce(self._valid_totals, reduce_op="sum")
        users = totals[-1].clamp(min=1.0)
        for position, name in enumerate(VALID_METRICS):
            self.log(f"valid/{name}", totals[position] / users, prog_bar=name == "ndcg@10")

    def configure_optimizers(self) -> Any:
        return adam(self, self.lr, self.weight_decay)


class CandidateRanker(RecommenderModule, RanksCandidates, PointwiseMetrics):
    """CTR rankers (DeepFM, DIN, DIEN): trained and judged on (positive, sampled negatives) candidates.

    Subclasses implement ``score_candidates(users, history, candidates (B, N)) -> (B, N)`` logits; the
    service uses it as the second stage behind a retrieval model (``is_ranker``).
    """

    POINTWISE_CHUNK = 2048  # test examples scored per call in ``pointwise_metrics``

    def score_candidates(
        self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def candidate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """BCE of the positive item (label 1) against the sampled negatives (label 0)."""
        candidates = torch.cat([batch["items"].unsqueeze(1), batch["negatives"]], dim=1)
        logits = self.score_candidates(batch["users"], batch["history"], candidates)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.candidate_loss(batch)

    @torch.no_grad()
    def pointwise_metrics(self, examples: Any) -> dict[str, float]:
        """AUC and log loss of the test positives vs one sampled negative each (CTR view of the model)."""
        self.eval()
        data = examples.all()
        negatives = data.get("negatives")
        if negatives is None:
            negatives = torch.from_numpy(examples.sample_negatives(data["users"].numpy(), 1))
        candidates = torch.cat([data["items"].unsqueeze(1), negatives[:, :1]], dim=1)
        logits = []
        for start in range(0, candidates.shape[0], self.POINTWISE_CHUNK):
            rows = slice(start, start + self.POINTWISE_CHUNK)
            logits.append(self.score_candidates(data["users"][rows], data["history"][rows], candidates[rows]))
        scores = torch.cat(logits).float()
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        return {"auc": binary_auc(scores, labels), "logloss": binary_logloss(scores, labels)}
