"""Package stage: store every candidate as a BentoML model; promote stage: make it a deployment's champion.

Every candidate is saved (so a rejected model can still be inspected or served by tag); a candidate
that passed the gate also gets a service Bento. Promotion is a separate step (``promote_candidate``):
one compare-and-swap in the run index appends a ``DeploymentEvent`` to the deployment's history,
which the running service follows (``serving.service``). Built before the swap, so a failed build
never leaves a deployment on a model without a Bento.
The BentoML store lives under ``layout.bentoml_home``; we pass that store explicitly to
``bentoml.models.create`` (so the process-wide ``BENTOML_HOME`` does not matter here) and set
``BENTOML_HOME`` for the ``bentoml build`` subprocess. The service must run with the same
``BENTOML_HOME`` (see ``serving/service.py``). Each stored model carries ``SHA256SUMS`` of its files,
so a server refuses a truncated or altered model with a message naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.artifacts import (
    DeploymentEvent,
    Evaluation,
    GateDecision,
    RunRecord,
    Split,
    TrainResult,
    file_lock,
)
from pipeline.config import REPO_ROOT, ServingConfig
from pipeline.layout import Layout
from pipeline.provenance import code_commit
from pipeline.run_index import ChampionChanged, RunIndex, now_iso
from pipeline.schema import DataSchema, load_schema
from serving.online import ONLINE_FEATURES

if TYPE_CHECKING:
    from serving.ann import ItemIndex

log = logging.getLogger(__name__)

SERVICE = "serving.service:Recommender"
BENTO_NAME = "recforge_recommender"
CHECKSUMS_FILE = "SHA256SUMS"  # sha256 of every file of the stored model, checked before loading
ARTIFACT_SUBDIR = "artifact"  # the training artifact directory, copied verbatim
TITLES_FILE = "titles.json"  # item id -> title, for human-readable responses
ANN_SUBDIR = "ann"  # the ANN index over the model's item vectors (large catalogues, serving.ann)
RETRIEVER_SUBDIR = "retriever"  # a ranker's first stage: the best retrieval artifact on its split
DEFAULT_ANN_MIN_ITEMS: int = ServingConfig.model_fields["ann_min_items"].default
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
    """Whether the registered model ``name`` is a candidate ranker (declares ``RanksCandidates``)."""
    from training.models import get_spec
    from training.models.capabilities import RanksCandidates

    try:
        return RanksCandidates in get_spec(name).capabilities
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


def _split_of(artifact_dir: Path) -> Split | None:
    """The split the artifact was trained on, when its manifest is still there."""
    split_dir = _split_dir_of(artifact_dir)
    manifest = Path(split_dir) / "split.json" if split_dir else None
    return Split.load(manifest) if manifest is not None and manifest.is_file() else None


def _schema_of(split: Split | None) -> DataSchema:
    return load_schema(split.schema if split else None)


def _feature_views_of(split: Split | None) -> list[str]:
    from features.tables import feature_views

    return list(feature_views(_schema_of(split)))


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
        "online_features": list(ONLINE_FEATURES),
        "git_commit": commit,
        "run_dir": str(train_result.run_dir),
        "hparams": json.loads(json.dumps(train_result.hparams, default=str)),
        "gate": {"promoted": decision.promoted, "reason": decision.reason},
    }


def build_ann_index(artifact_dir: Path, min_items: int) -> ItemIndex | None:
    """The ANN index over the artifact's item vectors when its model scores by a dot product and its
    catalogue holds at least ``min_items`` items; else None (the service then scores exactly)."""
    import numpy as np
    import torch

    from serving.ann import ItemIndex
    from training.artifact import load_model_artifact
    from training.models.capabilities import ScoresByDotProduct, can

    artifact = load_model_artifact(artifact_dir)
    if artifact.n_items < min_items or not can(artifact.module, ScoresByDotProduct):
        return None
    artifact.module.eval()
    with torch.no_grad():
        table = artifact.module.dot_product_items().detach().float().numpy()
    # Items the model may not rank (no training interaction) are never candidates: not indexed.
    untrained = artifact.untrained_items
    rankable = np.arange(1, artifact.n_items + 1)
    if untrained is not None:
        rankable = rankable[~untrained.numpy()[1:]]
    started = time.perf_counter()
    index = ItemIndex.build(table, rankable)
    log.info(
        "ANN index for %s: %d of %d items x %d dims in %.1f s",
        artifact.name,
        len(index.rows),
        index.n_items,
        index.dim,
        time.perf_counter() - started,
    )
    return index


def save_bento_model(
    train_result: TrainResult,
    evaluation: Evaluation,
    decision: GateDecision,
    layout: Layout,
    ann_min_items: int = DEFAULT_ANN_MIN_ITEMS,
) -> str:
    """Copy the artifact into a new BentoML model under ``layout.bentoml_home``; return its tag.

    A model that scores by a dot product over at least ``ann_min_items`` items gets an ANN index
    (``ANN_SUBDIR``) beside its artifact."""
    import bentoml
    from bentoml._internal.models import ModelStore

    artifact_dir = find_artifact_dir(train_result)
    commit = code_commit()
    metadata = _metadata(train_result, evaluation, decision, commit)
    # The Feast namespace it was trained and judged with: what a pinned service (a Bento in a
    # container, no run index) reads its online features from; and that namespace's views.
    split = _split_of(artifact_dir)
    metadata["feature_namespace"] = split.feature_namespace if split else ""
    metadata["feature_views"] = _feature_views_of(split)
    # The data schema: what a request may say about a user the model has never seen.
    metadata["schema"] = _schema_of(split).model_dump(mode="json", exclude_none=True)  # BentoML refuses None
    retriever = None
    if is_ranker_model(train_result.model):
        retriever = choose_retriever(layout, artifact_dir)
        metadata["serving"] = _serving_plan(train_result.model, retriever, _split_dir_of(artifact_dir))
    else:
        metadata["serving"] = {"stages": [{"stage": "full_ranking", "model": train_result.model}]}
    ann = None if retriever is not None else build_ann_index(artifact_dir, ann_min_items)
    if ann is not None:
        metadata["serving"]["ann"] = {
            "n_items": ann.n_items,
            "indexed_items": len(ann.rows),
            "dim": ann.dim,
            **ann.settings(),
        }
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
        if ann is not None:
            ann.save(target / ANN_SUBDIR)
        (target / TITLES_FILE).write_text(json.dumps(_titles(layout, evaluation.data_version)))
        (target / "recforge.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        write_checksums(target)
    return str(ref.tag)


def write_checksums(model_dir: Path) -> Path:
    """``SHA256SUMS`` (``<hex>  <relative path>`` per file, like sha256sum) of everything in ``model_dir``."""
    lines = [
        f"{_sha256(path)}  {path.relative_to(model_dir).as_posix()}"
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS_FILE
    ]
    out = model_dir / CHECKSUMS_FILE
    out.write_text("\n".join(lines) + "\n")
    return out


class CorruptModel(RuntimeError):
    """A stored model's files do not match their checksums; the message names the file."""


