"""The BentoML service: a deployment's champion recommender behind HTTP, following promotions without a restart.

Which deployment: ``RECFORGE_DEPLOYMENT``, else the pipeline config's ``deployment`` ("default").
Which model:
- following (the normal mode): the deployment's champion in the run index (``RunIndex.champion``:
  its ``model_tag`` in the BentoML store, its ``feature_namespace`` in Feast). A watcher thread in
  each worker polls the run index every ``RECFORGE_SWAP_POLL_S`` seconds (default 2); when the champion
  changes (a promotion or ``recforge rollback``), it loads the new model, verifies its checksums,
  opens a Feast reader on the new namespace and checks that it answers, and only then swaps, in one
  attribute assignment, the immutable ``LiveModel`` bundle that requests read. A request reads
  ``self.live`` once, so it never mixes two models (or one model with another's features). A swap that
  fails keeps the old bundle serving, logs one ERROR line per bad champion (not per poll; it is retried
  quietly every ``RECFORGE_SWAP_RETRY_S``, default 30) and shows in ``/healthz`` as ``pending``.
  Every response names the ``model_tag`` that produced it and the ``deployment``. With several workers
  (``RECFORGE_SERVE_WORKERS``) each one switches on its own poll, so for up to one poll interval
  answers may come from either model; one worker (the default) switches at a single instant.
- pinned: ``RECFORGE_MODEL_TAG`` (a BentoML model tag); no following. A Bento built by
  ``serving.package`` bakes it into its environment. Its Feast namespace: ``RECFORGE_FEATURE_NAMESPACE``,
  else the model's metadata, else the newest deployment event of that tag in the run index.

Fresh events: ``POST /events`` takes a batch of interactions (checked with the ingestion rules; an
invalid batch is refused whole), appends it to the event log in ``$RECFORGE_HOME/event_log`` (which the
next pipeline run ingests with its source, ``ingestion.event_log``) and adds it to the users' online
history, so the next ``/recommend`` uses it. ``recforge push-events FILE`` is its client.

The tag is also resolved when this module is imported, because BentoML packages into a Bento only
models declared as class attributes (``bentoml.models.BentoModel``); an unresolvable tag (no champion,
nothing pinned) is an import error that says what to do.

Where things are: ``BENTOML_HOME`` (``$RECFORGE_HOME/bentoml``) must be set before ``bentoml`` starts;
``RECFORGE_HOME`` holds the run index (``RECFORGE_RUN_INDEX_URL`` wins) and the Feast namespaces
(``RECFORGE_FEATURE_REPO``: the Feast repo, see ``serving.online``). ``python -m serving`` sets all
of that, checks the model before starting, and binds 127.0.0.1 unless told otherwise::

    python -m serving --port 3000            # or: make serve

Failing safely (see also ``serving.http_safety`` for the HTTP side):
- a model that cannot be loaded when a worker starts (truncated ``weights.pt``: checksum mismatch)
  stops the WHOLE server: the worker logs one line, tells the ``bentoml serve`` supervisor to stop
  (SIGTERM) and exits; the supervisor then exits with status 1 (``_exit_nonzero_if_a_worker_failed``).
  Without this (seen with bentoml 1.4.39), the supervisor restarts the failing worker in a loop, a
  traceback each time, with the port open; inside a container, where BentoML does not respawn
  workers, the port stays open with no worker at all, and requests queue on it unanswered.
- each worker asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a killed
  supervisor (even SIGKILL) never leaves a worker holding the port.

Two-stage serving: a ranker packaged with a retriever (``serving.package.choose_retriever``) re-ranks the
retriever's top ``RECFORGE_CANDIDATES`` (default 200; a request may ask for another depth) items.
Cold users: for a user unknown to the model, the Feast ``user_profile`` row (or the request's
``user_features``, which take precedence) feeds models that score from attributes.

Threads: PyTorch gets ``RECFORGE_TORCH_THREADS`` (default 1) intra-op threads: one request is a single
small matrix-vector product, and on these shared 2-core machines more threads only add contention.
Run with ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP threads sleep instead of spinning (measured 10-30x
slowdowns of neighbouring processes otherwise, docs/architecture.md "Performance notes").
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound
from fastapi import FastAPI
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from ingestion.event_log import MAX_BATCH as MAX_EVENTS
from ingestion.event_log import check_batch, open_event_log
from ingestion.schema import MAX_ID_LENGTH
from pipeline.artifacts import DeploymentEvent
from pipeline.config import ServingConfig, ValidationConfig, load_config
from pipeline.layout import Layout
from pipeline.provenance import package_version
from pipeline.run_index import RunIndex, index_url, now_iso
from pipeline.schema import DataSchema, resolve_schema
from serving.http_safety import ServingSafety, clip, rows_invalid
from serving.online import ONLINE_FEATURES, OnlineHistory
from serving.package import ANN_SUBDIR, ARTIFACT_SUBDIR, RETRIEVER_SUBDIR, TITLES_FILE, verify_checksums
from serving.request_models import (
    EVENT_EXAMPLE,
    EVENTS_RESPONSE_EXAMPLE,
    MAX_SESSION_ITEMS,
    RECOMMEND_EXAMPLE,
    RECOMMEND_RESPONSE_EXAMPLE,
    REQUEST_EXAMPLES,
    SESSION_EXAMPLE,
    attribute_model,
)
from serving.served_log import ServedLog, logging_enabled, new_request_id, served_now, served_store
from serving.server_options import serve_workers, tracing_settings

if TYPE_CHECKING:
    from serving.recommender import Recommender as Model
    from serving.recommender import ScoredItem

log = logging.getLogger("recforge.serving")


def _quiet_bentoml_deprecation() -> None:
    """BentoML 1.4.39 reads ``model_fields`` from an instance on every request; pydantic's warning about
    it is BentoML's to fix and says nothing about this service. Called after the heavy imports of a
    worker, because some of them reset the warning filters."""
    warnings.filterwarnings(
        "ignore", message="Accessing the 'model_fields' attribute", module="_bentoml_impl"
    )


MAX_K = 1000
MAX_CANDIDATES = 5000
DEPLOYMENT_ENV = "RECFORGE_DEPLOYMENT"
MODEL_TAG_ENV = "RECFORGE_MODEL_TAG"
NAMESPACE_ENV = "RECFORGE_FEATURE_NAMESPACE"
POLL_ENV = "RECFORGE_SWAP_POLL_S"
RETRY_ENV = "RECFORGE_SWAP_RETRY_S"


class ServingConfigError(RuntimeError):
    """Nothing to serve, or the settings disagree; the message says what to set."""


# ---- what this process serves --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServingTarget:
    """The deployment this service follows (or the model it is pinned to) and where its state lives."""

    layout: Layout
    deployment: str
    index_url: str
    pinned_tag: str | None  # RECFORGE_MODEL_TAG: serve this model and follow nothing
    validation: ValidationConfig = dataclasses.field(
        default_factory=ValidationConfig
    )  # rules of pushed events
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)  # request defaults

    @property
    def mode(self) -> str:
        return "pinned" if self.pinned_tag else "following"

    def index(self) -> RunIndex:
        return RunIndex(self.index_url)


def serving_target() -> ServingTarget:
    """Resolve the target from the environment and the pipeline config (cheap: no model is loaded)."""
    cfg = load_config()
    layout = Layout(cfg.home_dir)
    deployment = os.environ.get(DEPLOYMENT_ENV, "").strip() or cfg.deployment
    pinned = os.environ.get(MODEL_TAG_ENV, "").strip() or None
    return ServingTarget(
        layout, deployment, index_url(layout, cfg.run_index.url), pinned, cfg.validation, cfg.serving
    )


def champion_of(target: ServingTarget) -> DeploymentEvent:
    index = target.index()
    event = index.champion(target.deployment)
    if event is None:
        raise ServingConfigError(
            f"deployment {target.deployment!r} has no champion in the run index {index.describe()}: run the "
            f"pipeline until a model is promoted into it, point {DEPLOYMENT_ENV}/RECFORGE_HOME at one that has, "
            f"or pin a model of the BentoML store with {MODEL_TAG_ENV}"
        )
    return event


def model_tag_to_serve(target: ServingTarget) -> str:
    return target.pinned_tag or champion_of(target).model_tag


def pinned_namespace(
    target: ServingTarget, tag: str, metadata: dict[str, Any]
) -> tuple[str, DeploymentEvent | None]:
    """The Feast namespace of a pinned model (and the deployment event it comes from, if any)."""
    if os.environ.get(NAMESPACE_ENV, "").strip():
        return os.environ[NAMESPACE_ENV].strip(), None
    if metadata.get("feature_namespace"):
        return str(metadata["feature_namespace"]), None
    try:
        index = target.index()
        for deployment in [target.deployment, *index.deployments()]:
            for event in reversed(index.history(deployment)):
                if event.model_tag == tag:
                    return event.feature_namespace, event
    except Exception as exc:  # noqa: BLE001 - a pinned model may run where the run index is not reachable
        log.warning("pinned %s: run index not readable (%s); set %s", tag, one_line(exc), NAMESPACE_ENV)
    return "", None


def one_line(exc: BaseException) -> str:
    """An exception as one log/health line: its type named, whitespace folded, at most 500 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return clip(text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}", 500)


