"""Provenance: which code produced a record (runs, stored models, benchmark results)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import tomllib
from datetime import UTC, datetime
from functools import cache
from typing import Any

from pipeline.config import REPO_ROOT


@cache
def code_commit() -> str:
    """The git commit of the code, with ``+dirty`` when tracked files differ from it; "unknown" without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


@cache
def package_version() -> str:
    """recforge's version: the installed package's, else ``pyproject.toml``'s (a source checkout or a
    Bento holding the sources), else "unknown"."""
    try:
        return importlib.metadata.version("recforge")
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        return str(tomllib.loads(pyproject.read_text()).get("project", {}).get("version", "unknown"))
    return "unknown"


def bench_provenance(script: str, argv: list[str]) -> dict[str, Any]:
    """Where and when a benchmark ran: ``code_commit``, ``created_at`` (UTC), the ``command``
    (``python <script> <argv>``) and the ``machine`` (platform, Python, CPU count, load at the end)."""
    return {
        "code_commit": code_commit(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", script, *argv]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        },
    }


def provenance_line(record: dict[str, Any]) -> str:
    """One Markdown line naming a ``bench_provenance`` record's command, commit, date and machine."""
    machine = record["machine"]
    return (
        f"`{record['command']}` at git `{record['code_commit']}`, {record['created_at']}, on "
        f"{machine['platform']} ({machine['cpus']} CPUs, Python {machine['python']})."
    )
