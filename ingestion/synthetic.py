"""A synthetic interaction log for scale tests: millions of events, up to a million items.

``write_synthetic(out_dir, n_events, n_items, n_users)`` writes ``events.parquet`` (implicit feedback:
``user_id``, ``item_id``, ``timestamp`` in epoch seconds, ``rating`` all null, as the shop leaves it
empty), ``users.parquet``, ``items.parquet``, the dataset's ``schema.yaml`` and a ``pipeline.yaml``
whose ``source`` selects these files (``kind: events``), the layout of ``recforge example shop``.
Ids are strings (``u000042``, ``i0001234``). Every user has at least one event; items in the long
tail of the popularity curve may have none (they are still part of the catalogue).

Scale: the attribute tables and the per-item tables the generator needs (category, popularity
pools, successor lists) are built once with ``numpy``; events are generated for one block of users
at a time (about ``chunk_events`` events, every event of a user in the same block) and appended to
the Parquet file as one row group, so memory follows the block and the item count, not the length of
the log. Nothing loops over events in Python: per-block work loops only over the position within a
session. The same arguments give the same files (each block draws from its own generator, seeded by
``seed`` and the block number). Events are written user by user, each user's in time order.

Planted structure, and the argument of ``write_synthetic`` that controls it
----------------------------------------------------------------------------
- Item popularity is power law: each item gets a random global rank ``r`` and the weight
  ``(r + 1) ** -item_skew`` (``--item-skew``, default 1.0; 0 is uniform). Every "fresh" pick (the
  first event of a session, and later ones that do not follow the previous item) draws by this
  weight, globally or within a category, so a few items take a large share of the events.
- User activity is heavy-tailed: a user's share of the events is log-normal (``activity_sigma``,
  default 1.2): a few heavy users, many with a handful of events; every user has at least one. A
  user's count is capped so that all their sessions fit in the time span with the gaps below.
- Sessions: after each event a new session starts with probability ``1 / mean_session_events``
  (default 4). Within a session the next item is, with probability ``p_next`` (default 0.6), one of
  the previous item's ``n_successors`` (default 5) neighbours, uniformly; otherwise a fresh pick. An
  item's neighbours are the items following it in a fixed random cyclic order of its category (the
  items one browses to from it), so the successor of an item is predictable from the item itself:
  sequential models have a signal that user-item co-occurrence only partly carries.
- Session timing: events of a session are 10 s to a few minutes apart (at most ``MAX_SESSION_S``
  from first to last, less for very heavy users); the next session of the same user starts at least
  ``SESSION_GAP_S`` after the previous one ended, twice the pipeline's default session gap (``evaluation.session_gap_minutes``),
  so sessions cut by the pipeline are the planted ones. Session starts are spread over ``days``
  (``--days``, default 180) from 2024-01-01 UTC, with random gaps between them; no daily cycle.
- Attributes that matter: items have a ``category`` (about ``sqrt(n_items) / 2`` of them, 4 to 500;
  ``n_categories`` overrides), a ``brand`` (each brand sells in one category, so it implies the
  category) and a ``price`` (log-normal around a per-category median). Users have a ``region`` and
  an ``age_band``; each (region, age band) pair has its own taste over categories (log-normal
  affinities, ``taste_sigma``, default 1.0), from which a user draws ``n_favourites`` (default 3)
  favourite categories. A fresh pick is, with probability ``p_favourite`` (default 0.85), a popular
  item of one of the user's favourite categories, otherwise an item by global popularity. So
  region and age band predict which categories a user buys from, and category, brand and price
  describe the items.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingestion.examples import _Pools

__all__ = ["SyntheticFiles", "SyntheticWorld", "build_world", "write_synthetic", "SYNTHETIC_SCHEMA_YAML"]

SYNTHETIC_SCHEMA_YAML = """\
name: synthetic
description: synthetic interaction log for scale tests (recforge example synthetic)
user_features:
  region:   {type: categorical}
  age_band: {type: categorical}