# ---- the bundle a request reads --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LiveModel:
    """Everything one request uses, loaded together and replaced together (never mutated)."""

    tag: str  # BentoML model tag
    rec: Model
    online: OnlineHistory  # reader of the namespace this model was judged with
    metadata: dict[str, Any]  # the stored model's metadata (metrics, data version, packaging plan)
    feature_namespace: str
    event: dict[str, Any] | None  # the deployment event that made it live (None when pinned by tag only)
    loaded_at: str
    load_seconds: float

    @property
    def user_attribute_names(self) -> list[str]:
        """The user attributes of this model's data schema (what ``user_features`` may hold)."""
        return self._attribute_names("users")

    @property
    def item_attribute_names(self) -> list[str]:
        """The item attributes of this model's data schema (what ``item_features`` may hold)."""
        return self._attribute_names("items")

    def _attribute_names(self, side: str) -> list[str]:
        schema = self.metadata.get("schema")
        if schema:  # the declared schema the model was trained with
            return list(schema.get("user_features" if side == "users" else "item_features", {}))
        attributes = self.rec.artifact.attributes
        return [f.name for f in getattr(attributes, side).fields] if attributes is not None else []


def load_live_model(
    tag: str,
    namespace: str,
    home: Path,
    event: DeploymentEvent | None = None,
    require_store: bool = False,
) -> LiveModel:
    """Load ``tag`` from the BentoML store, verified, with a Feast reader of ``namespace``.

    Raises with a message naming the cause (``CorruptModel`` names the file). ``require_store``: the
    feature store must answer too (a swap must not trade a working model for one without features).
    """
    from serving.recommender import load_recommender

    started = time.perf_counter()
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        raise ServingConfigError(
            f"{tag} is not in the BentoML store (BENTOML_HOME={os.environ.get('BENTOML_HOME')})"
        ) from None
    path = Path(stored.path)
    verify_checksums(path)
    rec = load_recommender(
        path / ARTIFACT_SUBDIR,
        path / TITLES_FILE,
        retriever_dir=path / RETRIEVER_SUBDIR,
        n_candidates=int(os.environ.get("RECFORGE_CANDIDATES", "200")),
        ann_dir=path / ANN_SUBDIR,
    )
    online = OnlineHistory(namespace, home=home)
    reachable, detail = online.health()  # connect now, not on the first request
    if require_store and not reachable:
        raise ConnectionError(f"the feature store of {tag} does not answer: {detail}")
    if not reachable:
        log.warning("serving %s without features for now: feature store DOWN: %s", tag, detail)
    return LiveModel(
        tag=str(stored.tag),
        rec=rec,
        online=online,
        metadata=dict(stored.info.metadata),
        feature_namespace=namespace,
        event=None if event is None else event.to_dict(),
        loaded_at=now_iso(),
        load_seconds=round(time.perf_counter() - started, 3),
    )


