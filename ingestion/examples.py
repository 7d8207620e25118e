"""Example datasets written to disk: a synthetic e-commerce "shop", shaped unlike MovieLens.

``write_shop(out_dir)`` writes ``events.csv`` (implicit feedback: ``rating`` left empty),
``users.csv``, ``items.csv``, the dataset's ``schema.yaml`` (``pipeline.schema.DataSchema``) and a
``pipeline.yaml`` whose ``source`` selects these files (``kind: events``). Ids are strings
(``u00042``, ``p01234``); timestamps are epoch seconds spread over 182 days from 2024-01-01 UTC.
Everything is drawn from one seeded ``numpy`` Generator: the same arguments give the same bytes.

Planted structure (the defaults: 2000 users, 1500 warm items + 20 cold items, 60000 events)
---------------------------------------------------------------------------------------------
Behaviour depends on attributes, so attribute-aware models (two-tower, DeepFM) can beat popularity,
and lose the gain when the attributes that carry it are dropped. "Measured" numbers are for seeds
7 (the default), 1 and 2026, as ``tests/unit/test_shop_example.py`` computes them from the files.

- Segments (users.segment; shares 30/30/15/12/13 %) each prefer 2-3 categories and one price band
  (the within-category price tercile cheap/mid/expensive, i.e. ``price`` read against ``category``):
  budget: grocery, toys, books, cheap; mainstream: home, kitchen, apparel, mid; premium: beauty,
  apparel, shoes, expensive; outdoor: camping, fitness, shoes, mid; tech: electronics, computing,
  expensive. apparel and shoes are shared by two segments that differ only in price band.
- A fresh pick (the first event of a session, and 40 % of the later ones) is, with probability
  0.35, a popular item of one of the segment's categories within its price band; 0.40, an item of
  one of the user's loyal brands (within the segment's categories and, where the brand has any
  there, the segment's band); 0.25, an item by global popularity (any category, any price).
  Measured: 79-84 % of a segment's events fall in its preferred categories, against 14-34 % of all
  events (lift 2.4-3.0 for budget/mainstream/premium, 4.2-4.4 outdoor, 5.2-5.9 tech); 64-78 % fall
  in the segment's price band, against 33 % by chance.
- Popularity is Zipf-like (weight (rank+1)^-1.1 on a random rank within each category): the top
  10 % of warm items take 63-64 % of the events; about 1480 of the 1500 warm items have events.
- Brand loyalty: each user has 1 or 2 (50/50) loyal brands, drawn uniformly from the brands with
  items in the segment's categories. Measured on users with >= 10 events: their two most frequent
  brands hold 49-53 % of their events (32-36 % when brands are shuffled among the events of the
  same segment, which keeps category and price taste but removes loyalty); the top brand of the
  first half of a user's events takes 23-26 % of the second half (10-15 % shuffled).
- Sessions: a new session starts with probability 0.4 after each event (~2.4 events a session);
  events of a session are 20 s to a few minutes apart, always within an hour; session starts are at
  least 2 hours apart (a median ~6 days; less for the heaviest users of very large runs). Within a
  session, 60 % of the later picks continue from the previous item: the same brand and category
  (40 % of those) or the same category and price tier (60 %); a continuing pick equal to the
  previous item is drawn once more. Measured: 72 % of consecutive in-session pairs share a
  category and 37-40 % a brand, against 30 % and 15-17 % of consecutive pairs across sessions.
- age correlates with segment (means: budget 24, mainstream 42, premium 50, outdoor 34, tech 29,
  sd 6-10, clipped to 16-85; premium minus budget measured 26-27 years); 2 % of ages are missing
  and 0.5 % invalid ("n/a", "unknown", -5, 250) for validation to quarantine. device is a weak
  signal, only through its correlation with segment (ios: premium 60 %, tech 45 %, others 20-30 %);
  country carries no signal at all (drawn independently of everything; the preferred-category
  share is 0.80-0.83 in every country).
- Items: 12 categories; 60 brands, each with a home category and, for ~35 % of them, a second
  category of a segment that shares the first; price log-normal per category (median from 6 for
  grocery to 600 for computing, sigma 0.6); 1-3 of the category's own tags (+ a general tag
  sale/new/gift/eco with probability 0.3; 40 tags in all); a title "<Brand> <adjective> <noun>"
  from the brand and category words (3-5 words). Category is thus also readable from tags and
  title, and segment partly from age (and weakly device): an ablation that should remove the
  signal drops them together.
- Cold items: the last ``cold_items`` rows of items.csv never occur in events. Each copies the
  category and brand of one of the 5 most popular warm items of some category, keeps one of its
  tags, and a price within ~5 % of it (so mostly the same tier), so a model can place it from
  attributes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["ShopFiles", "write_shop", "SHOP_SCHEMA_YAML"]

SHOP_SCHEMA_YAML = """\
name: shop
description: synthetic shop (recforge example shop)
user_features:
  segment: {type: categorical}
  country: {type: categorical}
  device:  {type: categorical}
  age:     {type: numeric, min: 13, max: 100}
