"""The service's API page (OpenAPI document) speaks of recforge: title, version, what each endpoint
does, request examples; nothing fetched from the internet. Read in-process from the real service class
and its middleware (no server), pinned to a model tag: the document needs no model loaded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import CONFIG_DIR, REPO_ROOT
from pipeline.provenance import package_version

pytestmark = pytest.mark.slow  # the service class is imported in a subprocess

TAG = "recforge-bpr:docs0test"
READ_DOCS = """
import json
from starlette.testclient import TestClient
import serving.service as service
print(json.dumps(TestClient(service.Recommender.to_asgi()).get("/docs.json").json()))
"""


# The real service's request model for /recommend, and the error details the HTTP guard turns its
# validation errors into (the 400 body, ``serving.http_safety``); no model is loaded to validate.
VALIDATE_RECOMMEND = """
import json
from pydantic import ValidationError
import serving.service as service
from serving.http_safety import validation_details

spec = service.Recommender.apis["recommend"].input_spec
out = {}
for name, body in json.loads(__import__("sys").argv[1]).items():
    try:
        spec.model_validate(body)
        out[name] = "ok"
    except ValidationError as exc:
        out[name] = validation_details(exc.errors())
print(json.dumps(out))
"""


def _docs(home: Path) -> dict:
    return _in_service(home, READ_DOCS)


def _in_service(home: Path, script: str, *args: str) -> dict:
    env = dict(
        os.environ,
        RECFORGE_HOME=str(home),
        BENTOML_HOME=str(home / "bentoml"),
        RECFORGE_CONFIG=str(CONFIG_DIR / "pipeline.yaml"),
        RECFORGE_MODEL_TAG=TAG,
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_api_page_describes_recforge_with_examples(tmp_path: Path) -> None:
    doc = _docs(tmp_path / "home")
    info = doc["info"]
    assert info["title"] == "recforge recommender API"
    assert info["version"] != "None" and package_version() in info["version"] and TAG in info["version"]
    description = info["description"]
    for endpoint in ("POST /recommend", "POST /events", "POST /similar_items", "GET /metadata"):
        assert endpoint in description
    assert "curl -s -X POST localhost:3000/recommend" in description
    assert '-d \'{"session": ["50", "181", "172"]' in description  # an anonymous visitor's request
    assert "<img" not in description and not re.search(r"!\[[^\]]*\]\(", description)  # no images
    assert "http://" not in description and "https://" not in description  # nothing to fetch offline
    assert "created with BentoML" not in description and "contact" not in info

    for path, field in (("/recommend", "user_id"), ("/events", "events")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        example = body["examples"]["request"]["value"]
        assert field in example, path
    schemas = doc["components"]["schemas"]
    assert schemas["recommend__Input"]["properties"]["user_id"]["examples"] == ["196"]
    assert schemas["Event"]["example"]["item_id"] == "242"


def test_recommend_request_bounds_the_session_and_the_diversity(tmp_path: Path) -> None:
    from serving.request_models import MAX_SESSION_ITEMS

    bodies = {
        "anonymous": {"session": ["50", 181], "k": 3, "diversity": 0.3},
        "too_long": {"session": ["50"] * (MAX_SESSION_ITEMS + 1)},
        "blank_item": {"session": ["  "]},
        "diversity": {"user_id": "196", "diversity": 1.5},
        "diversity_text": {"user_id": "196", "diversity": "0.5"},
    }
    checked = _in_service(tmp_path / "home", VALIDATE_RECOMMEND, json.dumps(bodies))
    assert checked["anonymous"] == "ok"  # user_id is optional when a session is given
    assert checked["too_long"] == [
        {
            "field": "session",
            "message": f"List should have at most {MAX_SESSION_ITEMS} items after validation, "
            f"not {MAX_SESSION_ITEMS + 1}",
            "type": "too_long",
        }
    ]
    assert checked["blank_item"][0]["field"].startswith("session")
    assert checked["diversity"][0]["field"] == "diversity"
    assert checked["diversity_text"][0]["field"] == "diversity"


SERVER_OPTIONS = """
import json
import serving.service as service
from serving import server_options
print(json.dumps({
    "routes": service.API_PATHS,
    "declared": list(server_options.API_PATHS),
    "config": service.Recommender.config,
}))
"""


def test_the_untraced_paths_are_the_service_endpoints_and_reach_bentoml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # server_options names the endpoints before the class exists: a new endpoint must be added there.
    monkeypatch.delenv("RECFORGE_SERVE_WORKERS", raising=False)
    monkeypatch.delenv("RECFORGE_TRACE_REQUESTS", raising=False)
    out = _in_service(tmp_path / "home", SERVER_OPTIONS)
    assert sorted(out["routes"]) == sorted(out["declared"])
    excluded = out["config"]["tracing"]["excluded_urls"]
    assert sorted(p.rstrip("$").replace("\\", "") for p in excluded) == sorted(out["routes"])
    assert out["config"]["workers"] == 1  # configs/pipeline.yaml serving.workers

    monkeypatch.setenv("RECFORGE_SERVE_WORKERS", "2")
    monkeypatch.setenv("RECFORGE_TRACE_REQUESTS", "1")
    out = _in_service(tmp_path / "home", SERVER_OPTIONS)
    assert out["config"]["workers"] == 2
    assert not out["config"].get("tracing", {}).get("excluded_urls")
