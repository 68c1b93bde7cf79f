"""A simulated fleet for retraining: sites on the shipped real series, reported by the device's own code.

Each site's meter reads a net load: the UCI household load (data/w1_load_*) from its own start day and
scaled, minus the NREL PV output (data/w2_pv_*) scaled to the site's array, aligned on local wall time.
So the sites differ in level, shape and solar share, and all run on one clock (the load file's).
A :class:`SiteDevice` turns 15-min readings into model steps with the agent's
:class:`~edge_agent.window.SampleAggregator`, publishes them as model-step telemetry and reports daily
summaries whose drift is computed by the agent's :func:`~edge_agent.summary.channel_drift` against the
model the site runs and whose forecast is that model's artefact run on the device's
:class:`~edge_agent.window.WindowBuffer`; everything goes through a real
:class:`~edge_agent.reporting.mqtt.MqttReporter`. A site can also be a real agent process instead:
:func:`write_replay` writes its readings for the agent's replay sensor source.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from numpy.typing import NDArray

from edge_agent.bundle import Bundle
from edge_agent.decisions import finite_or_none
from edge_agent.features import FeaturePipeline
from edge_agent.messages import Forecast, ModelInfo, SummaryContent
from edge_agent.reporting.base import Reporter
from edge_agent.runtimes.base import ModelRuntime
from edge_agent.runtimes.ort import OnnxRuntimeConfig
from edge_agent.runtimes.registry import load_model
from edge_agent.summary import channel_drift, step_telemetry
from edge_agent.window import SampleAggregator, WindowBuffer
from gridedge.datafiles import read_series

READING_S = 900
DAY_READINGS = 86_400 // READING_S
CHANNEL = "net_kw"


@dataclass(frozen=True)
class SiteProfile:
    """How one simulated site differs: where its load starts, how big it is, how much PV it has."""

    site: str
    device: str
    group: str
    shift_days: int
    load_scale: float
    pv_kw: float


DEFAULT_PROFILES = (
    SiteProfile("site-a", "meter", "north", 0, 1.0, 0.0),
    SiteProfile("site-b", "meter", "north", 11, 0.7, 0.0),
    SiteProfile("site-c", "meter", "north", 23, 1.3, 1.5),
    SiteProfile("site-d", "meter", "south", 37, 0.9, 2.5),
    SiteProfile("site-e", "meter", "south", 51, 1.6, 3.0),
    SiteProfile("site-f", "meter", "south", 66, 0.5, 1.0),
)


def site_profiles(count: int) -> list[SiteProfile]:
    """``count`` distinct sites: the six defaults, then more with other start days and sizes."""
    profiles = list(DEFAULT_PROFILES[:count])
    for i in range(len(profiles), count):
        base = DEFAULT_PROFILES[i % len(DEFAULT_PROFILES)]
        profiles.append(
            SiteProfile(f"site-{i:04d}", "meter", base.group, (base.shift_days + 7 * i) % 300,
                        base.load_scale * (0.8 + 0.05 * (i % 9)), base.pv_kw * (0.5 + 0.1 * (i % 7)))
        )  # fmt: skip
    return profiles


@lru_cache(maxsize=1)
def _shipped() -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float32]]:
    load_times, load = read_series("w1_load_uci_15min")
    _, pv = read_series("w2_pv_system50_15min")
    return load_times, load["Global_active_power"], pv["ac_power"]


def net_load(profile: SiteProfile, days: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The site's 15-min net load (kW) for ``days`` days on the fleet clock (the load file's timestamps)."""
    load_times, consumption_kw, pv_w = _shipped()
    n = days * DAY_READINGS
    offset = profile.shift_days * DAY_READINGS
    if offset + n > len(consumption_kw) or n > len(pv_w):
        raise ValueError(f"{profile.site}: {days} days from day {profile.shift_days} exceed the shipped data")
    # Both files start at local midnight (load: CET, PV: MST), so equal rows are equal local wall times.
    consumption = consumption_kw[offset : offset + n] * profile.load_scale
    production = pv_w[:n] / 1000.0 * profile.pv_kw / 3.0  # system 50 peaks near 3 kW
    values = np.where(np.isfinite(production), consumption - production, consumption)
    return load_times[:n], values.astype(np.float32)


def new_load(timestamps: NDArray[np.int64], start_s: int, kw: float) -> NDArray[np.float32]:
    """A load that appears at ``start_s``: ``kw`` between 07:00 and 22:00 UTC+1 (e.g. electric heating)."""
    hour = ((timestamps + 3600) % 86_400) // 3600
    on = (timestamps >= start_s) & (hour >= 7) & (hour < 22)
    return np.where(on, np.float32(kw), np.float32(0.0))


def write_replay(path: Path, timestamps: NDArray[np.int64], values: NDArray[np.float32]) -> Path:
    """The site's readings as a file the agent's replay sensor source plays (``timestamp_utc``, ``net_kw``)."""
    stamps = np.datetime_as_string(timestamps.astype("datetime64[s]"), unit="s")
    rows = "".join(f"{stamp}+00:00,{value:.4f}\n" for stamp, value in zip(stamps, values, strict=True))
    path.write_text(f"timestamp_utc,{CHANNEL}\n{rows}")
    return path