item_features:
  category: {type: categorical}
  brand:    {type: categorical}
  price:    {type: numeric, min: 0}
  tags:     {type: list, separator: "|"}
  title:    {type: text, max_tokens: 6, min_count: 2}
"""

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
SPAN_S = 182 * 86_400
MAX_SESSION_S = 3_300  # sessions stay within an hour
MIN_SESSION_GAP_S = 7_200  # session starts are at least this far apart (less for very heavy users)

CATEGORIES = [
    "grocery",
    "toys",
    "books",
    "home",
    "kitchen",
    "apparel",
    "beauty",
    "shoes",
    "camping",
    "fitness",
    "electronics",
    "computing",
]
CATEGORY_WEIGHT = [0.9, 0.8, 0.9, 1.1, 0.9, 1.3, 0.8, 1.0, 0.8, 0.8, 1.0, 0.7]
CATEGORY_MEDIAN_PRICE = [6, 25, 15, 45, 35, 40, 30, 80, 90, 60, 250, 600]
PRICE_SIGMA = 0.6

SEGMENTS = ["budget", "mainstream", "premium", "outdoor", "tech"]
SEGMENT_SHARE = [0.30, 0.30, 0.15, 0.12, 0.13]
SEGMENT_CATEGORIES = {
    "budget": ["grocery", "toys", "books"],
    "mainstream": ["home", "kitchen", "apparel"],
    "premium": ["beauty", "apparel", "shoes"],
    "outdoor": ["camping", "fitness", "shoes"],
    "tech": ["electronics", "computing"],
}
TIERS = ["cheap", "mid", "expensive"]  # within-category price terciles
SEGMENT_BAND = {"budget": 0, "mainstream": 1, "premium": 2, "outdoor": 1, "tech": 2}
SEGMENT_AGE = {
    "budget": (24, 6),
    "mainstream": (42, 10),
    "premium": (50, 9),
    "outdoor": (34, 8),
    "tech": (29, 6),
}
DEVICES = ["web", "ios", "android"]
SEGMENT_DEVICE = {
    "budget": [0.35, 0.20, 0.45],
    "mainstream": [0.40, 0.30, 0.30],
    "premium": [0.25, 0.60, 0.15],
    "outdoor": [0.30, 0.30, 0.40],
    "tech": [0.20, 0.45, 0.35],
}
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL"]
COUNTRY_SHARE = [0.30, 0.14, 0.14, 0.12, 0.09, 0.08, 0.07, 0.06]
INVALID_AGES = ["n/a", "unknown", "-5", "250"]
MISSING_AGE_SHARE = 0.02
INVALID_AGE_SHARE = 0.005

CATEGORY_TAGS = {
    "grocery": ["organic", "snack", "pantry", "coffee"],
    "toys": ["kids", "puzzle", "educational", "plush"],
    "books": ["fiction", "paperback", "educational", "cookbook"],
    "home": ["decor", "cozy", "storage", "lighting"],
    "kitchen": ["cookware", "storage", "baking", "knives"],
    "apparel": ["cotton", "casual", "waterproof", "denim"],
    "beauty": ["skincare", "vegan", "fragrance"],
    "shoes": ["running", "leather", "waterproof"],
    "camping": ["waterproof", "lightweight", "hiking", "tent"],
    "fitness": ["lightweight", "yoga", "running"],
    "electronics": ["wireless", "smart", "audio"],
    "computing": ["wireless", "gaming", "portable"],
}
GENERAL_TAGS = ["sale", "new", "gift", "eco"]
GENERAL_TAG_P = 0.3
CATEGORY_NOUNS = {
    "grocery": ["granola", "olive oil", "tea", "pasta"],
    "toys": ["building set", "puzzle", "plush bear", "board game"],
    "books": ["novel", "cookbook", "atlas", "guide"],
    "home": ["lamp", "cushion", "throw blanket", "shelf"],
    "kitchen": ["pan", "knife set", "mixing bowl", "kettle"],
    "apparel": ["jacket", "hoodie", "shirt", "jeans"],
    "beauty": ["serum", "moisturiser", "perfume", "shampoo"],
    "shoes": ["running shoe", "sneaker", "boot", "sandal"],
    "camping": ["tent", "sleeping bag", "backpack", "stove"],
    "fitness": ["yoga mat", "dumbbell", "resistance band", "bottle"],
    "electronics": ["headphones", "speaker", "smartwatch", "camera"],
    "computing": ["laptop", "keyboard", "monitor", "mouse"],
}
CATEGORY_ADJECTIVES = {
    "grocery": ["organic", "roasted", "artisan"],
    "toys": ["colourful", "wooden", "magnetic"],
    "books": ["illustrated", "classic", "pocket"],
    "home": ["cozy", "nordic", "minimal"],
    "kitchen": ["nonstick", "cast iron", "steel"],
    "apparel": ["slim", "organic cotton", "waterproof"],
    "beauty": ["hydrating", "vegan", "gentle"],
    "shoes": ["trail", "leather", "lightweight"],
    "camping": ["ultralight", "trail", "alpine"],
    "fitness": ["pro", "foldable", "grip"],
    "electronics": ["wireless", "smart", "noise cancelling"],
    "computing": ["mechanical", "ultrawide", "gaming"],
}
GENERAL_ADJECTIVES = ["classic", "essential", "everyday"]
GENERAL_ADJECTIVE_P = 0.25
BRAND_PREFIXES = [
    "Acme", "Nord", "Vela", "Terra", "Kora", "Lumo", "Brio", "Zest", "Orbi", "Peak",
    "Sola", "Mira", "Fjel", "Quanta", "Rivo", "Tali", "Umbra", "Vanta", "Wyld", "Xeno",
]  # fmt: skip
BRAND_SUFFIXES = ["", "co", "ix"]
N_BRANDS = len(BRAND_PREFIXES) * len(BRAND_SUFFIXES)  # 60
SECOND_CATEGORY_P = 0.35

ZIPF_EXPONENT = 1.1
P_PREFERENCE, P_LOYAL = 0.35, 0.40  # fresh picks; the rest (0.25) by global popularity
P_CONTINUE = 0.60  # later picks of a session continuing from the previous item
P_SAME_BRAND = 0.40  # continuing picks: same brand and category (else: same category and tier)
P_NEW_SESSION = 0.40
P_TWO_BRANDS = 0.50
COLD_SOURCE_TOP = 5


@dataclass(frozen=True)
class ShopFiles:
    """Paths of the files ``write_shop`` wrote."""

    events: Path
    users: Path
    items: Path
    schema: Path
    config: Path


class _Pools:
    """Weighted item pools, sampled for many events at once.

    Pool ``p``'s items sit side by side in ``items`` with keys ``p + cumulative share`` (the last one
    exactly ``p + 1``), so a draw ``u`` in [0, 1) from pool ``p`` is one ``searchsorted``.
    """

    def __init__(self) -> None:
        self._items: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []

    def add(self, items: np.ndarray, weights: np.ndarray) -> int:
        if len(items) == 0:
            return -1
        share = np.cumsum(weights, dtype=np.float64) / float(np.sum(weights))
        share[-1] = 1.0
        pool = len(self._items)
        self._items.append(np.asarray(items, dtype=np.int64))
        self._keys.append(pool + share)
        return pool

    def freeze(self) -> None:
        self.items = np.concatenate(self._items)
        self.keys = np.concatenate(self._keys)

    def draw(self, pools: np.ndarray, u: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.keys, pools + u, side="right")
        return self.items[np.minimum(at, len(self.items) - 1)]


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(5, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def _rank_within(groups: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each value within its group (0 = smallest; ties by position) and the group sizes."""
    order = np.lexsort((np.arange(len(values)), values, groups))
    sizes = np.bincount(groups, minlength=groups.max() + 1 if len(groups) else 0)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values)) - starts[groups[order]]
    return rank, sizes


