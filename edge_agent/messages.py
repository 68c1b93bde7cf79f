"""MQTT payloads of API v1: pydantic models, topics, and the JSON Schemas published in ``docs/mqtt``.

Every message a device publishes shares the :class:`Envelope` (schema version, message id, site, device,
per-device sequence, UTC timestamp, ``is_historical``). A value that is not known is ``null``, never 0:
fields that can be unknown are typed ``X | None`` and default to ``None``.

Wire models list the content base first so that, in pydantic's field order, the envelope fields come
first in every payload. The agent fills *content* models (:class:`SummaryContent`, :class:`AlertContent`,
:class:`TelemetryContent`); the reporter wraps them into wire messages with the envelope and outbox state.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from edge_agent.yamlconfig import StrictModel

SCHEMA_VERSION: Literal["1.0"] = "1.0"
TOPIC_ROOT = "gridedge/v1"

DeviceState = Literal["online", "offline", "degraded", "stopped"]

# Bounds every receiver can store: a sequence fits a signed 64-bit column (PostgreSQL BIGINT, SQLite
# INTEGER), counters stay exact in a double, and no text carries NUL (PostgreSQL text cannot hold it).
MAX_SEQ = 2**63 - 1
MAX_COUNT = 2**53 - 1
NO_NUL = r"^[^\x00]*$"
MAX_CHANNELS = 256
MAX_FORECAST_STEPS = 10_000
MAX_QUANTILE_LEVELS = 16
# MQTT topic levels must not contain wildcards or separators; we also keep them short and shell-safe.
TOPIC_LEVEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MESSAGE_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"

Text = Annotated[str, Field(max_length=4096, pattern=NO_NUL)]
Name = Annotated[str, Field(max_length=128, pattern=NO_NUL)]
ChannelName = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]

# How outbox overflow evicts: lowest priority first (telemetry), alerts last.
DROP_PRIORITY: dict[str, int] = {"telemetry": 0, "summary": 1, "alert": 2}


def device_topic(site: str, device: str, leaf: str) -> str:
    """The topic of a device-level leaf (``status``, ``summary``, ``cmd/ping`` ...)."""
    return f"{TOPIC_ROOT}/{site}/{device}/{leaf}"


def new_message_id() -> str:
    """A unique message id (UUID4, hex): receivers deduplicate on it."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class _Message(StrictModel):
    # NaN and infinities are refused: JSON has no spelling for them and a store cannot compare them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Envelope(_Message):
    """Fields every device message carries."""

    schema_version: Literal["1.0"] = Field(SCHEMA_VERSION)
    """Payload schema version; receivers reject majors they do not know."""
    message_id: str = Field(default_factory=new_message_id, pattern=MESSAGE_ID_PATTERN)
    """Unique id of this message; a replay keeps it, receivers deduplicate on it."""
    site: str = Field(..., pattern=TOPIC_LEVEL_PATTERN)
    """Site id (same as the topic level)."""
    device: str = Field(..., pattern=TOPIC_LEVEL_PATTERN)
    """Device id (same as the topic level)."""
    seq: int = Field(..., ge=0, le=MAX_SEQ)
    """Per-device sequence number; increases across restarts. Gaps are normal (status messages and wills that were never
    sent consume numbers)."""
    ts: AwareDatetime = Field(default_factory=utc_now)
    """When the message was created, UTC."""
    is_historical: bool = Field(False)
    """True when the message is replayed from the outbox instead of sent live."""

    @field_validator("ts")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


class ModelInfo(_Message):
    """The model a device is running."""

    name: Name | None = Field(None)
    """Model name from the bundle manifest."""
    version: Name | None = Field(None)
    """Model semantic version."""
    runtime: Name | None = Field(None)
    """Runtime executing it (tflite, onnx, baseline ...)."""
    precision: Name | None = Field(None)
    """Artefact precision (fp32, int8 ...)."""


class StatusMessage(Envelope):
    """Retained device status: birth ``online`` on every connect, will ``offline``, ``degraded``,
    ``stopped`` on a clean shutdown."""

    kind: Literal["status"] = "status"
    state: DeviceState = Field(...)
    """online, degraded (running on the fallback), stopped (the agent shut down cleanly) or offline (the connection was
    lost: the broker published the last will)."""
    reason: Text | None = Field(None)
    """Why the state was entered, when known."""
    model: ModelInfo | None = Field(None)
    """Model in use, when known."""
    agent_version: Name | None = Field(None)
    """gridedge agent version."""


