"""The trigger forms: each DAG family has its own, and every field maps onto a config key that exists."""

from __future__ import annotations

from orchestration.dag_params import MONITOR_PARAMS, PARAM_TO_CONFIG, PIPELINE_PARAMS, overrides_from_params
from pipeline.config import load_config


def test_every_form_field_maps_onto_an_existing_config_key() -> None:
    cfg = load_config().model_dump()
    assert set(PIPELINE_PARAMS) | set(MONITOR_PARAMS) <= set(PARAM_TO_CONFIG)
    for name in PARAM_TO_CONFIG:  # the tuning DAGs' own fields (training_seeds) included
        node = cfg
        for part in PARAM_TO_CONFIG[name].split("."):
            assert part in node, (name, PARAM_TO_CONFIG[name])
            node = node[part]


def test_the_monitor_form_is_about_monitoring_not_training() -> None:
    assert set(MONITOR_PARAMS) == {
        "deployment",
        "current_window_share",
        "data_drift_share_threshold",
        "drift_share_threshold",
        "min_current_ndcg10",
        "missing_share_increase",
        "max_users",
    }
    assert not {"max_epochs", "split_protocol", "hparams"} & set(MONITOR_PARAMS)
    assert not {k for k in PIPELINE_PARAMS if PARAM_TO_CONFIG[k].startswith("monitoring.")}
    defaults = {name: param.value for name, param in MONITOR_PARAMS.items()}
    assert (
        overrides_from_params({**defaults, "current_window_share": 0.2})["monitoring.current_window_share"]
        == 0.2
    )