def _make_brands(rng: np.random.Generator) -> tuple[list[str], list[list[int]], np.ndarray]:
    """Brand names, each brand's categories (home first) and its popularity weight."""
    names = [p + s for s in BRAND_SUFFIXES for p in BRAND_PREFIXES]
    cat_index = {c: i for i, c in enumerate(CATEGORIES)}
    # Categories that share a segment with a category: where a brand's second category comes from.
    related: dict[int, list[int]] = {i: [] for i in range(len(CATEGORIES))}
    for cats in SEGMENT_CATEGORIES.values():
        for a in cats:
            related[cat_index[a]] += [
                cat_index[b] for b in cats if b != a and cat_index[b] not in related[cat_index[a]]
            ]
    home = rng.permutation(np.arange(N_BRANDS) % len(CATEGORIES))
    second = rng.random(N_BRANDS) < SECOND_CATEGORY_P
    picks = rng.random(N_BRANDS)
    brand_cats = []
    for b in range(N_BRANDS):
        cats = [int(home[b])]
        if second[b] and related[cats[0]]:
            options = related[cats[0]]
            cats.append(options[int(picks[b] * len(options))])
        brand_cats.append(cats)
    weight = rng.lognormal(0.0, 0.7, size=N_BRANDS)
    return names, brand_cats, weight