class ChampionFollower:
    """Keeps a service on its deployment's champion: polls the run index, loads and checks, then swaps."""

    def __init__(self, service: Recommender, target: ServingTarget, poll_s: float, retry_s: float) -> None:
        self.service = service
        self.target = target
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.pending: dict[str, Any] | None = None  # the champion we could not switch to, and why
        self.index_error: str | None = None
        self.last_poll_at: str | None = None
        self._index = target.index()
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}  # (tag, namespace) -> (when, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recforge-champion-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll_once()
            except Exception:  # never let the watcher die: the service would silently stop following
                log.exception("champion follower: unexpected error (still serving %s)", self.service.live.tag)

    def poll_once(self) -> bool:
        """One look at the run index; True when the service now serves a new champion."""
        deployment = self.target.deployment
        try:
            event = self._index.champion(deployment)
        except Exception as exc:  # noqa: BLE001 - keep serving what we have; say so once
            error = one_line(exc)
            if error != self.index_error:
                log.error(
                    "deployment %r: run index %s not readable: %s", deployment, self._index.describe(), error
                )
            self.index_error = error
            return False
        self.last_poll_at = now_iso()
        if self.index_error is not None:
            log.info("deployment %r: run index readable again", deployment)
            self.index_error = None
        live = self.service.live
        if event is None:
            return False
        key = (event.model_tag, event.feature_namespace)
        if key == (live.tag, live.feature_namespace):
            self.pending = None  # e.g. rolled back from a champion we could not load
            return False
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < self.retry_s:
            return False
        try:
            bundle = load_live_model(
                event.model_tag, event.feature_namespace, self.target.layout.home, event, require_store=True
            )
        except Exception as exc:  # noqa: BLE001 - any load failure keeps the old model serving
            error = one_line(exc)
            if failed is None or failed[1] != error:
                log.error(
                    "deployment %r: NOT switching to %s (event %s, %s); still serving %s: %s",
                    deployment,
                    event.model_tag,
                    event.id,
                    event.action,
                    live.tag,
                    error,
                )
            self._failed[key] = (time.monotonic(), error)
            self.pending = {
                "model_tag": event.model_tag,
                "feature_namespace": event.feature_namespace,
                "event_id": event.id,
                "action": event.action,
                "error": error,
                "since": self.pending["since"]
                if self.pending and self.pending["model_tag"] == event.model_tag
                else now_iso(),
            }
            return False
        self._failed.pop(key, None)
        # The swap: one attribute assignment. Requests in flight finish on the bundle they read.
        self.service.live = bundle
        self.pending = None
        log.info(
            "deployment %r: now serving %s (%s, event %s: %s), was %s; loaded in %.2fs",
            deployment,
            bundle.tag,
            bundle.rec.name,
            event.id,
            event.action,
            live.tag,
            bundle.load_seconds,
        )
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "poll_s": self.poll_s,
            "last_poll_at": self.last_poll_at,
            "run_index_error": self.index_error,
        }


