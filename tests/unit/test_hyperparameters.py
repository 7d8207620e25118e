"""Typed hyperparameters: every model declares what it takes; a typo or a wrong type fails at config load."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orchestration.runs import model_params as load_model_params
from pipeline.config import REPO_ROOT
from tests.unit.test_cli_lifecycle import RECFORGE
from training.models import (
    MODELS,
    HyperparameterError,
    build_model,
    hyperparameter_names,
    hyperparameters,
    validate_hparams,
)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_shipped_yaml_is_accepted_and_builds(name: str) -> None:
    params = load_model_params(name)
    assert set(params) <= set(hyperparameters(name))
    build_model(name, 5, 7, **params)  # constructor gets its own keys; data-module keys stay out


def test_a_typo_fails_and_lists_the_accepted_keys() -> None:
    with pytest.raises(HyperparameterError, match=r"unknown hyperparameter\(s\) 'epochs'") as info:
        validate_hparams("bpr", {"epochs": 5})
    assert "embedding_size" in str(info.value) and "trainer.max_epochs" in str(info.value)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("bpr", {"lr": "0.1"}, "lr='0.1' is not a valid float"),
        ("bpr", {"embedding_size": 3.5}, "embedding_size=3.5 is not a valid int"),
        ("bpr", {"embedding_size": True}, "embedding_size=True is not a valid int"),
        ("twotower", {"hidden_sizes": [64, "a"]}, "hidden_sizes"),
        ("sasrec", {"history_length": "50"}, "history_length='50'"),
    ],
)
def test_a_wrong_type_fails(name: str, params: dict, message: str) -> None:
    with pytest.raises(HyperparameterError, match=message):
        validate_hparams(name, params)


def test_ints_are_floats_where_a_float_is_declared() -> None:
    assert validate_hparams("bpr", {"lr": 1}) == {"lr": 1.0}


@pytest.mark.slow  # the recforge CLI in a subprocess
def test_the_cli_says_so_in_one_line(tmp_path: Path) -> None:
    """The README's old example (``--hparam epochs=5``) used to train 30 epochs without a word."""
    env = dict(os.environ, RECFORGE_HOME=str(tmp_path), RECFORGE_CONFIG=str(tmp_path / "none.yaml"))
    result = subprocess.run(
        [*RECFORGE, "run", "bpr", "--hparam", "epochs=5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("recforge run: bpr: unknown hyperparameter(s) 'epochs'")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_keys_read_from_source_are_the_keys_accepted(name: str) -> None:
    """The CLI's quick check (no torch import) agrees with the constructor's signature."""
    assert hyperparameter_names(name) == set(hyperparameters(name))
