"""The normalised schema every reader produces and every later stage reads (docs/architecture.md).

Readers emit *raw* tables: the schema's columns as strings, exactly as found, plus provenance
(``source_file``, ``source_line``) so a rejected row can be traced back. Validation parses types.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating"]
USER_COLUMNS = ["user_id", "age", "gender", "occupation", "zip_code"]
ITEM_COLUMNS = ["item_id", "title", "release_year", "genres"]
PROVENANCE = ["source_file", "source_line"]
# Optional item knowledge (RecBole ``.kg`` / ``.link``): entity triples and the item -> entity link.
KG_COLUMNS = ["head_id", "relation_id", "tail_id"]
LINK_COLUMNS = ["item_id", "entity_id"]

# Genres inside a raw ``genres`` string are separated by this character.
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
