"""DIEN (Zhou et al., 2019, Deep Interest Evolution Network): a CTR ranker with an interest GRU.

Same inputs, item/user representation (``AttributeEncoder``), loss and interface as DIN
(training/models/din.py); what differs is how the history becomes an interest vector:

1. Interest extractor: a GRU over the history item vectors; its state h_t is the interest after item
   t. The GRU runs packed over each row's real items only (``run_gru`` of GRU4Rec), so leading padding
   never changes a state. Auxiliary loss (paper eq. 5): h_t must tell the next history item e_{t+1}
   (label 1) from a uniformly sampled item (label 0), through a small MLP over [h_t, e]; weighted by
   ``aux_weight`` and added to the main BCE.
2. Interest evolving layer, AUGRU: a GRU over the extractor states whose update gate is scaled by the
   attention of each state w.r.t. the candidate, a_t = softmax_t(h_t W e_c) over the real positions
   (paper eq. 6): h'_t = (1 - a_t u_t) h'_{t-1} + a_t u_t h~_t. With a_t = 1 it is a plain GRU step, with
   a_t = 0 it keeps its state; padding positions get a_t = 0, so a row's leading padding leaves the
   state at exactly 0 and scores do not depend on how much padding a row has.
3. Output MLP (PReLU) over [h'_T, candidate, user attribute embeddings, mean history vector].

Full ranking: the AUGRU runs once per (user, candidate) pair, B N sequences of L steps. The input
half of every gate (W_ih h_t) depends on the user only and is computed once per user; per step only
the hidden product h' W_hh^T runs over (users x candidates) (a GEMM over a block of users x a few
hundred candidates); steps before a block's first real item are skipped (the state stays 0 there).
``explain`` returns the history items with the highest a_t. Measured numbers: configs/models/dien.yaml.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.attributes import Attributes
from training.models.din import CTRInputs, CTRRanker, masked_mean
from training.models.gru4rec import run_gru


class AUGRUCell(nn.Module):
    """GRU cell with attentional update gate; parameters laid out exactly as ``nn.GRUCell``'s.

    PyTorch's z is the share of the OLD state kept (h = z h + (1 - z) n), so the paper's update gate
    is u = 1 - z and AUGRU's h = h + a (1 - z) (n - h).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        reference = nn.GRUCell(input_size, hidden_size)  # same initialisation as a plain GRU cell
        self.weight_ih = nn.Parameter(reference.weight_ih.detach().clone())
        self.weight_hh = nn.Parameter(reference.weight_hh.detach().clone())
        self.bias_ih = nn.Parameter(reference.bias_ih.detach().clone())
        self.bias_hh = nn.Parameter(reference.bias_hh.detach().clone())

    def input_gates(self, x: torch.Tensor) -> torch.Tensor:
        """W_ih x + b_ih (..., 3H): depends on the input only, so it is shared by every candidate."""
        return x @ self.weight_ih.T + self.bias_ih

    def step(self, gates_in: torch.Tensor, h: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """One step from precomputed input gates (..., 3H), state h (..., H), attention (..., 1).

        Without autograd (scoring) the same arithmetic runs in place on the (users x candidates)
        tensors: allocating them anew each step costs ~3x more than the arithmetic itself here.
        """
        hidden = h.shape[-1]
        if torch.is_grad_enabled():
            gates_h = h @ self.weight_hh.T + self.bias_hh
            in_r, in_z, in_n = gates_in.chunk(3, dim=-1)
            h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
            reset = torch.sigmoid(in_r + h_r)
            keep = torch.sigmoid(in_z + h_z)
            candidate = torch.tanh(in_n + reset * h_n)
            return h + attention * (1.0 - keep) * (candidate - h)
        # Scoring: r, 1 - z and n from three contiguous products (strided in-place ops are slow).
        flat = h.reshape(-1, hidden)
        w_r, w_z, w_n = self.weight_hh.split(hidden, dim=0)
        b_r, b_z, b_n = self.bias_hh.split(hidden, dim=0)
        in_r, in_z, in_n = gates_in.split(hidden, dim=-1)
        reset = (flat @ w_r.T).view_as(h).add_(in_r + b_r).sigmoid_()
        # 1 - sigmoid(x) = sigmoid(-x): the update share a (1 - z) without a separate 1 - z pass.
        update = (flat @ w_z.T).view_as(h).add_(in_z + b_z).neg_().sigmoid_().mul_(attention)
        delta = (flat @ w_n.T).view_as(h).add_(b_n).mul_(reset).add_(in_n).tanh_().sub_(h)
        return h.addcmul_(update, delta)

    def forward(self, x: torch.Tensor, h: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return self.step(self.input_gates(x), h, attention)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` restricted to ``mask``; exactly 0 at masked entries and for empty rows."""
    weights = scores.masked_fill(~mask, -torch.inf).softmax(dim=dim)
    return weights.nan_to_num(0.0) * mask


class DIEN(CTRRanker):
    ROW_BLOCK = 128  # the AUGRU's per-step GEMMs want larger blocks than DIN's activation unit

    def __init__(
        self,
        n_users: int,
        n_items: int,
        attributes: Attributes | None = None,
        embedding_size: int = 32,
        attribute_size: int = 8,
        user_id_size: int = 0,
        hidden_size: int = 16,
        aux_weight: float = 1.0,
        aux_hidden: int = 32,
        mlp_sizes: tuple[int, ...] | list[int] = (64, 32),
        history_length: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        score_budget: int = 4_000_000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["attributes"])
        self.n_users, self.n_items, self.history_length = n_users, n_items, history_length
        self.lr, self.weight_decay, self.score_budget = lr, weight_decay, score_budget
        self.aux_weight = aux_weight
        d, hidden = embedding_size, hidden_size
        self.encoder = CTRInputs(n_users, n_items, d, attribute_size, user_id_size, attributes)
        self.extractor = nn.GRU(d, hidden, batch_first=True)
        self.aux_mlp = nn.Sequential(nn.Linear(hidden + d, aux_hidden), nn.ReLU(), nn.Linear(aux_hidden, 1))
        self.attention_proj = nn.Linear(d, hidden, bias=False)  # bilinear a_t ~ exp(h_t W e_c)
        self.augru = AUGRUCell(hidden, hidden)
        sizes = list(mlp_sizes)
        # Output MLP over [final interest (H), candidate (d), user attributes + id (3a + u), mean history].
        self.mlp_in = nn.Linear(hidden + 2 * d + self.encoder.user_size, sizes[0])
        layers: list[nn.Module] = [nn.PReLU()]
        for width_in, width_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.PReLU()]
        layers.append(nn.Linear(sizes[-1], 1))
        self.mlp_rest = nn.Sequential(*layers)

    def _per_pair_floats(self, history_length: int) -> int:
        return 12 * self.augru.weight_hh.shape[1] + history_length

    def _context(
        self, items: torch.Tensor, user_vecs: torch.Tensor, history: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        hidden = self.augru.weight_hh.shape[1]
        d = self.encoder.embedding_size
        hist_vecs, mask = items[history], history > 0
        states = run_gru(self.extractor, hist_vecs, history)  # (B, L, H), zeros at padding
        _, _, w_user, w_mean = self.mlp_in.weight.split([hidden, d, self.encoder.user_size, d], dim=1)
        per_user = user_vecs @ w_user.T + masked_mean(hist_vecs, mask) @ w_mean.T + self.mlp_in.bias
        real = mask.any(0).nonzero()
        first = int(real[0, 0]) if len(real) else history.shape[1]  # steps before it are padding for all
        return {
            "items": items,
            "hist_vecs": hist_vecs,
            "mask": mask,
            "states": states,
            "gates_in": self.augru.input_gates(states),  # (B, L, 3H), shared by every candidate
            "per_user": per_user,
            "first": torch.tensor(first),
        }

    def _logits(
        self, context: dict[str, torch.Tensor], candidates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask, gates_in = context["states"], context["mask"], context["gates_in"]
        batch, length, hidden = states.shape
        d = self.encoder.embedding_size
        cand_vecs = context["items"][candidates]  # (B | 1, N, d)
        keys = self.attention_proj(cand_vecs)  # (B | 1, N, H)
        scores = states @ keys.transpose(1, 2)  # (B, L, N)
        attention = masked_softmax(scores, mask.unsqueeze(-1), dim=1)
        n = cand_vecs.shape[1]
        h = states.new_zeros(batch, n, hidden)
        for t in range(int(context["first"]), length):
            h = self.augru.step(gates_in[:, t].unsqueeze(1), h, attention[:, t].unsqueeze(-1))
        w_final, w_cand = self.mlp_in.weight[:, :hidden], self.mlp_in.weight[:, hidden : hidden + d]
        if torch.is_grad_enabled():
            pre = h @ w_final.T + cand_vecs @ w_cand.T + context["per_user"].unsqueeze(1)
        else:  # scoring: accumulate in place into the one (B, N, m) tensor
            pre = (h @ w_final.T).add_(cand_vecs @ w_cand.T).add_(context["per_user"].unsqueeze(1))
        return self.mlp_rest(pre).squeeze(-1), attention

    def auxiliary_loss(self, context: dict[str, torch.Tensor]) -> torch.Tensor:
        """BCE of h_t scoring the next history item (1) against a uniform random item (0)."""
        states, mask, hist_vecs = context["states"], context["mask"], context["hist_vecs"]
        pairs = mask[:, :-1] & mask[:, 1:]
        if not bool(pairs.any()):
            return states.sum() * 0.0
        now = states[:, :-1][pairs]  # (P, H)
        positives = hist_vecs[:, 1:][pairs]
        sampled = torch.randint(1, self.encoder.n_items + 1, (now.shape[0],), device=now.device)
        negatives = context["items"][sampled]
        logits = torch.cat(
            [
                self.aux_mlp(torch.cat([now, positives], dim=1)),
                self.aux_mlp(torch.cat([now, negatives], dim=1)),
            ]
        ).squeeze(-1)
        labels = torch.cat([torch.ones(now.shape[0]), torch.zeros(now.shape[0])]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        history = self._cut(batch["history"])
        users = batch["users"]
        user_vecs = self.encoder.user_vectors(*self.encoder.user_inputs(users), users)
        context = self._context(self.encoder.item_vectors(), user_vecs, history)
        candidates = torch.cat([batch["items"].unsqueeze(1), batch["negatives"]], dim=1)
        logits, _ = self._logits(context, candidates)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        main = F.binary_cross_entropy_with_logits(logits, labels)
        return main + self.aux_weight * self.auxiliary_loss(context)
