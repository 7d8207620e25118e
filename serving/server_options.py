"""How ``bentoml serve`` runs the service: worker processes and request tracing (serving config + env).

Read when ``serving.service`` is imported, because BentoML takes them from the ``@bentoml.service``
decorator. Both are ``serving`` settings of the pipeline config, overridden by the environment:

- ``serving.workers`` / ``RECFORGE_SERVE_WORKERS``: worker processes. Each has its own event loop,
  model copy and Feast reader; one worker's event loop is what saturates first under concurrent
  clients (docs/serving-performance.md), so throughput grows with workers up to the free cores.
- ``serving.trace_requests`` / ``RECFORGE_TRACE_REQUESTS``: OpenTelemetry spans for the API endpoints.
  Off (the default), BentoML's tracing middleware skips them: it builds a span and its attributes on
  every request even when no exporter collects them, a large share of the event loop's work per request.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pipeline.config import ServingConfig

WORKERS_ENV = "RECFORGE_SERVE_WORKERS"
TRACE_ENV = "RECFORGE_TRACE_REQUESTS"
# The service's JSON endpoints (``Recommender.apis``): the decorator runs before the class exists.
API_PATHS = ("/recommend", "/similar_items", "/events")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ServerOptionError(ValueError):
    """An environment override that is not a valid value; the message names the variable."""


def serve_workers(serving: ServingConfig) -> int:
    """Worker processes: ``RECFORGE_SERVE_WORKERS`` if set, else ``serving.workers``."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return serving.workers
    if not raw.isdigit() or int(raw) < 1:
        raise ServerOptionError(f"{WORKERS_ENV}={raw!r}: expected a whole number of worker processes >= 1")
    return int(raw)


def trace_requests(serving: ServingConfig) -> bool:
    """Whether the API endpoints get OpenTelemetry spans: ``RECFORGE_TRACE_REQUESTS`` if set, else the config."""
    raw = os.environ.get(TRACE_ENV, "").strip().lower()
    if not raw:
        return serving.trace_requests
    if raw not in _TRUE + _FALSE:
        raise ServerOptionError(f"{TRACE_ENV}={raw!r}: expected one of {', '.join(_TRUE + _FALSE)}")
    return raw in _TRUE


def tracing_settings(serving: ServingConfig) -> dict[str, Any]:
    """BentoML's ``tracing`` service setting: untraced API endpoints unless ``trace_requests``.

    The patterns are matched (``re.search``) against the request URL without its query string; other
    paths (``/metadata``, probes, docs) keep BentoML's default.
    """
    if trace_requests(serving):
        return {}
    return {"excluded_urls": [rf"{re.escape(path)}$" for path in API_PATHS]}
