"""A throwaway RECFORGE_HOME with a config for a small real slice of MovieLens-100K.

Integration tests run the real stages (Feast, Lightning, BentoML, Evidently) on the first
``sample_users`` users of MovieLens-100K. The raw download is cached once per checkout under
``.recforge/cache`` so tests do not hit the registry again.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ingestion.fetch import fetch_ml100k
from pipeline.config import REPO_ROOT


def ml100k_raw() -> Path:
    return fetch_ml100k(REPO_ROOT / ".recforge" / "cache")


def make_home(root: Path, sample_users: int = 120, max_epochs: int = 2, **sections: dict) -> dict[str, str]:
    """Create ``root`` with a pipeline config; return the environment that selects it."""
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "source": {"kind": "recbole_ml100k", "path": str(ml100k_raw()), "sample_users": sample_users},
        "validation": {"max_rejected_share": 0.05, "rating_min": 1.0, "rating_max": 5.0},
        "split": {"protocol": "temporal", "seed": 7},
        "trainer": {"max_epochs": max_epochs, "patience": 2, "num_threads": 1},
        "gate": {"min_lift_over_popularity": 1.0, "build_bento": False},
        "monitoring": {"max_users": 100},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    env.update(
        {
            "RECFORGE_HOME": str(root),
            "RECFORGE_CONFIG": str(path),
            "OMP_WAIT_POLICY": "PASSIVE",
            "BENTOML_HOME": str(root / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
        }
    )
    return env
