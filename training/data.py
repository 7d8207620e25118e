"""Lightning data modules and the evaluation inputs shared by validation, test evaluation and the bench.

Training batches:
- general models (BPR): (user, positive, negative) triples; negatives drawn uniformly from the items
  the user has not interacted with in train, freshly for every batch (so every epoch sees new ones).
- sequential models (SASRec): whole per-user train sequences (time order), cut into windows of
  ``history_length + 1`` items, right-aligned, with a next-item target at every position. One forward per
  window per epoch, instead of one sample per prefix (which costs ~130 s/epoch on ML-100K here).
- user-row models (Mult-VAE): batches of users, each with its whole binary train row over the catalogue
  (n_items + 1 columns, padding 0 never set); users without a train event are left out.
- example models (two-tower, DeepFM, DIN, DIEN, rating MF, REINFORCE): one row per train example,
  exactly as the feature store served it point-in-time: user, item, rating, the user's history at
  that moment (``recent_items``), plus ``num_negatives`` uniform negatives per row. Histories keep only
  items of the user's train part, so under ``random_holdout`` a held-out item never reaches a model
  as input either.

Evaluation batches (``EvalInputs``), for every user with at least one event in the evaluated part and
at least one train event (cold users are the service's fallback path, not the model's):
ground truth = the user's items in that part; history = ``recent_items`` of the user's earliest
example in that part (point-in-time, what the feature store served at that moment), mapped to item
indices, kept to the items of the parts the model may see (train for validation, train + valid for
test) and right-aligned; exclusions = those same items. Under ``random_holdout`` a validation event's
point-in-time history can hold events the split put into test; the split stage already dropped those
entries (``training.split.visible_recent_items``), so validation reads the train and valid parts only and
early stopping is never steered by test items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.artifacts import Split
from training.split import (
    PARTS,
    VISIBLE_PARTS,
    SplitIndex,
    interaction_matrix,
    part_order,
    read_part,
    search_sorted,
)


@dataclass
class EvalInputs:
    """Evaluation data of one split part: one row per evaluated user."""

    users: torch.Tensor  # (U,) user indices
    history: torch.Tensor  # (U, L) item indices, right-aligned, 0 = padding
    truth: sp.csr_matrix  # (U, n_items + 1) ground-truth items
    exclude: sp.csr_matrix  # (U, n_items + 1) items never to recommend (seen before)
    n_items: int
    # (n_items + 1,) items without a training interaction (new in the catalogue, or first seen after the
    # training window): only models that score items from their attributes may recommend them.
    untrained: torch.Tensor | None = None

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])

    def batches(self, batch_users: int, rank: int = 0, world_size: int = 1, dense: bool = True) -> DataLoader:
        """Batches of ``batch_users`` users; with ``world_size`` > 1, the share of process ``rank`` only
        (every ``world_size``-th user, none repeated: see ``UserShard``). ``dense`` False gives the
        truth and exclusions as the batch's sparse rows (``truth_rows``, ``exclude_rows``) instead of
        (B, catalogue) masks, for a model that ranks without dense scores (``RanksTopK``)."""
        dataset = _EvalDataset(self, dense)
        if world_size == 1:
            return DataLoader(dataset, batch_size=batch_users, shuffle=False, collate_fn=_identity)
        sampler = UserShard(dataset, num_replicas=world_size, rank=rank)
        return DataLoader(dataset, batch_size=batch_users, sampler=sampler, collate_fn=_identity)


class UserShard(DistributedSampler):
    """Users ``rank``, ``rank + world_size``, ... of an evaluation set: a partition across processes.

    Lightning's own distributed sampler pads the shards to equal length by repeating users, which
    would count those users twice in a metric averaged across processes; validation metrics of a
    distributed run must equal the single-process ones, so no user is repeated (shards may differ in
    length by one; the per-process means are combined weighted by their user counts).
    """

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


def right_align(sequences: list[list[int]], length: int) -> torch.Tensor:
    """(N, length) LongTensor: each sequence's last ``length`` items at the right, 0-padded on the left."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-length:] if length > 0 else []
        if tail:
            out[row, length - len(tail) :] = tail
    return torch.from_numpy(out)


