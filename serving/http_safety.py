"""What stands between the network and the model: API key, request limits, one error shape, the health probe.

One ASGI middleware (``ServingSafety``), added to the BentoML service with ``add_asgi_middleware``, sees
every HTTP request before BentoML's routes do:

- ``GET /healthz`` is answered here with the service's readiness JSON (200, or 503 when not ready).
  BentoML registers its own plain-text ``/healthz`` ahead of any mounted app, so a route cannot do it.
- API key: when ``RECFORGE_API_KEY`` is set, every path except the probes ``/healthz``, ``/livez`` and
  ``/readyz`` needs ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` (401 otherwise; compared in
  constant time). The probes stay open because orchestrators (Docker, Kubernetes) call them without
  credentials and they reveal only liveness, readiness and the live model tag. ``/metrics`` is NOT open
  (it reveals traffic; Prometheus can send a bearer token), nor are the docs (``/``, ``/docs.json``).
- Request limits: the POST endpoints take ``application/json`` only (415 otherwise; BentoML would
  also accept multipart forms, whose fields it may download from URLs); bodies larger than
  ``RECFORGE_MAX_BODY_BYTES`` (default: room for a full ``/events`` batch at the longest ids) get 413
  before any endpoint runs: a declared Content-Length is
  checked first, and a chunked body is counted as it arrives.
- One error shape: every 4xx/5xx body (ours, BentoML's, Starlette's, FastAPI's) leaves as
  ``{"error": {"status": 400, "type": "invalid_request", "message": "...", "details": [...]}}``, and the
  OpenAPI document BentoML serves at ``/docs.json`` is patched to declare exactly that (schema ``Error``)
  for every error status an operation can answer.
- Logging: a client error is ONE warning line (method, path, status, message) and never a traceback;
  ``ClientErrorTracebackFilter`` drops the traceback BentoML logs for it. Echoed values (paths, ids,
  content types) are clipped to ``ECHO_LIMIT`` characters, so a huge input is never sent or logged back.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any

import anyio
from bentoml.exceptions import InvalidArgument

log = logging.getLogger("recforge.serving.http")

API_KEY_ENV = "RECFORGE_API_KEY"
MAX_BODY_ENV = "RECFORGE_MAX_BODY_BYTES"
# A full /events batch (MAX_BATCH events) with ids at MAX_ID_LENGTH must fit, or a client sending the
# documented batch size would be refused; anything far larger is not a request this service takes.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz"})  # probes: no API key needed
ECHO_LIMIT = 100  # characters of any client-supplied value repeated in a response or a log line
MESSAGE_LIMIT = 500
MAX_DETAILS = 20
ERROR_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
# Union branches pydantic appends to an error's location (``user_id.str``): not field names.
_UNION_BRANCH = re.compile(
    r"^(str|int|float|bool|bytes|none|(constrained|function|lax|strict)-.*|json-or-python.*)$"
)
_TYPE_ERRORS = frozenset({"string_type", "int_type", "float_type", "bool_type"})

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
HealthProbe = Callable[[], tuple[dict[str, Any], int]]

ERROR_DETAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One invalid field of the request.",
    "required": ["field", "message"],
    "properties": {
        "field": {"type": "string", "description": "dotted path of the field, e.g. user_features.age"},
        "message": {"type": "string"},
        "type": {"type": "string", "description": "pydantic error type, e.g. greater_than_equal"},
    },
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The body of every error response of this service.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "type", "message"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "integer", "description": "the HTTP status, repeated"},
                "type": {
                    "type": "string",
                    "enum": sorted(set(ERROR_TYPES.values()) | {"client_error", "server_error"}),
                },
                "message": {"type": "string", "description": "what was wrong, for people"},
                "details": {"type": "array", "items": {"$ref": "#/components/schemas/ErrorDetail"}},
            },
        }
    },
}
ERROR_DESCRIPTIONS = {
    400: "Invalid request: a field is missing, of the wrong type or out of range, or the body is not JSON.",
    401: "Missing or wrong API key (X-API-Key or Authorization: Bearer), when RECFORGE_API_KEY is set.",
    404: "Unknown item (similar_items) or path.",
    413: f"Request body larger than the limit ({MAX_BODY_ENV}, default {DEFAULT_MAX_BODY_BYTES} bytes).",
    415: "Content-Type is not application/json.",
    500: "Unexpected server error (logged with a traceback).",
    503: "Not ready, or over capacity.",
}


def clip(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``value`` as text of at most ``limit`` characters (plus a note of how long it was)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "client_error" if status < 500 else "server_error")


def error_body(status: int, message: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The one error body shape of the service."""
    error: dict[str, Any] = {
        "status": status,
        "type": error_type(status),
        "message": clip(message, MESSAGE_LIMIT),
    }
    if details:
        error["details"] = details[:MAX_DETAILS]
    return {"error": error}


