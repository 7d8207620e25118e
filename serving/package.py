"""Package stage: store the candidate as a BentoML model; when promoted, swap the champion and build a Bento.

Every candidate is saved (so a rejected model can still be inspected or served by tag), but only a
promoted one moves the champion pointer (``layout.champion``, written atomically) and gets a Bento.
The BentoML store lives under ``layout.bentoml_home``; we pass that store explicitly to
``bentoml.models.create`` (so the process-wide ``BENTOML_HOME`` does not matter here) and set
``BENTOML_HOME`` for the ``bentoml build`` subprocess. The service must run with the same
``BENTOML_HOME`` (see ``serving/service.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pipeline.artifacts import Evaluation, GateDecision, TrainResult, atomic_write_json, file_lock
from pipeline.config import REPO_ROOT
from pipeline.layout import Layout
from serving.online import FEATURE_VIEWS, ONLINE_FEATURES

log = logging.getLogger(__name__)

SERVICE = "serving.service:Recommender"
BENTO_NAME = "recforge_recommender"
GATE_METRIC = "ndcg@10"  # what training.gate compares; the champion file carries it under metrics
ARTIFACT_SUBDIR = "artifact"  # the training artifact directory, copied verbatim
TITLES_FILE = "titles.json"  # item id -> title, for human-readable responses
RETRIEVER_SUBDIR = "retriever"  # a ranker's first stage: the best retrieval artifact on its split
# Source the Bento needs at serve time (the service imports training/ for the model classes).
BENTO_INCLUDE = [
    "serving/**/*.py",
    "training/**/*.py",
    "pipeline/**/*.py",
    "features/**/*.py",
    "feature_repo/**",
    "configs/**/*.yaml",
]


def bento_model_name(model: str) -> str:
    return f"recforge-{model}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def find_artifact_dir(train_result: TrainResult) -> Path:
    """The model artifact directory (the one with ``model.json``) of a training run.

    Training writes it inside ``run_dir``; ``checkpoint`` may point at it directly. We look in the
    likely places first and then search, so packaging does not depend on one naming choice.
    """
    candidates = [Path(train_result.checkpoint)] if train_result.checkpoint else []
    run_dir = Path(train_result.run_dir)
    candidates += [run_dir / name for name in ("model", "artifact", "artifacts", "model_artifact")]
    candidates.append(run_dir)
    for path in candidates:
        if path.is_dir() and (path / "model.json").is_file():
            return path
    found = sorted(p.parent for p in run_dir.rglob("model.json")) if run_dir.is_dir() else []
    if found:
        return found[0]
    raise FileNotFoundError(
        f"no model artifact (a directory with model.json) under {run_dir} or at {train_result.checkpoint}; "
        "did training finish and call training.artifact.save_model_artifact?"
    )


def _run_artifact(run_dir: Path) -> Path | None:
    """The artifact directory of a finished run directory, or None."""
    if (run_dir / "model" / "model.json").is_file():
        return run_dir / "model"
    found = sorted(p.parent for p in run_dir.rglob("model.json"))
    return found[0] if found else None


def is_ranker_model(name: str) -> bool:
    """Whether the registered model ``name`` is a candidate ranker (class attribute ``is_ranker``)."""
    from training.models import get_spec

    try:
        return bool(getattr(get_spec(name).factory, "is_ranker", False))
    except (KeyError, ImportError, AttributeError):  # unregistered, or its module is not written yet
        return False


def can_retrieve(name: str) -> bool:
    """Retrieval-capable: a registered learned (non-baseline) model that ranks the full catalogue itself."""
    from training.models import MODELS

    spec = MODELS.get(name)
    return spec is not None and spec.kind != "baseline" and not is_ranker_model(name)


@dataclasses.dataclass(frozen=True)
class RetrieverChoice:
    """The run whose artifact serves as a ranker's retrieval stage, and why it was chosen."""

    model: str
    run_dir: Path
    artifact_dir: Path
    best_valid_ndcg10: float
    split_dir: str

    def to_metadata(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "run_dir": str(self.run_dir),
            "best_valid_ndcg10": self.best_valid_ndcg10,
            "split_dir": self.split_dir,
        }