def verify_checksums(model_dir: Path) -> None:
    """Raise ``CorruptModel`` naming the first missing, truncated or altered file of a stored model.

    Models stored before checksums existed (no ``SHA256SUMS``) pass unchecked.
    """
    sums = Path(model_dir) / CHECKSUMS_FILE
    if not sums.is_file():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        path = Path(model_dir) / name
        if not path.is_file():
            raise CorruptModel(f"{path}: missing (listed in {sums})")
        if _sha256(path) != digest:
            raise CorruptModel(f"{path}: content differs from its checksum in {sums} (truncated or altered)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stored_model_dir(layout: Layout, model_tag: str) -> Path:
    """Directory of a BentoML model in the layout's store (``models/<name>/<version>``)."""
    name, _, version = model_tag.partition(":")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not re.fullmatch(r"[A-Za-z0-9_.-]+", version):
        raise ValueError(f"not a BentoML model tag: {model_tag!r}")
    return layout.bentoml_home / "models" / name / version


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
    # One build at a time per home, so what is left in BentoML's temp directory belongs to a build that
    # was interrupted (killed task, full disk) and can be removed before this one starts.
    with (
        file_lock(layout.bentoml_home / ".build.lock"),
        tempfile.TemporaryDirectory(prefix="recforge-bentofile-") as tmp,
    ):
        _remove_build_leftovers(layout)
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


def _remove_build_leftovers(layout: Layout) -> None:
    """Delete ``$BENTOML_HOME/tmp/bentoml_bento_*`` directories (``bentoml build`` staging) of earlier builds."""
    for path in (layout.bentoml_home / "tmp").glob("bentoml_bento_*"):
        log.info("removing %s, left by an interrupted bentoml build", path)
        shutil.rmtree(path, ignore_errors=True)


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
    ann_min_items: int = DEFAULT_ANN_MIN_ITEMS,
) -> GateDecision:
    """Save the candidate as a BentoML model; when it passed the gate, also build its service Bento.

    Returns ``decision`` with ``bento_tag`` (the BentoML *model* tag) and ``bento`` (the built Bento's
    tag, when built). Nothing here changes what any deployment serves: see ``promote_candidate``.
    """
    model_tag = save_bento_model(train_result, evaluation, decision, layout, ann_min_items)
    log.info("saved %s as BentoML model %s", train_result.model, model_tag)
    if not decision.promoted:
        return dataclasses.replace(decision, bento_tag=model_tag)
    bento = build_service_bento(model_tag, layout) if build_bento else None
    return dataclasses.replace(decision, bento_tag=model_tag, bento=bento)


