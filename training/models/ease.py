"""EASE: an item x item linear autoencoder with a closed-form solution (Steck, WWW 2019, "Embarrassingly
Shallow Autoencoders for Sparse Data").

With X the binary training matrix (users x items), EASE learns B minimising ||X - X B||^2 + λ ||B||^2
subject to diag(B) = 0 (an item may not predict itself). The solution is closed form:

    P = (X^T X + λ I)^-1,    B = I - P diag(1 / diag(P)),  i.e. B_ij = -P_ij / P_jj (i != j), B_jj = 0,

and a user's scores are X_u B: the sum of the rows of B of the items in the user's profile (their
training row if known, the request's history otherwise; ``ProfileBaseline``). ``reg_weight`` is λ, the
only hyperparameter; configs/models/ease.yaml says how its value was chosen and holds its search space.

Fitting inverts one dense (n_items + 1) x (n_items + 1) matrix (float64): memory grows with the square
and time with the cube of the catalogue, fine for catalogues of some ten thousand items.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from training.models.baselines import ProfileBaseline
from training.models.capabilities import ScoresFromHistory


def ease_weights(train: sp.csr_matrix, reg_weight: float) -> np.ndarray:
    """B of the closed form above for the binary version of ``train`` (float64, zero diagonal)."""
    binary = (train > 0).astype(np.float64).tocsc()
    gram = (binary.T @ binary).toarray()
    gram[np.diag_indices_from(gram)] += reg_weight
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)[np.newaxis, :]
    np.fill_diagonal(weights, 0.0)
    return weights


class EASE(ProfileBaseline, ScoresFromHistory):
    def __init__(self, n_users: int, n_items: int, reg_weight: float = 500.0) -> None:
        super().__init__(n_users, n_items)
        if reg_weight <= 0:
            raise ValueError(
                f"EASE: reg_weight (λ) must be > 0 for X^T X + λI to be invertible, got {reg_weight}"
            )
        self.reg_weight = reg_weight
        self.register_buffer("item_weights", torch.zeros(n_items + 1, n_items + 1))

    def fit(self, train: sp.csr_matrix) -> EASE:
        self.item_weights = torch.from_numpy(ease_weights(train, self.reg_weight).astype(np.float32))
        self.user_items = torch.from_numpy((train > 0).astype(np.float32).toarray())
        return self

    def full_sort_predict(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.profiles(users, history) @ self.item_weights