def _split_dir_of(artifact_dir: Path) -> str | None:
    try:
        meta = json.loads((artifact_dir / "model.json").read_text()).get("meta") or {}
    except (OSError, ValueError):
        return None
    split_dir = meta.get("split_dir")
    return str(Path(split_dir).resolve()) if split_dir else None


def choose_retriever(layout: Layout, ranker_artifact: Path) -> RetrieverChoice | None:
    """The best retrieval run on the ranker's split: highest ``best_valid_ndcg10`` in its ``train.json``.

    Candidates are the finished runs (``runs/<model>/<run id>/train.json`` plus an artifact) of
    retrieval-capable models whose artifact was trained on the SAME split directory (artifact meta
    ``split_dir``), so user and item indices agree with the ranker's. Chosen on validation NDCG, not
    on test metrics, so the test set stays untouched. None when there is no such run.
    """
    split_dir = _split_dir_of(ranker_artifact)
    if split_dir is None:
        return None
    best: RetrieverChoice | None = None
    for manifest in sorted((layout.home / "runs").glob("*/*/train.json")):
        model = manifest.parent.parent.name
        if not can_retrieve(model):
            continue
        try:
            result = TrainResult.load(manifest)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("skipping retriever candidate %s: %s", manifest, exc)
            continue
        artifact = _run_artifact(manifest.parent)
        if artifact is None or _split_dir_of(artifact) != split_dir or result.model != model:
            continue
        choice = RetrieverChoice(model, manifest.parent, artifact, float(result.best_valid_ndcg10), split_dir)
        if best is None or choice.best_valid_ndcg10 > best.best_valid_ndcg10:
            best = choice
    return best


def _titles(layout: Layout, data_version: str) -> dict[str, str]:
    """Item titles from the snapshot's items table, if it has any (titles are optional)."""
    items = layout.snapshot(data_version) / "items.parquet"
    if not items.exists():
        return {}
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(items, columns=["item_id", "title"]).to_pydict()
    except Exception as exc:  # noqa: BLE001 - titles are cosmetic: never fail packaging for them
        log.warning("could not read titles from %s: %s", items, exc)
        return {}
    return {str(i): t for i, t in zip(table["item_id"], table["title"], strict=True) if t}


def _metadata(
    train_result: TrainResult, evaluation: Evaluation, decision: GateDecision, commit: str
) -> dict[str, Any]:
    return {
        "model": train_result.model,
        "metrics": {k: float(v) for k, v in evaluation.metrics.items()},
        "baselines": {b: {k: float(v) for k, v in m.items()} for b, m in evaluation.baselines.items()},
        "data_version": evaluation.data_version,
        "protocol": evaluation.protocol,
        "feature_views": list(FEATURE_VIEWS),
        "online_features": list(ONLINE_FEATURES),
        "git_commit": commit,
        "run_dir": str(train_result.run_dir),
        "hparams": json.loads(json.dumps(train_result.hparams, default=str)),
        "gate": {"promoted": decision.promoted, "reason": decision.reason},
    }


