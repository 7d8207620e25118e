"""Rating MF (Koren, Bell & Volinsky, 2009): a latent factor model of EXPLICIT ratings.

r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>, trained with MSE on the logged ratings only (rows whose
rating is NaN, i.e. implicit sources, are skipped; there are no negatives: an unobserved pair is not
a rating of 0). Regularisation is an L2 penalty on the biases and factors of the rows a batch touched
(``reg_weight``), the classic SGD-MF regulariser, plus optional Adam weight decay on the whole tables
(``weight_decay``), which shrinks rarely rated items towards the global mean more strongly than
frequent ones (it acts every step, the data term only when the item is sampled).

``table_reg`` adds the penalty of Koren et al.'s objective literally: every parameter is regularised
once per step whether the batch rated its item or not, instead of once per rating. Per epoch
(N / B steps) that is lambda = table_reg * N / B per parameter row, while the data term of an item
grows with its number of ratings n_i; an item bias therefore ends near sum(r - mu) / (n_i + lambda'),
the damped mean of Koren's baseline predictors: an item with three 5-star ratings no longer
outranks one with 400 ratings averaging 4.3. This is the ranking fix that keeps MF a pure rating
model (the loss is still MSE on observed ratings only, nothing is imputed).

``mu`` is a learned parameter initialised to the mean rating of the first training batch, so the
model does not spend its first epoch learning the offset. The rating range and the running mean of
the training ratings are recorded in buffers while training (they travel in the checkpoint and the
artifact): predictions are clipped to the seen range for RMSE/MAE, and ``pointwise_metrics`` also
reports the RMSE of the global-mean predictor as the floor the model must beat.

Full ranking = items sorted by predicted rating. This is a rating model, not a ranking model: it
knows nothing about WHICH items a user chooses to rate, only how they rate them, so its top-10 is
rarely what the user watches next (Cremonesi et al., 2010): on ML-100K it ranks below Popularity,
and ``table_reg`` does not change that, yet as a rating predictor it beats the bias-only and
global-mean fits (bench/results/model_defaults.md). Early stopping on valid NDCG@10 picks an early epoch, because ranking gets
worse as the factors fit ratings.
"""

from __future__ import annotations

import torch
from torch import nn

from training.data import ExampleSet
from training.models.base import RecommenderModule
from training.models.capabilities import PointwiseMetrics


class RatingMF(RecommenderModule, PointwiseMetrics):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int = 32,
        lr: float = 5e-3,
        reg_weight: float = 0.05,
        table_reg: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n_users, self.n_items = n_users, n_items
        self.lr, self.reg_weight, self.weight_decay = lr, reg_weight, weight_decay
        self.table_reg = table_reg
        self.user_factors = nn.Embedding(n_users, embedding_size)
        self.item_factors = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items + 1, 1, padding_idx=0)
        self.global_bias = nn.Parameter(torch.zeros(()))
        nn.init.normal_(self.user_factors.weight, std=0.01)
        nn.init.normal_(self.item_factors.weight, std=0.01)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.item_factors.weight[0].zero_()
        # Statistics of the training ratings (updated in calculate_loss while training).
        self.register_buffer("rating_min", torch.tensor(float("inf")))
        self.register_buffer("rating_max", torch.tensor(float("-inf")))
        self.register_buffer("rating_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("rating_count", torch.zeros((), dtype=torch.float64))

    def _user_terms(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) factors and (B,) biases; a user unknown to the model (-1) gets zeros (item-only)."""
        known = ((users >= 0) & (users < self.n_users)).unsqueeze(1)
        index = users.clamp(min=0, max=self.n_users - 1)
        factors = self.user_factors(index) * known
        bias = self.user_bias(index) * known
        return factors, bias.squeeze(1)

    def predict_ratings(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Unclipped predicted ratings (B,) of the (user, item) pairs."""
        factors, user_bias = self._user_terms(users)
        dot = (factors * self.item_factors(items)).sum(-1)
        return self.global_bias + user_bias + self.item_bias(items).squeeze(1) + dot

    def _record_ratings(self, ratings: torch.Tensor) -> None:
        if not self.training:
            return
        with torch.no_grad():
            if self.rating_count == 0:
                self.global_bias.fill_(float(ratings.mean()))
            self.rating_min = torch.minimum(self.rating_min, ratings.min())
            self.rating_max = torch.maximum(self.rating_max, ratings.max())
            self.rating_sum += ratings.double().sum()
            self.rating_count += ratings.numel()

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ratings = batch["ratings"]
        rated = ~torch.isnan(ratings)
        if not bool(rated.any()):
            # Implicit rows only: nothing to fit, but Lightning still needs a differentiable loss.
            return self.global_bias * 0.0
        users, items, ratings = batch["users"][rated], batch["items"][rated], ratings[rated]
        self._record_ratings(ratings)
        pred = self.predict_ratings(users, items)
        mse = (pred - ratings).pow(2).mean()
        reg = (
            self.user_factors(users).pow(2).sum()
            + self.item_factors(items).pow(2).sum()
            + self.user_bias(users).pow(2).sum()
            + self.item_bias(items).pow(2).sum()
        ) / users.shape[0]
        loss = mse + self.reg_weight * reg
        if self.table_reg:
            loss = loss + self.table_reg * self._table_penalty()
        return loss

    def _table_penalty(self) -> torch.Tensor:
        """Mean squared value of every parameter row, touched by the batch or not (see the docstring)."""
        return (
            self.user_factors.weight.pow(2).sum(1).mean()
            + self.item_factors.weight[1:].pow(2).sum(1).mean()
            + self.user_bias.weight.pow(2).mean()
            + self.item_bias.weight[1:].pow(2).mean()
        )

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        factors, user_bias = self._user_terms(users)
        item_part = self.item_bias.weight.squeeze(1) + self.global_bias
        return factors @ self.item_factors.weight.T + user_bias.unsqueeze(1) + item_part.unsqueeze(0)

    def clip(self, ratings: torch.Tensor) -> torch.Tensor:
        """Clip to the training rating range (a no-op before any rating was seen)."""
        if torch.isfinite(self.rating_min) and torch.isfinite(self.rating_max):
            return ratings.clamp(min=float(self.rating_min), max=float(self.rating_max))
        return ratings

    @torch.no_grad()
    def pointwise_metrics(self, examples: ExampleSet) -> dict[str, float]:
        """RMSE / MAE of the clipped predictions on the rated test examples, and the global-mean RMSE."""
        data = examples.all()
        rated = ~torch.isnan(data["ratings"])
        if not bool(rated.any()):
            return {}
        truth = data["ratings"][rated].double()
        pred = self.clip(self.predict_ratings(data["users"][rated], data["items"][rated])).double()
        out = {
            "rmse": float((pred - truth).pow(2).mean().sqrt()),
            "mae": float((pred - truth).abs().mean()),
        }
        if self.rating_count > 0:
            mean = self.rating_sum / self.rating_count
            out["rmse_global_mean"] = float((truth - mean).pow(2).mean().sqrt())
        return out
