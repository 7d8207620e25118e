"""Fetch MovieLens-100K offline: the copy inside the PyPI wheel ``recbole==1.2.1``.

We download the wheel with ``pip download --no-deps`` (a package registry is the only network this
project may assume) and unpack only ``recbole/dataset_example/ml-100k/``. recbole is never imported.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.artifacts import atomic_path

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole==1.2.1"
ML100K_PREFIX = "recbole/dataset_example/ml-100k/"
ML100K_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item", "ml-100k.kg", "ml-100k.link")


def fetch_ml100k(cache_dir: Path) -> Path:
    """Return a directory holding ``ml-100k.{inter,user,item,kg,link}``, downloading once."""
    target = Path(cache_dir) / "ml-100k"
    if all((target / name).is_file() for name in ML100K_FILES):
        return target
    with tempfile.TemporaryDirectory(prefix="recforge-wheel-") as download_dir:
        log.info("downloading %s (no dependencies) to read MovieLens-100K from it", RECBOLE_WHEEL)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                download_dir,
                RECBOLE_WHEEL,
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pip download {RECBOLE_WHEEL} failed (exit {result.returncode}); is the package "
                f"registry reachable? pip said:\n{result.stderr[-2000:]}"
            )
        wheels = sorted(Path(download_dir).glob("recbole-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download left no recbole wheel in {download_dir}")
        with atomic_path(target) as tmp, zipfile.ZipFile(wheels[0]) as wheel:
            tmp.mkdir(parents=True)
            for name in ML100K_FILES:
                member = ML100K_PREFIX + name
                try:
                    (tmp / name).write_bytes(wheel.read(member))
                except KeyError:
                    raise RuntimeError(f"{wheels[0].name} has no {member}") from None
    log.info("MovieLens-100K unpacked to %s", target)
    return target
