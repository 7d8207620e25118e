"""Feast definitions of recforge: entities, sources, feature views and feature services.

Only definitions live in this repo, because Feast imports every ``.py`` file in it on ``feast apply``.
The attribute views are generated from the dataset's schema (``pipeline/schema.py``; the JSON copy
that ``RECFORGE_FEAST_SCHEMA`` names, else the built-in movielens schema): ``user_profile`` holds the
declared user attributes, ``item_profile`` the item attributes (a view exists only when its entity has
attributes). The behaviour views (``user_activity``, ``item_popularity``) are the same for every
dataset. The tables behind the sources are written by ``features.store.build_features`` into
``$RECFORGE_FEAST_DIR/offline/<view>.parquet`` (one directory per Feast namespace, i.e. per data
version); paths and schema are read from the environment when this module is imported, so the CLI,
the pipeline and the service all point at the same files.

Every view has ``ttl=timedelta(0)``, which Feast reads as "never expires": profiles are static, and
the activity/popularity rows hold the full state as of their timestamp (the latest one stays valid
until a newer one arrives), so no value may be dropped from a point-in-time join for being old.

History views (``user_activity``, ``item_popularity``) hold, in the row stamped ``t``, only what
happened strictly before ``t`` — Feast's point-in-time join is inclusive (a row stamped exactly at an
event's timestamp is joined to it), so this is what keeps an event's own label out of its features.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64, String

from pipeline.schema import load_schema

RECFORGE_HOME = Path(os.environ.get("RECFORGE_HOME") or Path(__file__).resolve().parent.parent / ".recforge")
OFFLINE_DIR = Path(os.environ.get("RECFORGE_FEAST_DIR") or RECFORGE_HOME / "feast") / "offline"
SCHEMA = load_schema(os.environ.get("RECFORGE_FEAST_SCHEMA") or None)
NEVER_EXPIRES = timedelta(0)
USER_ACTIVITY_PUSH = "user_activity_push"  # serving.online.ACTIVITY_PUSH_SOURCE names it too
FEAST_TYPES = {"numeric": Float64, "categorical": String, "list": Array(String), "text": String}


def _source(view: str) -> FileSource:
    return FileSource(
        name=f"{view}_source",
        path=str(OFFLINE_DIR / f"{view}.parquet"),
        timestamp_field="event_timestamp",
        description=f"Offline table of the {view} view, written by features.store.build_features",
    )


user = Entity(
    name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A user (string id)"
)
item = Entity(
    name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="An item (string id)"
)


def _profile(name: str, entity: Entity, kind: str) -> FeatureView | None:
    fields = SCHEMA.fields(kind)  # type: ignore[arg-type]
    if not fields:
        return None
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=NEVER_EXPIRES,
        schema=[
            Field(name=n, dtype=FEAST_TYPES[spec.type], description=spec.description)
            for n, spec in fields.items()
        ],
        online=True,
        source=_source(name),
        description=f"Static {kind} attributes of schema {SCHEMA.name!r}, stamped at the earliest event of the snapshot",
    )


user_profile = _profile("user_profile", user, "user")
item_profile = _profile("item_profile", item, "item")

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=NEVER_EXPIRES,
    schema=[
        Field(name="user_interaction_count", dtype=Int64),
        Field(name="user_mean_rating", dtype=Float64),
        Field(name="recent_items", dtype=Array(String)),
    ],
    online=True,
    # Batch rows come from the offline table; the service pushes a user's new state when events
    # arrive online (POST /events), so the next request reads the new history.
    source=PushSource(name=USER_ACTIVITY_PUSH, batch_source=_source("user_activity")),
    description="The user's history strictly before the row's timestamp (last N items oldest first); "
    "the newest row of a user (just after the last event, or pushed by the service) is what serving "
    "reads online",
)

item_popularity = FeatureView(
    name="item_popularity",
    entities=[item],
    ttl=NEVER_EXPIRES,
    schema=[Field(name="item_interaction_count", dtype=Int64), Field(name="item_mean_rating", dtype=Float64)],
    online=True,
    source=_source("item_popularity"),
    description="The item's interactions strictly before the row's timestamp",
)

_views = [v for v in (user_profile, user_activity, item_profile, item_popularity) if v is not None]
recsys_training = FeatureService(
    name="recsys_training",
    features=_views,
    description="Every feature of a training example (point-in-time via get_historical_features)",
)

recsys_online = FeatureService(
    name="recsys_online",
    features=[v for v in (user_profile, user_activity) if v is not None],
    description="What the service reads per request: the user's profile and freshest history",
)
