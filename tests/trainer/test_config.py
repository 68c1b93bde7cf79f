"""Task configs: shipped ones validate, the schema is current, bad configs fail early and say why."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from edge_agent.errors import ConfigError
from gridedge.trainer.config import SCHEMA_PATH, TaskConfig, load_config, parse_config, schema_json
from gridedge.trainer.tasks import prepare_task

SHIPPED = ["w1_load", "w2_pv", "w3_anomaly"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DictBuilder = Callable[..., dict[str, Any]]


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == schema_json(), (
        "configs/task.schema.json is stale: regenerate it with "
        "`python -c 'from gridedge.trainer.config import write_schema; write_schema()'`"
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate_against_model_and_schema(name: str, shipped: Callable[[str], dict[str, Any]]) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(config, TaskConfig)
    jsonschema.validate(shipped(name), json.loads(SCHEMA_PATH.read_text()))


def test_unknown_field_is_named(tiny_dict: DictBuilder) -> None:
    with pytest.raises(ConfigError, match=r"training\.epoch"):
        parse_config(tiny_dict("w1_load", training={"epoch": 3}))


def test_stale_run_must_fit_in_the_window(tiny_dict: DictBuilder) -> None:
    with pytest.raises(ConfigError, match=r"anomaly\.stale_run \(5h\) must fit in features\.input_window \(4h\)"):
        prepare_task(parse_config(tiny_dict("w3_anomaly", anomaly={"stale_run": "5h"})))
    relaxed = parse_config(tiny_dict("w3_anomaly", anomaly={"stale_run": "5h", "stale_rule_in_detector": False}))
    assert relaxed.anomaly is not None and relaxed.anomaly.stale_run == "5h"


def test_target_must_be_an_input_channel(tiny_dict: DictBuilder) -> None:
    with pytest.raises(ConfigError, match=r"features\.targets"):
        parse_config(tiny_dict("w1_load", features={"targets": ["Voltage_typo"]}))


def test_unknown_column_names_field_and_choices(tiny: Callable[..., TaskConfig]) -> None:
    config = tiny("w1_load")
    config.features.past[1].column = "Global_reactive_pwr"
    with pytest.raises(ConfigError, match=r"features\.past\[1\]\.column.*Global_reactive_power"):
        prepare_task(config)


def test_too_few_rows_for_window(tiny: Callable[..., TaskConfig]) -> None:
    config = tiny("w1_load", data={"start": "2007-01-01", "end": "2007-01-05"})
    with pytest.raises(
        ConfigError, match=r"train split has no usable origin: 0 of \d+ origins .*window or horizon outside"
    ):
        prepare_task(config)


def test_horizon_longer_than_data(tiny: Callable[..., TaskConfig]) -> None:
    config = tiny("w1_load", features={"horizon": "300d"})
    with pytest.raises(ConfigError, match=r"input_window \+ horizon.*longer than the .* rows"):
        prepare_task(config)


def test_nan_only_channel(tiny: Callable[..., TaskConfig], tmp_path: Path) -> None:
    source = CONFIGS.parent / "data"
    # A data file whose PV power channel was never recorded.
    with gzip.open(source / "w2_pv_system50_15min.csv.gz", "rt") as handle:
        lines = handle.read().splitlines()
    blanked = [lines[0]] + [",".join([row.split(",")[0], "", *row.split(",")[2:]]) for row in lines[1:]]
    with gzip.open(tmp_path / "w2_pv_system50_15min.csv.gz", "wt") as handle:
        handle.write("\n".join(blanked) + "\n")
    with pytest.raises(ConfigError, match=r"features\.past\[0\] \('ac_power'\) has no valid value"):
        prepare_task(tiny("w2_pv", data={"path": str(tmp_path / "w2_pv_system50_15min.csv.gz")}))


def test_missing_config_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(["not", "a", "mapping"]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_pv_forecast_needs_the_site_location_for_its_night_rule(tiny_dict: DictBuilder) -> None:
    data = tiny_dict(
        "w2_pv",
        features={"past": [{"column": "ac_power", "min_value": 0, "max_value": 3500}], "known_future": []},
        baselines={"clear_sky_channel": None},
    )
    del data["data"]["location"]
    with pytest.raises(ConfigError, match=r"data\.location: a pv_forecast needs the site's latitude/longitude"):
        prepare_task(parse_config(data))


@pytest.mark.parametrize(
    ("section", "old", "new"),
    [
        ("anomaly", "stale_run_steps", "stale_run"),
        ("anomaly", "score_steps", "score_span"),
        ("anomaly", "train_stride_steps", "train_stride"),
        ("anomaly", "zscore_window", "zscore_window"),
        ("features.gap_policy", "max_gap_steps", "max_gap"),
    ],
)
def test_row_counts_are_refused_naming_the_duration_field(
    tiny_dict: DictBuilder, section: str, old: str, new: str
) -> None:
    edit: dict[str, Any] = {old: 4}
    if section == "features.gap_policy":
        data = tiny_dict("w3_anomaly", features={"gap_policy": edit})
    else:
        data = tiny_dict("w3_anomaly", anomaly=edit)
    with pytest.raises(ConfigError, match=rf"{section}\.{old} counted rows; write {section}\.{new} as a duration"):
        parse_config(data)


def test_anomaly_and_gap_durations_become_samples_of_the_data_step(tiny_dict: DictBuilder) -> None:
    edits = {"score_span": "30min", "train_stride": "2h", "zscore_window": "4h", "stale_run": "1h"}
    prepared = prepare_task(parse_config(tiny_dict("w3_anomaly", anomaly=edits)))
    steps = prepared.anomaly_steps
    assert steps is not None
    assert (steps.score, steps.train_stride, steps.zscore_window, steps.stale_run) == (2, 8, 16, 4)
    # A gap limit is a limit: 40 min at a 15 min step fills gaps of up to two samples.
    assert prepared.spec.gap_policy.max_gap_steps == 2
    loose = prepare_task(parse_config(tiny_dict("w3_anomaly", features={"gap_policy": {"max_gap": "40min"}})))
    assert loose.spec.gap_policy.max_gap_steps == 2
    with pytest.raises(ConfigError, match=r"anomaly\.score_span: 20min is not a whole number of 900 s steps"):
        prepare_task(parse_config(tiny_dict("w3_anomaly", anomaly={"score_span": "20min"})))
    with pytest.raises(ConfigError, match=r"anomaly\.stale_run: 15min is 1 sample\(s\); it needs at least two"):
        prepare_task(parse_config(tiny_dict("w3_anomaly", anomaly={"stale_run": "15min"})))
