"""Distributed data-parallel training (Lightning DDP) on CPU processes with the gloo backend.

The fast tests check the pieces each process relies on (its share of the validation users and of the
global batch, its own negatives); the slow ones start real DDP runs (``ddp_spawn``, 2 processes) and
compare them with the single-process run of the same code.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from pipeline.artifacts import Split
from pipeline.config import SplitConfig, TrainerConfig
from pipeline.layout import Layout
from tests.conftest import feature_set_of, synthetic_examples
from training.artifact import load_model_artifact
from training.data import GeneralDataModule, UserShard, build_datamodule, build_eval_inputs
from training.split import make_split
from training.train import build_for_split, evaluate_module, train_model

BPR = {"embedding_size": 16, "lr": 0.01, "batch_size": 256}


def small_split(tmp_path: Path, n_users: int, n_items: int, n_events: int, protocol: str) -> Split:
    examples = tmp_path / "examples.parquet"
    synthetic_examples(n_users=n_users, n_items=n_items, n_events=n_events).to_parquet(examples, index=False)
    features = feature_set_of(examples, tmp_path / "feature_repo", "synthetic-ddp")
    return make_split(features, SplitConfig(protocol=protocol), Layout(home=tmp_path / "home"))


def as_process(datamodule: GeneralDataModule, rank: int, world_size: int) -> GeneralDataModule:
    """``datamodule`` as process ``rank`` of ``world_size`` sees it (what Lightning attaches)."""
    datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)  # type: ignore[assignment]
    return datamodule


@pytest.mark.parametrize(("n_users", "world_size"), [(61, 2), (61, 3), (2, 3), (90, 2)])
def test_user_shards_partition_the_validation_users(n_users: int, world_size: int) -> None:
    users = list(range(n_users))
    shards = [list(UserShard(users, num_replicas=world_size, rank=rank)) for rank in range(world_size)]
    assert sorted(u for shard in shards for u in shard) == users  # every user once: none padded in
    assert [len(shard) for shard in shards] == [
        len(UserShard(users, num_replicas=world_size, rank=rank)) for rank in range(world_size)
    ]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_each_process_validates_its_users_and_takes_its_share_of_the_global_batch(tmp_path: Path) -> None:
    split = small_split(tmp_path, 61, 60, 1800, "leave_last_out")
    alone = build_datamodule("general", split, BPR, seed=7)
    alone.setup("fit")
    assert alone.train_dataloader().batch_size == 256
    assert len(alone.val_dataloader().dataset) == alone.valid_inputs.n_users == 61

    ranks = [as_process(build_datamodule("general", split, BPR, seed=7), rank, 2) for rank in (0, 1)]
    users = []
    for datamodule in ranks:
        datamodule.setup("fit")
        # batch_size is the global batch: two processes take half each, so the optimiser steps on the
        # same batch size and the same number of steps per epoch as one process.
        assert datamodule.train_dataloader().batch_size == 128
        users += [int(u) for batch in datamodule.val_dataloader() for u in batch["users"]]
    assert sorted(users) == sorted(alone.valid_inputs.users.tolist())

    # Rank 0 keeps the single-process seed; rank 1 draws other negatives for the same positives.
    first_draw = [d.train_set.__getitems__(list(range(200)))["negatives"] for d in (alone, *ranks)]
    assert torch.equal(first_draw[1], first_draw[0]) and not torch.equal(first_draw[2], first_draw[0])


@pytest.mark.slow
def test_validation_across_two_processes_equals_one_process(tmp_path: Path) -> None:
    """The number early stopping and checkpointing watch, from 2 gloo processes, is the single-process
    number: 61 validation users (an odd count, so the shards differ) in batches of 7."""
    split = small_split(tmp_path, 61, 60, 1800, "leave_last_out")
    datamodule = build_datamodule("general", split, BPR, seed=1)
    datamodule.eval_batch_users = 7
    L.seed_everything(1)
    module = build_for_split("bpr", split, BPR, datamodule.train_matrix)
    expected = evaluate_module(module, datamodule.valid_inputs, [10], 7)

    results = {}
    for devices, strategy in [(1, "auto"), (2, "ddp_spawn")]:
        trainer = L.Trainer(
            accelerator="cpu", devices=devices, strategy=strategy, logger=False, enable_progress_bar=False
        )
        results[devices] = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    for name in ("ndcg@10", "recall@10", "hr@10"):
        assert results[1][f"valid/{name}"] == pytest.approx(expected[name], abs=1e-6)
        assert results[2][f"valid/{name}"] == pytest.approx(expected[name], abs=1e-6)
    assert expected["recall@10"] > 0  # a metric of zeros would match trivially


@pytest.mark.slow
def test_ddp_training_on_two_processes_matches_one_process(tmp_path: Path) -> None:
    """BPR trained by 2 spawned gloo processes: the run is recorded like any other (epochs, best score,
    artifact) and its quality is that of the single-process run of the same seed, within the spread
    that seeds give (test NDCG@10 of this data varies by about 0.01-0.02 from seed to seed)."""
    split = small_split(tmp_path, 200, 120, 8000, "random_holdout")
    test = build_eval_inputs(split, "test", 10)
    quality = {}
    for devices, strategy in [(1, "auto"), (2, "ddp_spawn")]:
        run_dir = tmp_path / f"run-{devices}"
        trainer_cfg = TrainerConfig(
            max_epochs=12, patience=50, num_threads=1, devices=devices, strategy=strategy, seed=1
        )
        result = train_model("bpr", split, BPR, trainer_cfg, run_dir)
        assert result.processes == devices and result.epochs == 12 and result.epoch_seconds > 0
        assert result.checkpoint.exists() and result.best_valid_ndcg10 > 0
        artifact = load_model_artifact(run_dir / "model")
        quality[devices] = (result.best_valid_ndcg10, evaluate_module(artifact.module, test, [10], 256))

    popularity = train_model("popularity", split, {}, TrainerConfig(num_threads=1), tmp_path / "pop")
    popularity_test = evaluate_module(load_model_artifact(tmp_path / "pop" / "model").module, test, [10], 256)
    (valid_1, test_1), (valid_2, test_2) = quality[1], quality[2]
    assert valid_2 == pytest.approx(valid_1, abs=0.05)
    assert test_2["ndcg@10"] == pytest.approx(test_1["ndcg@10"], abs=0.05)
    assert test_2["ndcg@10"] > popularity_test["ndcg@10"] + 0.05 and valid_2 > popularity.best_valid_ndcg10


def test_a_misspelt_strategy_or_accelerator_is_refused_with_the_nearest_name() -> None:
    from pydantic import ValidationError

    assert TrainerConfig(devices=2, strategy="ddp_spawn").strategy == "ddp_spawn"
    with pytest.raises(ValidationError, match="unknown strategy 'dpp_spawn' \\(did you mean 'ddp_spawn'"):
        TrainerConfig(devices=2, strategy="dpp_spawn")
    with pytest.raises(ValidationError, match="unknown accelerator 'cdua' \\(did you mean 'cuda'"):
        TrainerConfig(accelerator="cdua")
