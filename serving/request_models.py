"""Request models derived from the data schema: what a request may say about a user (or item) the
model has never seen; and the request and response examples of the API's documentation. Kept apart
from ``serving.service`` so they can be built and tested without a running service."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model

from pipeline.config import FeatureConfig
from pipeline.schema import FieldSpec

MAX_ATTRIBUTE_LENGTH = 256  # characters of one attribute value (or list token) in a request
MAX_LIST_TOKENS = 64
# Items of a /recommend session: what the feature store keeps of a history by default; a longer
# session would never reach a model whole.
MAX_SESSION_ITEMS: int = FeatureConfig.model_fields["history_length"].default


def attribute_model(name: str, fields: dict[str, FieldSpec]) -> type[BaseModel]:
    """The request model of one entity's attributes, from the data schema (every field optional;
    unknown fields are refused: a typo must not silently become "no attribute")."""
    declared: dict[str, Any] = {}
    for field_name, spec in fields.items():
        if spec.type == "numeric":
            kind: Any = Annotated[float, Field(ge=spec.min, le=spec.max, strict=True)]
        elif spec.type == "list":
            token = Annotated[StrictStr, Field(max_length=MAX_ATTRIBUTE_LENGTH)]
            kind = Annotated[list[token], Field(max_length=MAX_LIST_TOKENS)]
        else:
            kind = Annotated[StrictStr, Field(max_length=MAX_ATTRIBUTE_LENGTH)]
        description = spec.description or f"{spec.type} attribute"
        declared[field_name] = (kind | None, Field(None, description=description))
    return create_model(name, __config__=ConfigDict(extra="forbid"), **declared)


# Examples shown in the OpenAPI document (and tried by the schema tests): MovieLens-100K's first event.
# An unknown user is answered too (a popularity fallback), so the /recommend example always works.
RECOMMEND_EXAMPLE: dict[str, Any] = {"user_id": "196", "k": 10, "exclude_seen": True}
# An anonymous visitor who just watched three MovieLens-100K films (ids of its catalogue).
SESSION_EXAMPLE: dict[str, Any] = {"session": ["50", "181", "172"], "k": 10}
EVENT_EXAMPLE: dict[str, Any] = {"user_id": "196", "item_id": "242", "timestamp": 881250949}
EVENTS_EXAMPLE: dict[str, Any] = {"events": [EVENT_EXAMPLE]}
RECOMMEND_RESPONSE_EXAMPLE: dict[str, Any] = {
    "request_id": "3f6c2a9e1b7d4e0f",
    "user_id": "196",
    "items": [{"item_id": "50", "score": 4.21, "title": "Star Wars"}],
    "model": "bpr",
    "model_tag": "recforge-bpr:abc123",
    "deployment": "default",
    "fallback": False,
    "strategy": "known_user",
    "stages": ["full_ranking:bpr"],
    "history_used": 12,
}
EVENTS_RESPONSE_EXAMPLE: dict[str, Any] = {
    "received": 1,
    "appended": 1,
    "duplicates": 0,
    "users": 1,
    "history_updated": True,
}
REQUEST_EXAMPLES = {"/recommend": RECOMMEND_EXAMPLE, "/events": EVENTS_EXAMPLE}