def build_eval_inputs(
    split: Split,
    part: str,
    history_length: int = 50,
    exclude_seen: bool = True,
    max_users: int | None = None,
    seed: int = 2026,
) -> EvalInputs:
    """Evaluation inputs for ``part`` ("valid" or "test") of ``split`` (see the module docstring).

    ``exclude_seen`` False leaves the user's visible (train, and valid for "test") items rankable, the
    convention of published sequential benchmarks; a model then competes against its own input.
    ``max_users``: a sample of at most that many of the part's users, the same for the same ``seed``
    (for early stopping on "valid" only: the test is never sampled).
    """
    if part not in ("valid", "test"):
        raise ValueError(f"evaluate on 'valid' or 'test', not {part!r}")
    if max_users is not None and part != "valid":
        raise ValueError("only validation users may be sampled; the test ranks every user")
    _require_visible_histories(split)
    index = SplitIndex.load(split)
    ids = ["event_id", "user_id", "item_id", "event_timestamp"]
    visible = VISIBLE_PARTS[part]
    parts = {name: read_part(split, name, ids) for name in visible}
    train = parts["train"]
    seen = interaction_matrix(pd.concat([parts[p] for p in visible]), index)
    evaluated = read_part(split, part, ids)
    part_users = index.users_of(evaluated)
    train_items = interaction_matrix(train, index)
    has_train = np.diff(train_items.indptr) > 0
    truth_all = interaction_matrix(evaluated[has_train[part_users]], index)
    # Each user's earliest example in this part (rows in (time, event_id) order: the first occurrence).
    user_list, first_row = np.unique(part_users, return_index=True)
    first_row = first_row[has_train[user_list]]
    user_list = user_list[has_train[user_list]]
    if max_users is not None and len(user_list) > max_users:
        sample = np.sort(np.random.default_rng(seed).choice(len(user_list), max_users, replace=False))
        user_list, first_row = user_list[sample], first_row[sample]
    if _has_column(split, part, "recent_items"):
        # Only the earliest row's list per user is read (in blocks): not the part's every list.
        history = part_histories(split, part, part_users, index, seen, history_length, rows=first_row)
    else:
        history = np.zeros((len(user_list), history_length), dtype=np.int64)
    trained = np.asarray(train_items.sum(axis=0)).ravel() > 0
    return EvalInputs(
        users=torch.from_numpy(user_list.astype(np.int64)),
        history=torch.from_numpy(history),
        truth=truth_all[user_list].tocsr(),
        exclude=seen[user_list].tocsr()
        if exclude_seen
        else sp.csr_matrix((len(user_list), seen.shape[1]), dtype=seen.dtype),
        n_items=index.n_items,
        untrained=torch.from_numpy(~trained),
    )


def _require_visible_histories(split: Split) -> None:
    if not split.visible_histories:
        raise ValueError(
            f"{split.dir}: this split predates per-part histories (its validation histories may name test "
            "events); run the split stage again (training.split.make_split rewrites it)"
        )


def _has_column(split: Split, part: str, column: str) -> bool:

    return column in pq.read_schema(getattr(split, part)).names


def _identity(batch: Any) -> Any:
    return batch


def dense_mask(rows: sp.csr_matrix) -> torch.Tensor:
    """``rows.toarray() > 0`` as a bool tensor, set from the non-zeros: no float copy of the dense rows
    (at 10^5+ items the float64 copy was most of an evaluation batch's time and memory)."""
    rows = rows.tocsr()
    mask = np.zeros(rows.shape, dtype=bool)
    positive = rows.data > 0
    row_of = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    mask[row_of[positive], rows.indices[positive]] = True
    return torch.from_numpy(mask)


class _EvalDataset(Dataset):
    """Batched access (``__getitems__``) so one batch is a few sparse slices, not B Python calls."""

    def __init__(self, inputs: EvalInputs, dense: bool = True) -> None:
        self.inputs = inputs
        self.dense = dense

    def __len__(self) -> int:
        return self.inputs.n_users

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(rows)
        untrained = self.inputs.untrained
        if not self.dense:
            return {
                "users": self.inputs.users[idx],
                "history": self.inputs.history[idx],
                "truth_rows": self.inputs.truth[idx],
                "exclude_rows": self.inputs.exclude[idx],
                **({"untrained": untrained} if untrained is not None else {}),
            }
        return {
            "users": self.inputs.users[idx],
            "history": self.inputs.history[idx],
            "truth": dense_mask(self.inputs.truth[idx]),
            "exclude": dense_mask(self.inputs.exclude[idx]),
            "untrained": untrained
            if untrained is not None
            else torch.zeros(self.inputs.n_items + 1, dtype=torch.bool),
        }


