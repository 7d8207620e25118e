"""Top-K off-policy corrected REINFORCE (Chen et al., WSDM 2019, "Top-K Off-Policy Correction for a
REINFORCE Recommender System").

State s = GRU over the point-in-time history of the example (right-aligned item indices, packed so
padding never enters the GRU, see gru4rec.run_gru). Two heads on s:
- the policy pi(.|s) = softmax over all items of <W s, q_i> (tied item embeddings q);
- the behaviour policy beta(.|s) = softmax of a second head with its own item embeddings on the
  DETACHED state, trained with plain cross-entropy on the logged item: it estimates the logging
  policy (here: the users' own choices) without pulling the shared state towards it (paper, sec. 4.3).

Loss per logged (s, a, r), averaged over the batch (the paper sums; the mean only rescales the lr):
  REINFORCE:  - min(pi(a|s) / beta(a|s), c) * lambda_K(s, a) * r * log pi(a|s)
  with lambda_K = K (1 - pi(a|s))^(K-1), the top-K correction (the derivative of
  alpha(a|s) = 1 - (1 - pi(a|s))^K, the probability that a appears in K items sampled from pi);
  importance weight and lambda_K are constants of the gradient (detached), as in the paper.
  + beta CE: - log beta(a|s)  (only the beta head and its embeddings get this gradient)
  + ``ce_weight`` * (- log pi(a|s)): a supervised term on every logged item. Why: rewards are 0 for
  the items the user rated below ``reward_threshold``, so REINFORCE alone never learns from ~45% of
  ML-100K's events; and early on pi is near uniform over 1.7k items, so lambda_K ~ K and the
  gradient is a K-scaled CE whose scale swings as pi sharpens. The CE term keeps the state learning
  from every interaction (what full-ranking evaluation counts as relevant) and stabilises the start.

Reward: r = 1 if rating >= ``reward_threshold`` (default 4, "liked") else 0; a NaN rating (implicit
source: the event itself is the engagement) gives r = 1. Non-negative rewards are chosen over
rating - 3 because full-ranking evaluation counts a watched-but-disliked film as relevant too:
pushing it DOWN would trade ranking quality for rating alignment.

Off-policy evaluation (``pointwise_metrics`` on the test examples, each with its own history):
self-normalised importance sampling (SNIPS; Swaminathan & Joachims, 2015) of the target policy
against the estimated beta,  V = sum_i w_i r_i / sum_i w_i,  w_i = min(target(a_i|s_i) / beta(a_i|s_i), c)
(cap c = ``weight_cap`` for the top-1 target and K * c for the top-K one, whose weights reach K).
``snips_reward@1``: target = pi (sample one item); with pi == beta every w_i = 1 and V is exactly the
logged reward. ``snips_reward@K``: target = alpha(a|s) = 1 - (1 - pi)^K, the probability that the
logged item is in the policy's top-K slate; even at pi == beta the weights alpha/beta vary (a rare
item gains up to K times more chance to be shown), so it differs from the logged reward by design.
``logged_reward`` = mean r of the logged events (the behaviour policy's value), for comparison.
Caveat: beta is itself estimated, so the estimate is only as good as beta's fit to the real logger.

Capping pi/beta (``weight_cap``) cuts the variance of the importance-weighted gradient, as the paper's
capping does: with a large cap and little dropout the validation curve peaked early and swung between
epochs (bench/results/model_defaults.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.data import ExampleSet
from training.models.base import RecommenderModule
from training.models.capabilities import PointwiseMetrics, ScoresFromHistory
from training.models.gru4rec import run_gru


def topk_correction(pi: torch.Tensor, k: int) -> torch.Tensor:
    """lambda_K = K (1 - pi)^(K - 1): d alpha / d pi for alpha = 1 - (1 - pi)^K."""
    return k * (1.0 - pi).pow(k - 1)


def topk_inclusion(pi: torch.Tensor, k: int) -> torch.Tensor:
    """alpha = 1 - (1 - pi)^K: probability that an item appears among K items sampled from pi."""
    return 1.0 - (1.0 - pi).pow(k)


def snips(target: torch.Tensor, beta: torch.Tensor, rewards: torch.Tensor, cap: float) -> float:
    """Self-normalised IPS estimate of the target policy's mean reward from logged (beta) events."""
    weights = (target / beta.clamp(min=1e-12)).clamp(max=cap).double()
    return float((weights * rewards.double()).sum() / weights.sum().clamp(min=1e-12))


