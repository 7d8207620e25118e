"""A client of the service's ``POST /events``: push an events file (``recforge push-events FILE``).

The file is read like a source file (``ingestion.readers.read_table``: CSV with a header, optionally
.gz, or Parquet; columns user_id, item_id, timestamp[, rating]) and sent in batches of at most
``MAX_BATCH`` events. The service refuses an invalid batch whole; the client then stops and names the
bad rows by their line in the file. Batches sent before it stay applied (each is durable on its own),
and pushing the file again is harmless: events the log already holds are not appended twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestion.event_log import MAX_BATCH

API_KEY_ENV = "RECFORGE_API_KEY"


@dataclass
class PushReport:
    batches: int = 0
    received: int = 0
    appended: int = 0
    duplicates: int = 0
    history_not_updated: int = 0  # batches logged whose users' online history was not updated
    notes: list[str] = field(default_factory=list)
    refused: str | None = None  # why the service refused a batch (the push stopped there)

    def describe(self) -> str:
        text = (
            f"pushed {self.received} events in {self.batches} batches: {self.appended} appended, "
            f"{self.duplicates} already logged"
        )
        if self.history_not_updated:
            text += f"; online history not updated for {self.history_not_updated} batches ({self.notes[-1]})"
        if self.refused:
            text += f"; STOPPED: {self.refused}"
        return text


def read_events_file(path: Path) -> list[dict[str, Any]]:
    """The file's events as request rows (empty cells left out), each with its file line number."""
    from ingestion.readers import read_table
    from ingestion.schema import IngestError

    frame, malformed = read_table(Path(path))
    if len(malformed):
        first = malformed.iloc[0]
        raise IngestError(f"{path}: {len(malformed)} malformed lines, e.g. line {first['source_line']}")
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in frame.columns]
    if missing:
        raise IngestError(f"{path}: missing columns {missing} (have {list(frame.columns)})")
    rows = []
    for record in frame.to_dict("records"):
        row = {c: record[c] for c in ("user_id", "item_id", "timestamp") if _present(record.get(c))}
        if _present(record.get("rating")):
            row["rating"] = _number(record["rating"])
        row["timestamp"] = _number(row["timestamp"]) if "timestamp" in row else None
        row["_line"] = record.get("source_line")
        rows.append(row)
    return rows


def _present(value: Any) -> bool:
    """A cell with a value (not None, NaN, pandas' NA or blank)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value).strip() not in ("", "<NA>")


def _number(text: Any) -> Any:
    """Epoch seconds and ratings as numbers (the API takes both numbers and ISO-8601 strings)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() else value


def push_events(path: Path, url: str, api_key: str | None = None, batch_size: int = MAX_BATCH) -> PushReport:
    import httpx

    rows = read_events_file(path)
    headers = {"X-API-Key": api_key} if api_key else {}
    report = PushReport()
    with httpx.Client(base_url=url.rstrip("/"), timeout=60, headers=headers) as client:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            payload = [{k: v for k, v in row.items() if k != "_line" and v is not None} for row in batch]
            resp = client.post("/events", json={"events": payload})
            if resp.status_code != 200:
                report.refused = _refusal(resp, batch)
                break
            body = resp.json()
            report.batches += 1
            report.received += body["received"]
            report.appended += body["appended"]
            report.duplicates += body["duplicates"]
            if body["appended"] and not body["history_updated"]:
                report.history_not_updated += 1
                report.notes.append(str(body.get("note")))
    return report


def _refusal(resp: Any, batch: list[dict[str, Any]]) -> str:
    """The service's reason, with the rows it names mapped back to lines of the file."""
    try:
        error = resp.json()["error"]
    except Exception:  # noqa: BLE001 - not the service's error shape (a proxy, a wrong URL)
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
    lines = []
    for detail in error.get("details") or []:
        field_name = str(detail.get("field", ""))
        if field_name.startswith("events[") and field_name.endswith("]"):
            row = int(field_name[len("events[") : -1])
            lines.append(f"line {batch[row]['_line']}: {detail.get('type') or detail.get('message')}")
        else:
            lines.append(f"{field_name}: {detail.get('message')}")
    return f"HTTP {resp.status_code}: {error.get('message')}" + (f" ({'; '.join(lines)})" if lines else "")