class _TripleDataset(Dataset):
    """(user, positive) pairs of the train matrix; negatives sampled per batch in ``__getitems__``."""

    def __init__(self, matrix: sp.csr_matrix, seed: int) -> None:
        coo = matrix.tocoo()
        order = np.lexsort((coo.col, coo.row))
        self.users = coo.row[order].astype(np.int64)
        self.items = coo.col[order].astype(np.int64)
        self.n_items = matrix.shape[1] - 1
        # Sorted keys user * (n_items + 1) + item: membership test by binary search.
        self.keys = self.users * (self.n_items + 1) + self.items
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        """Uniform items in 1..n_items the user has not interacted with (rejection sampling)."""
        return sample_negatives(self.rng, users, 1, self.n_items, self.keys)[:, 0]

    def __getitems__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(rows)
        users = self.users[idx]
        return {
            "users": torch.from_numpy(users),
            "positives": torch.from_numpy(self.items[idx]),
            "negatives": torch.from_numpy(self.sample_negatives(users)),
        }


class _UserRowDataset(Dataset):
    """The users with a train event; a batch is their dense binary train rows (sliced per batch, so the
    whole matrix is never dense at once)."""

    def __init__(self, matrix: sp.csr_matrix) -> None:
        self.matrix = (matrix > 0).astype(np.float32).tocsr()
        self.users = np.flatnonzero(np.diff(self.matrix.indptr) > 0).astype(np.int64)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        users = self.users[np.asarray(rows)]
        return {"users": torch.from_numpy(users), "rows": torch.from_numpy(self.matrix[users].toarray())}


class _SequenceDataset(Dataset):
    """Windows of ``history_length + 1`` consecutive train items per user: input = first history_length, target = next."""

    def __init__(self, sequences: list[list[int]], history_length: int, n_items: int, seed: int) -> None:
        inputs: list[list[int]] = []
        targets: list[list[int]] = []
        for seq in sequences:
            # Windows end at the newest item and step back by history_length, so every item is a target once.
            end = len(seq)
            while end > 1:
                start = max(0, end - history_length - 1)
                window = seq[start:end]
                inputs.append(window[:-1])
                targets.append(window[1:])
                end = start + 1
        self.inputs = right_align(inputs, history_length)
        self.targets = right_align(targets, history_length)
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(rows)
        targets = self.targets[idx]
        # One uniform negative per position (used by the BCE loss; the CE loss ignores it).
        negatives = torch.from_numpy(self.rng.integers(1, self.n_items + 1, size=tuple(targets.shape)))
        collide = negatives == targets
        negatives[collide] = negatives[collide] % self.n_items + 1
        return {"history": self.inputs[idx], "targets": targets, "negatives": negatives * (targets > 0)}


class RecDataModule(L.LightningDataModule):
    """Shared part: the split's index, train matrix and validation inputs."""

    def __init__(
        self,
        split: Split,
        batch_size: int = 1024,
        eval_batch_users: int = 512,
        history_length: int = 50,
        seed: int = 2026,
    ) -> None:
        super().__init__()
        self.split = split
        self.batch_size = batch_size
        self.eval_batch_users = eval_batch_users
        self.history_length = history_length
        self.seed = seed
        self.index = SplitIndex.load(split)
        self.train_frame = read_part(split, "train", ["event_id", "user_id", "item_id", "event_timestamp"])
        self.train_matrix = interaction_matrix(self.train_frame, self.index)
        self.valid_users: int | None = None  # a sample of validation users (TrainerConfig.valid_users)
        # Validation batches as sparse rows, for a model ranked block by block (training/train.py).
        self.sparse_valid = False
        self._valid: EvalInputs | None = None

    @property
    def n_users(self) -> int:
        return self.index.n_users

    @property
    def n_items(self) -> int:
        return self.index.n_items

    @property
    def n_train_interactions(self) -> int:
        return len(self.train_frame)

    @property
    def valid_inputs(self) -> EvalInputs:
        if self._valid is None:
            self._valid = build_eval_inputs(
                self.split, "valid", self.history_length, max_users=self.valid_users, seed=self.seed
            )
        return self._valid

    @property
    def rank(self) -> int:
        """This process's rank in a distributed (DDP) run; 0 alone."""
        return int(self.trainer.global_rank) if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return int(self.trainer.world_size) if self.trainer is not None else 1

    @property
    def process_seed(self) -> int:
        """Seed of this process's negative sampling: processes of a DDP run must not draw the same
        negatives (rank 0 keeps the single-process seed)."""
        return self.seed + self.rank

    def train_loader(self, dataset: Dataset) -> DataLoader:
        """Shuffled training batches. ``batch_size`` is the global batch: each of N DDP processes takes
        batch_size / N rows of the 1/N of the data Lightning's distributed sampler gives it, so the
        optimiser sees the same batch size and steps per epoch on any number of processes."""
        per_process = max(1, self.batch_size // self.world_size)
        return DataLoader(dataset, batch_size=per_process, shuffle=True, collate_fn=_identity)

    def val_dataloader(self) -> DataLoader:
        return self.valid_inputs.batches(
            self.eval_batch_users, self.rank, self.world_size, dense=not self.sparse_valid
        )


class GeneralDataModule(RecDataModule):
    """BPR-style triples with uniform negatives over non-interacted items, resampled every batch."""

    def setup(self, stage: str | None = None) -> None:
        self.train_set = _TripleDataset(self.train_matrix, self.process_seed)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.train_set)