class ChannelAggregate(_Message):
    """Aggregates of one input channel over the summary window; null when no valid sample."""

    count: Count = Field(...)
    """Valid samples in the window."""
    missing: Count = Field(0)
    """Samples missing or rejected in the window."""
    mean: float | None = Field(None)
    """Mean of valid samples."""
    min: float | None = Field(None)
    """Minimum of valid samples."""
    max: float | None = Field(None)
    """Maximum of valid samples."""
    last: float | None = Field(None)
    """Latest valid sample."""
    unit: Name | None = Field(None)
    """Unit of the channel."""


class QuantileForecast(_Message):
    """One quantile level of a probabilistic forecast."""

    level: float = Field(..., gt=0, lt=1)
    """Quantile level, e.g. 0.1 for P10."""
    values: list[float | None] = Field(..., max_length=MAX_FORECAST_STEPS)
    """One value per horizon step; null when unknown."""


class Forecast(_Message):
    """The latest forecast of one target channel."""

    target: ChannelName = Field(...)
    """Target channel name."""
    unit: Name | None = Field(None)
    """Unit of the values."""
    origin: AwareDatetime = Field(...)
    """Time of the last observed sample, UTC."""
    step_s: float = Field(..., gt=0)
    """Seconds between forecast steps."""
    values: list[float | None] = Field(..., max_length=MAX_FORECAST_STEPS)
    """One value per horizon step; null when unknown."""
    quantiles: list[QuantileForecast] | None = Field(None, max_length=MAX_QUANTILE_LEVELS)
    """Quantile levels in increasing order, each with one value per step like `values` (the median); null for a point
    model or while the baseline forecasts."""

    @model_validator(mode="after")
    def _quantiles_match_values(self) -> Forecast:
        if self.quantiles is not None:
            levels = [q.level for q in self.quantiles]
            if any(b <= a for a, b in pairwise(levels)):
                raise ValueError(f"quantile levels must be strictly increasing, got {levels}")
            uneven = [q.level for q in self.quantiles if len(q.values) != len(self.values)]
            if uneven:
                raise ValueError(f"quantile level(s) {uneven} do not have one value per step of `values`")
        return self


class AnomalyStats(_Message):
    """Anomaly detection over the summary window."""

    windows: Count = Field(...)
    """Windows scored."""
    anomalies: Count = Field(...)
    """Windows whose score exceeded the threshold."""
    max_score: float | None = Field(None)
    """Highest score, when any window was scored."""
    threshold: float | None = Field(None)
    """Threshold in force."""


class LatencyStats(_Message):
    """Inference latency percentiles over the summary window, milliseconds."""

    count: Count = Field(...)
    """Inferences measured."""
    p50_ms: float | None = Field(None)
    """Median latency."""
    p95_ms: float | None = Field(None)
    """95th percentile latency."""
    p99_ms: float | None = Field(None)
    """99th percentile latency."""
    max_ms: float | None = Field(None)
    """Worst latency."""


class ChannelDrift(_Message):
    """Input drift of one channel versus the training statistics of the model."""

    z_mean: float | None = Field(None)
    """(window mean - training mean) / training std."""
    std_ratio: float | None = Field(None)
    """Window std / training std."""


class DroppedCounts(_Message):
    """Messages dropped from the outbox by the overflow policy since the outbox was created."""

    telemetry: Count = Field(0)
    """Telemetry messages dropped."""
    summary: Count = Field(0)
    """Summaries dropped."""
    alert: Count = Field(0)
    """Alerts dropped."""


class OutboxStats(_Message):
    """State of the device's outbox when the summary was made."""

    depth: Count = Field(...)
    """Messages waiting for acknowledgement."""
    bytes: Count = Field(...)
    """Payload bytes waiting."""
    dropped: DroppedCounts = Field(default_factory=DroppedCounts)
    """Overflow drops so far."""


