"""User and item attributes encoded as integer codes in a split's index space (for feature-aware models).

Built once per split from the split's examples (the point-in-time rows the features stage drew from
Feast), cached in ``split.dir/side_features/`` and copied into every artifact of a model that uses
them, so the service encodes a cold user's online attributes with the vocabulary the model was
trained on. Profile attributes (age, gender, occupation; title, release year, genres) are static
catalogue data stamped at the snapshot's first event, so reading them from any part of the split
does not leak the future; behaviour (histories, counts) is never taken from here.

Codes: 0 always means "unknown / padding"; code ``i + 1`` is ``vocab[field][i]``. An attribute the
source does not have (ids-only event logs) is all zeros, and models still train on the ids.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.artifacts import Split, atomic_path
from training.split import PARTS, SplitIndex

USER_FIELDS = ("age", "gender", "occupation")
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: <18, 18-24, ..., 56+
YEAR_BUCKET = 5  # release years grouped in 5-year bins
TITLE_TOKENS = 8  # title words kept per item (the leading ones, after dropping "(1995)")
MIN_TOKEN_COUNT = 2  # a title word must occur in at least 2 titles to get its own code
CACHE_DIR = "side_features"
_WORD = re.compile(r"[a-z0-9]+")
_YEAR_SUFFIX = re.compile(r"\(\d{4}\)\s*$")


@dataclass
class SideFeatures:
    """Integer-coded attributes; see the module docstring for the code convention."""

    user_codes: np.ndarray  # (n_users, 3) int64: age group, gender, occupation
    item_genres: np.ndarray  # (n_items + 1, n_genres) float32 multi-hot; row 0 = padding
    item_year: np.ndarray  # (n_items + 1,) int64 release-year bin code
    item_title: np.ndarray  # (n_items + 1, TITLE_TOKENS) int64 title word codes, 0 = padding
    vocab: dict[str, list[str]]  # field -> values; fields: age, gender, occupation, genre, year, title

    @property
    def cardinalities(self) -> dict[str, int]:
        """Embedding table sizes per field (vocabulary + the 0 code)."""
        return {field: len(values) + 1 for field, values in self.vocab.items()}

    def encode_user(self, attributes: dict[str, Any] | None) -> np.ndarray:
        """(3,) codes of one user's raw attributes (e.g. a Feast online row); unknown values -> 0."""
        attributes = attributes or {}
        lookup = {f: {v: i + 1 for i, v in enumerate(self.vocab[f])} for f in USER_FIELDS}
        return np.asarray(
            [lookup[f].get(_user_value(f, attributes.get(f)), 0) for f in USER_FIELDS], dtype=np.int64
        )

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(
            directory / "codes.npz",
            user_codes=self.user_codes,
            item_genres=self.item_genres,
            item_year=self.item_year,
            item_title=self.item_title,
        )
        (directory / "vocab.json").write_text(json.dumps(self.vocab, indent=1))

    @classmethod
    def load(cls, directory: Path) -> SideFeatures:
        directory = Path(directory)
        with np.load(directory / "codes.npz") as arrays:
            data = {name: arrays[name] for name in arrays.files}
        return cls(vocab=json.loads((directory / "vocab.json").read_text()), **data)


def side_features_for(split: Split) -> SideFeatures:
    """The split's side features, built on first use and cached (atomically) in the split directory."""
    cache = Path(split.dir) / CACHE_DIR
    if (cache / "vocab.json").exists() and (cache / "codes.npz").exists():
        return SideFeatures.load(cache)
    features = build_side_features(split)
    with atomic_path(cache) as tmp:
        features.save(tmp)
    return features


