"""The Reporter protocol the agent loop calls, the message builder, and an in-process sink for tests."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Protocol, runtime_checkable

from edge_agent.messages import (
    AlertContent,
    AlertMessage,
    DeviceState,
    Envelope,
    ModelInfo,
    OutboxStats,
    StatusMessage,
    SummaryContent,
    SummaryMessage,
    TelemetryContent,
    TelemetryMessage,
)


@runtime_checkable
class Reporter(Protocol):
    """Where the agent sends what it has to say; MQTT in production, memory in tests."""

    def publish_status(
        self, state: DeviceState, reason: str | None = None, model: ModelInfo | None = None
    ) -> None:
        """Set and publish the device state (retained); it is also the birth message on reconnect."""

    def publish_summary(self, content: SummaryContent) -> None:
        """Publish a periodic summary; the reporter adds outbox depth and drop counts."""

    def publish_alert(self, content: AlertContent) -> None:
        """Publish an alert now."""

    def publish_telemetry(self, content: TelemetryContent) -> bool:
        """Publish raw samples unless disabled or rate-limited; returns whether it was accepted."""

    def close(self) -> None:
        """Say goodbye ("stopped") and release resources; pending messages stay in the outbox."""


class MessageBuilder:
    """Wraps agent content into wire messages with the envelope of one device."""

    def __init__(self, site: str, device: str, agent_version: str | None = None):
        self.site = site
        self.device = device
        self.agent_version = agent_version

    def _envelope(self, seq: int) -> dict[str, object]:
        return {"site": self.site, "device": self.device, "seq": seq}

    def status(
        self, seq: int, state: DeviceState, reason: str | None, model: ModelInfo | None
    ) -> StatusMessage:
        """A status message."""
        return StatusMessage.model_validate(
            {
                **self._envelope(seq),
                "state": state,
                "reason": reason,
                "model": model,
                "agent_version": self.agent_version,
            }
        )

    def summary(self, seq: int, content: SummaryContent, outbox: OutboxStats) -> SummaryMessage:
        """A summary message carrying the given outbox state."""
        return SummaryMessage.model_validate({**dict(content), **self._envelope(seq), "outbox": outbox})

    def alert(self, seq: int, content: AlertContent) -> AlertMessage:
        """An alert message."""
        return AlertMessage.model_validate({**dict(content), **self._envelope(seq)})

    def telemetry(self, seq: int, content: TelemetryContent) -> TelemetryMessage:
        """A telemetry message."""
        return TelemetryMessage.model_validate({**dict(content), **self._envelope(seq)})


class RateLimiter:
    """Accepts at most ``per_s`` events a second (token bucket with a burst of one second)."""

    def __init__(self, per_s: float):
        self.per_s = per_s
        self._tokens = per_s
        self._last = time.monotonic()

    def take(self) -> bool:
        """Consume a token if one is available."""
        now = time.monotonic()
        self._tokens = min(self.per_s, self._tokens + (now - self._last) * self.per_s)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class SinkReporter:
    """A Reporter that builds each message and hands it to :meth:`emit` at once: nothing is ever pending.

    Subclasses say where a message goes (a list, the log); numbering, rate limits and the goodbye are here.
    """

    def __init__(self, site: str, device: str, telemetry_per_s: float) -> None:
        self._builder = MessageBuilder(site, device)
        self._seq = itertools.count()
        self._telemetry = RateLimiter(telemetry_per_s)
        self.state: DeviceState = "online"
        self.closed = False

    def emit(self, message: Envelope) -> None:
        """Deliver one built message."""
        raise NotImplementedError

    def publish_status(
        self, state: DeviceState, reason: str | None = None, model: ModelInfo | None = None
    ) -> None:
        """Emit a status message and remember the state."""
        self.state = state
        self.emit(self._builder.status(next(self._seq), state, reason, model))

    def publish_summary(self, content: SummaryContent) -> None:
        """Emit a summary (outbox depth 0: nothing is ever pending in memory)."""
        self.emit(self._builder.summary(next(self._seq), content, OutboxStats(depth=0, bytes=0)))

    def publish_alert(self, content: AlertContent) -> None:
        """Emit an alert."""
        self.emit(self._builder.alert(next(self._seq), content))

    def publish_telemetry(self, content: TelemetryContent) -> bool:
        """Emit telemetry unless rate-limited."""
        if not self._telemetry.take():
            return False
        self.emit(self._builder.telemetry(next(self._seq), content))
        return True

    def close(self) -> None:
        """Emit the goodbye status."""
        self.publish_status("stopped", "agent stopped")
        self.closed = True


class MemoryReporter(SinkReporter):
    """A Reporter that keeps every message in a list: the agent's tests read what it would publish."""

    def __init__(self, site: str = "test-site", device: str = "test-device", telemetry_per_s: float = 1e9):
        super().__init__(site, device, telemetry_per_s)
        self._lock = threading.Lock()
        self.messages: list[Envelope] = []

    def emit(self, message: Envelope) -> None:
        """Keep the message."""
        with self._lock:
            self.messages.append(message)

    def of_kind(self, kind: str) -> list[Envelope]:
        """The recorded messages of one kind (``status``, ``summary`` ...), in order."""
        with self._lock:
            return [m for m in self.messages if getattr(m, "kind", None) == kind]