class UserRowDataModule(RecDataModule):
    """Batches of users with their binary train rows (autoencoders over a user's item set)."""

    def setup(self, stage: str | None = None) -> None:
        self.train_set = _UserRowDataset(self.train_matrix)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.train_set)


class SequentialDataModule(RecDataModule):
    """Whole per-user sequences (windows of history_length + 1), loss at every position."""

    def __init__(self, split: Split, history_length: int = 50, **kwargs: Any) -> None:
        super().__init__(split, history_length=history_length, **kwargs)

    def setup(self, stage: str | None = None) -> None:
        frame = pd.DataFrame(
            {"u": self.index.users_of(self.train_frame), "i": self.index.items_of(self.train_frame)}
        )
        sequences = frame.groupby("u", sort=True)["i"].agg(list).tolist()  # train_frame is in time order
        self.train_set = _SequenceDataset(sequences, self.history_length, self.n_items, self.process_seed)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.train_set)


class ExampleSet:
    """Point-in-time examples of one split part as tensors (see the module docstring).

    ``history_items``: the user x item matrix whose items may appear in a history (train, or train +
    valid when testing). ``exclusions``: negatives are drawn outside of it.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        index: SplitIndex,
        history: np.ndarray,
        exclusions: sp.csr_matrix,
        num_negatives: int,
        seed: int,
    ) -> None:
        """``history``: (rows, history_length) item indices of each row of ``frame`` (``visible_histories``)."""
        self.users = index.users_of(frame)
        self.items = index.items_of(frame)
        self.ratings = frame["rating"].to_numpy(dtype=np.float32, na_value=np.nan)
        self.n_items = index.n_items
        self.num_negatives = num_negatives
        self.history = history
        self.exclusion_keys = _sorted_keys(exclusions)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.users)

    def sample_negatives(self, users: np.ndarray, count: int) -> np.ndarray:
        """(len(users), count) uniform items outside each user's ``exclusions`` row."""
        return sample_negatives(self.rng, users, count, self.n_items, self.exclusion_keys)

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        users = self.users[rows]
        out = {
            "users": torch.from_numpy(users),
            "items": torch.from_numpy(self.items[rows]),
            "ratings": torch.from_numpy(self.ratings[rows]),
            "history": torch.from_numpy(self.history[rows].astype(np.int64)),
        }
        if self.num_negatives > 0:
            out["negatives"] = torch.from_numpy(self.sample_negatives(users, self.num_negatives))
        return out

    def all(self) -> dict[str, torch.Tensor]:
        return self.batch(np.arange(len(self)))


class _ExampleDataset(Dataset):
    def __init__(self, examples: ExampleSet) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return self.examples.batch(np.asarray(rows))


