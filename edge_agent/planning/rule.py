"""The fallback rule: what the site does when there is no forecast to plan on (missing or degraded model).

Conservative and forecast-free, on the measured state only:

* the battery inverter covers the measured net load within its limits (it is grid-forming: see
  :func:`~edge_agent.planning.dispatch.balance_step`);
* below the battery's reserve SoC the generator starts (after its minimum rest) and runs at rated power,
  charging the battery, until the SoC reaches ``generator_stop_soc_fraction`` and its minimum run is over;
* below ``shed_below_soc_fraction`` the sheddable circuits are switched off until the SoC is back above
  ``restore_above_soc_fraction`` (hysteresis, so relays do not chatter).

:func:`rule_dispatch` returns the same :class:`DispatchPlan` shape as the planner (``source="rule"``): the
first step is the decision, the rest projects it on persistent measured load and PV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.planning.dispatch import DispatchPlan, SiteState, balance_step, next_state, plan_from_outcomes
from edge_agent.planning.site_model import SiteModel


@dataclass(frozen=True)
class RuleDecision:
    """The rule's setpoints for the next step."""

    generator_on: bool
    generator_setpoint_kw: float
    shedding: bool


def rule_decision(site: SiteModel, state: SiteState) -> RuleDecision:
    """Generator and shedding for the next step from the measured SoC, with hysteresis and min run/rest."""
    soc, rule, generator = state.soc_fraction, site.fallback, site.generator
    generator_on = False
    if generator is not None:
        if state.generator_on:
            may_stop = state.generator_steps_in_state >= site.min_run_steps
            generator_on = not (may_stop and soc >= rule.generator_stop_soc_fraction)
        else:
            may_start = state.generator_steps_in_state >= site.min_rest_steps
            generator_on = may_start and soc < site.battery.reserve_soc_fraction
    threshold = rule.restore_above_soc_fraction if state.shedding else rule.shed_below_soc_fraction
    shedding = soc < threshold
    setpoint = generator.rated_power_kw if generator is not None and generator_on else 0.0
    return RuleDecision(generator_on=generator_on, generator_setpoint_kw=setpoint, shedding=shedding)


def rule_dispatch(site: SiteModel, state: SiteState, timestamps_utc: NDArray[np.int64], reason: str) -> DispatchPlan:
    """The rule's plan over ``timestamps_utc``, projected on persistent measured load and PV."""
    load = max(state.measured_load_kw or 0.0, 0.0)
    pv = max(state.measured_pv_kw or 0.0, 0.0)
    outcomes, on_flags, current = [], [], state
    for _ in timestamps_utc:
        decision = rule_decision(site, current)
        shed_request = site.loads.sheddable_fraction * load if decision.shedding else 0.0
        outcome = balance_step(
            site, current.soc_fraction, load, pv, decision.generator_on, decision.generator_setpoint_kw, shed_request
        )
        outcomes.append(outcome)
        on_flags.append(decision.generator_on)
        current = next_state(current, outcome, decision.generator_on, decision.shedding)
    steps = len(timestamps_utc)
    return plan_from_outcomes(
        timestamps_utc,
        site.step_hours,
        np.full(steps, load),
        np.full(steps, pv),
        np.asarray(on_flags, dtype=bool),
        outcomes,
        source="rule",
        status="fallback",
        reason=reason,
    )


def backstop_start(site: SiteModel, state: SiteState) -> bool:
    """True when a stopped generator must start now, whatever the plan says: the SoC is at the backstop level
    and the generator's minimum rest is over."""
    if site.generator is None or state.generator_on:
        return False
    rested = state.generator_steps_in_state >= site.min_rest_steps
    return rested and state.soc_fraction <= site.backstop_soc_fraction
