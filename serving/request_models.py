"""Request models derived from the data schema: what a request may say about a user (or item) the
model has never seen. Kept apart from ``serving.service`` so they can be built and tested without a
running service."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model

from pipeline.schema import FieldSpec

MAX_ATTRIBUTE_LENGTH = 256  # characters of one attribute value (or list token) in a request
MAX_LIST_TOKENS = 64


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
