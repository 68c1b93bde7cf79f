"""A Reporter for a device with no MQTT section: every message becomes one JSON line in the log."""

from __future__ import annotations

import logging

from edge_agent.messages import Envelope
from edge_agent.reporting.base import SinkReporter

logger = logging.getLogger("gridedge.report")


class LogReporter(SinkReporter):
    """Writes what would be published to the ``gridedge.report`` logger, so a technician can follow it."""

    def __init__(self, site: str, device: str, telemetry_per_s: float = 1.0) -> None:
        super().__init__(site, device, telemetry_per_s)

    def emit(self, message: Envelope) -> None:
        """Log the message as one JSON line."""
        logger.info("%s", message.model_dump_json(exclude_none=True))
