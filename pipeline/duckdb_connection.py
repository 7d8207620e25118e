"""DuckDB connections for the stages that query Parquet files larger than memory.

One place sets what every such connection needs: UTC (timestamps are compared as instants), a memory
limit below DuckDB's own default (80% of the machine, too much beside a process that holds data of its
own) and a spill directory on the disk of the output rather than DuckDB's default ``./.tmp``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb


def default_memory_limit() -> str:
    """A third of physical memory, in DuckDB's syntax."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(total // 3 // 2**20, 256)}MB"


def connect(memory_limit: str | None = None, temp_directory: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC that stays within ``memory_limit`` and spills to ``temp_directory``."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = {sql_literal(memory_limit or default_memory_limit())}")
    if temp_directory:
        con.execute(f"SET temp_directory = {sql_literal(temp_directory)}")
    return con


@contextlib.contextmanager
def connection(
    memory_limit: str | None = None, temp_directory: str | None = None, spill_beside: Path | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """``connect``, closed after the block. Without a ``temp_directory`` and with ``spill_beside``, DuckDB
    spills to a directory there (the output's disk; DuckDB's own default is ./.tmp), removed after."""
    spill = None
    if not temp_directory and spill_beside is not None:
        spill = Path(spill_beside) / f".duckdb-spill-{os.getpid()}"
    con = connect(memory_limit, str(spill) if spill else temp_directory)
    try:
        yield con
    finally:
        con.close()
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
