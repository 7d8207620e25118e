"""The pipeline's declaration (orchestration.flow): consistent, and the one thing runners are built from."""

from __future__ import annotations

import inspect

from orchestration.flow import DATA_STAGES, MODEL_PIPELINE, STAGES, run_stages


def test_every_stage_takes_what_it_declares_from_earlier_stages() -> None:
    seen: list[str] = []
    for stage in MODEL_PIPELINE:
        assert set(stage.inputs) | set(stage.after) <= set(seen), stage.name
        parameters = list(inspect.signature(stage.function).parameters)
        assert parameters[:2] == ["model", "run_id"], stage.name
        # then one positional parameter per declared input, then overrides (and hparams)
        assert len(parameters) - 2 - 1 - int(stage.takes_hparams) == len(stage.inputs), (
            stage.name,
            parameters,
        )
        assert "overrides" in parameters and ("hparams" in parameters) == stage.takes_hparams
        assert stage.doc, stage.name
        seen.append(stage.name)
    assert DATA_STAGES == tuple(s.name for s in MODEL_PIPELINE[:4]) and set(DATA_STAGES) <= set(STAGES)


def test_run_stages_runs_the_declaration_in_order(monkeypatch) -> None:
    calls: list[tuple] = []

    def fake(name):
        def stage(model, run_id, *paths, overrides=None, hparams=None):
            calls.append((name, model, run_id, paths, overrides, hparams))
            return f"{name}.json"

        return stage

    import orchestration.stages as stages_module

    for stage in MODEL_PIPELINE:
        monkeypatch.setattr(stages_module, stage.name, fake(stage.name))
    outputs = run_stages("bpr", "r1", {"a": 1}, {"lr": 0.1}, names=("ingest", "validate", "features"))
    assert list(outputs) == ["ingest", "validate", "features"]
    assert calls[1] == ("validate", "bpr", "r1", ("ingest.json",), {"a": 1}, None)
    assert calls[0][-1] == {"lr": 0.1}  # ingest takes the run's hyperparameters (run_config.json)
    later = run_stages("bpr", "r1", names=("drift",), outputs={"split": "s.json", "train": "t.json"})
    assert later["drift"] == "drift.json" and calls[-1][3] == ("s.json", "t.json")