def _sizes(
    total: int, weights: list[float] | np.ndarray, minimum: int, rng: np.random.Generator
) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    return minimum + rng.multinomial(total - minimum * len(weights), weights / weights.sum())


def _item_tags(category: np.ndarray, rng: np.random.Generator) -> list[str]:
    n = len(category)
    tag_lists = [CATEGORY_TAGS[c] for c in CATEGORIES]
    width = max(len(t) for t in tag_lists)
    lengths = np.array([len(t) for t in tag_lists])[category]
    keys = rng.random((n, width))
    keys[np.arange(width)[None, :] >= lengths[:, None]] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")
    n_cat_tags = 1 + rng.binomial(2, 0.5, size=n)
    general = np.where(rng.random(n) < GENERAL_TAG_P, rng.integers(0, len(GENERAL_TAGS), size=n), -1)
    out = []
    for i in range(n):
        tags = tag_lists[category[i]]
        chosen = [tags[j] for j in order[i, : n_cat_tags[i]]]
        if general[i] >= 0:
            chosen.append(GENERAL_TAGS[general[i]])
        out.append("|".join(chosen))
    return out


def _titles(
    brand_names: list[str], brand: np.ndarray, category: np.ndarray, rng: np.random.Generator
) -> list[str]:
    n = len(category)
    noun_u, adj_u = rng.random(n), rng.random(n)
    general = rng.random(n) < GENERAL_ADJECTIVE_P
    general_pick = rng.integers(0, len(GENERAL_ADJECTIVES), size=n)
    out = []
    for i in range(n):
        cat = CATEGORIES[category[i]]
        nouns, adjectives = CATEGORY_NOUNS[cat], CATEGORY_ADJECTIVES[cat]
        adjective = (
            GENERAL_ADJECTIVES[general_pick[i]] if general[i] else adjectives[int(adj_u[i] * len(adjectives))]
        )
        out.append(f"{brand_names[brand[i]]} {adjective} {nouns[int(noun_u[i] * len(nouns))]}")
    return out


