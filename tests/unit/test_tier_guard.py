"""The fast-tier guard (tests/tier_guard.py) in a pytest session of its own: fast tests that start a
process or listen on a socket fail with the fix in the message; ``slow`` and ``integration`` tests are
left alone. The guard refuses before the call happens, so no process is started here."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = """
import socket
import subprocess
import sys
import threading

import pytest

UNGUARDED = (subprocess.Popen.__init__, socket.socket.listen)


def test_spawns():
    subprocess.run([sys.executable, "-c", "pass"])


def test_listens():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()


def test_spawns_in_a_thread_that_swallows_the_error():
    def spawn():
        try:
            subprocess.Popen(["true"])
        except BaseException:
            pass

    thread = threading.Thread(target=spawn)
    thread.start()
    thread.join()


def test_pure_logic():
    assert sum(range(4)) == 6


@pytest.mark.slow
def test_slow_is_left_alone():
    assert (subprocess.Popen.__init__, socket.socket.listen) == UNGUARDED


@pytest.mark.integration
def test_integration_is_left_alone():
    assert (subprocess.Popen.__init__, socket.socket.listen) == UNGUARDED
"""


def test_fast_tests_that_start_processes_or_servers_fail(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n    integration: integration\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-p", "tests.tier_guard", "-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=3, failed=3)
    fix = "mark the test `slow` (a unit test) or `integration` (the real stack)*"
    result.stdout.fnmatch_lines_random(
        [
            f"*test_inner.py::test_spawns started a subprocess in the fast tier: {fix}",
            f"*test_inner.py::test_listens listened on a socket in the fast tier: {fix}",
            f"*::test_spawns_in_a_thread_that_swallows_the_error started a subprocess in the fast tier: {fix}",
        ]
    )
