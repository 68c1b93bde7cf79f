"""The fallback rule: reserve, generator hysteresis with min run/rest, shedding, same plan shape."""

from __future__ import annotations

import numpy as np

from edge_agent.planning.dispatch import SiteState, limit_violations
from edge_agent.planning.rule import backstop_start, rule_decision, rule_dispatch
from edge_agent.planning.site_model import SiteModel

T = 1_210_000_000 + 900 * np.arange(96, dtype=np.int64)


def test_generator_starts_below_reserve_and_stops_after_min_run(offgrid_site: SiteModel) -> None:
    assert rule_decision(offgrid_site, SiteState(0.29)).generator_on
    assert not rule_decision(offgrid_site, SiteState(0.31)).generator_on
    # Just stopped: rests first even though the SoC is low.
    assert not rule_decision(offgrid_site, SiteState(0.2, generator_on=False, generator_steps_in_state=1)).generator_on
    # Charged enough but ran only 2 of 4 steps: keeps running.
    assert rule_decision(offgrid_site, SiteState(0.85, generator_on=True, generator_steps_in_state=2)).generator_on
    assert not rule_decision(offgrid_site, SiteState(0.85, generator_on=True, generator_steps_in_state=4)).generator_on


def test_shedding_has_hysteresis(offgrid_site: SiteModel) -> None:
    assert rule_decision(offgrid_site, SiteState(0.19)).shedding
    assert rule_decision(offgrid_site, SiteState(0.3, shedding=True)).shedding
    assert not rule_decision(offgrid_site, SiteState(0.3, shedding=False)).shedding
    assert not rule_decision(offgrid_site, SiteState(0.45, shedding=True)).shedding


def test_rule_plan_projects_persistent_load_within_limits(offgrid_site: SiteModel) -> None:
    state = SiteState(0.35, measured_load_kw=2.0, measured_pv_kw=0.0)
    plan = rule_dispatch(offgrid_site, state, T, reason="test")
    assert plan.source == "rule" and plan.reason == "test" and plan.steps == 96
    assert plan.generator_on.any()  # the battery drains below the reserve and the generator starts
    assert plan.unserved_kw.sum() == 0
    assert limit_violations(plan, offgrid_site, state) == []


def test_rule_without_generator_sheds_to_protect_the_battery(offgrid_site: SiteModel) -> None:
    site = offgrid_site.model_copy(update={"generator": None})
    state = SiteState(0.3, measured_load_kw=2.0)
    plan = rule_dispatch(site, state, T, reason="no model")
    assert not plan.generator_on.any()
    assert plan.shed_kw.max() > 0
    assert plan.soc_fraction.min() >= site.battery.soc_min_fraction - 1e-9
    assert limit_violations(plan, site, state) == []


def test_the_backstop_starts_a_rested_generator_at_its_soc_only(offgrid_site: SiteModel) -> None:
    level = offgrid_site.backstop_soc_fraction
    assert offgrid_site.battery.soc_min_fraction < level <= offgrid_site.battery.reserve_soc_fraction
    rested = offgrid_site.min_rest_steps
    assert backstop_start(offgrid_site, SiteState(soc_fraction=level, generator_steps_in_state=rested))
    assert not backstop_start(offgrid_site, SiteState(soc_fraction=level + 0.01, generator_steps_in_state=rested))
    assert not backstop_start(offgrid_site, SiteState(soc_fraction=level, generator_steps_in_state=rested - 1))
    assert not backstop_start(offgrid_site, SiteState(soc_fraction=level, generator_on=True))
    without = offgrid_site.model_copy(update={"generator": None})
    assert not backstop_start(without, SiteState(soc_fraction=0.0))
