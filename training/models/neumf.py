"""NeuMF (He et al., 2017, "Neural Collaborative Filtering"): GMF + MLP fused by a final linear layer.

Two branches with their own user/item embeddings:
- GMF: p_u * q_i (element-wise), size ``embedding_size``;
- MLP: [p'_u, q'_i] (size 2 * ``mlp_embedding_size``) through ``mlp_layers`` (Linear + ReLU each);
logit(u, i) = h^T [GMF, MLP] + b.

Training on the GeneralDataModule's (user, positive, negative) triples. ``loss_type``:
- ``bpr`` (default): -log sigmoid(logit_pos - logit_neg), the pairwise loss on the NeuMF logit
  (the comparison with BCE: bench/results/model_defaults.md);
- ``bce``: the paper's pointwise log loss with the sampled negative as the 0 label.
Plus an L2 penalty (``reg_weight``) on the embeddings the batch touched, as in BPR.

Full ranking without B x N x (2d) inputs: the first MLP layer is linear in the concatenation, so
W [p'; q'] + b = W_u p' + (W_i q' + b); the item half is computed once for the whole catalogue and
broadcast-added to the user half, then the remaining layers run on (chunk of users) x N x h1
activations, with users chunked so that one chunk holds at most ``predict_chunk`` activations.

Unknown users (index -1): a learned "unknown user" row (index n_users) in both user tables. During
training each triple's user is replaced by that row with probability ``unknown_user_prob``, so the row
learns a population-level preference (popularity-like ranking). NeuMF has no principled fold-in from
an item history (its user and item spaces are tied only through the MLP, so the mean history item
embedding is not a user embedding), so the request history is not used for them; the service's
``scores_from_history`` stays False, as for models that cannot use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import RecommenderModule
from training.models.capabilities import EmbedsItems


class NeuMF(RecommenderModule, EmbedsItems):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int = 32,
        mlp_embedding_size: int = 32,
        mlp_layers: list[int] | tuple[int, ...] = (64, 32, 16),
        dropout: float = 0.0,
        loss_type: str = "bpr",
        lr: float = 2e-3,
        reg_weight: float = 3e-3,
        unknown_user_prob: float = 0.01,
        predict_chunk: int = 4_000_000,
    ) -> None:
        super().__init__()
        if loss_type not in ("bpr", "bce"):
            raise ValueError(f"loss_type must be 'bpr' or 'bce', not {loss_type!r}")
        if not mlp_layers:
            raise ValueError("NeuMF needs at least one MLP layer")
        self.save_hyperparameters()
        self.n_users, self.n_items = n_users, n_items
        self.lr, self.reg_weight, self.loss_type = lr, reg_weight, loss_type
        self.unknown_user_prob, self.predict_chunk = unknown_user_prob, predict_chunk
        layers = [int(x) for x in mlp_layers]
        # Row n_users of each user table is the learned "unknown user".
        self.gmf_user = nn.Embedding(n_users + 1, embedding_size)
        self.gmf_item = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        self.mlp_user = nn.Embedding(n_users + 1, mlp_embedding_size)
        self.mlp_item = nn.Embedding(n_items + 1, mlp_embedding_size, padding_idx=0)
        self.mlp_in = nn.Linear(2 * mlp_embedding_size, layers[0])
        hidden: list[nn.Module] = []
        for d_in, d_out in zip(layers[:-1], layers[1:], strict=False):
            hidden += [nn.Dropout(dropout), nn.Linear(d_in, d_out), nn.ReLU()]
        self.mlp_hidden = nn.Sequential(*hidden)
        self.dropout = nn.Dropout(dropout)
        self.predict = nn.Linear(embedding_size + layers[-1], 1)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=0.1)
        with torch.no_grad():
            self.gmf_item.weight[0].zero_()
            self.mlp_item.weight[0].zero_()

    # ---- pointwise logit -------------------------------------------------------------------------

    def _user_index(self, users: torch.Tensor) -> torch.Tensor:
        known = (users >= 0) & (users < self.n_users)
        return torch.where(known, users, torch.full_like(users, self.n_users))

    def _logit(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pu, qi = self.gmf_user(users), self.gmf_item(items)
        mu, mi = self.mlp_user(users), self.mlp_item(items)
        mlp = self.mlp_hidden(F.relu(self.mlp_in(self.dropout(torch.cat([mu, mi], dim=-1)))))
        logit = self.predict(torch.cat([pu * qi, mlp], dim=-1)).squeeze(-1)
        reg = qi.pow(2).sum() + mi.pow(2).sum()
        return logit, reg

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        users = batch["users"]
        if self.training and self.unknown_user_prob > 0:
            drop = torch.rand(users.shape, device=users.device) < self.unknown_user_prob
            users = torch.where(drop, torch.full_like(users, self.n_users), users)
        pos, reg_pos = self._logit(users, batch["positives"])
        neg, reg_neg = self._logit(users, batch["negatives"])
        reg = self.gmf_user(users).pow(2).sum() + self.mlp_user(users).pow(2).sum() + reg_pos + reg_neg
        reg = reg / users.shape[0]
        if self.loss_type == "bpr":
            loss = -F.logsigmoid(pos - neg).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(
                torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
            )
        return loss + self.reg_weight * reg

    # ---- full ranking ----------------------------------------------------------------------------

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        idx = self._user_index(users)
        w_out = self.predict.weight.squeeze(0)  # (d_gmf + d_last,)
        d_gmf = self.gmf_user.embedding_dim
        # GMF branch: h_g^T (p_u * q_i) = (p_u * h_g) @ Q^T.
        gmf = (self.gmf_user(idx) * w_out[:d_gmf]) @ self.gmf_item.weight.T  # (B, N)
        # MLP branch, first layer split into its user and item halves.
        d_mlp = self.mlp_user.embedding_dim
        w_in = self.mlp_in.weight  # (h1, 2 d_mlp)
        user_half = self.mlp_user(idx) @ w_in[:, :d_mlp].T  # (B, h1)
        item_half = self.mlp_item.weight @ w_in[:, d_mlp:].T + self.mlp_in.bias  # (N, h1)
        n_cols, h1 = item_half.shape
        chunk = max(1, self.predict_chunk // max(n_cols * h1, 1))
        parts = []
        for start in range(0, idx.shape[0], chunk):
            act = F.relu(user_half[start : start + chunk, None, :] + item_half[None, :, :])
            parts.append(self.mlp_hidden(act) @ w_out[d_gmf:])  # (b, N)
        mlp = torch.cat(parts) if parts else gmf.new_zeros(0, n_cols)
        return gmf + mlp + self.predict.bias

    def item_embeddings(self) -> torch.Tensor:
        """Item vectors for the service's similar-items path: both branches' item embeddings."""
        return torch.cat([self.gmf_item.weight, self.mlp_item.weight], dim=1)