item_features:
  category: {type: categorical}
  brand:    {type: categorical}
  price:    {type: numeric, min: 0}
"""

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY_S = 86_400
# Twice the pipeline's default evaluation.session_gap_minutes (30): the planted sessions are the ones
# the pipeline cuts, even with a somewhat shorter or longer configured gap.
SESSION_GAP_S = 3_600
MAX_SESSION_S = 1_500  # below the pipeline's gap, so no planted session is cut in two
MIN_SESSION_S = 300  # the shortest a heavy user's session slot gets squeezed to
MIN_STEP_S, MEAN_EXTRA_STEP_S = 10.0, 90.0

REGIONS = ["north", "south", "east", "west", "central", "coastal", "islands", "overseas"]
REGION_SHARE = [0.20, 0.18, 0.15, 0.15, 0.12, 0.10, 0.05, 0.05]
AGE_BANDS = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
AGE_BAND_SHARE = [0.16, 0.24, 0.21, 0.17, 0.13, 0.09]
BRANDS_PER_CATEGORY_DIVISOR = 40  # about one brand per 40 items (at least one per category)
PRICE_SIGMA = 0.5

# Every event is written in a block of about this many events (one Parquet row group each).
DEFAULT_CHUNK_EVENTS = 1_000_000


@dataclass(frozen=True)
class SyntheticFiles:
    """Paths of the files ``write_synthetic`` wrote."""

    events: Path
    users: Path
    items: Path
    schema: Path
    config: Path


@dataclass
class SyntheticWorld:
    """Everything drawn before the events: attributes, popularity, tastes and successor lists."""

    item_category: np.ndarray  # int, one per item
    item_brand: np.ndarray
    item_price: np.ndarray
    popularity: np.ndarray  # the power-law weight of each item
    successors: np.ndarray  # (n_items, n_successors): an item's neighbours within its category
    user_region: np.ndarray
    user_age_band: np.ndarray
    favourites: np.ndarray  # (n_users, n_favourites) category indices
    counts: np.ndarray  # events of each user
    pools: _Pools
    category_pool: np.ndarray  # pool index of each category (items weighted by popularity)
    global_pool: int


def default_categories(n_items: int) -> int:
    return int(np.clip(round(np.sqrt(n_items) / 2), 4, 500))


def max_events_per_user(days: float) -> int:
    """The most events one user can have: one event per shortest session slot in the span."""
    return int(days * DAY_S // (SESSION_GAP_S + MIN_SESSION_S))


def _user_counts(n_users: int, n_events: int, sigma: float, cap: int, rng: np.random.Generator) -> np.ndarray:
    """One event each, the rest shared by log-normal activity, no user above ``cap`` (exact total)."""
    weight = rng.lognormal(0.0, sigma, size=n_users)
    extra_total = n_events - n_users
    room = cap - 1
    # Water-filling: users whose share would pass the cap get the cap, the rest share what is left.
    # Each round caps at least one more user, so it ends; heavy tails take a handful of rounds.
    expected = np.full(n_users, float(room))
    capped = np.zeros(n_users, dtype=bool)
    while not capped.all():
        free = ~capped
        left = extra_total - room * int(capped.sum())
        expected[free] = left * weight[free] / weight[free].sum()
        over = free & (expected > room)
        if not over.any():
            break
        capped |= over
        expected[over] = room
    extra = np.floor(expected).astype(np.int64)
    remainder = int(extra_total - extra.sum())
    if remainder > 0:
        fraction = expected - extra
        open_ = np.flatnonzero(extra < room)
        p = fraction[open_] + 1e-12
        extra[rng.choice(open_, size=remainder, replace=False, p=p / p.sum())] += 1
    return 1 + extra


def build_world(
    n_events: int,
    n_items: int,
    n_users: int,
    seed: int = 7,
    item_skew: float = 1.0,
    days: float = 180.0,
    n_categories: int | None = None,
    activity_sigma: float = 1.2,
    n_successors: int = 5,
    taste_sigma: float = 1.0,
    n_favourites: int = 3,
) -> SyntheticWorld:
    """The attribute tables and per-item structure ``write_synthetic`` draws its events from."""
    n_cats = n_categories or default_categories(n_items)
    if n_items < 2 * n_cats:
        raise ValueError(f"n_items must be at least {2 * n_cats} (2 per category), got {n_items}")
    if n_users < 1 or n_events < n_users:
        raise ValueError(f"need n_users >= 1 and n_events >= n_users, got {n_users} users, {n_events} events")
    if days <= 0:
        raise ValueError(f"days must be > 0, got {days}")
    cap = max_events_per_user(days)
    if n_events > cap * n_users:
        raise ValueError(
            f"{n_events} events need more than {n_users} users: at most {cap} events fit one user's "
            f"sessions in {days} days"
        )
    if item_skew < 0:
        raise ValueError(f"item_skew must be >= 0, got {item_skew}")
    rng = np.random.default_rng([seed, 0])

    # --- items: category, brand, price, popularity -------------------------------------------------
    category_weight = rng.lognormal(0.0, 0.5, size=n_cats)
    # Every category gets two items first, so none is empty; the rest by category weight.
    category = np.concatenate(
        [
            np.repeat(np.arange(n_cats), 2),
            rng.choice(n_cats, size=n_items - 2 * n_cats, p=category_weight / category_weight.sum()),
        ]
    )
    category = category[rng.permutation(n_items)]
    n_brands = max(n_cats, n_items // BRANDS_PER_CATEGORY_DIVISOR)
    # Brand b sells in category b % n_cats; within a category, brands are skewed (u**2: the first ones
    # make more of its items).
    brands_in = (n_brands - np.arange(n_cats) + n_cats - 1) // n_cats
    nth = np.floor(brands_in[category] * rng.random(n_items) ** 2).astype(np.int64)
    brand = category + nth * n_cats
    median = rng.lognormal(np.log(30.0), 1.0, size=n_cats)
    price = np.round(median[category] * rng.lognormal(0.0, PRICE_SIGMA, size=n_items), 2).clip(0.5)
    popularity = (rng.permutation(n_items) + 1.0) ** -item_skew

    # --- successor lists: the next items of a random cyclic order within each category -------------
    order = np.lexsort((rng.random(n_items), category))  # items grouped by category, shuffled within
    sizes = np.bincount(category, minlength=n_cats)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(n_items, dtype=np.int64)
    position[order] = np.arange(n_items) - starts[category[order]]
    k = np.arange(1, n_successors + 1)
    ahead = (position[:, None] + k[None, :]) % sizes[category][:, None]
    successors = order[starts[category][:, None] + ahead].astype(np.int32)

    # --- pools --------------------------------------------------------------------------------------
    pools = _Pools()
    category_pool = np.empty(n_cats, dtype=np.int64)
    for c in range(n_cats):
        members = order[starts[c] : starts[c] + sizes[c]]
        category_pool[c] = pools.add(members, popularity[members])
    global_pool = pools.add(np.arange(n_items), popularity)
    pools.freeze()

    # --- users: attributes, favourite categories, activity -------------------------------------------
    region = rng.choice(len(REGIONS), size=n_users, p=REGION_SHARE)
    age_band = rng.choice(len(AGE_BANDS), size=n_users, p=AGE_BAND_SHARE)
    # Taste over categories of each (region, age band) pair: the age band's affinity times the
    # region's, so both attributes carry part of the signal.
    taste = (
        rng.lognormal(0.0, taste_sigma, size=(len(AGE_BANDS), 1, n_cats))
        * rng.lognormal(0.0, taste_sigma / 2, size=(1, len(REGIONS), n_cats))
    ).reshape(len(AGE_BANDS) * len(REGIONS), n_cats)
    group = age_band * len(REGIONS) + region
    cdf = np.cumsum(taste, axis=1)
    cdf /= cdf[:, -1:]
    favourites = np.empty((n_users, n_favourites), dtype=np.int64)
    u = rng.random((n_users, n_favourites))
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        favourites[members] = np.searchsorted(cdf[g], u[members], side="right").clip(0, n_cats - 1)
    counts = _user_counts(n_users, n_events, activity_sigma, cap, rng)
    return SyntheticWorld(
        item_category=category,
        item_brand=brand,
        item_price=price,
        popularity=popularity,
        successors=successors,
        user_region=region,
        user_age_band=age_band,
        favourites=favourites,
        counts=counts,
        pools=pools,
        category_pool=category_pool,
        global_pool=global_pool,
    )


def _block_events(
    world: SyntheticWorld,
    users: np.ndarray,
    rng: np.random.Generator,
    span_s: float,
    p_new_session: float,
    p_next: float,
    p_favourite: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, timestamp) of every event of ``users`` (consecutive user indices), by user and time."""
    counts = world.counts[users]
    n = int(counts.sum())
    local = np.repeat(np.arange(len(users)), counts)
    user_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    new_session = rng.random(n) < p_new_session
    new_session[user_start] = True
    session = np.cumsum(new_session) - 1
    session_start = np.flatnonzero(new_session)
    pos = np.arange(n) - session_start[session]

    # --- items, one session position at a time (each depends on the previous one) ------------------
    item = np.empty(n, dtype=np.int64)
    n_fav = world.favourites.shape[1]
    n_succ = world.successors.shape[1]
    for p in range(int(pos.max()) + 1):
        at = np.flatnonzero(pos == p)
        mode_u, pick_u, draw_u = rng.random((3, len(at)))
        fav = world.favourites[users[local[at]], (pick_u * n_fav).astype(np.int64)]
        pool = np.where(mode_u < p_favourite, world.category_pool[fav], world.global_pool)
        chosen = world.pools.draw(pool, draw_u)
        if p > 0:
            follows = rng.random(len(at)) < p_next
            nth = (draw_u[follows] * n_succ).astype(np.int64)
            chosen[follows] = world.successors[item[at[follows] - 1], nth]
        item[at] = chosen

    # --- timestamps: session slots spread over the span, events within a session -------------------
    n_sessions = len(session_start)
    session_user = local[session_start]
    per_user = np.bincount(session_user, minlength=len(users))
    first_session = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    # A slot is a session and the gap after it; heavy users get shorter sessions so theirs all fit
    # (at most half the span goes to slots, the rest to random gaps, unless the user is near the cap).
    duration = np.clip(span_s / per_user / 2 - SESSION_GAP_S, MIN_SESSION_S, MAX_SESSION_S)
    slot = SESSION_GAP_S + duration
    free = span_s - per_user * slot  # >= 0: the per-user cap guarantees it
    gap = rng.exponential(1.0, size=n_sessions)
    tail = rng.exponential(1.0, size=len(users))
    cum = np.cumsum(gap)
    within = cum - (cum[first_session] - gap[first_session])[session_user]
    total = within[first_session + per_user - 1] + tail
    k = np.arange(n_sessions) - first_session[session_user]
    start_s = T0 + within / total[session_user] * free[session_user] + k * slot[session_user]
    step = np.where(pos > 0, MIN_STEP_S + rng.exponential(MEAN_EXTRA_STEP_S, size=n), 0.0)
    offset = np.cumsum(step)
    offset -= offset[session_start][session]
    length = np.maximum.reduceat(offset, session_start)
    # The + pos below (strictly increasing times, so no two events of a user share a timestamp)
    # takes its seconds from the session's duration, so a session never runs into the next gap.
    events_in = np.diff(np.append(session_start, n))
    room = np.maximum(duration[session_user] - (events_in - 1), 0.0)
    scale = np.minimum(1.0, room / np.maximum(length, 1.0))
    timestamp = (
        np.floor(start_s[session]).astype(np.int64) + np.floor(offset * scale[session]).astype(np.int64) + pos
    )
    return users[local], item, timestamp