def build_side_features(split: Split) -> SideFeatures:
    index = SplitIndex.load(split)
    wanted = ["user_id", "item_id", *USER_FIELDS, "title", "release_year", "genres"]
    frames = []
    for part in PARTS:
        path = Path(getattr(split, part))
        available = set(pq.read_schema(path).names)
        frames.append(pd.read_parquet(path, columns=[c for c in wanted if c in available]))
    rows = pd.concat(frames, ignore_index=True).astype({"user_id": str, "item_id": str})
    users = rows.drop_duplicates("user_id").set_index("user_id")
    items = rows.drop_duplicates("item_id").set_index("item_id")

    vocab: dict[str, list[str]] = {}
    user_codes = np.zeros((index.n_users, len(USER_FIELDS)), dtype=np.int64)
    for column, field in enumerate(USER_FIELDS):
        values = (
            users[field].map(lambda v, f=field: _user_value(f, v))
            if field in users
            else pd.Series(None, index=users.index)
        )
        vocab[field] = sorted({v for v in values if v is not None})
        lookup = {v: i + 1 for i, v in enumerate(vocab[field])}
        codes = values.map(lambda v, lk=lookup: lk.get(v, 0) if v is not None else 0)
        positions = [index.user_index[u] for u in codes.index if u in index.user_index]
        user_codes[positions, column] = codes[[u for u in codes.index if u in index.user_index]].to_numpy()

    n_rows = index.n_items + 1
    item_rows = np.asarray([index.item_index[i] for i in items.index if i in index.item_index])
    items = items.loc[[i for i in items.index if i in index.item_index]]

    genre_lists = [list(g) if g is not None else [] for g in items.get("genres", [None] * len(items))]
    vocab["genre"] = sorted({str(g) for genres in genre_lists for g in genres})
    genre_lookup = {g: i for i, g in enumerate(vocab["genre"])}
    item_genres = np.zeros((n_rows, len(vocab["genre"])), dtype=np.float32)
    for row, genres in zip(item_rows, genre_lists, strict=True):
        for genre in genres:
            item_genres[row, genre_lookup[str(genre)]] = 1.0

    years = items["release_year"] if "release_year" in items else pd.Series(None, index=items.index)
    year_bins = [_year_bin(y) for y in years]
    vocab["year"] = sorted({b for b in year_bins if b is not None})
    year_lookup = {b: i + 1 for i, b in enumerate(vocab["year"])}
    item_year = np.zeros(n_rows, dtype=np.int64)
    item_year[item_rows] = [year_lookup.get(b, 0) if b is not None else 0 for b in year_bins]

    titles = items["title"] if "title" in items else pd.Series(None, index=items.index)
    words = [title_words(t) for t in titles]
    counts = Counter(w for ws in words for w in set(ws))
    vocab["title"] = sorted(w for w, c in counts.items() if c >= MIN_TOKEN_COUNT)
    word_lookup = {w: i + 1 for i, w in enumerate(vocab["title"])}
    item_title = np.zeros((n_rows, TITLE_TOKENS), dtype=np.int64)
    for row, ws in zip(item_rows, words, strict=True):
        codes = [word_lookup[w] for w in ws if w in word_lookup][:TITLE_TOKENS]
        item_title[row, : len(codes)] = codes
    return SideFeatures(user_codes, item_genres, item_year, item_title, vocab)


def title_words(title: Any) -> list[str]:
    """Lower-case words of a title without its trailing "(1995)"; "Toy Story (1995)" -> ["toy", "story"]."""
    if title is None or (isinstance(title, float) and np.isnan(title)):
        return []
    return _WORD.findall(_YEAR_SUFFIX.sub("", str(title)).lower())


def _user_value(field: str, value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if field == "age":
        try:
            age = int(value)
        except (TypeError, ValueError):
            return None
        group = int(np.searchsorted(AGE_EDGES, age, side="right"))
        return f"age_group_{group}"
    text = str(value).strip()
    return text or None


def _year_bin(year: Any) -> str | None:
    try:
        value = int(year)
    except (TypeError, ValueError):
        return None
    if value <= 0:
        return None
    start = value - value % YEAR_BUCKET
    return f"{start}-{start + YEAR_BUCKET - 1}"