def build_example_set(
    split: Split, part: str, history_length: int = 50, num_negatives: int = 1, seed: int = 2026
) -> ExampleSet:
    """Examples of ``part`` (all rows) with histories limited to what precedes ``part`` in the split.

    Train: histories and negatives use the train matrix. Valid/test (pointwise metrics such as RMSE or
    AUC): histories may also hold earlier parts' items, and negatives avoid every item the user has in
    the parts read so far (train + valid for valid, all for test), so a sampled negative is never a
    real positive the evaluation could know of. Only ``part`` and the parts before it are read.
    """
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; use one of {PARTS}")
    _require_visible_histories(split)
    index = SplitIndex.load(split)
    ids = ["event_id", "user_id", "item_id", "event_timestamp"]
    parts = {name: read_part(split, name, ids) for name in PARTS[: PARTS.index(part)]}
    parts[part] = frame = read_part(split, part, ids + ["rating"])
    history_items = _matrix_of([parts[p] for p in VISIBLE_PARTS[part]], index)
    exclusions = history_items if part == "train" else _matrix_of(list(parts.values()), index)
    users = index.users_of(frame)
    # int32 item indices: half the memory of the (examples x history_length) table; batches widen.
    if _has_column(split, part, "recent_items"):
        history = part_histories(split, part, users, index, history_items, history_length, dtype=np.int32)
    else:
        history = np.zeros((len(frame), history_length), dtype=np.int32)
    return ExampleSet(frame, index, history, exclusions, num_negatives, seed)


def _matrix_of(frames: list[pd.DataFrame], index: SplitIndex) -> sp.csr_matrix:
    return interaction_matrix(frames[0] if len(frames) == 1 else pd.concat(frames), index)


def sample_negatives(
    rng: np.random.Generator, users: np.ndarray, count: int, n_items: int, exclusion_keys: np.ndarray
) -> np.ndarray:
    """(len(users), count) uniform items in 1..n_items whose key ``user * (n_items + 1) + item`` is not
    in the sorted ``exclusion_keys`` (rejection sampling; at most 100 rounds)."""
    flat_users = np.repeat(users, count)
    flat = rng.integers(1, n_items + 1, size=len(flat_users))
    todo = np.arange(len(flat))
    for _ in range(100):
        todo = todo[_member(exclusion_keys, flat_users[todo] * (n_items + 1) + flat[todo])]
        if len(todo) == 0:
            break
        flat[todo] = rng.integers(1, n_items + 1, size=len(todo))
    return flat.reshape(len(users), count)


# Rows of ``recent_items`` turned into item indices at a time: bounds the flat arrays of one pass.
HISTORY_BLOCK_ROWS = 1 << 20


def visible_histories(
    recent: pd.Series | pa.ChunkedArray | pa.Array,
    users: np.ndarray,
    index: SplitIndex,
    visible: sp.csr_matrix,
    length: int,
    dtype: type[np.integer] = np.int64,
) -> np.ndarray:
    """(N, length) right-aligned item indices of each row's ``recent_items`` (item ids, oldest first),
    keeping only the items its user (``users``, one per row) has in ``visible``: the split parts the
    model may see at that point (unknown ids are dropped too).

    The lists are read as Arrow, ``HISTORY_BLOCK_ROWS`` rows at a time, and placed with array
    operations: no Python object per history item, whatever the number of examples."""
    if isinstance(recent, pd.Series):
        recent = pa.array(
            [None if r is None else [str(i) for i in r] for r in recent], type=pa.list_(pa.string())
        )
    recent = recent if isinstance(recent, pa.ChunkedArray) else pa.chunked_array([recent])
    catalogue = pa.array(index.item_ids, type=pa.string())
    visible_keys = _sorted_keys(visible)
    out = np.zeros((len(recent), length), dtype=dtype)
    for start in range(0, len(recent), HISTORY_BLOCK_ROWS):
        block = recent.slice(start, HISTORY_BLOCK_ROWS)
        out[start : start + len(block)] = _block_histories(
            block,
            users[start : start + len(block)],
            catalogue,
            visible_keys,
            index.n_items,
            out.dtype,
            length,
        )
    return out


