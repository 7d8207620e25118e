"""How ``bentoml serve`` runs the service: worker count and request tracing from config and environment."""

from __future__ import annotations

import re

import pytest

from pipeline.config import ServingConfig
from serving.server_options import (
    API_PATHS,
    TRACE_ENV,
    WORKERS_ENV,
    ServerOptionError,
    serve_workers,
    trace_requests,
    tracing_settings,
)


def test_workers_come_from_the_config_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert serve_workers(ServingConfig()) == 1
    assert serve_workers(ServingConfig(workers=3)) == 3
    monkeypatch.setenv(WORKERS_ENV, " 2 ")
    assert serve_workers(ServingConfig(workers=3)) == 2


@pytest.mark.parametrize("raw", ["0", "two", "-1", "1.5"])
def test_a_bad_worker_count_names_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(WORKERS_ENV, raw)
    with pytest.raises(ServerOptionError, match=WORKERS_ENV):
        serve_workers(ServingConfig())


def test_the_config_refuses_a_worker_count_below_one() -> None:
    with pytest.raises(ValueError, match="workers"):
        ServingConfig(workers=0)


class _ExcludeList:
    """What BentoML builds from the setting (``opentelemetry.util.http.ExcludeList``, a transitive
    dependency): the patterns joined into one regular expression, searched in the URL."""

    def __init__(self, patterns: list[str]) -> None:
        self.regex = re.compile("|".join(patterns)) if patterns else None

    def url_disabled(self, url: str) -> bool:
        return bool(self.regex and self.regex.search(url))


def _excluded(settings: dict) -> _ExcludeList:
    return _ExcludeList(settings.get("excluded_urls", []))


def test_untraced_by_default_the_api_endpoints_skip_the_tracing_middleware(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    excluded = _excluded(tracing_settings(ServingConfig()))
    for path in API_PATHS:
        assert excluded.url_disabled(f"http://127.0.0.1:3000{path}")
    # Everything else keeps BentoML's tracing, including paths that merely start like an endpoint.
    for path in ("/metadata", "/readyz", "/docs.json", "/recommend_v2", "/metrics"):
        assert not excluded.url_disabled(f"http://127.0.0.1:3000{path}")


def test_traced_requests_exclude_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    assert tracing_settings(ServingConfig(trace_requests=True)) == {}
    monkeypatch.setenv(TRACE_ENV, "on")
    assert tracing_settings(ServingConfig()) == {}
    assert trace_requests(ServingConfig())
    monkeypatch.setenv(TRACE_ENV, "0")
    assert not trace_requests(ServingConfig(trace_requests=True))
    monkeypatch.setenv(TRACE_ENV, "maybe")
    with pytest.raises(ServerOptionError, match=TRACE_ENV):
        trace_requests(ServingConfig())
