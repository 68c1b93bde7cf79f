"""A Reporter for a device with no MQTT section: every message becomes one JSON line in the log."""

from __future__ import annotations

import itertools
import logging

from edge_agent.messages import (
    AlertContent,
    DeviceState,
    Envelope,
    ModelInfo,
    OutboxStats,
    SummaryContent,
    TelemetryContent,
)
from edge_agent.reporting.base import MessageBuilder, RateLimiter

logger = logging.getLogger("gridedge.report")


class LogReporter:
    """Writes what would be published to the ``gridedge.report`` logger, so a technician can follow it."""

    def __init__(self, site: str, device: str, telemetry_per_s: float = 1.0) -> None:
        self._builder = MessageBuilder(site, device)
        self._seq = itertools.count()
        self._telemetry = RateLimiter(telemetry_per_s)

    def _log(self, message: Envelope) -> None:
        logger.info("%s", message.model_dump_json(exclude_none=True))

    def publish_status(self, state: DeviceState, reason: str | None = None, model: ModelInfo | None = None) -> None:
        """Log a status message."""
        self._log(self._builder.status(next(self._seq), state, reason, model))

    def publish_summary(self, content: SummaryContent) -> None:
        """Log a summary."""
        self._log(self._builder.summary(next(self._seq), content, OutboxStats(depth=0, bytes=0)))

    def publish_alert(self, content: AlertContent) -> None:
        """Log an alert."""
        self._log(self._builder.alert(next(self._seq), content))

    def publish_telemetry(self, content: TelemetryContent) -> bool:
        """Log telemetry unless rate-limited."""
        if not self._telemetry.take():
            return False
        self._log(self._builder.telemetry(next(self._seq), content))
        return True

    def close(self) -> None:
        """Log the goodbye status."""
        self.publish_status("stopped", "agent stopped")
