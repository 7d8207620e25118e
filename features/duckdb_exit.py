"""Close the DuckDB connection that ibis keeps for the whole process, so a process exits quietly.

Feast's DuckDB offline store runs its queries through ibis, and ibis keeps a process-wide default
DuckDB backend (``ibis.options.default_backend``) open until the interpreter ends. Left for
interpreter finalisation, that connection and the DuckDB types it holds are freed after DuckDB's
nanobind bindings have been torn down, and nanobind then prints its "leaked N instances / types /
functions" report on stderr after the program's last line. The report is noise (the process is
exiting, nothing leaks while it runs) but it buries what must come last: pytest's summary, the
CLI's result or its error. Both call ``close_default_duckdb_connection`` once their work is done.

No import of ibis here: a process that never opened Feast's offline store has nothing to close.
"""

from __future__ import annotations

import gc
import sys


def close_default_duckdb_connection() -> None:
    """Disconnect ibis's default backend when this process created one, then collect what it held."""
    ibis = sys.modules.get("ibis")
    backend = getattr(getattr(ibis, "options", None), "default_backend", None)
    if backend is not None:
        backend.disconnect()
        ibis.options.default_backend = None  # type: ignore[union-attr]  # backend set => ibis imported
    gc.collect()
