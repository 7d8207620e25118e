"""One batched scorer over a trained model artifact: who is known, history alignment, exclusion, top-k.

Three places score a trained artifact for users given as ids with item histories: the evaluator when
it judges a champion on another split (``training.evaluate.ForeignScorer``), the service (one user per
request, ``serving.recommender``) and the drift monitor (a sample of each window's users,
``monitoring.windows``). They must agree on the rules below, so the rules live here once:

- **Known users.** A user is known only if the artifact trained on at least one of their interactions.
  A split's index lists every user of the split, including users whose events all fell into
  validation or test; their embedding rows were never trained, so they are scored as unknown (row
  ``-1``): from their history, as a user the model never saw.
- **Histories.** Item ids map to the artifact's item rows; ids it does not know are dropped; the
  newest ``history_length`` items sit right-aligned in a zero-padded tensor (what sequential models
  were trained on).
- **Exclusion.** Items the user trained on and the items of the given history are never recommended;
  padding (column 0) and items the model may not rank (``ModelArtifact.score``) are ``-inf``; a NaN
  score counts as ``-inf``.
- **Top-k.** Best first; excluded (``-inf``) items are never returned.

Full-ranking *metrics* (``training.metrics``) keep their own exclusion and cut-off over a split's
train and valid items; this module is for scoring an artifact outside its training loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from training.artifact import DEFAULT_HISTORY_LENGTH, ModelArtifact
from training.data import right_align

UNKNOWN_USER = -1


class ArtifactScorer:
    """Scores users of one artifact in batches; see the module docstring for the rules."""

    def __init__(self, artifact: ModelArtifact, history_length: int | None = None) -> None:
        self.artifact = artifact
        self.history_length = int(history_length or artifact.history_length or DEFAULT_HISTORY_LENGTH)
        self.n_items = artifact.n_items
        seen = artifact.seen.tocsr()
        self._seen = seen
        self._trained = np.diff(seen.indptr) > 0
        self._user_index = artifact.user_index
        self._item_index = artifact.item_index

    # ---- ids -> rows -----------------------------------------------------------------------------

    def user_row(self, user_id: str) -> int:
        """The artifact's row for ``user_id`` if it trained on the user, else ``UNKNOWN_USER``."""
        row = self._user_index.get(str(user_id), UNKNOWN_USER)
        if row == UNKNOWN_USER or row >= len(self._trained) or not self._trained[row]:
            return UNKNOWN_USER
        return row

    def user_rows(self, user_ids: Iterable[str]) -> np.ndarray:
        return np.fromiter((self.user_row(u) for u in user_ids), dtype=np.int64)

    def item_rows(self, item_ids: Iterable[object] | None) -> list[int]:
        """Rows of the known items of ``item_ids``, in their order (oldest first); unknown ids dropped."""
        if not item_ids:
            return []
        index = self._item_index
        return [index[i] for i in map(str, item_ids) if i in index]

    def seen(self, user_row: int) -> np.ndarray:
        """Item rows the artifact trained on for ``user_row`` (empty for an unknown user)."""
        if user_row < 0 or user_row >= self._seen.shape[0]:
            return np.empty(0, dtype=np.int64)
        return self._seen.indices[self._seen.indptr[user_row] : self._seen.indptr[user_row + 1]]

    def align(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, history_length) right-aligned, zero-padded item rows: the model's history input."""
        return right_align([list(h) for h in histories], self.history_length)

    # ---- scoring ---------------------------------------------------------------------------------

    @torch.no_grad()
    def scores(
        self, user_rows: np.ndarray | Sequence[int], histories: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """(B, n_items + 1) float scores of the model, before exclusion (NaN -> -inf)."""
        users = torch.as_tensor(np.asarray(user_rows, dtype=np.int64))
        scores = self.artifact.score(users, self.align(histories))
        return scores.masked_fill_(torch.isnan(scores), -torch.inf)

    def exclude(
        self, scores: torch.Tensor, user_rows: np.ndarray | Sequence[int], histories: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Set the users' training items and their history items to -inf, in place; returns ``scores``."""
        for row, (user, history) in enumerate(zip(user_rows, histories, strict=True)):
            seen = self.seen(int(user))
            if seen.size:
                scores[row, torch.from_numpy(seen.astype(np.int64))] = -torch.inf
            if len(history):
                scores[row, torch.as_tensor(list(history), dtype=torch.long)] = -torch.inf
        return scores

    def batches(
        self,
        user_rows: np.ndarray,
        histories: Sequence[Sequence[int]],
        batch_users: int = 256,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (offset, excluded scores) for consecutive batches of users."""
        for start in range(0, len(user_rows), batch_users):
            stop = min(start + batch_users, len(user_rows))
            rows, hist = user_rows[start:stop], histories[start:stop]
            yield start, self.exclude(self.scores(rows, hist), rows, hist)


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the ``k`` best columns per row of a (B, N) tensor, best first.

    Excluded (-inf) entries may appear when a row has fewer than ``k`` finite scores: callers drop
    them with ``torch.isfinite(values)`` (``finite_top_k`` does so for one row).
    """
    return torch.topk(scores, min(k, scores.shape[-1]), dim=-1, sorted=True)


def finite_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (values, indices) of a 1-D score vector, without the excluded (-inf) entries."""
    values, indices = top_k(scores.reshape(1, -1), k)
    values, indices = values[0], indices[0]
    keep = torch.isfinite(values)
    if not bool(keep.all()):
        values, indices = values[keep], indices[keep]
    return values, indices