class HealthStats(_Message):
    """How the agent itself is doing, counted since it started."""

    cycles: Count = Field(...)
    """Loop cycles run."""
    overruns: Count = Field(0)
    """Cycles that started late because the previous one overran."""
    sensor_errors: Count = Field(0)
    """Failed device reads (timeouts, exceptions, disconnects)."""
    latency_moving_average_ms: float | None = Field(None)
    """Exponential moving average of inference latency, when the model has run."""
    dropped_commands: Count = Field(0)
    """Commands that could not be answered (e.g. an invalid MQTT 5 response topic)."""
    worker_restarts: Count = Field(0)
    """Times a dead worker thread was restarted."""


MAX_PLAN_POINTS = 48


class PlanState(_Message):
    """The site's dispatch plan in force: who made it and why, the next step's setpoints, what it predicts."""

    source: Literal["planner", "rule"] = Field(...)
    """planner (forecast-driven optimisation) or rule (the conservative fallback)."""
    reason: Text | None = Field(None)
    """Why the rule replaces the planner (no forecast, degraded model, stale SoC, solver)."""
    made_at: AwareDatetime = Field(...)
    """Start of the plan's first step, UTC."""
    step_s: float = Field(..., gt=0)
    """Seconds per plan step."""
    steps: Count = Field(...)
    """Steps planned."""
    solver_status: Name | None = Field(None)
    """Solver outcome (optimal, time limit ...), for the planner."""
    solve_time_ms: float | None = Field(None, ge=0)
    """Wall time of the solve."""
    soc: float | None = Field(None, ge=0, le=1)
    """Measured state of charge the plan started from (0..1)."""
    battery_setpoint_kw: float = Field(...)
    """Battery power of the next step in kW, positive charging (as the BMS register)."""
    generator_on: bool = Field(...)
    """Generator running in the next step."""
    shed_kw: float = Field(..., ge=0)
    """Sheddable load switched off in the next step, kW."""
    generator_starts: Count = Field(0)
    """Generator starts in the plan's horizon."""
    unserved_critical_kwh: float = Field(..., ge=0)
    """Critical energy the plan expects to leave unserved."""
    stress_unserved_critical_kwh: float | None = Field(None, ge=0)
    """The same on the bad-day scenario (high load, low PV quantiles), when planned."""
    soc_trajectory: list[float] = Field(default_factory=list, max_length=MAX_PLAN_POINTS)
    """Planned SoC (0..1) at the end of evenly spaced steps, at most 48 points over the horizon."""
    soc_trajectory_step_s: float | None = Field(None, gt=0)
    """Seconds between soc_trajectory points."""
    actuation: Literal["advisory", "written", "released", "held", "failed"] = Field("advisory")
    """advisory (nothing written), written (setpoints clamped and written), released (control handed back to the
    device's own rule), held (nothing written: see actuation_detail), failed (the write did not succeed after its
    retries)."""
    actuation_detail: Text | None = Field(None)
    """What was written or why not."""


class SummaryContent(_Message):
    """What the agent reports periodically; the reporter adds envelope and outbox state."""

    window_start: AwareDatetime = Field(...)
    """Start of the summarised window, UTC."""
    window_end: AwareDatetime = Field(...)
    """End of the summarised window, UTC."""
    channels: dict[ChannelName, ChannelAggregate] = Field(default_factory=dict, max_length=MAX_CHANNELS)
    """Per-channel aggregates by channel name."""
    forecasts: list[Forecast] = Field(default_factory=list, max_length=MAX_CHANNELS)
    """Latest forecast per target."""
    anomaly: AnomalyStats | None = Field(None)
    """Anomaly counts, for anomaly models."""
    model: ModelInfo | None = Field(None)
    """Model in use."""
    fallback_active: bool = Field(False)
    """True while the baseline fallback replaces the model."""
    latency: LatencyStats | None = Field(None)
    """Inference latency percentiles."""
    drift: dict[ChannelName, ChannelDrift] = Field(default_factory=dict, max_length=MAX_CHANNELS)
    """Input drift per channel versus training statistics."""
    skipped_inferences: Count = Field(0)
    """Inference cycles skipped (gaps, errors)."""
    health: HealthStats | None = Field(None)
    """Loop and sensor health of the agent."""
    plan: PlanState | None = Field(None)
    """The dispatch plan in force, when planning is configured."""


class SummaryMessage(SummaryContent, Envelope):
    """Periodic summary as published."""

    kind: Literal["summary"] = "summary"
    outbox: OutboxStats = Field(...)
    """Outbox depth and drops when the summary was made."""