def save_bento_model(
    train_result: TrainResult, evaluation: Evaluation, decision: GateDecision, layout: Layout
) -> str:
    """Copy the artifact into a new BentoML model under ``layout.bentoml_home``; return its tag."""
    import bentoml
    from bentoml._internal.models import ModelStore

    artifact_dir = find_artifact_dir(train_result)
    commit = git_commit()
    metadata = _metadata(train_result, evaluation, decision, commit)
    retriever = None
    if is_ranker_model(train_result.model):
        retriever = choose_retriever(layout, artifact_dir)
        metadata["serving"] = _serving_plan(train_result.model, retriever, _split_dir_of(artifact_dir))
    else:
        metadata["serving"] = {"stages": [{"stage": "full_ranking", "model": train_result.model}]}
    labels = {
        "project": "recforge",
        "model": train_result.model,
        "data_version": evaluation.data_version,
        "protocol": evaluation.protocol,
        "git_commit": commit,
    }
    if retriever is not None:
        labels["retriever"] = retriever.model
    store_dir = layout.bentoml_home / "models"
    store_dir.mkdir(parents=True, exist_ok=True)
    # ``_model_store``: the explicit store keeps packaging independent of when bentoml was imported.
    with bentoml.models.create(
        name=bento_model_name(train_result.model),
        labels=labels,
        metadata=metadata,
        _model_store=ModelStore(str(store_dir)),
    ) as ref:
        target = Path(ref.path)
        shutil.copytree(artifact_dir, target / ARTIFACT_SUBDIR)
        if retriever is not None:
            shutil.copytree(retriever.artifact_dir, target / RETRIEVER_SUBDIR)
        (target / TITLES_FILE).write_text(json.dumps(_titles(layout, evaluation.data_version)))
        (target / "recforge.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return str(ref.tag)


def _serving_plan(ranker: str, retriever: RetrieverChoice | None, split_dir: str | None) -> dict[str, Any]:
    """How the packaged ranker serves: retrieve-then-rank, or full ranking when no retriever exists."""
    if retriever is None:
        return {
            "stages": [
                {"stage": "full_ranking", "model": ranker}
            ],  # no "retriever": BentoML metadata has no None
            "note": f"no finished retrieval run on split {split_dir}: the ranker scores the whole catalogue",
        }
    return {
        "stages": [
            {"stage": "retrieve", "model": retriever.model},
            {"stage": "rank", "model": ranker},
        ],
        "retriever": retriever.to_metadata(),
    }


def bento_env(layout: Layout, model_tag: str | None = None) -> dict[str, str]:
    """Environment for a ``bentoml`` subprocess (build or serve) that agrees with this layout."""
    env = dict(os.environ)
    env["BENTOML_HOME"] = str(layout.bentoml_home)
    env["RECFORGE_HOME"] = str(layout.home)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if model_tag:
        env["RECFORGE_MODEL_TAG"] = model_tag
    return env


def build_service_bento(model_tag: str, layout: Layout, timeout_s: int = 600) -> str:
    """``bentoml build`` the service around ``model_tag``; return the Bento tag.

    The bentofile is generated per build so the model tag is baked into the Bento's environment
    (``RECFORGE_MODEL_TAG``): a container built from it serves exactly this model, with no champion file.
    The build also writes ``env/docker/Dockerfile`` inside the Bento (``bentoml containerize`` uses it).
    """
    bentofile = {
        "service": SERVICE,
        "name": BENTO_NAME,
        "description": "recforge recommender: champion model + Feast online history",
        "labels": {"project": "recforge", "model_tag": model_tag.replace(":", "_")},
        "include": BENTO_INCLUDE,
        "exclude": ["**/__pycache__", "**/*.pyc", ".recforge", ".venv", "tests"],
        "python": {"requirements_txt": "requirements.lock"},  # relative to the build context
        "docker": {"python_version": "3.11"},
        "envs": [
            {"name": "RECFORGE_MODEL_TAG", "value": model_tag},
            {"name": "OMP_WAIT_POLICY", "value": "PASSIVE"},
        ],
    }
    with tempfile.TemporaryDirectory(prefix="recforge-bentofile-") as tmp:
        path = Path(tmp) / "bentofile.yaml"
        path.write_text(yaml.safe_dump(bentofile, sort_keys=False))
        bentoml_cli = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml_cli) if bentoml_cli.exists() else "bentoml", "build", "-f", str(path)]
        cmd += ["--output", "tag", str(REPO_ROOT)]
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=bento_env(layout, model_tag),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"bentoml build failed (exit {proc.returncode}) for {model_tag}:\n{proc.stderr[-4000:]}"
        )
    tag = _parse_bento_tag(proc.stdout)
    dockerfile = layout.bentoml_home / "bentos" / tag.replace(":", "/") / "env" / "docker" / "Dockerfile"
    if not dockerfile.exists():
        raise RuntimeError(f"bentoml build produced {tag} but no Dockerfile at {dockerfile}")
    return tag


