"""Provenance: which code produced a record (runs, stored models, benchmark results)."""

from __future__ import annotations

import subprocess
from functools import cache

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
