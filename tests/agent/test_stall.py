"""A site whose window stops receiving sample periods is degraded with one alert (issue 12 item 6)."""

from __future__ import annotations

from typing import Any

from edge_agent.health import HealthReasons
from edge_agent.reporting.base import MemoryReporter
from edge_agent.stall import DecisionStallWatch


def test_no_sample_period_for_longer_than_the_limit_raises_one_alert_and_a_reason(make_clock: Any) -> None:
    monotonic = make_clock(0.0)
    reporter = MemoryReporter()
    reasons = HealthReasons()
    watch = DecisionStallWatch(reporter, limit_s=60.0, reasons=reasons, monotonic=monotonic)
    watch.check("clock readings rejected: 0")
    assert watch.reason() is None
    monotonic.now = 61.0
    for _ in range(5):
        watch.check("clock readings rejected: 501")
    assert [a.code for a in reporter.of_kind("alert")] == ["decisions-stalled"]
    reason = watch.reason()
    assert reason is not None and "no sample period for 61 s" in reason and "rejected: 501" in reason
    assert reasons.state() == ("degraded", f"decisions: {reason}")
    watch.progress()
    watch.check("")
    assert watch.reason() is None and reasons.state() == ("online", None)
    assert [a.code for a in reporter.of_kind("alert")] == ["decisions-stalled", "decisions-resumed"]
