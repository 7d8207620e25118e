"""DIN (Zhou et al., 2018, Deep Interest Network): a CTR ranker that attends over the user's history.

Inputs are what the feature store served point-in-time: the history item ids of the example
(right-aligned, 0 = padding) and the user and item attributes the dataset's schema declares (through
the generic ``training.attributes.AttributeEncoder``), plus an optional user-id embedding
(``user_id_size``, 0 = none as in the paper) that is zero for an unknown user (index -1) or a user given
only by attributes, so such users are scored from their history and attributes alone.

- Item representation: id embedding + the sum of one vector per item attribute (list and text
  attributes: the mean of their token vectors), all of size ``embedding_size`` (ids-only data: the
  id embedding alone). The same vector encodes history items and candidates.
- Local activation unit (paper Fig. 2): ``a(h, c) = w2 . PReLU(W [h, c, h - c, h * c] + b) + b2`` for
  every history item h and candidate c. As in the paper the weights are NOT softmax-normalised
  (``attention_normalisation: none``), so the strength of the interest is kept in the magnitude of the
  pooled vector; padding positions get weight 0. ``softmax`` (a masked softmax over the history) is
  offered as an option for ablations. User interest = sum_l a(h_l, c) h_l.
- Output MLP (PReLU, not Dice: Dice's batch statistics make a score depend on its batch mates, which
  the serving path cannot reproduce) over [interest, candidate, user attribute (+ id) embeddings, mean
  of the history vectors] -> logit. Trained with BCE: the example's item (label 1) vs ``num_negatives``
  uniform non-interacted items (label 0) served by the data module.

Full ranking costs B users x N items x L history activation-unit evaluations. The first layer of the
unit is decomposed algebraically, W [h, c, h - c, h * c] = (W1 + W3) h + (W2 - W3) c + W4 (h * c):
the first two terms are computed once per history item and once per candidate, and the cross term is
one GEMM ``(h * W4 rows) @ c^T`` of shape (B L a, d) x (d, N), so the (B, L, N, 4d) concatenation is
never built (training, with a handful of candidates per row, uses the direct form); likewise the
output MLP's first layer is split into a per-candidate and a per-user part.
Candidates are processed in chunks bounded by ``score_budget`` floats. Measured numbers: see
configs/models/din.yaml.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.attributes import AttributeEncoder, Attributes
from training.models.base import CandidateRanker
from training.models.capabilities import (
    EmbedsItems,
    Explains,
    ScoresColdItems,
    ScoresFromAttributes,
    ScoresFromHistory,
    UsesAttributes,
)


class CTRInputs(nn.Module):
    """Item vectors (id + attributes) and user vectors (attributes + optional id), shared by DIN and DIEN."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        embedding_size: int,
        attribute_size: int,
        user_id_size: int = 0,
        attributes: Attributes | None = None,
    ) -> None:
        super().__init__()
        attributes = attributes or Attributes.empty(n_users, n_items)
        self.n_items, self.embedding_size, self.attribute_size = n_items, embedding_size, attribute_size
        self.user_id_size = user_id_size
        self.item_id = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        # Optional user-id embedding (0 = none): the paper's user profile has no id, but under a random
        # holdout the point-in-time history of a user's first held-out event can be short, and the id
        # carries the rest of the profile. Unknown users (-1) and attribute-only users get zeros.
        self.user_id = nn.Embedding(n_users, user_id_size) if user_id_size > 0 else None
        if self.user_id is not None:
            nn.init.normal_(self.user_id.weight, std=0.05)
        nn.init.normal_(self.item_id.weight, std=0.05)
        with torch.no_grad():
            self.item_id.weight[0].zero_()
        self.item_attributes = AttributeEncoder(attributes.items, embedding_size, init_std=0.05)
        self.user_attributes = AttributeEncoder(attributes.users, attribute_size, init_std=0.05)

    @property
    def user_size(self) -> int:
        return self.user_attributes.n_fields * self.attribute_size + self.user_id_size

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, d) vectors of every item; row 0 (padding) is exactly zero."""
        items = torch.arange(self.n_items + 1, device=self.item_id.weight.device)
        vectors = self.item_id.weight + self.item_attributes(items).sum(-2)
        return vectors * (items > 0).unsqueeze(1)

    def user_inputs(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded attributes (codes, numbers) of user indices; unknown users (-1) get all-unknown ones."""
        codes, numbers = self.user_attributes.rows(users.clamp(min=0))
        known = (users >= 0).unsqueeze(1)
        return codes * known, numbers * known

    def user_vectors(
        self, codes: torch.Tensor, numbers: torch.Tensor, users: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, fields a + u): the user's attribute vectors, then the user-id embedding.

        ``users`` None (a user given by attributes only) or -1 (unknown) gives a zero id vector.
        """
        batch = codes.shape[0]
        parts = [self.user_attributes.vectors(codes, numbers).flatten(-2)]
        if self.user_id is not None:
            if users is None:
                parts.append(torch.zeros(batch, self.user_id_size, device=codes.device))
            else:
                parts.append(self.user_id(users.clamp(min=0)) * (users >= 0).unsqueeze(1))
        return torch.cat(parts, dim=1)


def masked_mean(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L, d) over the positions where mask (B, L) is true; zeros for an empty row."""
    weights = mask.float()
    return (vectors * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1.0)