def write_shop(
    out_dir: Path,
    n_users: int = 2000,
    n_items: int = 1500,
    n_events: int = 60000,
    seed: int = 7,
    cold_items: int = 20,
) -> ShopFiles:
    """Write the synthetic shop (see the module docstring for its planted structure) into ``out_dir``."""
    n_cats = len(CATEGORIES)
    if n_items < 3 * n_cats:
        raise ValueError(f"n_items must be at least {3 * n_cats} (3 per category), got {n_items}")
    if n_users < 1 or n_events < n_users:
        raise ValueError(f"need n_users >= 1 and n_events >= n_users, got {n_users} users, {n_events} events")
    if cold_items < 0:
        raise ValueError(f"cold_items must be >= 0, got {cold_items}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cat_index = {c: i for i, c in enumerate(CATEGORIES)}
    n_segs = len(SEGMENTS)

    # --- items -----------------------------------------------------------------------------------
    brand_names, brand_cats, brand_weight = _make_brands(rng)
    cat_brands = [[b for b in range(N_BRANDS) if c in brand_cats[b]] for c in range(n_cats)]
    category = np.repeat(np.arange(n_cats), _sizes(n_items, CATEGORY_WEIGHT, 3, rng))
    category = category[rng.permutation(n_items)]
    brand = np.empty(n_items, dtype=np.int64)
    for c in range(n_cats):
        members = np.flatnonzero(category == c)
        w = brand_weight[cat_brands[c]]
        brand[members] = np.asarray(cat_brands[c])[
            np.searchsorted(np.cumsum(w) / w.sum(), rng.random(len(members)), side="right").clip(
                0, len(w) - 1
            )
        ]
    median = np.log(np.asarray(CATEGORY_MEDIAN_PRICE, dtype=np.float64))
    price = np.round(np.exp(rng.normal(median[category], PRICE_SIGMA)), 2).clip(0.5)
    price_rank, cat_size = _rank_within(category, price)
    tier = (3 * price_rank) // cat_size[category]
    pop_rank, _ = _rank_within(category, rng.random(n_items))
    popularity = (pop_rank + 1.0) ** -ZIPF_EXPONENT

    # --- users -----------------------------------------------------------------------------------
    segment = rng.choice(n_segs, size=n_users, p=SEGMENT_SHARE)
    country = rng.choice(len(COUNTRIES), size=n_users, p=COUNTRY_SHARE)
    device = np.empty(n_users, dtype=np.int64)
    age = np.empty(n_users, dtype=np.float64)
    for s, name in enumerate(SEGMENTS):
        members = np.flatnonzero(segment == s)
        device[members] = rng.choice(len(DEVICES), size=len(members), p=SEGMENT_DEVICE[name])
        mean, sd = SEGMENT_AGE[name]
        age[members] = rng.normal(mean, sd, size=len(members))
    age_text = np.array([str(int(a)) for a in np.round(age).clip(16, 85)], dtype=object)
    shuffled = rng.permutation(n_users)
    n_invalid = max(1, round(INVALID_AGE_SHARE * n_users))
    n_missing = round(MISSING_AGE_SHARE * n_users)
    age_text[shuffled[:n_invalid]] = [INVALID_AGES[i % len(INVALID_AGES)] for i in range(n_invalid)]
    age_text[shuffled[n_invalid : n_invalid + n_missing]] = ""

    # --- pools -----------------------------------------------------------------------------------
    pools = _Pools()
    cat_tier_pool = np.full((n_cats, 3), -1, dtype=np.int64)
    for c in range(n_cats):
        for t in range(3):
            members = np.flatnonzero((category == c) & (tier == t))
            cat_tier_pool[c, t] = pools.add(members, popularity[members])
    brand_cat_pool = np.full((N_BRANDS, n_cats), -1, dtype=np.int64)
    for b in range(N_BRANDS):
        for c in brand_cats[b]:
            members = np.flatnonzero((brand == b) & (category == c))
            brand_cat_pool[b, c] = pools.add(members, popularity[members])
    seg_cats = [np.array([cat_index[c] for c in SEGMENT_CATEGORIES[s]]) for s in SEGMENTS]
    loyal_pool = np.full((N_BRANDS, n_segs), -1, dtype=np.int64)
    loyal_weight = np.zeros((n_segs, N_BRANDS))
    for s, name in enumerate(SEGMENTS):
        in_segment = np.isin(category, seg_cats[s])
        for b in range(N_BRANDS):
            members = np.flatnonzero(in_segment & (brand == b))
            if len(members) == 0:
                continue
            loyal_weight[s, b] = 1.0
            banded = members[tier[members] == SEGMENT_BAND[name]]
            members = banded if len(banded) else members
            loyal_pool[b, s] = pools.add(members, popularity[members])
    global_pool = pools.add(np.arange(n_items), popularity)
    pools.freeze()

    seg_cat_table = np.full((n_segs, 3), -1, dtype=np.int64)
    seg_cat_count = np.array([len(c) for c in seg_cats])
    for s, cats in enumerate(seg_cats):
        seg_cat_table[s, : len(cats)] = cats
    seg_band = np.array([SEGMENT_BAND[s] for s in SEGMENTS])
    loyal = np.empty((n_users, 2), dtype=np.int64)
    for s in range(n_segs):
        members = np.flatnonzero(segment == s)
        cdf = np.cumsum(loyal_weight[s]) / loyal_weight[s].sum()
        picks = np.searchsorted(cdf, rng.random((len(members), 2)), side="right").clip(0, N_BRANDS - 1)
        single = rng.random(len(members)) >= P_TWO_BRANDS
        picks[single, 1] = picks[single, 0]
        loyal[members] = picks

    # --- events: who, which session, which position -----------------------------------------------
    base = min(3, n_events // n_users)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    counts = base + rng.multinomial(n_events - base * n_users, activity / activity.sum())
    user = np.repeat(np.arange(n_users), counts)
    user_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first_of_user = np.zeros(n_events, dtype=bool)
    first_of_user[user_start[counts > 0]] = True
    new_session = first_of_user | (rng.random(n_events) < P_NEW_SESSION)
    session = np.cumsum(new_session) - 1
    session_start = np.flatnonzero(new_session)
    pos = np.arange(n_events) - session_start[session]
    seg_of_event = segment[user]

    # --- events: which item -------------------------------------------------------------------------
    item = np.full(n_events, -1, dtype=np.int64)
    for p in range(int(pos.max()) + 1):
        at = np.flatnonzero(pos == p)
        cont = np.zeros(len(at), dtype=bool) if p == 0 else rng.random(len(at)) < P_CONTINUE
        mode_u, cat_u, brand_u, draw_u, redraw_u = rng.random((5, len(at)))
        pool = np.empty(len(at), dtype=np.int64)
        # fresh picks: preference, loyal brand or global popularity
        s = seg_of_event[at]
        cats = seg_cat_table[s, (cat_u * seg_cat_count[s]).astype(np.int64)]
        pref_pool = cat_tier_pool[cats, seg_band[s]]
        brands = loyal[user[at], (brand_u < 0.5).astype(np.int64)]
        fresh_pool = np.where(
            mode_u < P_PREFERENCE,
            pref_pool,
            np.where(mode_u < P_PREFERENCE + P_LOYAL, loyal_pool[brands, s], global_pool),
        )
        pool[:] = fresh_pool
        if p > 0:
            prev = item[at - 1]
            same_brand = mode_u < P_SAME_BRAND  # mode_u is unused by continuing picks otherwise
            cont_pool = np.where(
                same_brand,
                brand_cat_pool[brand[prev], category[prev]],
                cat_tier_pool[category[prev], tier[prev]],
            )
            pool[cont] = cont_pool[cont]
        chosen = pools.draw(pool, draw_u)
        if p > 0:
            again = cont & (chosen == prev)
            chosen[again] = pools.draw(pool[again], redraw_u[again])
        item[at] = chosen

    # --- events: when -------------------------------------------------------------------------------
    n_sessions = len(session_start)
    session_user = user[session_start]
    per_user = np.bincount(session_user, minlength=n_users)
    first_session = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    gap = rng.exponential(1.0, size=n_sessions)
    tail = rng.exponential(1.0, size=n_users)
    cum = np.cumsum(gap)
    within = cum - (cum[first_session] - gap[first_session])[session_user]
    last_session = first_session + per_user - 1
    total = np.zeros(n_users)
    has = per_user > 0
    total[has] = within[last_session[has]] + tail[has]
    min_gap = np.minimum(MIN_SESSION_GAP_S, SPAN_S / (per_user + 1) / 2)
    duration = np.minimum(MAX_SESSION_S, min_gap / 2)
    k = np.arange(n_sessions) - first_session[session_user]
    u_ = session_user
    start_s = T0 + within / total[u_] * (SPAN_S - per_user[u_] * min_gap[u_]) + k * min_gap[u_]
    step = np.where(pos > 0, 20.0 + rng.exponential(160.0, size=n_events), 0.0)
    offset = np.cumsum(step)
    offset -= offset[session_start][session]
    length_s = np.maximum.reduceat(offset, session_start)
    scale = np.minimum(1.0, duration[session_user] / np.maximum(length_s, 1.0))
    timestamp = (
        np.floor(start_s[session]).astype(np.int64) + np.floor(offset * scale[session]).astype(np.int64) + pos
    )

    # --- cold items ---------------------------------------------------------------------------------
    n_all = n_items + cold_items
    c_category = np.empty(cold_items, dtype=np.int64)
    c_brand = np.empty(cold_items, dtype=np.int64)
    c_price = np.empty(cold_items)
    source = np.empty(cold_items, dtype=np.int64)
    if cold_items:
        top = np.flatnonzero(pop_rank < COLD_SOURCE_TOP)
        source = top[rng.integers(0, len(top), size=cold_items)]
        c_category, c_brand = category[source], brand[source]
        c_price = np.round(price[source] * np.exp(rng.normal(0.0, 0.05, size=cold_items)), 2).clip(0.5)
    all_category = np.concatenate([category, c_category])
    all_brand = np.concatenate([brand, c_brand])
    tags = _item_tags(all_category, rng)
    for j in range(cold_items):
        # keep the popular source's first category tag so the cold item shares it
        src_first = tags[source[j]].split("|")[0]
        own = [t for t in tags[n_items + j].split("|") if t != src_first]
        tags[n_items + j] = "|".join([src_first, *own[:3]])
    titles = _titles(brand_names, all_brand, all_category, rng)

    # --- write --------------------------------------------------------------------------------------
    user_ids, item_ids = _ids("u", n_users), _ids("p", n_all)
    order = np.lexsort((user, timestamp))
    files = ShopFiles(
        events=out_dir / "events.csv",
        users=out_dir / "users.csv",
        items=out_dir / "items.csv",
        schema=out_dir / "schema.yaml",
        config=out_dir / "pipeline.yaml",
    )
    csv = {"index": False, "lineterminator": "\n"}
    pd.DataFrame(
        {
            "user_id": user_ids[user[order]],
            "item_id": item_ids[item[order]],
            "timestamp": timestamp[order],
            "rating": "",
        }
    ).to_csv(files.events, **csv)
    pd.DataFrame(
        {
            "user_id": user_ids,
            "segment": np.asarray(SEGMENTS, dtype=object)[segment],
            "country": np.asarray(COUNTRIES, dtype=object)[country],
            "device": np.asarray(DEVICES, dtype=object)[device],
            "age": age_text,
        }
    ).to_csv(files.users, **csv)
    pd.DataFrame(
        {
            "item_id": item_ids,
            "category": np.asarray(CATEGORIES, dtype=object)[all_category],
            "brand": np.asarray(brand_names, dtype=object)[all_brand],
            "price": np.concatenate([price, c_price]),
            "tags": tags,
            "title": titles,
        }
    ).to_csv(files.items, float_format="%.2f", **csv)
    files.schema.write_text(SHOP_SCHEMA_YAML)
    files.config.write_text(
        "# The synthetic shop written by ingestion.examples.write_shop\n"
        f"source: {{kind: events, path: {json.dumps(str(files.events))}, users: {json.dumps(str(files.users))}, "
        f"items: {json.dumps(str(files.items))}, name: shop, schema: {json.dumps(str(files.schema))}}}\n"
        "split: {protocol: temporal}\n"
    )
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic recforge shop dataset.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--events", type=int, default=60000)
    parser.add_argument("--cold-items", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    files = write_shop(args.out_dir, args.users, args.items, args.events, args.seed, args.cold_items)
    print(files.config)


if __name__ == "__main__":
    main()