class SiteDevice:
    """One site's meter and agent reporting: model-step telemetry and daily summaries with drift."""

    def __init__(self, profile: SiteProfile, reporter: Reporter, step_s: int = 3600) -> None:
        self.profile = profile
        self.reporter = reporter
        self.step_s = step_s
        self.aggregator = SampleAggregator((CHANNEL,), step_s)
        self.model: Bundle | None = None
        self.runtime: ModelRuntime | None = None
        self.window: WindowBuffer | None = None

    def install(self, bundle: Bundle) -> None:
        """Run ``bundle`` from now on and say so (status, as the agent's announcer does); summaries name it,
        carry its forecast of the next horizon and measure drift against its training statistics."""
        self.model = bundle
        _, self.runtime = load_model(bundle, None, OnnxRuntimeConfig())
        spec = bundle.manifest.input
        self.window = WindowBuffer(spec.past_channel_names, spec.input_steps, spec.sample_period_s)
        self.reporter.publish_status("online", model=self._info())

    def _forecasts(self) -> list[Forecast]:
        """The installed model's forecast from the newest full window, as the agent makes it."""
        if self.model is None or self.runtime is None or self.window is None or not self.window.full:
            return []
        spec = self.model.manifest.input
        raw, starts = self.window.window()
        future_ts = (starts[-1] + spec.sample_period_s * np.arange(1, spec.horizon_steps + 1))[np.newaxis]
        pipeline = FeaturePipeline(spec)
        inputs = pipeline.build(raw, starts, None, future_ts)
        if not inputs.valid[0]:
            return []
        decoded = pipeline.decode(self.runtime.run(inputs.as_feeds())[0])
        output = self.model.manifest.output
        return [
            Forecast(target=name, unit=unit, origin=datetime.fromtimestamp(int(starts[-1]) + spec.sample_period_s, UTC),
                     step_s=spec.sample_period_s, values=[finite_or_none(float(v)) for v in decoded[:, i]])
            for i, (name, unit) in enumerate(zip(output.target_channels, output.target_units, strict=True))
        ]  # fmt: skip

    def _info(self) -> ModelInfo | None:
        if self.model is None:
            return None
        return ModelInfo(name=self.model.manifest.name, version=self.model.manifest.version, runtime="onnx")

    def report(self, timestamps: NDArray[np.int64], values: NDArray[np.float32]) -> int:
        """Feed readings in time order; returns the model steps published. A summary closes each day."""
        published = 0
        day: list[NDArray[np.float32]] = []
        day_start = int(timestamps[0])
        for ts, value in zip(timestamps, values, strict=True):
            for sample in self.aggregator.add(float(ts), {CHANNEL: float(value)}):
                published += self.reporter.publish_telemetry(step_telemetry((CHANNEL,), self.step_s, sample))
                if self.window is not None:
                    self.window.append(sample)
                day.append(sample.values)
                if len(day) * self.step_s >= 86_400:
                    self._summary(day_start, int(sample.start) + self.step_s, day)
                    day, day_start = [], int(sample.start) + self.step_s
        return published

    def _summary(self, start_s: int, end_s: int, samples: list[NDArray[np.float32]]) -> None:
        drift = {}
        if self.model is not None:
            spec = self.model.manifest.input
            assert spec.normalisation is not None
            drift = channel_drift(spec.past_channel_names, spec.normalisation, samples)
        self.reporter.publish_summary(
            SummaryContent(
                window_start=datetime.fromtimestamp(start_s, UTC),
                window_end=datetime.fromtimestamp(end_s, UTC),
                model=self._info(),
                drift=drift,
                forecasts=self._forecasts(),
            )
        )


def fleet_task_yaml(path: Path, epochs: int = 3) -> Path:
    """A small load-forecast task config for the simulated sites' net load (``data.fleet`` filled per site)."""
    path.write_text(
        f"""\
name: net-load
task: load_forecast
seed: 3
data:
  fleet: {{db: placeholder.sqlite3, site: placeholder, device: meter, since: 28d}}
  utc_offset: "+01:00"
  columns:
    {CHANNEL}: {{unit: kW, min_value: -20, max_value: 30}}
features:
  input_window: 2d
  horizon: 24h
  past:
    - {{column: {CHANNEL}}}
  targets: [{CHANNEL}]
  calendar: true
split:
  val_fraction: 0.2
  test_fraction: 0.2
protocol:
  train_stride: 1h
  val_stride: 2h
  min_val_origins: 8
  rolling_every_hours: 6
model:
  architecture: tcn_forecaster
  filters: 8
  kernel_size: 3
  hidden: 16
  decoder_channels: 2
training:
  epochs: {epochs}
  batch_size: 32
  learning_rate: 0.003
  patience: 2
baselines:
  lightgbm: {{enabled: false}}
"""
    )
    return path


def fleet_plan_yaml(path: Path, profiles: list[SiteProfile], task: str = "task.yaml", **rules: object) -> Path:
    """A retrain plan for the simulated sites (``rules``: since, drift_threshold, min_improvement ...)."""
    plan = {
        "task": task,
        "framework": "torch",
        **rules,
        "sites": [{"site": p.site, "device": p.device, "group": p.group} for p in profiles],
    }
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


__all__ = [
    "CHANNEL",
    "SiteDevice",
    "SiteProfile",
    "fleet_plan_yaml",
    "fleet_task_yaml",
    "net_load",
    "new_load",
    "site_profiles",
    "write_replay",
]