def top_history_items(
    weights: torch.Tensor, history: torch.Tensor, top: int
) -> torch.Tensor:  # (B, L, N) weights -> (B, N, top)
    """History item ids with the highest weight per candidate; padding is never chosen (0 instead)."""
    mask = (history > 0).unsqueeze(-1)  # (B, L, 1)
    scored = weights.masked_fill(~mask, -torch.inf).transpose(1, 2)  # (B, N, L)
    k = min(top, history.shape[1])
    values, positions = scored.topk(k, dim=2)
    items = history.unsqueeze(1).expand(-1, scored.shape[1], -1).gather(2, positions)
    items = items.masked_fill(values == -torch.inf, 0)
    if k < top:
        items = F.pad(items, (0, top - k))
    return items


class CTRRanker(
    CandidateRanker,
    UsesAttributes,
    ScoresColdItems,
    ScoresFromHistory,
    ScoresFromAttributes,
    Explains,
    EmbedsItems,
):
    """Shared plumbing of DIN and DIEN: attribute encoder, full ranking and explanations by chunks."""

    ROW_BLOCK = 64  # users per full-ranking block (see ``_score``)
    history_length: int
    encoder: CTRInputs
    score_budget: int

    def item_embeddings(self) -> torch.Tensor:
        return self.encoder.item_vectors()

    def _cut(self, history: torch.Tensor) -> torch.Tensor:
        return history[:, -self.history_length :] if history.shape[1] > self.history_length else history

    def _chunk_items(self, batch: int, per_pair: int) -> int:
        """Candidates per chunk so that one chunk holds about ``score_budget`` floats."""
        return max(1, int(self.score_budget // max(batch * per_pair, 1)))

    def _context(
        self, items: torch.Tensor, user_vecs: torch.Tensor, history: torch.Tensor
    ) -> dict[str, torch.Tensor]:  # pragma: no cover - implemented by subclasses
        """Everything that depends on the user and history only: computed once per scoring call."""
        raise NotImplementedError

    def _logits(
        self, context: dict[str, torch.Tensor], candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - implemented by subclasses
        """Logits (B, N) and attention weights (B, L, N) of candidates (B | 1, N)."""
        raise NotImplementedError

    def _per_pair_floats(self, history_length: int) -> int:  # pragma: no cover
        raise NotImplementedError

    def _score(
        self,
        user_inputs: tuple[torch.Tensor, torch.Tensor],
        history: torch.Tensor,
        candidates: torch.Tensor,
        explain: int = 0,
        users: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores (B, N) of candidates (B, N) or, shared by every row, (1, N); by chunks of candidates."""
        history = self._cut(history)
        items = self.eval_cache("item_vectors", self.encoder.item_vectors)
        # Full ranking (candidates shared by all rows) goes by blocks of ``ROW_BLOCK`` users x a few
        # dozen candidates, so the (rows, L, a, N) activation tensor stays cache-sized (measured ~2x
        # faster than one block of 512 users); per-row candidates (training, pointwise) go in one block.
        rows = self.ROW_BLOCK if candidates.shape[0] == 1 else history.shape[0]
        outputs = []
        codes, numbers = user_inputs
        for top in range(0, history.shape[0], rows):
            block = slice(top, top + rows)
            user_vecs = self.encoder.user_vectors(
                codes[block], numbers[block], None if users is None else users[block]
            )
            context = self._context(items, user_vecs, history[block])
            cands = candidates if candidates.shape[0] == 1 else candidates[block]
            step = self._chunk_items(context["mask"].shape[0], self._per_pair_floats(history.shape[1]))
            chunks = []
            for start in range(0, cands.shape[1], step):
                logits, weights = self._logits(context, cands[:, start : start + step])
                chunks.append(top_history_items(weights, history[block], explain) if explain else logits)
            outputs.append(torch.cat(chunks, dim=1))
        return torch.cat(outputs, dim=0)

    def score_candidates(
        self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, N) of candidate items (B, N) for each user and history."""
        return self._score(self.encoder.user_inputs(users), history, candidates, users=users)

    def explain(
        self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor, top: int = 3
    ) -> torch.Tensor:
        """(B, N, top) history items with the highest attention weight per candidate (0 = none)."""
        return self._score(self.encoder.user_inputs(users), history, candidates, top, users)

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        all_items = torch.arange(self.encoder.n_items + 1, device=history.device).unsqueeze(0)
        return self._score(self.encoder.user_inputs(users), history, all_items, users=users)

    def full_sort_predict_from_attributes(
        self, codes: torch.Tensor, numbers: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B, n_items + 1) of a user given by encoded attributes (``Attributes.users.encode``:
        codes (B, W), numbers (B, N)) and history (B, L). The user-id embedding (if any) is zero here,
        as for an unknown user."""
        all_items = torch.arange(self.encoder.n_items + 1, device=history.device).unsqueeze(0)
        return self._score((codes.long(), numbers.float()), history, all_items)


class DIN(CTRRanker):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        attributes: Attributes | None = None,
        embedding_size: int = 32,
        attribute_size: int = 8,
        user_id_size: int = 0,
        attention_size: int = 16,
        attention_normalisation: str = "none",
        mlp_sizes: tuple[int, ...] | list[int] = (64, 32),
        history_length: int = 20,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        score_budget: int = 2_000_000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["attributes"])
        if attention_normalisation not in ("none", "softmax"):
            raise ValueError(
                f"attention_normalisation must be 'none' or 'softmax', not {attention_normalisation!r}"
            )
        self.n_users, self.n_items, self.history_length = n_users, n_items, history_length
        self.lr, self.weight_decay, self.score_budget = lr, weight_decay, score_budget
        self.normalisation = attention_normalisation
        d = embedding_size
        self.encoder = CTRInputs(n_users, n_items, d, attribute_size, user_id_size, attributes)
        # Local activation unit: Linear(4d -> a) over [h, c, h - c, h * c], PReLU, Linear(a -> 1).
        self.attention_in = nn.Linear(4 * d, attention_size)
        self.attention_act = nn.PReLU()
        self.attention_out = nn.Linear(attention_size, 1)
        sizes = list(mlp_sizes)
        # Output MLP over [interest (d), candidate (d), user attributes + id (fields a + u), mean history (d)].
        self.mlp_in = nn.Linear(3 * d + self.encoder.user_size, sizes[0])
        layers: list[nn.Module] = [nn.PReLU()]
        for width_in, width_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.PReLU()]
        layers.append(nn.Linear(sizes[-1], 1))
        self.mlp_rest = nn.Sequential(*layers)

    def _per_pair_floats(self, history_length: int) -> int:
        return history_length * (self.attention_in.out_features + 2) + 2 * self.mlp_in.out_features

    def _context(
        self, items: torch.Tensor, user_vecs: torch.Tensor, history: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-user terms of the activation unit and of the output MLP's first layer.

        The activation unit's ``(W1 + W3) h + b`` is computed here once per history item; the full
        ranking path adds the ``left`` factor (``_left_factor``) to the context on first use.
        """
        d = self.encoder.embedding_size
        hist_vecs, mask = items[history], history > 0  # (B, L, d), (B, L)
        w1, _, w3, _ = self.attention_in.weight.split(d, dim=1)  # each (a, d)
        per_history = hist_vecs @ (w1 + w3).T + self.attention_in.bias  # (B, L, a)
        w_interest, _, w_user, w_mean = self.mlp_in.weight.split([d, d, self.encoder.user_size, d], dim=1)
        per_user = user_vecs @ w_user.T + masked_mean(hist_vecs, mask) @ w_mean.T + self.mlp_in.bias
        # W_i . sum_l a_l h_l = sum_l a_l (W_i h_l): project the history once, pool per candidate later.
        return {
            "items": items,
            "mask": mask,
            "hist_vecs": hist_vecs,
            "per_history": per_history,
            "projected_history": hist_vecs @ w_interest.T,  # (B, L, m)
            "per_user": per_user,  # (B, m)
        }

    def _left_factor(self, hist_vecs: torch.Tensor, per_history: torch.Tensor) -> torch.Tensor:
        """(B L a, d + 1): W [h, c, h - c, h * c] + b = left_(b,l,j) . [c, 1] for every candidate c.

        W [h, c, h - c, h * c] = (W1 + W3) h + (W2 - W3) c + W4 (h * c): row (b, l, j) holds
        h_bl * W4_j + (W2 - W3)_j, then ((W1 + W3) h_bl + bias)_j as the coefficient of the constant 1.
        """
        d = hist_vecs.shape[-1]
        _, w2, w3, w4 = self.attention_in.weight.split(d, dim=1)
        left = torch.cat([hist_vecs.unsqueeze(2) * w4 + (w2 - w3), per_history.unsqueeze(-1)], dim=-1)
        return left.reshape(-1, d + 1)

    def attention(self, context: dict[str, torch.Tensor], cand_vecs: torch.Tensor) -> torch.Tensor:
        """Activation weights (B, L, N) of the context's history for candidate vectors (B | 1, N, d)."""
        mask, hist_vecs, per_history = context["mask"], context["hist_vecs"], context["per_history"]
        batch, length, d = hist_vecs.shape
        n = cand_vecs.shape[1]
        _, w2, w3, w4 = self.attention_in.weight.split(d, dim=1)  # each (a, d)
        w_out, b_out = self.attention_out.weight[0], self.attention_out.bias
        if cand_vecs.shape[0] > 1:  # per-row candidates (training, pointwise): N is small
            cross = (hist_vecs.unsqueeze(2) * cand_vecs.unsqueeze(1)) @ w4.T  # (B, L, N, a)
            per_candidate = cand_vecs @ (w2 - w3).T  # (B, N, a)
            hidden = self.attention_act(cross + per_history.unsqueeze(2) + per_candidate.unsqueeze(1))
            weights = hidden @ w_out + b_out  # (B, L, N)
        else:  # the catalogue, shared by every row: one GEMM, see ``_left_factor``
            if "left" not in context:
                context["left"] = self._left_factor(hist_vecs, per_history)
            right = torch.cat([cand_vecs[0], torch.ones_like(cand_vecs[0, :, :1])], dim=-1)  # (N, d + 1)
            # Candidates are the rows of the product, (l, j) its columns: ``a`` is the innermost axis,
            # so the second layer is a plain matrix-vector product with no transposed copy.
            hidden = right @ context["left"].T  # (N, B L a)
            if torch.is_grad_enabled():
                hidden = self.attention_act(hidden)
            else:  # scoring: the same PReLU, in place (this tensor is the memory peak)
                hidden = F.leaky_relu_(hidden, float(self.attention_act.weight))
            weights = hidden.view(-1, w_out.shape[0]) @ w_out + b_out
            weights = weights.view(n, batch, length).permute(1, 2, 0)  # (B, L, N)
        keep = mask.unsqueeze(-1)
        if self.normalisation == "softmax":
            weights = weights.masked_fill(~keep, -torch.inf).softmax(dim=1).nan_to_num(0.0)
        return weights * keep

    def _logits(
        self, context: dict[str, torch.Tensor], candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.encoder.embedding_size
        cand_vecs = context["items"][candidates]  # (B | 1, N, d)
        weights = self.attention(context, cand_vecs)  # (B, L, N)
        interest = weights.transpose(1, 2) @ context["projected_history"]  # (B, N, m)
        w_cand = self.mlp_in.weight[:, d : 2 * d]
        hidden = interest + cand_vecs @ w_cand.T + context["per_user"].unsqueeze(1)
        return self.mlp_rest(hidden).squeeze(-1), weights