DETAILS_MARK = "recforge-error-with-details:"


def rows_invalid(message: str, details: list[dict[str, str]]) -> InvalidArgument:
    """A 400 whose body lists ``details`` (one per bad row), not only a message.

    BentoML turns an exception into its message text alone; the JSON carried here is unpacked by the
    middleware (``_error_content``) into the service's error shape.
    """
    return InvalidArgument(DETAILS_MARK + json.dumps({"message": message, "details": details[:MAX_DETAILS]}))


def validation_details(errors: Iterable[Any]) -> list[dict[str, str]]:
    """Pydantic errors as ``{"field", "message", "type"}``, one per field.

    A field typed ``str | int`` yields one error per union branch (``user_id.str``, ``user_id.int``);
    they are merged into one: the branch-specific error when there is one (a 300-character string
    fails the length rule, not the int branch), else "Input should be a valid string or a valid integer".
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for err in errors:
        if not isinstance(err, dict):
            continue
        loc = [str(part) for part in err.get("loc") or () if not _UNION_BRANCH.match(str(part))]
        grouped.setdefault(".".join(loc) or "body", []).append(err)
    details = []
    for field, errs in grouped.items():
        if len(errs) > 1:
            errs = [e for e in errs if e.get("type") not in _TYPE_ERRORS] or errs
        messages = list(dict.fromkeys(str(e.get("msg", "invalid")) for e in errs))
        if len(messages) > 1 and all(m.startswith("Input should be ") for m in messages):
            message = "Input should be " + " or ".join(m.removeprefix("Input should be ") for m in messages)
        else:
            message = "; ".join(messages)
        details.append(
            {"field": clip(field), "message": clip(message, 300), "type": str(errs[0].get("type", ""))}
        )
    return details


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


async def send_json(send: Send, status: int, body: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class ClientErrorTracebackFilter(logging.Filter):
    """Drops BentoML's "Exception on /path" ERROR record (with traceback) when the exception is the client's.

    Client errors are pydantic validation errors and BentoML exceptions with a 4xx code; the
    middleware logs those as one WARNING line instead. Server errors keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            return False
        return not (isinstance(exc, BentoMLException) and int(exc.error_code) < 500)