def _parse_bento_tag(stdout: str) -> str:
    """``bentoml build -o tag`` prints ``__tag__:<name>:<version>`` (the last line)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("__tag__:"):
            return line.removeprefix("__tag__:")
        if line.startswith(f"{BENTO_NAME}:"):
            return line
    raise RuntimeError(f"could not find the Bento tag in bentoml build output:\n{stdout[-2000:]}")


def package_model(
    train_result: TrainResult,
    evaluation: Evaluation,
    decision: GateDecision,
    layout: Layout,
    build_bento: bool = True,
) -> GateDecision:
    """Save the candidate as a BentoML model; if promoted, swap the champion pointer (and build a Bento).

    Returns ``decision`` with ``bento_tag`` set to the BentoML *model* tag. The built Bento's tag (when
    built) is recorded in the champion file as ``bento``. A rejected candidate leaves the champion
    file and earlier Bentos untouched. The swap re-checks the champion under a file lock: if another
    run promoted a better model on the same data since the gate looked, the returned decision says
    ``promoted=False`` and why.
    """
    model_tag = save_bento_model(train_result, evaluation, decision, layout)
    log.info("saved %s as BentoML model %s", train_result.model, model_tag)
    if not decision.promoted:
        return dataclasses.replace(decision, bento_tag=model_tag)
    # Built before the swap: a failed build never leaves the pointer on a model without a Bento.
    bento_tag = build_service_bento(model_tag, layout) if build_bento else None
    champion = {
        "model": train_result.model,
        "bento_tag": model_tag,  # the BentoML model the service loads
        "bento": bento_tag,  # the built service Bento (None when not built)
        "metrics": dict(evaluation.metrics),
        "data_version": evaluation.data_version,
        "protocol": evaluation.protocol,
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": decision.reason,
        "run_dir": str(train_result.run_dir),
        "bentoml_home": str(layout.bentoml_home),
    }
    with file_lock(layout.home / ".champion.lock"):  # concurrent DAG runs swap one pointer
        overtaken = _overtaken_by(layout, decision, evaluation)
        if overtaken:
            log.warning("not promoting %s: %s", model_tag, overtaken)
            return dataclasses.replace(
                decision, promoted=False, reason=f"{decision.reason}; then {overtaken}", bento_tag=model_tag
            )
        atomic_write_json(layout.champion, champion)
    log.info("champion is now %s (%s)", model_tag, bento_tag or "no bento built")
    return dataclasses.replace(decision, bento_tag=model_tag)


def _overtaken_by(layout: Layout, decision: GateDecision, evaluation: Evaluation) -> str | None:
    """Why the gate's decision is stale, or None.

    The gate compared the candidate with the champion of its time; another run may have promoted a
    better model on the same data and protocol since. Then this candidate must not replace it.
    """
    if not layout.champion.exists():
        return None
    try:
        current = json.loads(layout.champion.read_text())
        score = float(current["metrics"][GATE_METRIC])
    except (ValueError, KeyError, TypeError):
        return None
    same_data = (current.get("data_version"), current.get("protocol")) == (
        evaluation.data_version,
        evaluation.protocol,
    )
    seen_by_gate = decision.champion_ndcg10 is not None and abs(score - decision.champion_ndcg10) < 1e-12
    candidate = float(evaluation.metrics.get(GATE_METRIC, decision.candidate_ndcg10))
    if same_data and not seen_by_gate and score > candidate:
        return (
            f"champion {current.get('bento_tag')} promoted meanwhile has {GATE_METRIC} {score:.4f} "
            f"> candidate {candidate:.4f}"
        )
    return None
