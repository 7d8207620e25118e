"""Mult-VAE: a variational autoencoder over a user's item set (Liang et al., WWW 2018, "Variational
Autoencoders for Collaborative Filtering").

Input: the user's binary training row over the catalogue, scaled to unit L2 norm, with dropout on the
input while training. Encoder: one tanh hidden layer, then the mean μ and log-variance log σ² of a
diagonal Gaussian over a latent z. Decoder: z -> tanh hidden layer -> one logit per item. The loss is
the negative ELBO with a multinomial likelihood: -Σ_i x_i log softmax(logits)_i + β KL(q(z|x) || N(0, I)),
with β raised linearly from 0 to ``beta_max`` over the first ``total_anneal_steps`` training batches
and held there (the paper's partial KL annealing: a β below 1 trades the prior's pull for ranking
accuracy). Scoring (validation, test, serving) decodes μ, without dropout or sampling.

Batches are users, not (user, item) pairs: the ``user_rows`` data module (training/data.py) yields
each batch's training rows. For scoring, the model keeps the binary training rows it was given by
``set_train_matrix`` (``NeedsTrainMatrix``), so a known user is encoded from its training items together
with the items of the given history (``AddsHistoryToKnownUser``: what happened since training counts),
in the evaluator and in the service alike, and a user unknown at training time (index -1) from the items
of its history alone (``ScoresFromHistory``): the encoder takes any item set. Column 0 (padding) is never an
input and carries no probability in the likelihood.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from training.models.base import RecommenderModule
from training.models.baselines import binary_profiles
from training.models.capabilities import AddsHistoryToKnownUser, NeedsTrainMatrix, ScoresFromHistory


def kl_weight(step: int, beta_max: float, total_anneal_steps: int) -> float:
    """β after ``step`` training batches: linear from 0 to ``beta_max`` over ``total_anneal_steps``, then
    constant (``total_anneal_steps`` <= 0: ``beta_max`` from the start)."""
    if total_anneal_steps <= 0:
        return beta_max
    return beta_max * min(1.0, step / total_anneal_steps)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, I)) per row, summed over the latent dimensions."""
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)


class MultVAE(RecommenderModule, NeedsTrainMatrix, ScoresFromHistory, AddsHistoryToKnownUser):
    def __init__(
        self,
        n_users: int,
        n_items: int,
        hidden_size: int = 600,
        latent_size: int = 200,
        dropout: float = 0.5,
        beta_max: float = 0.2,
        total_anneal_steps: int = 2000,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n_users, self.n_items = n_users, n_items
        self.latent_size = latent_size
        self.beta_max, self.total_anneal_steps = beta_max, total_anneal_steps
        self.lr, self.weight_decay = lr, weight_decay
        self.input_dropout = nn.Dropout(dropout)
        self.encoder_hidden = nn.Linear(n_items + 1, hidden_size)
        self.encoder_out = nn.Linear(hidden_size, 2 * latent_size)  # μ and log σ², side by side
        self.decoder_hidden = nn.Linear(latent_size, hidden_size)
        self.decoder_out = nn.Linear(hidden_size, n_items + 1)
        for layer in (self.encoder_hidden, self.encoder_out, self.decoder_hidden, self.decoder_out):
            # The paper's initialisation: Xavier weights, small normal biases.
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)
        # Binary training rows (n_users, n_items + 1), the known users' profiles at scoring time; empty
        # until ``set_train_matrix`` (a loaded artifact adopts the saved shape).
        self.register_buffer("user_items", torch.zeros(0, n_items + 1))
        # Training batches seen so far: the KL annealing clock (counted here rather than read from the
        # Lightning trainer, so that a loss computed outside a trainer anneals the same way).
        self.anneal_step = 0

    def set_train_matrix(self, matrix: sp.csr_matrix) -> None:
        if matrix.shape != (self.n_users, self.n_items + 1):
            raise ValueError(f"train matrix {matrix.shape} != ({self.n_users}, {self.n_items + 1})")
        self.user_items = torch.from_numpy((matrix > 0).astype("float32").toarray())

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of binary item rows (B, n_items + 1)."""
        x = F.normalize(rows, p=2, dim=1)
        x = self.input_dropout(x)
        hidden = torch.tanh(self.encoder_hidden(x))
        mu, logvar = self.encoder_out(hidden).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder_out(torch.tanh(self.decoder_hidden(z)))

    def negative_elbo(self, rows: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(multinomial negative log-likelihood, KL), each a mean over the batch's users, of the
        sampled reconstruction of ``rows``; the loss is ``nll + beta * kl``."""
        mu, logvar = self.encode(rows)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        log_probs = F.log_softmax(self.decode(z)[:, 1:], dim=1)  # padding column excluded
        nll = -(log_probs * rows[:, 1:]).sum(dim=1).mean()
        return nll, gaussian_kl(mu, logvar).mean()

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        beta = kl_weight(self.anneal_step, self.beta_max, self.total_anneal_steps)
        if self.training:
            self.anneal_step += 1
        nll, kl = self.negative_elbo(batch["rows"], beta)
        return nll + beta * kl

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        rows = binary_profiles(self.user_items, users.to(self.user_items.device), history)
        mu, _ = self.encode(rows)
        return self.decode(mu)
