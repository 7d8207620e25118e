"""Request-time reads of a user's recent history from Feast's online store.

The service needs one thing per request: ``user_activity:recent_items`` (item id strings, oldest first)
for one user, so that sequential models see events newer than their training data. The features
package owns the Feast repo; its ``features.store.feature_store`` opens the store (profile selection via
``RECFORGE_FEAST_PROFILE``, ``RECFORGE_HOME`` expansion), with ``feast.FeatureStore`` as the fallback.
The read asks Feast for that single feature only (see ``OnlineHistory._read`` for why).

Which store: ``RECFORGE_FEATURE_REPO`` (a directory with ``feature_store.yaml``) if set, else
``<repo>/feature_repo``; that YAML expands ``${RECFORGE_HOME}`` for the registry and online store paths.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.config import REPO_ROOT

log = logging.getLogger(__name__)

HISTORY_VIEW = "user_activity"
HISTORY_FEATURE = "recent_items"
ONLINE_FEATURES = [f"{HISTORY_VIEW}:{HISTORY_FEATURE}"]
PROFILE_VIEW = "user_profile"
PROFILE_FIELDS = ("age", "gender", "occupation")  # what cold-start-from-attributes models encode
PROFILE_FEATURES = [f"{PROFILE_VIEW}:{name}" for name in PROFILE_FIELDS]
# Feature views of the Feast project (docs/architecture.md); recorded in the Bento model's metadata.
FEATURE_VIEWS = ["user_profile", "user_activity", "item_profile", "item_popularity"]


def feature_repo_path() -> Path:
    return Path(os.environ.get("RECFORGE_FEATURE_REPO") or REPO_ROOT / "feature_repo").resolve()


class OnlineHistory:
    """Thread-safe, lazily connected reader of users' recent items from the Feast online store.

    BentoML runs sync endpoints in a thread pool; the SQLite online store shares one connection, so
    reads are serialised with a lock (each is a single-row primary-key lookup, well under a millisecond
    of SQLite time). Failures are reported, not raised: the service then serves without history.
    """

    def __init__(self, repo_path: Path | None = None, health_ttl_s: float = 5.0) -> None:
        self.repo_path = Path(repo_path) if repo_path else feature_repo_path()
        self._store: Any = None
        self._lock = threading.Lock()
        self._health_ttl_s = health_ttl_s
        self._health: tuple[float, bool, str] = (0.0, False, "not checked")

    def connect(self) -> None:
        """Open the store once (imports Feast, reads the registry); callers hold the lock."""
        if self._store is not None:
            return
        if not (self.repo_path / "feature_store.yaml").exists():
            raise FileNotFoundError(
                f"no feature_store.yaml in {self.repo_path}; set RECFORGE_FEATURE_REPO to the Feast repo "
                "(and RECFORGE_HOME to the home that holds its registry and online store)"
            )
        try:  # the features package's helper, when present, resolves the profile and RECFORGE_HOME
            from features.store import feature_store
        except ImportError:
            from feast import FeatureStore

            self._store = FeatureStore(repo_path=str(self.repo_path))
        else:
            self._store = feature_store(self.repo_path)

    def recent_items(self, user_id: str) -> list[str] | None:
        """The user's recent item ids (oldest first); None when the store is unreachable or has no row."""
        try:
            with self._lock:
                self.connect()
                row = self._read(str(user_id))
        except Exception as exc:  # noqa: BLE001 - degrade to no history, but say so in the logs
            log.warning("feast online read failed for user %s: %s", user_id, exc)
            return None
        value = row.get(HISTORY_FEATURE)
        if value is None:
            value = row.get(f"{HISTORY_VIEW}__{HISTORY_FEATURE}")
        if value is None:
            return None
        return [str(v) for v in value]

    def profile(self, user_id: str) -> dict[str, Any] | None:
        """The user's profile attributes (age, gender, occupation; None values dropped), or None.

        Read only for users the model does not know (cold start from attributes), so the hot path of
        known users keeps its single-view history read.
        """
        try:
            with self._lock:
                self.connect()
                row = self._read(str(user_id), PROFILE_FEATURES)
        except Exception as exc:  # noqa: BLE001 - degrade to no attributes, but say so in the logs
            log.warning("feast profile read failed for user %s: %s", user_id, exc)
            return None
        found = {}
        for name in PROFILE_FIELDS:
            value = row.get(name, row.get(f"{PROFILE_VIEW}__{name}"))
            if value is not None:
                found[name] = value
        return found or None

    def _read(self, user_id: str, features: list[str] = ONLINE_FEATURES) -> dict[str, Any]:
        # Only the features we need, not the whole ``recsys_online`` service: measured here, a
        # single-view read takes ~0.2 ms, ``online_user_features`` (service lookup + two views) 3-5 ms.
        out = self._store.get_online_features(features=features, entity_rows=[{"user_id": user_id}]).to_dict()
        return {key: values[0] for key, values in out.items() if values}

    def health(self) -> tuple[bool, str]:
        """(reachable, detail), cached for ``health_ttl_s`` so probes cost nothing under load."""
        checked_at, ok, detail = self._health
        if time.monotonic() - checked_at < self._health_ttl_s:
            return ok, detail
        try:
            with self._lock:
                self.connect()
                self._read("__recforge_healthcheck__")
            ok, detail = True, f"feast repo {self.repo_path}"
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self._health = (time.monotonic(), ok, detail)
        return ok, detail