# ---- process lifetime ------------------------------------------------------------------------------


def die_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies (``PR_SET_PDEATHSIG``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, signum, 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _in_bentoml_worker() -> bool:
    """True in a worker process started by ``bentoml serve`` (its parent is the supervisor)."""
    from bentoml._internal.context import server_context

    return server_context.worker_index is not None


def worker_failure_file(supervisor_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"recforge-serve-{supervisor_pid}.failed"


def stop_server(message: str) -> NoReturn:
    """A worker cannot serve: log ONE line, stop the whole ``bentoml serve``, exit 1.

    Outside a ``bentoml serve`` worker (an in-process test client) this raises instead.
    """
    log.error("%s", message)
    if not _in_bentoml_worker():
        raise ServingConfigError(message)
    supervisor = os.getppid()
    try:
        worker_failure_file(supervisor).write_text(message + "\n")
    except OSError:
        pass
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    try:
        os.kill(supervisor, signal.SIGTERM)
    except ProcessLookupError:
        pass
    os._exit(1)


def _exit_nonzero_if_a_worker_failed() -> None:
    """In the ``bentoml serve`` supervisor, at exit: status 1 if a worker stopped the server.

    BentoML's supervisor stops with status 0 on SIGTERM, whoever sent it; the worker leaves a note.
    ``os._exit`` because an ``atexit`` handler cannot change the exit status otherwise.
    """
    marker = worker_failure_file(os.getpid())
    if marker.is_file():
        marker.unlink(missing_ok=True)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


TARGET = serving_target()
MODEL_TAG = model_tag_to_serve(TARGET)
EVENT_LOG = open_event_log(TARGET.layout)  # what POST /events appends to; every ingest reads it
if not _in_bentoml_worker():
    atexit.register(_exit_nonzero_if_a_worker_failed)

# ---- request/response schemas ------------------------------------------------------------------


def _integral_float_to_int(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``10.0``; pydantic's strict int does not. Accept those, and
    nothing else strict mode refuses (no numeric strings, no booleans)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_int(**bounds: int) -> Any:
    """An integer as JSON Schema means it (10 or 10.0, never "10" or true), within ``bounds`` (ge/le).

    The bounds sit inside the lenient-float step so that the OpenAPI schema states them as
    ``minimum``/``maximum`` (pydantic writes constraints placed outside a validator as ``ge``/``le``,
    which JSON Schema does not know).
    """
    return Annotated[StrictInt, Field(**bounds), BeforeValidator(_integral_float_to_int)]


class Item(BaseModel):
    item_id: str
    score: float
    title: str | None = None
    # History item ids the ranker attended to most for this item (DIN/DIEN); null for other models.
    because_you_interacted_with: list[str] | None = None


class RecommendResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": RECOMMEND_RESPONSE_EXAMPLE})

    request_id: str  # this answer in the served log (serving.served_log); send it back with the clicks
    user_id: str | None  # null for an anonymous visitor (a session without user_id)
    items: list[Item]
    model: str
    model_tag: str  # the BentoML model that produced this answer
    deployment: str
    fallback: bool
    fallback_reason: str | None = None
    # How the user was represented: known_user | history | attributes | popularity (= fallback) |
    # session | history+session (scored from the request's session, alone or after the online history).
    strategy: str
    # What ran, in order: "full_ranking:<model>" or "retrieve:<model>@<candidates>", "rank:<model>".
    stages: list[str]
    history_used: int  # history items (online and session) known to the model and given to it
    # Session item ids the model does not know (dropped from the history, not an error).
    unknown_session_items: list[str] = []
    attributes_source: str | None = None  # "request", "feast" or "request+feast" when attributes were used
    note: str | None = None


def served_schema(tag: str) -> DataSchema:
    """The data schema the model ``tag`` was trained on (recorded at packaging), else the default."""
    try:
        metadata = bentoml.models.get(tag).info.metadata
    except Exception:  # noqa: BLE001 - documentation only: the live model's schema decides at request time
        metadata = {}
    schema = metadata.get("schema")
    return DataSchema.model_validate(schema) if schema else resolve_schema(None)


# Documented in the OpenAPI from the schema of the model served at start; a model swapped in later
# may declare other attributes, so requests are also checked against the live model's schema.
UserFeatures = attribute_model("UserFeatures", served_schema(MODEL_TAG).user_features)
ItemFeatures = attribute_model("ItemFeatures", served_schema(MODEL_TAG).item_features)


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[Item]
    model: str
    model_tag: str
    deployment: str
    method: str


# Ids: a string with something besides whitespace, at most MAX_ID_LENGTH characters, or a 64-bit integer.
_IdString = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"\S")]
_IdInt = json_int(ge=-(2**63), le=2**63 - 1)
UserId = Annotated[
    _IdString | _IdInt,
    Field(
        description=f"user id: a string of 1..{MAX_ID_LENGTH} characters, or an integer",
        examples=[RECOMMEND_EXAMPLE["user_id"]],
    ),
]
# /recommend: an anonymous visitor gives a session instead.
OptionalUserId = Annotated[
    _IdString | _IdInt | None,
    Field(
        description=f"user id: a string of 1..{MAX_ID_LENGTH} characters, or an integer; "
        "may be left out when a session is given",
        examples=[RECOMMEND_EXAMPLE["user_id"]],
    ),
]
ItemId = Annotated[
    _IdString | _IdInt,
    Field(description=f"item id: a string of 1..{MAX_ID_LENGTH} characters, or an integer"),
]
K = Annotated[
    json_int(ge=1, le=MAX_K),
    Field(description=f"number of items, 1..{MAX_K}", examples=[RECOMMEND_EXAMPLE["k"]]),
]
Candidates = Annotated[
    json_int(ge=1, le=MAX_CANDIDATES), Field(description="retrieval depth of two-stage serving")
]
Session = Annotated[
    list[_IdString | _IdInt],
    Field(
        max_length=MAX_SESSION_ITEMS,
        description=f"the visitor's recent item ids, oldest first, at most {MAX_SESSION_ITEMS}; "
        "ids the model does not know are reported in unknown_session_items",
        examples=[SESSION_EXAMPLE["session"]],
    ),
]
Diversity = Annotated[
    float,
    Field(
        ge=0.0,
        le=1.0,
        strict=True,
        description="MMR re-ranking weight of diversity against relevance, 0..1 (0: relevance order); "
        "default: the service's configured serving.diversity",
    ),
]


class Event(BaseModel):
    """One interaction, as in a source file: who, what, when (epoch seconds or ISO-8601), and a rating
    for explicit-feedback data."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EVENT_EXAMPLE})
    user_id: UserId
    item_id: ItemId
    timestamp: Annotated[
        StrictStr | StrictInt | StrictFloat,
        Field(description="epoch seconds, or ISO-8601 (UTC when no offset is given)"),
    ]
    rating: StrictFloat | StrictInt | None = None


class EventsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": EVENTS_RESPONSE_EXAMPLE})

    received: int  # events in the batch (all valid: an invalid batch is refused whole)
    appended: int  # new events written to the event log
    duplicates: int  # events the log already held (a retried batch is harmless)
    users: int  # users whose online history was updated (or would have been)
    history_updated: bool  # False: logged, but the next /recommend will not see them yet (see note)
    note: str | None = None


HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Readiness of the worker that answered: 200 when its model is loaded and its feature store answers.",
    "required": ["status", "model_loaded"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "starting"]},
        "model_loaded": {"type": "boolean"},
        "model_tag": {"type": "string", "description": "the BentoML model tag being served"},
        "model": {"type": "string"},
        "deployment": {"type": "string"},
        "mode": {"type": "string", "enum": ["following", "pinned"]},
        "feature_namespace": {"type": "string"},
        "loaded_at": {"type": "string"},
        "feature_store": {
            "type": "object",
            "properties": {"reachable": {"type": "boolean"}, "detail": {"type": "string"}},
        },
        "pending": {
            "type": ["object", "null"],
            "description": "the deployment's champion this worker could NOT switch to (it keeps serving model_tag)",
            "properties": {
                "model_tag": {"type": "string"},
                "feature_namespace": {"type": "string"},
                "event_id": {"type": ["integer", "null"]},
                "action": {"type": "string"},
                "error": {"type": "string"},
                "since": {"type": "string"},
            },
        },
        "follow": {
            "type": ["object", "null"],
            "description": "following mode: how often the run index is polled, when it last answered, its error",
        },
        "served_log": {
            "type": ["object", "null"],
            "description": "this worker's log of served answers: records written, pending, dropped, last error",
        },
    },
}


def _items(items: list[ScoredItem]) -> list[Item]:
    return [
        Item(
            item_id=i.item_id,
            score=i.score,
            title=i.title,
            because_you_interacted_with=i.because_you_interacted_with,
        )
        for i in items
    ]


def _health_probe() -> tuple[dict[str, Any], int]:
    """``GET /healthz``: (body, status) of this worker's service instance."""
    try:
        service = bentoml.get_current_service()
    except BentoMLException:  # not instantiated yet (or being shut down)
        service = None
    if service is None:
        return {"status": "starting", "model_loaded": False}, 503
    body = service.health()
    return body, 200 if body["status"] == "ok" else 503


def api_info(model_tag: str, deployment: str) -> dict[str, Any]:
    """The OpenAPI ``info`` of the service: what it is, its endpoints, a request to try; plain text and
    local links only (the page must render offline)."""
    example = json.dumps(RECOMMEND_EXAMPLE)
    session = json.dumps(SESSION_EXAMPLE)
    description = f"""\
Recommendations from the champion model of the recforge deployment `{deployment}`. The service follows
the deployment: a promotion or a `recforge rollback` is served without a restart, and every answer
names the `model_tag` that produced it.

- `POST /recommend`: the top `k` items for a user, from the user's freshest history in the online
  feature store; a user the model does not know is described by `user_features` or gets the most
  popular items (`fallback: true`). A `session` (recent item ids, oldest first) is appended to that
  history, or alone serves an anonymous visitor (no `user_id`); `diversity` (0..1) re-ranks for variety.
- `POST /similar_items`: the items nearest to an item (or to a new item described by `item_features`).
- `POST /events`: a batch of fresh interactions, checked with the ingestion rules, logged for the next
  training run and added to the users' online history (the next `/recommend` uses them).
- `GET /metadata`: what is served (model tag, offline metrics, data version, features);
  `GET /healthz`: readiness of the model and the feature store.

Try it (add `-H 'X-API-Key: <key>'` when the service has a key):

    curl -s -X POST localhost:3000/recommend -H 'Content-Type: application/json' -d '{example}'
    curl -s -X POST localhost:3000/recommend -H 'Content-Type: application/json' -d '{session}'

Errors share one JSON shape (`Error`): a status, a message naming the field at fault, and details.
Model served when this worker started: `{model_tag}`."""
    return {
        "title": "recforge recommender API",
        "version": f"{package_version()} (model {model_tag})",
        "description": description,
    }


metadata_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="recforge_recommender",
    description="recforge recommender: a deployment's champion model, with Feast online history",
    traffic={"timeout": 10},
    # One worker (process) by default: each worker holds its own model copy (docs/serving-performance.md).
    workers=serve_workers(TARGET.serving),
    threads=4,
    resources={"cpu": "1"},
    logging={"access": {"enabled": False}},
    tracing=tracing_settings(TARGET.serving),
)
@bentoml.asgi_app(metadata_app, path="/")
class Recommender:
    """Top-k recommendations and similar items from a deployment's champion model."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)  # what `bentoml build` packages

    def __init__(self) -> None:
        # First: a supervisor killed even with SIGKILL must take this worker (and its copy of the
        # listening socket) down with it.
        die_with_parent()
        # BentoML's worker logging shows WARNING and up from other loggers; our INFO lines (what is
        # served, every swap) belong in the server log too.
        if logging.getLogger("recforge").level == logging.NOTSET:
            logging.getLogger("recforge").setLevel(logging.INFO)
        # Heavy imports (torch, Lightning via the model registry, Feast) happen here, in the worker only:
        # the `bentoml serve` parent process imports this module too, just to read the service config.
        import torch

        torch.set_num_threads(int(os.environ.get("RECFORGE_TORCH_THREADS", "1")))
        self.target = TARGET
        self.served_log = ServedLog(served_store(TARGET.layout)) if logging_enabled() else None
        self.follower: ChampionFollower | None = None
        tag = TARGET.pinned_tag or "the champion"
        try:
            if TARGET.pinned_tag:
                metadata = dict(bentoml.models.get(tag).info.metadata)
                namespace, event = pinned_namespace(TARGET, tag, metadata)
            else:
                event = champion_of(TARGET)  # now, not at import: it may have moved since
                tag, namespace = event.model_tag, event.feature_namespace
            self.live: LiveModel = load_live_model(tag, namespace, TARGET.layout.home, event)
        except Exception as exc:  # noqa: BLE001 - whatever it is, this worker cannot serve
            stop_server(f"recforge: cannot serve {tag} (deployment {TARGET.deployment!r}): {one_line(exc)}")
        _quiet_bentoml_deprecation()
        live = self.live
        log.info(
            "serving %s (%s, stages %s, %d items, %d users, history %d) for deployment %r (%s) in %.2fs; "
            "feature namespace %s",
            live.tag,
            live.rec.name,
            live.rec.describe()["stages"],
            live.rec.n_items,
            len(live.rec.user_index),
            live.rec.history_length,
            TARGET.deployment,
            TARGET.mode,
            live.load_seconds,
            live.feature_namespace,
        )
        if not TARGET.pinned_tag:
            self.follower = ChampionFollower(
                self,
                TARGET,
                poll_s=float(os.environ.get(POLL_ENV, "2")),
                retry_s=float(os.environ.get(RETRY_ENV, "30")),
            )
            self.follower.start()

    @bentoml.on_shutdown
    def _stop_following(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.served_log is not None:
            self.served_log.close()

    # ---- probes --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        live = self.live
        reachable, detail = live.online.health()
        return {
            "status": "ok" if reachable else "degraded",
            "model_loaded": True,
            "model_tag": live.tag,
            "model": live.rec.name,
            "deployment": TARGET.deployment,
            "mode": TARGET.mode,
            "feature_namespace": live.feature_namespace,
            "loaded_at": live.loaded_at,
            "feature_store": {"reachable": reachable, "detail": detail},
            "pending": self.follower.pending if self.follower else None,
            "follow": self.follower.describe() if self.follower else None,
            "served_log": self.served_log.describe() if self.served_log else None,
        }

    def __is_ready__(self) -> bool:
        """``/readyz``: ready only with the feature store up (else recommendations lose the history)."""
        return self.live.online.health()[0]

    # ---- endpoints -----------------------------------------------------------------------------

    @bentoml.api
    def recommend(
        self,
        user_id: OptionalUserId = None,
        k: K = 10,
        exclude_seen: StrictBool = True,
        user_features: UserFeatures | None = None,
        candidates: Candidates | None = None,
        session: Session | None = None,
        diversity: Diversity | None = None,
    ) -> RecommendResponse:
        """Top-k items for a user, using the user's freshest history from Feast.

        ``user_features`` (age, gender, occupation) describe a user the model does not know yet; they
        override the Feast profile row field by field. ``candidates`` sets the retrieval depth of a
        two-stage (retrieve-then-rank) model for this request. ``session`` (the visitor's recent item
        ids, oldest first) is appended to the user's history, or is the whole history of an anonymous
        visitor (no ``user_id``). ``diversity`` re-ranks the most relevant items for variety (MMR).
        """
        live = self.live  # once: the whole request uses this model and its feature reader
        uid = None if user_id is None else str(user_id).strip()
        if uid == "":
            raise InvalidArgument("user_id must be a non-empty string or integer")
        # Neither user_id nor session: an anonymous visitor we know nothing of (popularity, flagged). Not
        # refused, because the OpenAPI schema cannot say "one of the two" and must accept what it allows.
        visited = None if session is None else [str(item).strip() for item in session]
        history = live.online.recent_items(uid) if uid is not None else None
        attributes, source = None, None
        if uid is None:  # an anonymous visitor has no profile row: only the request's attributes
            given = _requested_attributes(user_features, "user_features", live.user_attribute_names, live.tag)
            attributes, source = (given, "request") if given else (None, None)
        elif live.rec.wants_attributes(uid):  # cold users only: known users skip the profile read
            attributes, source = _attributes(live, uid, user_features)
        try:
            result = live.rec.recommend(
                uid,
                history,
                k,
                exclude_seen=exclude_seen,
                user_features=attributes,
                candidates=candidates,
                session=visited,
                diversity=TARGET.serving.diversity if diversity is None else diversity,
            )
        except ValueError as exc:  # a session or diversity the model refuses (SessionTooLong, ...)
            raise InvalidArgument(str(exc)) from None
        request_id = new_request_id()
        if self.served_log is not None:
            self.served_log.record(
                request_id=request_id,
                served_at=served_now(),
                user_id=uid,
                items=[i.item_id for i in result.items],
                scores=[float(i.score) for i in result.items],
                k=k,
                strategy=result.strategy,
                fallback=result.fallback,
                history_used=result.history_used,
                model_tag=live.tag,
                deployment=TARGET.deployment,
            )
        return RecommendResponse(
            request_id=request_id,
            user_id=uid,
            items=_items(result.items),
            model=live.rec.name,
            model_tag=live.tag,
            deployment=TARGET.deployment,
            fallback=result.fallback,
            fallback_reason=result.fallback_reason,
            strategy=result.strategy,
            stages=result.stages,
            history_used=result.history_used,
            attributes_source=source if result.strategy == "attributes" else None,
            note=result.note,
            unknown_session_items=result.unknown_session_items,
        )

    @bentoml.api
    def events(
        self,
        events: Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS)],
    ) -> EventsResponse:
        """Take a batch of fresh interactions: checked with the ingestion rules (an invalid batch is
        refused whole, each bad row named with its reason), appended durably to the event log that
        the next pipeline run ingests, and added to each user's online history so that the next
        ``/recommend`` for them uses it. Pushing the same events again appends nothing."""
        live = self.live
        records = [e.model_dump() for e in events]
        intake = check_batch(records, TARGET.validation, live.rec.item_index)
        if intake.events is None:
            raise rows_invalid(
                f"{len(intake.bad)} of {len(records)} events are invalid; nothing was applied",
                [
                    {"field": f"events[{b.row}]", "message": f"{b.reason}: {clip(b.event)}", "type": b.reason}
                    for b in intake.bad
                ],
            )
        appended = EVENT_LOG.append(intake.events)
        fresh = appended.events
        updated, note = True, None
        if appended.appended:
            try:
                live.online.append_events(fresh)
            except Exception as exc:  # noqa: BLE001 - logged durably; the history catches up at the next run
                log.warning("events logged but online history not updated: %s", one_line(exc))
                updated, note = False, f"logged; the online history was not updated: {one_line(exc)}"
        elif appended.duplicates:
            note = "every event was already logged: nothing to do"
        return EventsResponse(
            received=len(records),
            appended=appended.appended,
            duplicates=appended.duplicates,
            users=int(fresh["user_id"].nunique()) if appended.appended else 0,
            history_updated=updated and appended.appended > 0,
            note=note,
        )

    @bentoml.api
    def similar_items(
        self, item_id: ItemId, k: K = 10, item_features: ItemFeatures | None = None
    ) -> SimilarItemsResponse:
        """Items most similar to ``item_id`` (cosine of item embeddings / item-item similarity).

        An item not in the served catalogue (a product added since training) is described by
        ``item_features``: models that embed items from attributes place it among the catalogue
        (``/metadata`` ``serving.new_items_from_attributes``). For an item of the catalogue its own
        vector is used and ``item_features`` is ignored.
        """
        live = self.live
        iid = str(item_id).strip()
        method = live.rec.similarity_method
        if iid in live.rec.item_index:
            items = live.rec.similar_items(iid, k)
        elif features := _item_features(live, item_features):
            try:
                items = live.rec.similar_to_attributes(features, k)
            except ValueError as exc:  # the model cannot place it: the item stays unknown to it
                raise NotFound(f"unknown item_id {clip(iid)!r}, and {exc}") from None
            method = "attribute_embedding_cosine"
        else:
            raise NotFound(
                f"unknown item_id {clip(iid)!r}: the model {live.tag} was trained on {live.rec.n_items} items "
                "and this is not one of them (describe a new item with item_features)"
            )
        return SimilarItemsResponse(
            item_id=iid,
            items=_items(items),
            model=live.rec.name,
            model_tag=live.tag,
            deployment=TARGET.deployment,
            method=method,
        )

    @metadata_app.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """What is being served: deployment, model tag, offline metrics, data version, protocol, features."""
        live = self.live
        info = live.metadata
        return {
            "model": live.rec.name,
            "kind": live.rec.kind,
            "model_tag": live.tag,
            "deployment": TARGET.deployment,
            "mode": TARGET.mode,
            "deployment_event": live.event,  # the promotion or rollback that made it live
            "loaded_at": live.loaded_at,
            "metrics": info.get("metrics", {}),
            "data_version": info.get("data_version"),
            "protocol": info.get("protocol"),
            "feature_namespace": live.feature_namespace,
            "feature_views": info.get("feature_views", []),
            "online_features": info.get("online_features", ONLINE_FEATURES),
            "git_commit": info.get("git_commit"),
            "n_items": live.rec.n_items,
            "n_users": len(live.rec.user_index),
            "history_length": live.rec.history_length,
            "similarity_method": live.rec.similarity_method,
            "feature_repo": str(live.online.repo_path),
            # Serving stages (retrieve -> rank, or full ranking), cold-start paths, explanations; and
            # the packaging decision (which retrieval run was chosen, or why there is none).
            "serving": {**live.rec.describe(), "packaging": info.get("serving")},
        }


def _requested_attributes(requested: BaseModel | None, field: str, declared: list[str], tag: str) -> dict:
    """The attributes a request gives (empty when none), checked against the live model's ``declared``."""
    given = requested.model_dump(exclude_none=True) if requested is not None else {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise InvalidArgument(
            f"{field} {clip(str(unknown))}: the served model {tag} knows the "
            f"{field.split('_')[0]} attributes {declared}"
        )
    return given


def _item_features(live: LiveModel, requested: BaseModel | None) -> dict[str, Any]:
    """A new item's attributes from the request."""
    return _requested_attributes(requested, "item_features", live.item_attribute_names, live.tag)


def _attributes(
    live: LiveModel, uid: str, requested: BaseModel | None
) -> tuple[dict[str, Any] | None, str | None]:
    """The cold user's attributes: the request's fields over the Feast profile row's."""
    declared = live.user_attribute_names
    given = _requested_attributes(requested, "user_features", declared, live.tag)
    missing = [name for name in declared if name not in given]
    stored = (live.online.profile(uid, missing) or {}) if missing else {}
    merged = {**stored, **given}
    if not merged:
        return None, None
    source = "+".join(name for name, part in (("request", given), ("feast", stored)) if part)
    return merged, source


API_PATHS = [api.route for api in Recommender.apis.values()]
Recommender.add_asgi_middleware(
    ServingSafety,
    api_paths=API_PATHS,
    health=_health_probe,
    health_schema=HEALTH_SCHEMA,
    info=api_info(MODEL_TAG, TARGET.deployment),
    request_examples=REQUEST_EXAMPLES,
)
