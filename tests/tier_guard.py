"""Keeps the fast tier fast: a test marked neither ``slow`` nor ``integration`` may not start a process
or listen on a socket.

``make test-fast`` runs ``-m "not integration and not slow"`` and is meant to stay within a couple of
minutes on two cores. Starting a process (an interpreter with Airflow, Feast or BentoML to import
costs seconds) or a server is the usual way a unit test silently becomes slow, so the attempt fails
the test at once, with the fix in the message. The check wraps the process and listen entry points
only for the duration of a fast-tier test; ``slow`` and ``integration`` tests run untouched.

Loaded by ``tests/conftest.py`` as a plugin (``pytest_plugins``), so it can also be loaded on its own
(``-p tests.tier_guard``), which is how ``tests/unit/test_tier_guard.py`` tests it.
"""

from __future__ import annotations

import functools
import multiprocessing.process
import os
import socket
import subprocess
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXEMPT_MARKERS = ("slow", "integration")

FIX = "mark the test `slow` (a unit test) or `integration` (the real stack); see CONTRIBUTING.md, Tests"

# (owner, attribute, what the call does): every way a test could start a process or a server.
ENTRY_POINTS: list[tuple[Any, str, str]] = [
    (subprocess.Popen, "__init__", "started a subprocess"),
    (multiprocessing.process.BaseProcess, "start", "started a multiprocessing process"),
    (os, "fork", "forked the interpreter"),
    (os, "posix_spawn", "spawned a process"),
    (os, "posix_spawnp", "spawned a process"),
    (socket.socket, "listen", "listened on a socket"),
]


_SEEN = pytest.StashKey[list[str]]()  # a fast-tier test's refused calls


class FastTierViolation(pytest.fail.Exception):
    """Raised where the call is made; a ``BaseException``, so ``except Exception`` cannot swallow it."""


def in_fast_tier(item: pytest.Item) -> bool:
    return not any(item.get_closest_marker(name) for name in EXEMPT_MARKERS)


def _refusing(original: Callable[..., Any], what: str, nodeid: str, seen: list[str]) -> Callable[..., Any]:
    @functools.wraps(original)
    def refuse(*args: Any, **kwargs: Any) -> Any:
        message = f"{nodeid} {what} in the fast tier: {FIX}{_called_from()}"
        seen.append(message)
        raise FastTierViolation(message, pytrace=False)

    return refuse


def _called_from() -> str:
    """The innermost call in this repository's code (not the guard), where the fix usually goes."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        ours = path.is_relative_to(REPO) and not {".venv", "site-packages"} & set(path.parts)
        if ours and path != Path(__file__).resolve():
            return f" (called at {path.relative_to(REPO)}:{frame.lineno}, {frame.name})"
    return ""


@pytest.fixture(autouse=True)
def _fast_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if not in_fast_tier(request.node):
        return
    seen = request.node.stash[_SEEN] = []
    for owner, name, what in ENTRY_POINTS:
        original = getattr(owner, name, None)
        if original is not None:
            monkeypatch.setattr(owner, name, _refusing(original, what, request.node.nodeid, seen))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    seen = item.stash.get(_SEEN, [])
    if seen and report.when == "call" and report.passed:  # refused in a thread, or the code caught it
        report.outcome = "failed"
        report.longrepr = seen[0]
    return report
