"""The raw tables every reader produces (docs/architecture.md).

Readers emit *raw* tables: interactions in the fixed columns below, user and item attribute tables
with whatever columns the source has; all values strings, exactly as found, plus provenance
(``source_file``, ``source_line``) so a rejected row can be traced back. ``ingest`` then keeps the
attribute columns the dataset's schema declares (``pipeline/schema.py``), and validation parses
their types.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating"]
PROVENANCE = ["source_file", "source_line"]
# Optional item knowledge (RecBole ``.kg`` / ``.link``): entity triples and the item -> entity link.
KG_COLUMNS = ["head_id", "relation_id", "tail_id"]
LINK_COLUMNS = ["item_id", "entity_id"]

# The longest user or item id taken, in characters, from a source file or a pushed event. A longer one
# is a mistake (a whole record pasted into the id column) that would otherwise end in the model's id
# tables and the online store; the service's request ids are capped by the same number.
MAX_ID_LENGTH = 256

# Readers of MovieLens layouts join a movie's genres with this character (the movielens schema's
# ``genres`` separator).
GENRE_SEPARATOR = "|"


class IngestError(ValueError):
    """A file cannot be read at all (missing, wrong layout, corrupt). Names the file and line."""


@dataclass
class RawTables:
    """Unvalidated tables in the normalised column layout; all values are strings or None."""

    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    # Rows the reader itself could not split into fields (wrong field count, bad encoding).
    malformed: pd.DataFrame
    # Item knowledge, when the source has it (None otherwise): raw triples (KG_COLUMNS) and the
    # item -> entity link (LINK_COLUMNS), both with provenance. Validation turns them into the
    # snapshot's ``knowledge_graph.parquet``.
    knowledge_graph: pd.DataFrame | None = None
    item_links: pd.DataFrame | None = None

    @staticmethod
    def empty_malformed() -> pd.DataFrame:
        return pd.DataFrame(
            {
                "source_file": pd.Series(dtype=str),
                "source_line": pd.Series(dtype="int64"),
                "raw": pd.Series(dtype=str),
                "reason": pd.Series(dtype=str),
            }
        )


def conform(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Select ``columns`` (+ provenance), adding missing optional ones as None, all as strings."""
    out = pd.DataFrame(index=frame.index)
    for column in columns + PROVENANCE:
        if column in frame.columns:
            values = frame[column]
            out[column] = values if column == "source_line" else values.astype("string")
        else:
            out[column] = pd.Series(pd.NA, index=frame.index, dtype="string")
    return out.reset_index(drop=True)


def attribute_table(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Every column the source has, as strings (the key first), plus provenance."""
    columns = [key] + [c for c in frame.columns if c not in (key, *PROVENANCE)]
    return conform(frame, columns)


def declared_attributes(frame: pd.DataFrame, key: str, declared: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` reduced to the key and the ``declared`` attribute columns (missing ones all null), and
    the columns the source had but the schema does not declare (not read: say so)."""
    undeclared = [c for c in frame.columns if c not in (key, *declared, *PROVENANCE)]
    return conform(frame, [key, *declared]), undeclared
