"""Alert latches: each concern of the agent raises one alert when something goes wrong and one when it recovers.

A sensor that stays broken for a day at a 1 s cadence must not send 86,400 alerts, and one concern must
never reset another's memory of what it already reported: every concern (failing sources, out-of-range
channels, anomalies, the model's health) owns its own :class:`AlertLatch`, keyed by what is concerned
(a source, a device, a channel).
"""

from __future__ import annotations

from typing import Literal

from edge_agent.messages import AlertContent
from edge_agent.reporting.base import Reporter

Severity = Literal["info", "warning", "critical"]


class AlertLatch:
    """Raises ``code`` once per key until that key is cleared, then ``clear_code`` once."""

    def __init__(self, reporter: Reporter, code: str, clear_code: str, severity: Severity = "warning") -> None:
        self.reporter = reporter
        self.code = code
        self.clear_code = clear_code
        self.severity = severity
        self._raised: set[str] = set()

    @property
    def raised(self) -> frozenset[str]:
        """The keys whose alert is raised and not yet cleared."""
        return frozenset(self._raised)

    def raise_once(
        self,
        key: str,
        message: str,
        channel: str | None = None,
        value: float | None = None,
        threshold: float | None = None,
    ) -> bool:
        """Publish the alert unless ``key`` is already raised; returns whether it was published."""
        if key in self._raised:
            return False
        self._raised.add(key)
        alert = AlertContent(
            severity=self.severity, code=self.code, message=message, channel=channel, value=value, threshold=threshold
        )
        self.reporter.publish_alert(alert)
        return True

    def clear_once(self, key: str, message: str, channel: str | None = None) -> bool:
        """Publish the clear if ``key`` is raised; returns whether it was published."""
        if key not in self._raised:
            return False
        self._raised.discard(key)
        self.reporter.publish_alert(
            AlertContent(severity="info", code=self.clear_code, message=message, channel=channel)
        )
        return True