def _block_histories(
    block: pa.ChunkedArray | pa.Array,
    users: np.ndarray,
    catalogue: pa.Array,
    visible_keys: np.ndarray,
    n_items: int,
    dtype: np.dtype,
    length: int,
) -> np.ndarray:
    """``visible_histories`` of one block of lists, given the catalogue and the visible keys (computed
    once per call of the callers, not once per block)."""
    out = np.zeros((len(block), length), dtype=dtype)
    lengths = pc.fill_null(pc.list_value_length(block), 0).to_numpy().astype(np.int64)
    flat = pc.cast(pc.list_flatten(block), pa.string())
    codes = pc.fill_null(pc.add(pc.index_in(flat, value_set=catalogue), 1), 0).to_numpy()
    codes = codes.astype(np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    keys = users[rows] * (n_items + 1) + codes
    kept = _member(visible_keys, keys) & (codes > 0)
    codes, rows = codes[kept], rows[kept]
    # The newest ``length`` kept items of each row, the newest in the last column.
    from_end = np.cumsum(np.bincount(rows, minlength=len(lengths)))[rows] - np.arange(len(rows)) - 1
    newest = from_end < length
    out[rows[newest], length - 1 - from_end[newest]] = codes[newest]
    return out


def part_histories(
    split: Split,
    part: str,
    users: np.ndarray,
    index: SplitIndex,
    visible: sp.csr_matrix,
    length: int,
    dtype: type[np.integer] = np.int64,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """``visible_histories`` of the rows of ``part``, in ``read_part``'s row order (``users``: its users,
    one per row of the part). ``rows``: only these positions of that order, in the order given (one
    history per evaluated user, say); every row when None.

    The ``recent_items`` lists are read from the file ``HISTORY_BLOCK_ROWS`` rows at a time and each
    block's histories are placed at its rows' positions in that order: the lists of the whole part (as
    strings, the largest column of the split) are never in memory at once, nor a sorted copy of them."""
    position = np.empty(len(users), dtype=np.int64)
    position[part_order(split, part)] = np.arange(len(users))
    # slot[p]: the output row of read_part position p, -1 where p is not asked for.
    if rows is None:
        slot = np.arange(len(users))
    else:
        slot = np.full(len(users), -1, dtype=np.int64)
        slot[rows] = np.arange(len(rows))
    out = np.zeros((len(users) if rows is None else len(rows), length), dtype=dtype)
    catalogue = pa.array(index.item_ids, type=pa.string())
    visible_keys = _sorted_keys(visible)  # once for the part, not once per block
    done = 0
    batches = pq.ParquetFile(getattr(split, part)).iter_batches(
        batch_size=HISTORY_BLOCK_ROWS, columns=["recent_items"]
    )
    for batch in batches:
        positions = position[done : done + batch.num_rows]
        done += batch.num_rows
        wanted = np.flatnonzero(slot[positions] >= 0)
        if len(wanted) == 0:
            continue
        lists = batch.column(0) if len(wanted) == batch.num_rows else batch.column(0).take(wanted)
        positions = positions[wanted]
        out[slot[positions]] = _block_histories(
            lists, users[positions], catalogue, visible_keys, index.n_items, out.dtype, length
        )
    return out


def _sorted_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """Sorted ``user * n_cols + item`` keys of the non-zeros of ``matrix`` (for membership tests)."""
    coo = matrix.tocoo()
    return np.sort(coo.row.astype(np.int64) * matrix.shape[1] + coo.col)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = search_sorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


class ExampleDataModule(RecDataModule):
    """One batch row per point-in-time train example: user, item, rating, history, negatives."""

    def __init__(self, split: Split, num_negatives: int = 1, **kwargs: Any) -> None:
        super().__init__(split, **kwargs)
        self.num_negatives = num_negatives

    def setup(self, stage: str | None = None) -> None:
        self.examples = build_example_set(
            self.split, "train", self.history_length, self.num_negatives, self.process_seed
        )
        self.train_set = _ExampleDataset(self.examples)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.train_set)


def build_datamodule(
    kind: str, split: Split, params: dict[str, Any], seed: int, eval_batch_users: int = 512
) -> RecDataModule:
    """The data module for a model kind, sized from the model's hyperparameters."""
    batch_size = int(params.get("batch_size", 1024))
    if kind == "example":
        return ExampleDataModule(
            split,
            num_negatives=int(params.get("num_negatives", 1)),
            batch_size=batch_size,
            eval_batch_users=eval_batch_users,
            history_length=int(params.get("history_length", 50)),
            seed=seed,
        )
    if kind == "sequential":
        return SequentialDataModule(
            split,
            history_length=int(params.get("history_length", 50)),
            batch_size=batch_size,
            eval_batch_users=eval_batch_users,
            seed=seed,
        )
    if kind == "user_rows":
        return UserRowDataModule(
            split,
            batch_size=batch_size,
            eval_batch_users=eval_batch_users,
            history_length=int(params.get("history_length", 50)),
            seed=seed,
        )
    return GeneralDataModule(
        split,
        batch_size=batch_size,
        eval_batch_users=eval_batch_users,
        history_length=int(params.get("history_length", 50)),
        seed=seed,
    )
