"""Session-based evaluation: predict the next item of a session from the session's prefix alone.

The protocol (Hidasi et al., 2016, GRU4Rec; the same in RecBole's and session-rec's session tasks):

1. **Sessions.** Each user's events, in (time, event_id) order, are cut wherever two consecutive
   events lie more than ``gap`` apart (``cut_sessions``); the 30-minute inactivity gap is the usual
   web-analytics definition of a visit. On MovieLens a "session" is a rating sitting: users rate in
   bursts (many ratings within minutes, then days of silence), so the gap separates sittings well,
   but the order within a sitting is the order of the rating UI, not of watching.
2. **Test sessions** are the last ``test_share`` of sessions by start time (ties: by user, then by
   session), ``first_test_start``; models are trained on events before the first test session starts.
3. **Targets.** In every test session, after removing items without a training interaction (no
   model could rank them) and dropping sessions left with fewer than two items, every next item is
   predicted from the session prefix before it: a session ``[i1, ..., in]`` gives the examples
   ``([i1], i2), ([i1, i2], i3), ..., ([i1..i(n-1)], in)`` (``next_item_examples``).
4. **Scoring.** The scorer sees the prefix only, as an anonymous visitor: ``users`` = -1 (unknown)
   and ``history`` = the prefix, right-aligned (what the service does with a ``session``). Full
   ranking over the catalogue; the padding column, the prefix's items (the service never recommends
   them either; on MovieLens a user rates an item once, so a target never repeats its prefix) and
   the ``excluded`` items (e.g. those without a training interaction) are never ranked.
5. **Metrics** per example, with a single relevant item at rank ``r`` (``training.metrics``):
   HitRate@k = 1 if r <= k; NDCG@k = 1 / log2(r + 1) if r <= k, else 0; MRR@k = 1 / r if r <= k,
   else 0. Reported values are means over all examples (every predicted next item counts once).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from training.data import right_align
from training.metrics import per_user_metrics

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (users (B,), history (B, L)) -> (B, n + 1)
SESSION_METRICS = ("ndcg", "hr", "mrr")


def cut_sessions(events: pd.DataFrame, gap: pd.Timedelta) -> pd.DataFrame:
    """``events`` (``user_id``, ``item_id``, ``event_timestamp``, optional ``event_id``) ordered by
    (user, time, event_id), with ``session`` (int, numbered in order of (start time, user, cut)) and
    ``session_start`` (the session's first timestamp). A new session starts at a user's first event
    and after every pause longer than ``gap``."""
    order = ["user_id", "event_timestamp"] + (["event_id"] if "event_id" in events else [])
    frame = events.sort_values(order, kind="stable").reset_index(drop=True)
    users = frame["user_id"].astype(str)
    times = pd.to_datetime(frame["event_timestamp"], utc=True)
    new_user = users.ne(users.shift())
    starts = new_user | (times.diff() > gap)
    local = starts.cumsum() - 1  # sessions in (user, time) order
    start_time = times.groupby(local).transform("min")
    # Renumber by (start time, user, local id): session ids follow time, what first_test_start cuts on.
    keys = pd.DataFrame({"start": start_time, "user": users, "local": local}).drop_duplicates("local")
    rank = keys.sort_values(["start", "user", "local"], kind="stable")["local"].to_numpy()
    renumber = np.empty(len(rank), dtype=np.int64)
    renumber[rank] = np.arange(len(rank))
    return frame.assign(session=renumber[local.to_numpy()], session_start=start_time)


def first_test_start(sessions: pd.DataFrame, test_share: float) -> pd.Timestamp:
    """The start time of the first test session: the last ``ceil(test_share * n)`` sessions by start
    (``sessions`` from ``cut_sessions``; at least one). Test sessions are ``session >= `` the first
    test session's id; everything a model trains on must lie before the returned time."""
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must lie in (0, 1), got {test_share}")
    n = int(sessions["session"].max()) + 1
    first_test = n - max(1, int(np.ceil(test_share * n)))
    return pd.Timestamp(sessions.loc[sessions["session"] == first_test, "session_start"].iloc[0])


def next_item_examples(
    sessions: pd.DataFrame, item_rows: dict[str, int], known: np.ndarray | None = None
) -> tuple[list[list[int]], list[int]]:
    """(prefixes, targets) of every next item of every session in ``sessions`` (step 3 of the module
    docstring). ``item_rows`` maps item ids to rows; ids it lacks are dropped, and so are rows where
    ``known`` (bool, per row) is False."""
    prefixes: list[list[int]] = []
    targets: list[int] = []
    rows = sessions["item_id"].astype(str).map(item_rows)
    frame = pd.DataFrame({"session": sessions["session"].to_numpy(), "row": rows.to_numpy()}).dropna()
    frame["row"] = frame["row"].astype(np.int64)
    if known is not None:
        frame = frame[known[frame["row"].to_numpy()]]
    for _, group in frame.groupby("session", sort=True):  # keeps the (user, time) order within
        items = group["row"].tolist()
        for t in range(1, len(items)):
            prefixes.append(items[:t])
            targets.append(items[t])
    return prefixes, targets


def evaluate_next_items(
    score: ScoreFn,
    prefixes: Sequence[Sequence[int]],
    targets: Sequence[int],
    n_items: int,
    history_length: int,
    ks: Sequence[int] = (10,),
    excluded: torch.Tensor | None = None,
    batch_size: int = 512,
) -> dict[str, float]:
    """Mean NDCG@k, HR@k and MRR@k of ``score`` over the (prefix, target) examples (module docstring).

    ``score(users, history)``: full-catalogue scores (B, n_items + 1) of anonymous users (-1) from
    right-aligned prefixes of ``history_length`` items, e.g. a model's ``full_sort_predict``;
    ``excluded`` (n_items + 1,) bool: items never ranked.
    """
    if len(prefixes) != len(targets):
        raise ValueError(f"{len(prefixes)} prefixes for {len(targets)} targets")
    if not targets:
        raise ValueError("no next-item examples: no test session keeps two items known to training")
    sums: dict[str, float] = {}
    for start in range(0, len(targets), batch_size):
        chunk = [list(p) for p in prefixes[start : start + batch_size]]
        goal = torch.as_tensor(list(targets[start : start + batch_size]), dtype=torch.long)
        rows = torch.arange(len(chunk))
        with torch.no_grad():
            scores = score(
                torch.full((len(chunk),), -1, dtype=torch.long), right_align(chunk, history_length)
            )
        scores = scores.float().masked_fill(torch.isnan(scores), -torch.inf)
        truth = torch.zeros(len(chunk), n_items + 1, dtype=torch.bool)
        truth[rows, goal] = True
        exclude = (
            torch.zeros_like(truth) if excluded is None else excluded.unsqueeze(0).expand_as(truth).clone()
        )
        for row, prefix in enumerate(chunk):
            exclude[row, torch.as_tensor(prefix, dtype=torch.long)] = True
        values, _ = per_user_metrics(scores, truth, exclude, list(ks))
        for name, per_example in values.items():
            if name.split("@")[0] in SESSION_METRICS:
                sums[name] = sums.get(name, 0.0) + float(per_example.sum())
    return {name: total / len(targets) for name, total in sorted(sums.items())}
