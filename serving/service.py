"""The BentoML service: the champion recommender behind HTTP, with Feast history read per request.

Which model: ``RECFORGE_MODEL_TAG`` (a BentoML model tag, e.g. ``recforge-bpr:abc``) if set, else the
``bento_tag`` of ``$RECFORGE_HOME/champion.json``. It is resolved when this module is imported, because
BentoML packages into a Bento only models declared as class attributes (``bentoml.models.BentoModel``);
a Bento built by ``serving.package`` bakes ``RECFORGE_MODEL_TAG`` into its environment.
Where the model store is: ``BENTOML_HOME`` (``$RECFORGE_HOME/bentoml`` for this project) must be set
before ``bentoml`` starts, e.g.::

    RECFORGE_HOME=.recforge BENTOML_HOME=.recforge/bentoml OMP_WAIT_POLICY=PASSIVE \
        bentoml serve serving.service:Recommender -p 3000

Which feature store: ``RECFORGE_FEATURE_REPO`` (default ``<repo>/feature_repo``), see ``serving.online``.

Two-stage serving: a ranker packaged with a retriever (``serving.package.choose_retriever``) re-ranks the
retriever's top ``RECFORGE_CANDIDATES`` (default 200; a request may ask for another depth) items.
Cold users: for a user unknown to the model, the Feast ``user_profile`` row (or the request's
``user_features``, which take precedence) feeds models that score from attributes.

Threads: PyTorch gets ``RECFORGE_TORCH_THREADS`` (default 1) intra-op threads: one request is a single
small matrix-vector product, and on these shared 2-core machines more threads only add contention.
Run with ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP threads sleep instead of spinning (measured 10-30x
slowdowns of neighbouring processes otherwise, see STACK.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import bentoml
from bentoml.exceptions import NotFound
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.responses import JSONResponse

from pipeline.config import load_config
from pipeline.layout import Layout
from serving.online import FEATURE_VIEWS, ONLINE_FEATURES, OnlineHistory
from serving.package import ARTIFACT_SUBDIR, RETRIEVER_SUBDIR, TITLES_FILE

if TYPE_CHECKING:
    from serving.recommender import ScoredItem

log = logging.getLogger("recforge.serving")

MAX_K = 1000
MAX_CANDIDATES = 5000


def resolve_model_tag() -> str:
    """The BentoML model tag to serve: ``RECFORGE_MODEL_TAG``, else the champion pointer's ``bento_tag``."""
    tag = os.environ.get("RECFORGE_MODEL_TAG", "").strip()
    if tag:
        return tag
    champion = Layout(load_config().home_dir).champion
    if not champion.exists():
        raise RuntimeError(
            f"no model to serve: RECFORGE_MODEL_TAG is unset and there is no champion pointer at {champion}. "
            "Run the pipeline until a model is promoted, set RECFORGE_HOME to its home, or set "
            "RECFORGE_MODEL_TAG to a model in the BentoML store (BENTOML_HOME)."
        )
    try:
        return str(json.loads(champion.read_text())["bento_tag"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"champion pointer {champion} has no 'bento_tag': {exc}") from exc


MODEL_TAG = resolve_model_tag()

# ---- request/response schemas ------------------------------------------------------------------


class Item(BaseModel):
    item_id: str
    score: float
    title: str | None = None
    # History item ids the ranker attended to most for this item (DIN/DIEN); null for other models.
    because_you_interacted_with: list[str] | None = None


class RecommendResponse(BaseModel):
    user_id: str
    items: list[Item]
    model: str
    model_version: str
    fallback: bool
    fallback_reason: str | None = None
    # How the user was represented: known_user | history | attributes | popularity (= fallback).
    strategy: str
    # What ran, in order: "full_ranking:<model>" or "retrieve:<model>@<candidates>", "rank:<model>".
    stages: list[str]
    history_used: int  # online history items known to the model
    attributes_source: str | None = None  # "request", "feast" or "request+feast" when attributes were used
    note: str | None = None


class UserFeatures(BaseModel):
    """Profile attributes of a user the model may not know (e.g. signed up seconds ago)."""

    model_config = ConfigDict(extra="forbid")
    age: Annotated[StrictInt, Field(ge=0, le=150, description="age in years")] | None = None
    gender: Annotated[StrictStr, Field(max_length=64)] | None = None
    occupation: Annotated[StrictStr, Field(max_length=128)] | None = None


class SimilarItemsResponse(BaseModel):
    item_id: str
    items: list[Item]
    model: str
    model_version: str
    method: str


UserId = Annotated[StrictStr | StrictInt, Field(description="user id (string or integer)")]
K = Annotated[StrictInt, Field(ge=1, le=MAX_K, description=f"number of items, 1..{MAX_K}")]
Candidates = Annotated[
    StrictInt, Field(ge=1, le=MAX_CANDIDATES, description="retrieval depth of two-stage serving")
]


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


metadata_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


class _HealthzMiddleware:
    """Answers ``GET /healthz`` with a JSON body (model loaded, feature store reachable) and 200/503.

    BentoML registers its own plain-text ``/healthz`` ahead of any mounted app, so a route cannot
    replace it; an ASGI middleware sees the request first.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path") == "/healthz" and scope.get("method") == "GET":
            service = bentoml.get_current_service()
            if service is None:
                body, status = {"status": "starting", "model_loaded": False}, 503
            else:
                # Off the event loop: the probe may do a (normally sub-ms) Feast read that could block.
                body = await anyio.to_thread.run_sync(service.health)
                status = 200 if body["status"] == "ok" else 503
            await JSONResponse(body, status_code=status)(scope, receive, send)
            return
        await self.app(scope, receive, send)


@bentoml.service(
    name="recforge_recommender",
    traffic={"timeout": 10},
    # One worker (process) by default: 2 shared cores here, and each worker holds its own model copy.
    workers=int(os.environ.get("RECFORGE_SERVE_WORKERS", "1")),
    threads=4,
    resources={"cpu": "1"},
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(metadata_app, path="/")
class Recommender:
    """Top-k recommendations and similar items from the champion model."""

    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        # Heavy imports (torch, Lightning via the model registry, Feast) happen here, in the worker only:
        # the `bentoml serve` parent process imports this module too, just to read the service config.
        import torch

        from serving.recommender import load_recommender

        torch.set_num_threads(int(os.environ.get("RECFORGE_TORCH_THREADS", "1")))
        stored = self.bento_model
        path = Path(stored.path)
        self.tag = str(stored.tag)
        self.info: dict[str, Any] = dict(stored.info.metadata)
        started = time.perf_counter()
        self.rec = load_recommender(
            path / ARTIFACT_SUBDIR,
            path / TITLES_FILE,
            retriever_dir=path / RETRIEVER_SUBDIR,
            n_candidates=int(os.environ.get("RECFORGE_CANDIDATES", "200")),
        )
        self.online = OnlineHistory()
        reachable, detail = self.online.health()  # connect once now, not on the first request
        log.info(
            "loaded %s (%s, stages %s, %d items, %d users, history %d) in %.2fs; feature store: %s",
            self.tag,
            self.rec.name,
            self.rec.describe()["stages"],
            self.rec.n_items,
            len(self.rec.user_index),
            self.rec.history_length,
            time.perf_counter() - started,
            detail if reachable else f"DOWN {detail}",
        )

    # ---- probes --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        reachable, detail = self.online.health()
        return {
            "status": "ok" if reachable else "degraded",
            "model_loaded": True,
            "model_tag": self.tag,
            "feature_store": {"reachable": reachable, "detail": detail},
        }

    def __is_ready__(self) -> bool:
        """``/readyz``: ready only with the feature store up (else recommendations lose the history)."""
        return self.online.health()[0]

    # ---- endpoints -----------------------------------------------------------------------------

    @bentoml.api
    def recommend(
        self,
        user_id: UserId,
        k: K = 10,
        exclude_seen: StrictBool = True,
        user_features: UserFeatures | None = None,
        candidates: Candidates | None = None,
    ) -> RecommendResponse:
        """Top-k items for a user, using the user's freshest history from Feast.

        ``user_features`` (age, gender, occupation) describe a user the model does not know yet; they
        override the Feast profile row field by field. ``candidates`` sets the retrieval depth of a
        two-stage (retrieve-then-rank) model for this request.
        """
        uid = str(user_id).strip()
        if not uid:
            raise bentoml.exceptions.InvalidArgument("user_id must be a non-empty string or integer")
        history = self.online.recent_items(uid)
        attributes, source = None, None
        if self.rec.wants_attributes(uid):  # cold users only: known users skip the profile read
            attributes, source = self._attributes(uid, user_features)
        result = self.rec.recommend(
            uid, history, k, exclude_seen=exclude_seen, user_features=attributes, candidates=candidates
        )
        return RecommendResponse(
            user_id=uid,
            items=_items(result.items),
            model=self.rec.name,
            model_version=self.tag,
            fallback=result.fallback,
            fallback_reason=result.fallback_reason,
            strategy=result.strategy,
            stages=result.stages,
            history_used=result.history_used,
            attributes_source=source if result.strategy == "attributes" else None,
            note=result.note,
        )

    def _attributes(
        self, uid: str, requested: UserFeatures | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The cold user's attributes: the request's fields over the Feast profile row's."""
        given = requested.model_dump(exclude_none=True) if requested is not None else {}
        stored = {} if len(given) == 3 else (self.online.profile(uid) or {})
        merged = {**stored, **given}
        if not merged:
            return None, None
        source = "+".join(name for name, part in (("request", given), ("feast", stored)) if part)
        return merged, source

    @bentoml.api
    def similar_items(self, item_id: StrictStr | StrictInt, k: K = 10) -> SimilarItemsResponse:
        """Items most similar to ``item_id`` (cosine of item embeddings / item-item similarity)."""
        iid = str(item_id)
        try:
            items = self.rec.similar_items(iid, k)
        except KeyError:
            raise NotFound(
                f"unknown item_id {iid!r}: the model {self.tag} was trained on {self.rec.n_items} items "
                "and this is not one of them"
            ) from None
        return SimilarItemsResponse(
            item_id=iid,
            items=_items(items),
            model=self.rec.name,
            model_version=self.tag,
            method=self.rec.similarity_method,
        )

    @metadata_app.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """What is being served: model, tag, offline metrics, data version, split protocol, features."""
        info = self.info
        return {
            "model": self.rec.name,
            "kind": self.rec.kind,
            "model_tag": self.tag,
            "metrics": info.get("metrics", {}),
            "data_version": info.get("data_version"),
            "protocol": info.get("protocol"),
            "feature_views": info.get("feature_views", FEATURE_VIEWS),
            "online_features": info.get("online_features", ONLINE_FEATURES),
            "git_commit": info.get("git_commit"),
            "n_items": self.rec.n_items,
            "n_users": len(self.rec.user_index),
            "history_length": self.rec.history_length,
            "similarity_method": self.rec.similarity_method,
            "feature_repo": str(self.online.repo_path),
            # Serving stages (retrieve -> rank, or full ranking), cold-start paths, explanations; and
            # the packaging decision (which retrieval run was chosen, or why there is none).
            "serving": {**self.rec.describe(), "packaging": info.get("serving")},
        }


Recommender.add_asgi_middleware(_HealthzMiddleware)