def promote_candidate(
    decision: GateDecision, record: RunRecord, layout: Layout, index: RunIndex
) -> GateDecision:
    """Append the candidate to its deployment's history if the champion is still the one it beat.

    Returns the final decision: promoted, or not promoted because the champion changed between the
    gate's judgement and this swap (then the run must be judged again against the new champion).
    A retry of an already completed promotion finds itself champion and reports it as promoted.
    """
    if not decision.promoted or not decision.bento_tag:
        return decision
    event = DeploymentEvent(
        deployment=decision.deployment,
        action="promote",
        at=now_iso(),
        run_uid=record.run_uid,
        model=record.model,
        model_tag=decision.bento_tag,
        feature_namespace=record.feature_namespace or "",
        data_version=record.data_version or "",
        protocol=record.protocol,
        split_dir=record.split_dir or "",
        artifact_dir=str(stored_model_dir(layout, decision.bento_tag) / ARTIFACT_SUBDIR),
        metric=decision.metric,
        value=float(decision.candidate_value or 0.0),
        reason=decision.reason,
        metrics=dict(record.metrics),
        bento=decision.bento,
        previous_tag=decision.champion_tag,
    )
    try:
        index.append_event(event, expected_tag=decision.champion_tag)
    except ChampionChanged as exc:
        current = index.champion(decision.deployment)
        if current is not None and current.model_tag == decision.bento_tag:
            return decision  # a retried task: this candidate already is the champion
        log.warning("not promoting %s: %s", decision.bento_tag, exc)
        return dataclasses.replace(
            decision,
            promoted=False,
            reason=f"{decision.reason}; but {exc} (another run was promoted meanwhile): run it again "
            "to be judged against the new champion",
        )
    log.info("deployment %r: champion is now %s", decision.deployment, decision.bento_tag)
    return decision


class RollbackError(RuntimeError):
    """A rollback cannot be done; the message says why and what is possible instead."""


def rollback(
    index: RunIndex, layout: Layout, deployment: str, to_tag: str | None = None, reason: str = ""
) -> DeploymentEvent:
    """Make an earlier champion of ``deployment`` its champion again, in one atomic step.

    Without ``to_tag``: the champion that was live before the current one. With it: the newest
    history entry of that BentoML model tag. The model's files (checksums) and its Feast namespace
    are checked first, so a rollback never points the service at something it cannot serve. The
    namespace is the one the model was judged with; nothing rewrites it, so its online values are
    the ones that model served.
    """
    history = index.history(deployment)
    if not history:
        raise RollbackError(f"deployment {deployment!r} has no champion yet: nothing to roll back")
    current = history[-1]
    tags = list(dict.fromkeys(e.model_tag for e in reversed(history)))
    if to_tag is None:
        earlier = [e for e in reversed(history[:-1]) if e.model_tag != current.model_tag]
        if not earlier:
            raise RollbackError(
                f"deployment {deployment!r} has had one champion only ({current.model_tag}): nothing to roll back to"
            )
        target = earlier[0]
    else:
        matches = [e for e in reversed(history) if e.model_tag == to_tag]
        if not matches:
            raise RollbackError(
                f"{to_tag} was never champion of deployment {deployment!r}; its champions: {tags}"
            )
        target = matches[0]
        if target.model_tag == current.model_tag:
            raise RollbackError(f"{to_tag} already is the champion of deployment {deployment!r}")
    model_dir = stored_model_dir(layout, target.model_tag)
    if not model_dir.is_dir():
        raise RollbackError(f"{target.model_tag}: not in the BentoML store {layout.bentoml_home} (deleted?)")
    try:
        verify_checksums(model_dir)
    except CorruptModel as exc:
        raise RollbackError(f"{target.model_tag} cannot be served: {exc}") from None
    online = layout.feast_namespace(target.feature_namespace) / "online.db"
    embedded = os.environ.get("RECFORGE_FEAST_PROFILE", "") in ("", "embedded", "default")  # features.store
    if embedded and not online.is_file():
        raise RollbackError(
            f"{target.model_tag}: its Feast namespace {target.feature_namespace} is gone ({online})"
        )
    event = dataclasses.replace(
        target,
        action="rollback",
        at=now_iso(),
        reason=reason or f"rollback from {current.model_tag} to {target.model_tag}",
        previous_tag=current.model_tag,
        id=None,
    )
    return index.append_event(event, expected_tag=current.model_tag)
