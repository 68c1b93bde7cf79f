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
    with pytest.raises(ConfigError, match=r"anomaly\.stale_run_steps \(20\) must fit in features\.input_window"):
        prepare_task(parse_config(tiny_dict("w3_anomaly", anomaly={"stale_run_steps": 20})))
    relaxed = parse_config(tiny_dict("w3_anomaly", anomaly={"stale_run_steps": 20, "stale_rule_in_detector": False}))
    assert relaxed.anomaly is not None and relaxed.anomaly.stale_run_steps == 20


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
