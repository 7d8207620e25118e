"""Readers for the layouts a team brings. Each returns ``RawTables`` (strings + provenance).

Lines that cannot be split into the expected fields are not dropped: they come back in
``RawTables.malformed`` with their file, line number and reason, and end up in quarantine.
A file that cannot be read at all (missing, wrong header, corrupt compression or Parquet) raises
``IngestError`` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ingestion.schema import (
    GENRE_SEPARATOR,
    INTERACTION_COLUMNS,
    KG_COLUMNS,
    LINK_COLUMNS,
    PROVENANCE,
    IngestError,
    RawTables,
    attribute_table,
    conform,
)

UTF8_BOM = b"\xef\xbb\xbf"


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str | None, bytes]]:
    """Yield (line number, decoded text or None when undecodable, raw bytes)."""
    if not path.is_file():
        raise IngestError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                raw = raw.rstrip(b"\r\n")
                if number == 1:
                    # Spreadsheet exports start with a byte-order mark that would glue onto the first column name.
                    raw = raw.removeprefix(UTF8_BOM)
                try:
                    yield number, raw.decode(encoding), raw
                except UnicodeDecodeError:
                    yield number, None, raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IngestError(f"{path}: unreadable after line {number}: {exc}") from exc


def read_delimited(
    path: Path,
    sep: str,
    columns: list[str] | None,
    encoding: str = "utf-8",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a delimited text file into string columns.

    ``columns=None`` means the first line is a header. Returns (rows, malformed rows). Quoted CSV
    fields are handled for ``sep=","``; the others are plain splits (MovieLens files are unquoted).
    """
    path = Path(path)
    records: list[list[str]] = []
    line_numbers: list[int] = []
    malformed: list[dict] = []
    header = columns
    for number, text, raw in _lines(path, encoding):
        if text is None:
            malformed.append(_bad(path, number, raw, f"not valid {encoding} text"))
            continue
        if header is None:
            header = _parse_header(path, text, sep)
            continue
        if not text.strip():
            continue
        fields = next(csv.reader([text])) if sep == "," else text.split(sep)
        if len(fields) != len(header):
            malformed.append(_bad(path, number, raw, f"expected {len(header)} fields, found {len(fields)}"))
            continue
        records.append(fields)
        line_numbers.append(number)
    if header is None:
        raise IngestError(f"{path}: empty file, expected a header line")
    rows = pd.DataFrame(records, columns=header, dtype="string")
    rows["source_file"] = str(path)
    rows["source_line"] = pd.Series(line_numbers, dtype="int64")
    bad = pd.DataFrame(malformed) if malformed else RawTables.empty_malformed()
    return rows, bad


def _parse_header(path: Path, text: str, sep: str) -> list[str]:
    names = [
        name.strip().strip('"') for name in (next(csv.reader([text])) if sep == "," else text.split(sep))
    ]
    if not all(names) or len(set(names)) != len(names):
        raise IngestError(
            f"{path}: line 1 is not a valid header (empty or repeated column names): {text[:200]!r}"
        )
    return names


def _bad(path: Path, number: int, raw: bytes, reason: str) -> dict:
    return {
        "source_file": str(path),
        "source_line": number,
        "raw": raw.decode("utf-8", "replace")[:500],
        "reason": f"malformed_line: {reason}",
    }


def _require(frame: pd.DataFrame, path: Path, required: list[str]) -> None:
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise IngestError(
            f"{path}: missing required column(s) {missing}; found {[c for c in frame.columns if c not in PROVENANCE]}. "
            f"Rename the columns or map them in the source config."
        )


# --- RecBole atomic files (the MovieLens-100K copy we fetch) ---------------------------------------


