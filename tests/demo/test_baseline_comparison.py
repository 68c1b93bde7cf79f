"""The demo report names the model's standing against every baseline, including the ones that beat it."""

from __future__ import annotations

from gridedge.demo import compare_with_baselines


def test_a_stronger_baseline_is_named_as_best() -> None:
    lines = compare_with_baselines(0.40, {"seasonal_naive_day": 0.518, "lightgbm": 0.36, "persistence": 0.7}, "kW")
    assert lines[0] == "- test MAE 0.400 kW, against every baseline on the same test windows:"
    assert lines[1] == "  - lightgbm: 0.360 kW (model 11.1 % worse)"
    assert lines[2] == "  - seasonal_naive_day: 0.518 kW (model 22.8 % better)"
    assert lines[-1].startswith("- best: lightgbm (0.360 kW), its MAE 10.0 % below the model's")


def test_the_model_is_named_best_only_when_it_beats_every_baseline() -> None:
    lines = compare_with_baselines(0.30, {"seasonal_naive_day": 0.5, "lightgbm": 0.36}, "kW")
    assert lines[-1] == "- best: the model; the strongest baseline, lightgbm, is 0.360 kW"


def test_a_baseline_that_did_not_run_is_said_so() -> None:
    lines = compare_with_baselines(0.30, {"seasonal_naive_day": 0.5}, "kW", ("lightgbm (skipped by --quick)",))
    assert "  - lightgbm (skipped by --quick): not run" in lines
    assert lines[-1] == "- best: the model; the strongest baseline, seasonal_naive_day, is 0.500 kW"