def install_log_filters() -> None:
    """Silence BentoML's traceback logging of client errors (idempotent)."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, ClientErrorTracebackFilter) for f in logger.filters):
        logger.addFilter(ClientErrorTracebackFilter())


def patch_openapi(
    doc: dict[str, Any],
    api_paths: Iterable[str],
    api_key_required: bool,
    health_schema: dict[str, Any],
    info: dict[str, Any] | None = None,
    request_examples: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Make BentoML's OpenAPI document declare what the service really answers.

    ``info`` replaces BentoML's (its name, version "None" and a README of badge images fetched from the
    internet); ``request_examples`` (path -> request body) become the endpoints' body examples.

    The document is labelled OpenAPI 3.1 (see below). Every operation's error responses become the ``Error`` schema (BentoML declares its own
    ``InvalidArgument``/``NotFound``/``InternalServerError`` bodies, which the middleware rewrites);
    the JSON endpoints also declare 413/415; with an API key, 401 and the security schemes;
    ``/healthz`` declares the readiness body for 200 and 503; ``/livez``/``/readyz`` may answer 503.
    """
    api_paths = set(api_paths)
    # Pydantic v2 writes JSON Schema 2020-12 (optional fields as ``anyOf: [..., {"type": "null"}]``),
    # which is OpenAPI 3.1's dialect, not 3.0's (BentoML labels the document 3.0.2): 3.0 readers drop
    # the null branch and then call every null response field a schema violation.
    doc["openapi"] = "3.1.0"
    if info is not None:
        doc["info"] = info
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for legacy in ("InvalidArgument", "NotFound", "InternalServerError"):
        schemas.pop(legacy, None)
    schemas["Error"] = ERROR_SCHEMA
    schemas["ErrorDetail"] = ERROR_DETAIL_SCHEMA
    schemas["Health"] = health_schema
    security = [{"ApiKeyHeader": []}, {"BearerKey": []}]
    if api_key_required:
        components["securitySchemes"] = {
            "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "BearerKey": {"type": "http", "scheme": "bearer"},
        }
    for path, item in (doc.get("paths") or {}).items():
        for method, operation in item.items():
            if method.lower() not in HTTP_METHODS or not isinstance(operation, dict):
                continue
            responses = {
                code: value
                for code, value in (operation.get("responses") or {}).items()
                if not str(code).startswith(("4", "5"))
            }
            codes = {500}
            if path in api_paths:
                codes |= {400, 404, 413, 415, 503}
                _refer_to_components(operation, path, schemas, responses)
                if path in (request_examples or {}) and "requestBody" in operation:
                    example = {"summary": "a request", "value": request_examples[path]}
                    operation["requestBody"]["content"]["application/json"]["examples"] = {"request": example}
            if path in ("/livez", "/readyz"):
                codes.add(503)
            if api_key_required and path not in OPEN_PATHS:
                codes.add(401)
                operation["security"] = security
            if path == "/healthz":
                health = {
                    "description": "Readiness: model bundle loaded and feature store reachable (503 otherwise).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                }
                responses = {"200": health, "503": health}
                codes.discard(503)
            for code in sorted(codes):
                responses[str(code)] = {
                    "description": ERROR_DESCRIPTIONS.get(code, HTTPStatus(code).phrase),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            operation["responses"] = responses
    return doc


def _refer_to_components(
    operation: dict[str, Any], path: str, schemas: dict[str, Any], responses: dict[str, Any]
) -> None:
    """Point an endpoint's request body and 200 response at BentoML's component schemas.

    BentoML inlines both in the path item in a 3.0 rendering that drops every ``null`` alternative
    (``user_id`` becomes string-only, optional fields non-nullable), while its component schemas
    (``recommend__Input``, ``RecommendResponseIODescriptor``) keep them. The body is required: an
    empty one is refused (400).
    """
    body = operation.get("requestBody")
    name = f"{path.strip('/')}__Input"
    if isinstance(body, dict) and name in schemas:
        body["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
        body["required"] = True
    for code, response in responses.items():
        media = (
            ((response or {}).get("content") or {}).get("application/json")
            if str(code).startswith("2")
            else None
        )
        title = (media or {}).get("schema", {}).get("title")
        if title in schemas:
            media["schema"] = {"$ref": f"#/components/schemas/{title}"}


class ServingSafety:
    """The ASGI middleware described in the module docstring.

    ``api_paths``: the JSON POST endpoints (``/recommend``...); ``health``: returns (body, status) for
    ``GET /healthz`` (run in a worker thread: it may touch the feature store); ``health_schema``: the
    JSON schema of that body, ``info`` and ``request_examples``: for the OpenAPI document
    (``patch_openapi``).
    """

    def __init__(
        self,
        app: Any,
        *,
        api_paths: Iterable[str],
        health: HealthProbe,
        health_schema: dict[str, Any],
        api_key: str | None = None,
        max_body_bytes: int | None = None,
        info: dict[str, Any] | None = None,
        request_examples: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.api_paths = frozenset(api_paths)
        self.health = health
        self.health_schema = health_schema
        self.info = info
        self.request_examples = request_examples
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")
        self.api_key = key.encode() if key else None
        self.max_body_bytes = max_body_bytes or int(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY_BYTES)
        install_log_filters()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "")
        if path == "/healthz" and method == "GET":
            body, status = await anyio.to_thread.run_sync(self.health)
            await send_json(send, status, body)
            return
        headers = _headers(scope)
        refusal = self._refusal(method, path, headers)
        if refusal is not None:
            status, message, extra = refusal
            _log_error(method, path, status, message)
            await send_json(send, status, error_body(status, message), extra)
            return
        if method in BODY_METHODS or "content-length" in headers or "transfer-encoding" in headers:
            body_bytes = await self._read_body(receive)
            if body_bytes is None:
                message = f"request body larger than {self.max_body_bytes} bytes"
                _log_error(method, path, 413, message)
                await send_json(send, 413, error_body(413, message), [(b"connection", b"close")])
                return
            if method == "POST" and path in self.api_paths and not body_bytes.strip():
                # The documented body is required; an endpoint whose fields are all optional
                # (/recommend: an anonymous visitor) would otherwise answer an empty one.
                message = "request body is required: send a JSON object"
                _log_error(method, path, 400, message)
                await send_json(send, 400, error_body(400, message))
                return
            receive = _replay(body_bytes, receive)
        shaper = _ResponseShaper(send, method, path, self._patch_docs if path == "/docs.json" else None)
        try:
            await self.app(scope, receive, shaper.send)
        except Exception:
            log.exception("%s %s failed", method, clip(path))
            if not shaper.started:
                await send_json(
                    send, 500, error_body(500, "An unexpected error has occurred, see the server log.")
                )

    def _refusal(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """(status, message, extra headers) when the request must not reach the app; else None."""
        if self.api_key is not None and path not in OPEN_PATHS and not self._authorised(headers):
            message = (
                "missing or wrong API key: send the header X-API-Key: <key> or Authorization: Bearer <key>"
            )
            return 401, message, [(b"www-authenticate", b'Bearer realm="recforge"')]
        if method == "POST" and path in self.api_paths:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media and media != "application/json":
                return 415, f"Content-Type {clip(media)!r} is not supported: send application/json", []
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return 400, f"invalid Content-Length {clip(length)!r}", []
            if int(length) > self.max_body_bytes:
                return (
                    413,
                    f"request body of {int(length)} bytes is larger than {self.max_body_bytes}",
                    [(b"connection", b"close")],
                )
        return None

    def _authorised(self, headers: dict[str, str]) -> bool:
        assert self.api_key is not None
        given = headers.get("x-api-key")
        if given is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        # Latin-1 round trip: header bytes as received; compare_digest takes the same time for any key.
        return given is not None and hmac.compare_digest(given.encode("latin-1"), self.api_key)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole request body, or None as soon as it exceeds the limit (chunked bodies included)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _patch_docs(self, body: bytes) -> bytes:
        doc = json.loads(body)
        return json.dumps(
            patch_openapi(
                doc,
                self.api_paths,
                self.api_key is not None,
                self.health_schema,
                self.info,
                self.request_examples,
            )
        ).encode()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the already read body, then defers to the real one."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _log_error(method: str, path: str, status: int, message: str) -> None:
    """One line per error response; client errors as WARNING (no traceback), server errors as ERROR."""
    level = logging.WARNING if status < 500 else logging.ERROR
    log.log(level, "%s %s -> %d %s: %s", method, clip(path), status, error_type(status), clip(message, 300))


class _ResponseShaper:
    """Wraps ``send``: error responses are buffered and rewritten into the one error shape; ``/docs.json``
    is buffered and patched; everything else streams through untouched."""

    def __init__(self, send: Send, method: str, path: str, patch: Callable[[bytes], bytes] | None) -> None:
        self._send = send
        self.method, self.path, self.patch = method, path, patch
        self.started = False
        self._start: dict[str, Any] | None = None
        self._chunks: list[bytes] = []

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status = int(message["status"])
            if status >= 400 or (self.patch is not None and status == 200):
                self._start = message
                return
            self.started = True
            await self._send(message)
            return
        if message["type"] == "http.response.body" and self._start is not None:
            self._chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, self._start = self._start, None
            body = b"".join(self._chunks)
            status = int(start["status"])
            new_body = self._rewrite(status, body, start)
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(new_body)).encode()),
            ]
            self.started = True
            await self._send({**start, "headers": headers})
            await self._send({"type": "http.response.body", "body": new_body})
            return
        await self._send(message)

    def _rewrite(self, status: int, body: bytes, start: dict[str, Any]) -> bytes:
        if status < 400:
            assert self.patch is not None
            return self.patch(body)
        message, details = _error_content(status, body, self.method, self.path)
        _log_error(self.method, self.path, status, message)
        return json.dumps(error_body(status, message, details), separators=(",", ":")).encode()


def _error_content(
    status: int, body: bytes, method: str, path: str
) -> tuple[str, list[dict[str, str]] | None]:
    """(message, details) of an error body in whichever shape BentoML, Starlette or FastAPI wrote it."""
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = body.decode("utf-8", "replace").strip() or None
    # BentoML 1.4 wraps 4xx exception bodies in a one-element list ([{"error": "..."}]).
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]
    message: str | None = None
    details = None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and "message" in inner:  # already the service's shape
            return str(inner["message"]), inner.get("details")
        detail = data.get("detail")
        if isinstance(detail, list):  # pydantic validation errors (BentoML: 400; FastAPI: 422)
            details = validation_details(detail)
            message = "; ".join(f"{d['field']}: {d['message']}" for d in details) or None
        elif isinstance(inner, str):
            message = inner
        elif isinstance(detail, str):
            message = detail
    elif isinstance(data, str):
        message = data
    if message and message.startswith(DETAILS_MARK):
        carried = json.loads(message[len(DETAILS_MARK) :])
        return str(carried["message"]), carried["details"]
    if status == 404 and message in (None, "Not Found"):
        message = f"no such endpoint: {method} {clip(path)}"
    elif status == 405 and message in (None, "Method Not Allowed"):
        message = f"{method} is not allowed on {clip(path)}"
    return message or HTTPStatus(status).phrase, details