def read_recbole_atomic(directory: Path, name: str = "ml-100k") -> RawTables:
    directory = Path(directory)
    parts = {}
    malformed = []
    for suffix in ("inter", "user", "item"):
        path = directory / f"{name}.{suffix}"
        rows, bad = read_delimited(path, "\t", None)
        # RecBole headers carry types ("user_id:token"): keep the field name.
        rows = rows.rename(columns=lambda column: column.split(":")[0])
        parts[suffix] = rows
        malformed.append(bad)
    _require(parts["inter"], directory / f"{name}.inter", ["user_id", "item_id", "timestamp"])
    items = parts["item"].rename(columns={"movie_title": "title", "class": "genres"})
    if "genres" in items:
        items["genres"] = items["genres"].str.split().str.join(GENRE_SEPARATOR)
    knowledge_graph = item_links = None
    kg_path, link_path = directory / f"{name}.kg", directory / f"{name}.link"
    if kg_path.is_file() or link_path.is_file():  # item knowledge is optional; half of it is an error
        knowledge_graph, item_links, bad = read_knowledge_graph(kg_path, link_path)
        malformed.append(bad)
    return RawTables(
        interactions=conform(parts["inter"], INTERACTION_COLUMNS),
        users=attribute_table(parts["user"], "user_id"),
        items=attribute_table(items, "item_id"),
        malformed=pd.concat(malformed, ignore_index=True),
        knowledge_graph=knowledge_graph,
        item_links=item_links,
    )