class TopKReinforce(RecommenderModule, ScoresFromHistory, PointwiseMetrics):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int = 64,
        hidden_size: int = 64,
        dropout: float = 0.5,
        history_length: int = 10,
        top_k: int = 10,
        weight_cap: float = 2.0,
        reward_threshold: float = 4.0,
        ce_weight: float = 1.0,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n_users, self.n_items, self.history_length = n_users, n_items, history_length
        self.top_k, self.weight_cap = top_k, weight_cap
        self.reward_threshold, self.ce_weight = reward_threshold, ce_weight
        self.lr, self.weight_decay = lr, weight_decay
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embedding_size, hidden_size, batch_first=True)
        self.policy_head = nn.Linear(hidden_size, embedding_size)
        self.beta_head = nn.Linear(hidden_size, embedding_size)
        self.beta_item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        nn.init.xavier_normal_(self.item_embedding.weight)
        nn.init.xavier_normal_(self.beta_item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            self.beta_item_embedding.weight[0].zero_()

    def state(self, history: torch.Tensor) -> torch.Tensor:
        """(B, H) GRU state after the newest item of each right-aligned history (B, L)."""
        if history.shape[1] > self.history_length:
            history = history[:, -self.history_length :]
        x = self.dropout(self.item_embedding(history))
        return run_gru(self.gru, x, history)[:, -1]

    def policy_logits(self, state: torch.Tensor) -> torch.Tensor:
        logits = self.policy_head(state) @ self.item_embedding.weight.T
        logits[:, 0] = -torch.inf  # padding is never an action
        return logits

    def beta_logits(self, state: torch.Tensor) -> torch.Tensor:
        logits = self.beta_head(state.detach()) @ self.beta_item_embedding.weight.T
        logits[:, 0] = -torch.inf
        return logits

    def rewards(self, ratings: torch.Tensor) -> torch.Tensor:
        """1 for a liked (rating >= threshold) or implicit (NaN rating) event, else 0."""
        return torch.where(torch.isnan(ratings), 1.0, (ratings >= self.reward_threshold).float())

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        state = self.state(batch["history"])
        actions = batch["items"]
        log_pi = F.log_softmax(self.policy_logits(state), dim=1).gather(1, actions[:, None]).squeeze(1)
        log_beta = F.log_softmax(self.beta_logits(state), dim=1).gather(1, actions[:, None]).squeeze(1)
        with torch.no_grad():
            pi = log_pi.exp()
            ratio = (log_pi - log_beta).exp().clamp(max=self.weight_cap)
            scale = ratio * topk_correction(pi, self.top_k) * self.rewards(batch["ratings"])
        reinforce = -(scale * log_pi).mean()
        return reinforce - log_beta.mean() - self.ce_weight * log_pi.mean()

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.policy_logits(self.state(history))

    @torch.no_grad()
    def pointwise_metrics(self, examples: ExampleSet, chunk: int = 2048) -> dict[str, float]:
        """SNIPS estimates of the top-1 and top-K policies' reward vs the logged reward (docstring)."""
        data = examples.all()
        if data["items"].numel() == 0:
            return {}
        pis, betas = [], []
        for start in range(0, data["items"].shape[0], chunk):
            state = self.state(data["history"][start : start + chunk])
            actions = data["items"][start : start + chunk, None]
            pis.append(F.softmax(self.policy_logits(state), dim=1).gather(1, actions).squeeze(1))
            betas.append(F.softmax(self.beta_logits(state), dim=1).gather(1, actions).squeeze(1))
        pi, beta = torch.cat(pis), torch.cat(betas)
        rewards = self.rewards(data["ratings"])
        return {
            "snips_reward@1": snips(pi, beta, rewards, self.weight_cap),
            f"snips_reward@{self.top_k}": snips(
                topk_inclusion(pi, self.top_k), beta, rewards, self.weight_cap * self.top_k
            ),
            "logged_reward": float(rewards.double().mean()),
        }
