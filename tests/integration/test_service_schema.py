"""The service's OpenAPI document is a contract: schemathesis checks the real server against it.

A real ``bentoml serve`` (API key set, as in docker-compose) on a home built by the real features stage;
schemathesis (property-based: generated valid and invalid requests, in its coverage, fuzzing and
stateful phases, a bounded number of examples per operation, fixed seed) runs every check it has
(``--checks all``): no 5xx, every status and content type documented, every response body valid
against its declared schema (the one ``Error`` shape included), invalid requests refused, valid ones
accepted, requests without the key refused. The server log must hold no traceback afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving_fixtures import ServerProcess, ServingHome, build_serving_home, serve

pytestmark = pytest.mark.integration

API_KEY = "schema-test-key"
MAX_EXAMPLES = 40  # per operation and phase; ~600 requests in all, ~15 s here
SEED = 20261201


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> ServingHome:
    return build_serving_home(tmp_path_factory.mktemp("schema") / "home")


@pytest.fixture(scope="module")
def server(home: ServingHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("schema-server") / "server.log"
    with serve(home.layout, log_path, env={"RECFORGE_API_KEY": API_KEY}) as process:
        process.wait_ready()
        yield process


def test_openapi_declares_the_error_shape_and_the_key(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/docs.json", headers={"X-API-Key": API_KEY}, timeout=30).json()
    assert doc["openapi"].startswith("3.1")
    assert {"Error", "ErrorDetail", "Health"} <= set(doc["components"]["schemas"])
    assert doc["components"]["securitySchemes"]["ApiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    for path in ("/recommend", "/similar_items"):
        responses = doc["paths"][path]["post"]["responses"]
        assert {"200", "400", "401", "404", "413", "415", "500"} <= set(responses), path
        assert all(
            responses[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            for code in responses
            if code != "200"
        )


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    server: ServerProcess, tmp_path: Path
) -> None:
    # A schema-valid event batch may still break the ingestion rules (an item outside the catalogue, a
    # time in the future): /events refuses it with a 400 naming each row, which no OpenAPI schema can
    # express, and random ids rarely name a catalogue item (so most generated batches are refused:
    # the "validation mismatch" warning is expected for it, and only for it). Everywhere else a
    # schema-valid request must be accepted and any warning fails the test.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[[operations]]\ninclude-path = "/events"\n'
        'checks.positive_data_acceptance.expected-statuses = ["2xx", 400]\n'
    )
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/docs.json",
        "--header",
        f"X-API-Key: {API_KEY}",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    # cwd: hypothesis keeps its example database (.hypothesis/) in the working directory.
    env = {**os.environ, "NO_COLOR": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"(\d+) generated, \1 passed", output), output[-3000:]
    warned = output.split("WARNINGS ===", 1)[1].split("SUMMARY ===", 1)[0] if "WARNINGS ===" in output else ""
    operations = re.findall(r"^\s+- (\w+ /\S+)", warned, flags=re.MULTILINE)
    assert "No issues found" in output or (
        "Schema validation mismatch: 1 operation" in warned and operations == ["POST /events"]
    ), output[-3000:]
    summary = [line.strip() for line in output.splitlines() if "generated" in line]
    print(summary[-1] if summary else output[-500:])
    log = server.log()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]