def read_knowledge_graph(kg_path: Path, link_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """RecBole ``.kg`` (head_id, relation_id, tail_id) and ``.link`` (item_id, entity_id) atomic files.

    Tab-separated with typed headers (``head_id:token``). Returns (triples, links, malformed lines);
    both files are required because triples without the link cannot be tied to any item.
    """
    triples, bad_triples = read_delimited(Path(kg_path), "\t", None)
    links, bad_links = read_delimited(Path(link_path), "\t", None)
    triples = triples.rename(columns=lambda column: column.split(":")[0])
    links = links.rename(columns=lambda column: column.split(":")[0])
    _require(triples, Path(kg_path), KG_COLUMNS)
    _require(links, Path(link_path), LINK_COLUMNS)
    return (
        conform(triples, KG_COLUMNS),
        conform(links, LINK_COLUMNS),
        pd.concat([bad_triples, bad_links], ignore_index=True),
    )


# --- The official GroupLens 100K layout (u.data, u.user, u.item, u.genre) -----------------------


def read_grouplens_100k(directory: Path) -> RawTables:
    directory = Path(directory)
    inter, bad_inter = read_delimited(
        directory / "u.data", "\t", ["user_id", "item_id", "rating", "timestamp"]
    )
    users, bad_users = read_delimited(
        directory / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip_code"], encoding="latin-1"
    )
    genre_names = _grouplens_genres(directory / "u.genre")
    item_columns = ["item_id", "title", "release_date", "video_release_date", "url", *genre_names]
    items, bad_items = read_delimited(directory / "u.item", "|", item_columns, encoding="latin-1")
    flags = items[genre_names].eq("1")
    items["genres"] = flags.apply(
        lambda row: GENRE_SEPARATOR.join(g for g, on in zip(genre_names, row, strict=True) if on), axis=1
    )
    items["release_year"] = items["release_date"].str.extract(r"(\d{4})$", expand=False)
    # Titles carry the year in brackets ("Toy Story (1995)"): strip it, the year has its own column.
    items["title"] = items["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    return RawTables(
        interactions=conform(inter, INTERACTION_COLUMNS),
        users=attribute_table(users, "user_id"),
        items=attribute_table(items, "item_id"),
        malformed=pd.concat([bad_inter, bad_users, bad_items], ignore_index=True),
    )


def _grouplens_genres(path: Path) -> list[str]:
    if not path.is_file():
        raise IngestError(f"{path}: file not found (the GroupLens 100K layout needs u.genre)")
    names = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.strip():
            name, _, index = line.rpartition("|")
            if not index.strip().isdigit():
                raise IngestError(f"{path}: line {len(names) + 1} is not 'name|index': {line!r}")
            names.append(name)
    return names


# --- MovieLens 1M/10M layout (ratings.dat, users.dat, movies.dat; "::" separated) ------------


def read_movielens_dat(directory: Path) -> RawTables:
    """GroupLens ML-1M (and ML-10M, which lacks users.dat): ``UserID::MovieID::Rating::Timestamp``."""
    directory = Path(directory)
    inter, bad_inter = read_delimited(
        directory / "ratings.dat", "::", ["user_id", "item_id", "rating", "timestamp"]
    )
    malformed = [bad_inter]
    users = pd.DataFrame({"user_id": pd.Series(dtype="string")})
    if (directory / "users.dat").is_file():
        users, bad = read_delimited(
            directory / "users.dat",
            "::",
            ["user_id", "gender", "age", "occupation", "zip_code"],
            encoding="latin-1",
        )
        malformed.append(bad)
    items, bad_items = read_delimited(
        directory / "movies.dat", "::", ["item_id", "title", "genres"], encoding="latin-1"
    )
    malformed.append(bad_items)
    # Titles carry the year ("Toy Story (1995)"): the year gets its own column.
    items["release_year"] = items["title"].str.extract(r"\((\d{4})\)\s*$", expand=False)
    items["title"] = items["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
    return RawTables(
        interactions=conform(inter, INTERACTION_COLUMNS),
        users=attribute_table(users, "user_id"),
        items=attribute_table(items, "item_id"),
        malformed=pd.concat(malformed, ignore_index=True),
    )


# --- Generic events (what a shop brings) ---------------------------------------------------------


def read_table(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """CSV (header required, optionally .gz) or Parquet as string columns + provenance."""
    path = Path(path)
    if path.suffix == ".parquet":
        _check_parquet(path)
        try:
            frame = pq.read_table(path).to_pandas()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise IngestError(f"{path}: not a readable Parquet file: {exc}") from exc
        return _parquet_rows(frame, path, first_line=1), RawTables.empty_malformed()
    return read_delimited(path, _sniff_separator(path), None)


def _check_parquet(path: Path) -> None:
    if not path.is_file():
        raise IngestError(f"{path}: file not found")


def _parquet_rows(frame: pd.DataFrame, path: Path, first_line: int) -> pd.DataFrame:
    """Rows of a Parquet file as strings + provenance; Parquet has no lines: the row number (1-based)
    plays that role."""
    frame = frame.astype("string")
    frame["source_file"] = str(path)
    frame["source_line"] = pd.Series(range(first_line, first_line + len(frame)), dtype="int64")
    return frame


def parquet_events_in_chunks(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    """The interactions of a Parquet events file, ``batch_rows`` rows at a time, each chunk exactly as
    ``read_events`` would have staged those rows (``conform``-ed strings + provenance).

    Why: a whole-file read holds the log several times over as Python strings; a chunk at a time keeps
    memory bounded by the chunk, whatever the length of the log.
    """
    path = Path(path)
    _check_parquet(path)
    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise IngestError(f"{path}: not a readable Parquet file: {exc}") from exc
    _require(pd.DataFrame(columns=columns), path, ["user_id", "item_id", "timestamp"])
    first_line = 1
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows):
            frame = _parquet_rows(batch.to_pandas(), path, first_line)
            first_line += len(frame)
            yield conform(frame, INTERACTION_COLUMNS)
    except IngestError:
        raise
    except Exception as exc:  # a corrupt row group shows only when it is read
        raise IngestError(f"{path}: not a readable Parquet file (near row {first_line}): {exc}") from exc


def _sniff_separator(path: Path) -> str:
    first = next(_lines(path, "utf-8"), (1, "", b""))[1] or ""
    for sep in (",", "\t", ";", "|"):
        if sep in first:
            return sep
    return ","


def read_events(events: Path | None, users: Path | None = None, items: Path | None = None) -> RawTables:
    """The events and attribute tables; ``events=None``: the attribute tables only (no interactions),
    for a caller that streams the events itself (``parquet_events_in_chunks``)."""
    inter, bad = (
        read_table(Path(events))
        if events
        else (pd.DataFrame(columns=INTERACTION_COLUMNS), RawTables.empty_malformed())
    )
    _require(inter, Path(events or ""), ["user_id", "item_id", "timestamp"])
    malformed = [bad]
    user_rows = pd.DataFrame({"user_id": pd.Series(dtype="string")})
    item_rows = pd.DataFrame({"item_id": pd.Series(dtype="string")})
    if users:
        user_rows, bad = read_table(Path(users))
        _require(user_rows, Path(users), ["user_id"])
        malformed.append(bad)
    if items:
        item_rows, bad = read_table(Path(items))
        _require(item_rows, Path(items), ["item_id"])
        malformed.append(bad)
    return RawTables(
        interactions=conform(inter, INTERACTION_COLUMNS),
        users=attribute_table(user_rows, "user_id"),
        items=attribute_table(item_rows, "item_id"),
        malformed=pd.concat(malformed, ignore_index=True),
    )
