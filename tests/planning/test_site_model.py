"""The site model refuses what no plan could hold, naming the field."""

from __future__ import annotations

import copy

import pytest

from edge_agent.errors import ConfigError
from edge_agent.planning.site_model import load_site_model, parse_site_model

from .conftest import EXAMPLE, example_raw


def test_example_loads_with_its_values() -> None:
    site = load_site_model(EXAMPLE)
    assert site.battery.capacity_kwh == 10.0
    assert site.generator is not None and site.generator.min_power_kw == pytest.approx(1.5)
    assert site.grid is None
    assert site.min_run_steps == 4 and site.min_rest_steps == 4
    assert site.battery.round_trip_efficiency == pytest.approx(0.9025)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("battery", "capacity_kwh"), 0, "battery.capacity_kwh"),
        (("battery", "soc_min_fraction"), 0.97, "soc_min_fraction 0.97 must be below soc_max_fraction"),
        (("battery", "charge_power_max_kw"), -1, "battery.charge_power_max_kw"),
        (("battery", "discharge_power_max_kw"), -0.5, "battery.discharge_power_max_kw"),
        (("battery", "charge_efficiency"), 1.2, "battery.charge_efficiency"),
        (("generator", "rated_power_kw"), -5, "generator.rated_power_kw"),
        (("generator", "min_run_minutes"), -10, "generator.min_run_minutes"),
        (("generator", "fuel_cost_per_kwh"), -0.1, "generator.fuel_cost_per_kwh"),
        (("loads", "sheddable_fraction"), 1.5, "loads.sheddable_fraction"),
        (("battery", "unknown_field_kwh"), 1, "battery.unknown_field_kwh"),
    ],
)
def test_bad_values_are_refused_naming_the_field(path: tuple[str, str], value: object, field: str) -> None:
    raw = copy.deepcopy(example_raw())
    raw[path[0]][path[1]] = value
    with pytest.raises(ConfigError) as caught:
        parse_site_model(raw, "site.yaml")
    assert field in str(caught.value)
    assert "site.yaml" in str(caught.value)


def test_grid_tariffs_validated() -> None:
    raw = copy.deepcopy(example_raw())
    raw["grid"] = {"import_limit_kw": -1, "import_tariff_per_kwh": 0.3}
    with pytest.raises(ConfigError, match=r"grid\.import_limit_kw"):
        parse_site_model(raw)
    raw["grid"] = {"import_limit_kw": 5, "import_tariff_per_kwh": [0.3] * 23}
    with pytest.raises(ConfigError, match="24 hourly values, got 23"):
        parse_site_model(raw)
    raw["grid"] = {"import_limit_kw": 5, "import_tariff_per_kwh": 0.2, "export_tariff_per_kwh": 0.3}
    with pytest.raises(ConfigError, match="exceeds import_tariff_per_kwh"):
        parse_site_model(raw)
    raw["grid"] = {"import_limit_kw": 5, "import_tariff_per_kwh": [0.1] * 8 + [0.4] * 16}
    assert parse_site_model(raw).grid is not None


def test_rule_thresholds_must_leave_hysteresis() -> None:
    raw = copy.deepcopy(example_raw())
    raw["fallback"]["generator_stop_soc_fraction"] = 0.25
    with pytest.raises(ConfigError, match=r"must be above battery\.reserve_soc_fraction"):
        parse_site_model(raw)
    raw = copy.deepcopy(example_raw())
    raw["fallback"]["restore_above_soc_fraction"] = 0.1
    with pytest.raises(ConfigError, match="shed_below_soc_fraction must be below"):
        parse_site_model(raw)


def test_missing_file_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="not found"):
        load_site_model(tmp_path / "absent.yaml")