class AlertContent(_Message):
    """An event that needs attention now."""

    severity: Literal["info", "warning", "critical"] = Field(...)
    """How urgent."""
    code: str = Field(..., min_length=1, max_length=64, pattern=NO_NUL)
    """Machine-readable cause, e.g. anomaly, model-fallback."""
    message: Text = Field(...)
    """Human-readable explanation."""
    channel: ChannelName | None = Field(None)
    """Channel concerned, when one is."""
    value: float | None = Field(None)
    """Observed value or score, when known."""
    threshold: float | None = Field(None)
    """Threshold crossed, when one was."""


class AlertMessage(AlertContent, Envelope):
    """Immediate alert as published."""

    kind: Literal["alert"] = "alert"


class TelemetryContent(_Message):
    """One set of raw channel samples."""

    sample_ts: AwareDatetime = Field(...)
    """When the samples were read, UTC."""
    values: dict[ChannelName, float | None] = Field(..., max_length=MAX_CHANNELS)
    """Value per channel; null when missing."""
    step_s: int | None = Field(None, gt=0, le=86_400)
    """Set for telemetry at the model's step: the values are the model inputs' means over [sample_ts, sample_ts +
    step_s), in the model's channel names and units (the series the fleet retrains from); null for one raw sensor
    sweep."""


class TelemetryMessage(TelemetryContent, Envelope):
    """Rate-limited raw telemetry as published."""

    kind: Literal["telemetry"] = "telemetry"


class CommandRequest(_Message):
    """A command sent to ``gridedge/v1/{site}/{device}/cmd/{name}`` by an operator or the fleet."""

    schema_version: Literal["1.0"] = Field(SCHEMA_VERSION)
    """Payload schema version."""
    request_id: str = Field(default_factory=new_message_id, min_length=1, max_length=64)
    """Id echoed in the result so the caller can match replies (also without MQTT 5)."""
    ts: AwareDatetime = Field(default_factory=utc_now)
    """When the command was issued, UTC (signed; checked against a window)."""
    args: dict[str, JsonValue] = Field(default_factory=dict)
    """Command arguments: set-log-level {level, logger}; model-update {transfer_id, chunk_index, chunk_count,
    total_bytes, sha256, data (base64), allow_downgrade}; replay {ranges: [[first, last], ...]}."""
    site: str | None = Field(None, pattern=TOPIC_LEVEL_PATTERN)
    """Target site (signed; must be the receiving device's)."""
    device: str | None = Field(None, pattern=TOPIC_LEVEL_PATTERN)
    """Target device (signed; must be the receiving device's)."""
    nonce: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{16,64}$")
    """Single-use random value (signed); a device refuses a nonce it has already accepted."""
    signature: str | None = Field(None, max_length=128)
    """base64 Ed25519 signature by the operator key over the canonical command (docs/mqtt/README.md); required for
    state-changing commands."""


class CommandResult(Envelope):
    """The reply to a command, on ``cmd/{name}/result`` or the MQTT 5 response topic."""

    kind: Literal["command-result"] = "command-result"
    command: Name = Field(...)
    """Command name as received (may be unknown)."""
    request_id: Name | None = Field(None)
    """request_id of the request, when it could be read."""
    outcome: Literal["ok", "error", "in-progress"] = Field(...)
    """ok, error, or in-progress (a chunk of a transfer was stored)."""
    error: Text | None = Field(None)
    """What was wrong and what to do, when outcome is error."""
    data: dict[str, JsonValue] = Field(default_factory=dict)
    """Command-specific reply data."""


# The models documented in docs/mqtt/schemas, by file stem.
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "status": StatusMessage,
    "summary": SummaryMessage,
    "alert": AlertMessage,
    "telemetry": TelemetryMessage,
    "command-request": CommandRequest,
    "command-result": CommandResult,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (draft 2020-12) of every payload, keyed by schema file stem."""
    schemas: dict[str, dict[str, Any]] = {}
    for stem, model in SCHEMA_MODELS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{stem}.schema.json"
        schemas[stem] = schema
    return schemas


def write_json_schemas(directory: Path) -> list[Path]:
    """Regenerate ``<stem>.schema.json`` files in ``directory`` (``docs/mqtt/schemas`` in the repo)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, schema in json_schemas().items():
        path = directory / f"{stem}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written
