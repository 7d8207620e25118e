"""A run's identity: its resolved config (written once), its provenance and its deployment eligibility.

``ensure_run_config`` is called by every stage of a run. The first call resolves the configuration
(YAML + overrides + model hyperparameters), decides whether the run may compete for its deployment,
and writes ``run_config.json`` into the run directory; every later call, including a retried task
after someone edited a YAML file, reads that file instead. So one run always has one configuration.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.artifacts import RunConfig, file_lock
from pipeline.config import PipelineConfig, load_model_params
from pipeline.provenance import code_commit

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"


def config_hash(config: dict[str, Any], hparams: dict[str, Any]) -> str:
    """Short content hash of what configures a run (``home`` excluded: moving a home changes nothing)."""
    body = {k: v for k, v in config.items() if k != "home"}
    canonical = json.dumps({"config": body, "hparams": hparams}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def deployment_mismatch(cfg: PipelineConfig) -> list[str]:
    """Why this run's key differs from its deployment's (data source, split protocol); [] when it matches."""
    deployment = cfg.deployments[cfg.deployment]
    reasons = []
    if cfg.split.protocol != deployment.protocol:
        reasons.append(f"split protocol {cfg.split.protocol} != {deployment.protocol}")
    assert deployment.source is not None  # load_config fills it from the file's source
    run_source, deployed_source = cfg.source.model_dump(), deployment.source.model_dump()
    for key, value in run_source.items():
        if value != deployed_source.get(key):
            reasons.append(f"source.{key} {value!r} != {deployed_source.get(key)!r}")
    return reasons


def eligibility(cfg: PipelineConfig) -> tuple[bool, str]:
    """(eligible, one line saying so) for the run's deployment."""
    deployment = cfg.deployments[cfg.deployment]
    key = f"{deployment.protocol}, {deployment.metric}"
    reasons = deployment_mismatch(cfg)
    if not reasons:
        return True, f"competes for deployment {cfg.deployment!r} ({key})"
    return False, (
        f"not eligible for deployment {cfg.deployment!r} ({key}): {'; '.join(reasons)}; "
        "it is trained, evaluated and recorded, never promoted there"
    )


def ensure_run_config(
    run_dir: Path,
    model: str,
    run_id: str,
    cfg: PipelineConfig,
    hparams: dict[str, Any] | None = None,
) -> RunConfig:
    """The run's ``run_config.json``: read it if it exists, else resolve and write it (once).

    ``cfg`` and ``hparams`` are used only on the first call of a run; ``hparams`` are overrides of the
    model's YAML (monitor runs, named ``<model>-monitor``, have no YAML: their overrides are kept as given).
    """
    path = Path(run_dir) / RUN_CONFIG
    if path.is_file():
        return RunConfig.load(path)
    with file_lock(Path(run_dir) / ".run_config.lock"):  # two first tasks of one run may race
        if path.is_file():
            return RunConfig.load(path)
        params = model_params(model, hparams)
        config = json.loads(cfg.model_dump_json(by_alias=True))
        eligible, why = eligibility(cfg)
        run_config = RunConfig(
            model=model,
            run_id=run_id,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            config=config,
            hparams=params,
            config_hash=config_hash(config, params),
            code_commit=code_commit(),
            deployment=cfg.deployment,
            eligible=eligible,
            eligibility=why,
        )
        run_config.save(path)
    log.info("run %s/%s: %s", model, run_id, why)
    return run_config


def model_params(model: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model's hyperparameters (its YAML + overrides) checked against what it accepts: unknown keys
    and wrong types fail here, naming the accepted keys (``training.models.validate_hparams``). Names
    that are not registered models (monitor runs) keep their overrides as given."""
    from training.models import MODELS, validate_hparams

    params = load_model_params(model, overrides)
    return validate_hparams(model, params) if model in MODELS else params


def pipeline_config(run_config: RunConfig) -> PipelineConfig:
    return PipelineConfig.model_validate(run_config.config)