def _ids(prefix: str, values: np.ndarray, n: int) -> pa.Array:
    """``prefix`` + zero-padded index, computed by Arrow (no Python string per event)."""
    width = max(5, len(str(max(n - 1, 0))))
    digits = pc.utf8_lpad(pc.cast(pa.array(values, type=pa.int64()), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("rating", pa.float64()),
    ]
)


def write_synthetic(
    out_dir: Path,
    n_events: int = 60_000,
    n_items: int = 1_500,
    n_users: int = 2_000,
    seed: int = 7,
    item_skew: float = 1.0,
    days: float = 180.0,
    *,
    n_categories: int | None = None,
    activity_sigma: float = 1.2,
    mean_session_events: float = 4.0,
    p_next: float = 0.6,
    n_successors: int = 5,
    p_favourite: float = 0.85,
    taste_sigma: float = 1.0,
    n_favourites: int = 3,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
) -> SyntheticFiles:
    """Write the synthetic log (see the module docstring for its planted structure) into ``out_dir``."""
    if mean_session_events < 1:
        raise ValueError(f"mean_session_events must be >= 1, got {mean_session_events}")
    if not 0 <= p_next <= 1 or not 0 <= p_favourite <= 1:
        raise ValueError(f"p_next and p_favourite are probabilities, got {p_next}, {p_favourite}")
    world = build_world(
        n_events,
        n_items,
        n_users,
        seed=seed,
        item_skew=item_skew,
        days=days,
        n_categories=n_categories,
        activity_sigma=activity_sigma,
        n_successors=n_successors,
        taste_sigma=taste_sigma,
        n_favourites=n_favourites,
    )
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = SyntheticFiles(
        events=out_dir / "events.parquet",
        users=out_dir / "users.parquet",
        items=out_dir / "items.parquet",
        schema=out_dir / "schema.yaml",
        config=out_dir / "pipeline.yaml",
    )
    # Blocks of whole users, about chunk_events events each (a heavy user may make one larger).
    ends = np.cumsum(world.counts)
    block = (ends - 1) // max(1, chunk_events)
    bounds = np.flatnonzero(np.diff(block)) + 1
    user_blocks = np.split(np.arange(n_users), bounds)
    with pq.ParquetWriter(files.events, EVENTS_SCHEMA) as writer:
        for b, users in enumerate(user_blocks):
            rng = np.random.default_rng([seed, 1, b])
            user, item, timestamp = _block_events(
                world, users, rng, days * DAY_S, 1.0 / mean_session_events, p_next, p_favourite
            )
            writer.write_table(
                pa.Table.from_arrays(
                    [
                        _ids("u", user, n_users),
                        _ids("i", item, n_items),
                        pa.array(timestamp, type=pa.int64()),
                        pa.nulls(len(user), type=pa.float64()),
                    ],
                    schema=EVENTS_SCHEMA,
                )
            )
    pq.write_table(
        pa.table(
            {
                "user_id": _ids("u", np.arange(n_users), n_users),
                "region": pa.array(np.asarray(REGIONS, dtype=object)[world.user_region], type=pa.string()),
                "age_band": pa.array(
                    np.asarray(AGE_BANDS, dtype=object)[world.user_age_band], type=pa.string()
                ),
            }
        ),
        files.users,
    )
    pq.write_table(
        pa.table(
            {
                "item_id": _ids("i", np.arange(n_items), n_items),
                "category": _ids("c", world.item_category, int(world.item_category.max()) + 1),
                "brand": _ids("b", world.item_brand, int(world.item_brand.max()) + 1),
                "price": pa.array(world.item_price, type=pa.float64()),
            }
        ),
        files.items,
    )
    files.schema.write_text(SYNTHETIC_SCHEMA_YAML)
    files.config.write_text(
        "# The synthetic log written by ingestion.synthetic.write_synthetic\n"
        f"source: {{kind: events, path: {json.dumps(str(files.events))}, users: {json.dumps(str(files.users))}, "
        f"items: {json.dumps(str(files.items))}, name: synthetic, schema: {json.dumps(str(files.schema))}}}\n"
        "split: {protocol: temporal}\n"
    )
    return files
