"""The task config: one YAML file that trains the same task in Keras or PyTorch.

It names the data file and how to read it (clock, units, ranges, sentinels, resampling), the feature
window and horizon and the origin strides (in time units, never rows), the split and evaluation protocol,
the model size and the training settings. ``configs/task.schema.json`` is generated from
:class:`TaskConfig` (:func:`schema_json`); a test fails when the committed schema is stale.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, field_validator, model_validator

from edge_agent.bundle import check_quantile_levels
from edge_agent.errors import ConfigError
from edge_agent.features import SiteLocation
from edge_agent.ranges import PlausibleRange
from edge_agent.yamlconfig import StrictModel, read_yaml_mapping, validate_data
from gridedge.resources import resource_path

SCHEMA_PATH = resource_path("configs", "task.schema.json")
TaskKind = Literal["load_forecast", "pv_forecast", "anomaly"]


class ChannelConfig(PlausibleRange):
    """One input channel: which column of the data, under which name, in which unit."""

    column: str = Field(title="Column")
    """Column of the data file (or a derived channel) to read."""
    name: str | None = Field(default=None, title="Channel name")
    """Name inside the model; defaults to the column."""
    unit: str | None = Field(default=None, title="Unit")
    """Physical unit; defaults to data.columns' unit for the column."""
    scale: float = Field(default=1.0, gt=0, title="Scale")
    """Raw values are multiplied by this, e.g. 1/rating to express power as a fraction."""

    @property
    def channel(self) -> str:
        return self.name or self.column


DURATION = re.compile(r"^\s*(\d+)\s*(s|min|h|d)\s*$")
UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86_400}
Duration = Annotated[
    str,
    Field(pattern=DURATION.pattern, description="A duration: a whole number and s, min, h or d, e.g. '6h', '2d'."),
]


def duration_seconds(text: str) -> int:
    """``'6h'`` -> 21600: durations in configs are written in time units, never in rows."""
    match = DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. '15min', '6h' or '2d'")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def _refuse_row_counts(data: Any, renamed: dict[str, str], section: str) -> Any:
    """Name the duration field that replaced a row-count field, instead of pydantic's 'extra field'.

    A field kept under its name (``renamed[x] == x``) is refused only when it still holds a number.
    """
    if isinstance(data, dict):
        for old, new in renamed.items():
            if old in data and (old != new or isinstance(data[old], int | float)):
                raise ValueError(
                    f"{section}.{old} counted rows; write {section}.{new} as a duration instead, e.g. "
                    f"{new}: '1h' (a row means another time at another data step)"
                )
    return data


class GapPolicyConfig(StrictModel):
    """How missing samples inside a window are treated, with the longest fillable gap as a duration."""

    method: Literal["hold", "interpolate"] = Field(default="interpolate", title="Fill method")
    """hold repeats the last good value; interpolate draws a line between good neighbours."""
    max_gap: Duration = Field(
        default="1h",
        title="Longest fillable gap",
        description="Gaps up to this long (whole samples) are filled; longer ones invalidate the window.",
    )

    @model_validator(mode="before")
    @classmethod
    def _durations(cls, data: Any) -> Any:
        return _refuse_row_counts(data, {"max_gap_steps": "max_gap"}, "features.gap_policy")


DATA_PATH_DESCRIPTION = (
    "CSV, CSV.gz or Parquet file; a relative path is relative to the config file (a config given as a "
    "mapping, without a file, resolves against gridedge's shipped configs/ folder)."
)


class ClockSource(StrictModel):
    """How to read the clock of a series (and which zone its local days are in)."""

    time_column: str | None = Field(default=None, title="Time column")
    """Column holding the timestamps; default the first column if its name starts with time/date."""
    timezone: str | None = Field(default=None, title="Site time zone")
    """IANA zone of the site: local midnight and calendar features, and the clock of naive timestamps (daylight saving
    applied) unless utc_offset is given."""
    utc_offset: str | None = Field(default=None, pattern=r"^[+-]\d\d:\d\d$", title="Fixed UTC offset")
    """Offset of naive timestamps from UTC when the clock has no daylight saving, e.g. '+01:00'."""
    ambiguous: Literal["infer", "drop"] = Field(default="infer", title="Repeated local hour")
    """Naive times in the hour repeated when DST ends: 'infer' from the order of rows, or 'drop'."""
    nonexistent: Literal["shift_forward", "drop"] = Field(default="drop", title="Skipped local hour")
    """Naive times in the hour skipped when DST starts: 'shift_forward' to the next valid time, or 'drop'."""

    @property
    def utc_offset_seconds(self) -> int:
        assert self.utc_offset is not None
        sign = -1 if self.utc_offset[0] == "-" else 1
        return sign * (int(self.utc_offset[1:3]) * 3600 + int(self.utc_offset[4:6]) * 60)

    @property
    def site_timezone(self) -> str:
        """The zone of local days: ``timezone``, else the Etc zone of a whole-hour ``utc_offset``, else UTC."""
        if self.timezone is not None:
            return self.timezone
        if self.utc_offset is None:
            return "UTC"
        hours, rest = divmod(self.utc_offset_seconds, 3600)
        if rest:
            raise ConfigError(f"data.timezone: set it; utc_offset {self.utc_offset} is not a whole number of hours")
        return f"Etc/GMT{-hours:+d}" if hours else "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown IANA time zone {value!r}, e.g. Europe/Paris or America/Denver") from exc
        return value


class FileSource(ClockSource):
    """A time-series file and how to read its clock."""

    path: str = Field(title="Data file", description=DATA_PATH_DESCRIPTION)

    def resolved_path(self) -> Path:
        """The file; :func:`parse_config` has made a config's relative path absolute already."""
        return Path(self.path)


def is_dsn(db: str) -> bool:
    """True when ``db`` names a PostgreSQL database (URL or key=value DSN) rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://")) or "=" in db


class FleetSource(StrictModel):
    """A device's telemetry at the model's step, as kept by the fleet store (``gridedge fleet listen``)."""

    db: str = Field(title="Fleet store")
    """SQLite file of the fleet store (relative to the config file) or a PostgreSQL DSN (postgresql://... or
    key=value)."""
    site: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", title="Site")
    device: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", title="Device")
    since: Duration | None = Field(
        default="30d",
        title="Recent span",
        description="Use the steps at most this long before the device's newest one (its own clock); null = "
        "everything the store keeps.",
    )

    def describe(self) -> str:
        """Where the series comes from, without a DSN's credentials (kept in lineage and reports)."""
        where = "postgresql" if is_dsn(self.db) else self.db
        return f"fleet:{where}#{self.site}/{self.device}"


class ColumnRules(PlausibleRange):
    """What a column means and which of its values are not measurements."""

    unit: str | None = Field(default=None, title="Unit")
    """Physical unit, e.g. kW, W, degC, W/m2."""
    sentinels: list[float] = Field(default_factory=list, title="Sentinel values")
    """Values that mean 'no measurement' (e.g. -999, -1000000); they become missing (counted)."""


class DataConfig(ClockSource):
    """The user's time series (a file, or a device's series in the fleet store): clock, column meanings,
    cleaning and resampling."""

    path: str | None = Field(default=None, title="Data file", description=DATA_PATH_DESCRIPTION)
    fleet: FleetSource | None = Field(default=None, title="Fleet series")
    """Instead of a file: a device's model-step telemetry from the fleet store; its columns are the model's channel
    names, its timestamps UTC."""
    source: str | None = Field(default=None, title="Source")
    """Where the data comes from (provenance)."""
    licence: str | None = Field(default=None, title="Licence")
    """Licence the data is used under."""
    columns: dict[str, ColumnRules] = Field(default_factory=dict, title="Columns")
    """Units, plausible ranges and sentinels per column."""
    step: Duration | None = Field(
        default=None,
        title="Step",
        description="Resample to this step (e.g. '15min') with `aggregation`; default the file's own regular step.",
    )
    aggregation: Literal["mean", "sum", "last", "max"] = Field(default="mean", title="Aggregation")
    """How samples inside one step are combined."""
    fill_night_with_zero: list[str] = Field(default_factory=list, title="Zero at night")
    """Columns (PV power) whose missing samples are 0 while the sun is down at `location`: many monitoring exports omit
    the night."""
    start: str | None = Field(default=None, title="Start")
    """First UTC time to use (ISO); default the file's start."""
    end: str | None = Field(default=None, title="End")
    """Last UTC time to use (ISO); default the file's end."""
    location: SiteLocation | None = Field(default=None, title="Site location")
    """Latitude/longitude of the site; derived channels such as clear_sky_ghi are computed from it (the device computes
    them the same way)."""
    exclude_upstream_filled: bool = Field(default=False, title="Exclude upstream-filled days")
    """Keep local days holding a copy of the previous day (every column equal, not flat, for at least upstream_copy_min)
    out of forecast targets."""
    upstream_copy_min: Duration = Field(
        default="1d",
        title="Shortest upstream copy",
        description="Shortest run of exact copies of the previous day that counts as upstream filling.",
    )

    def resolved_path(self) -> Path:
        """The data file; :func:`parse_config` has made a config's relative path absolute already."""
        if self.path is None:
            raise ConfigError("data.path: this config reads data.fleet, not a file")
        return Path(self.path)

    def describe(self) -> str:
        """The data source for provenance: the file, or the fleet store's site/device."""
        return self.fleet.describe() if self.fleet is not None else f"file:{self.path}"

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.fleet is None):
            raise ValueError("give the data either as data.path (a file) or as data.fleet (the fleet store), "
                             "exactly one of them")
        return self

    @model_validator(mode="after")
    def _night_needs_location(self) -> DataConfig:
        if self.fill_night_with_zero and self.location is None:
            raise ValueError(
                "fill_night_with_zero needs data.location (latitude/longitude) to know when the sun is down"
            )
        return self


class SeasonalInputsConfig(StrictModel):
    """Seasonal-naive forecasts of the targets, fed to the model over the horizon (it learns to correct them)."""

    lags: list[Duration] = Field(
        default_factory=lambda: ["1d", "7d"],
        title="Lags",
        description="Same time one lag ago, for each horizon step: e.g. '1d' (yesterday), '7d' (last week).",
    )
    profile: Duration | None = Field(
        default="7d",
        title="Profile span",
        description="Mean of the same time of day over this many past days (missing days skipped); null = none.",
    )


class FeaturesConfig(StrictModel):
    """Model inputs and outputs, turned into an edge_agent FeatureSpec."""

    input_window: Duration = Field(title="Input window", description="Past the model sees, e.g. '2d'.")
    horizon: Duration = Field(
        title="Horizon", description="Time forecast, e.g. '24h'; '0h' for a reconstruction (anomaly) model."
    )
    past: list[ChannelConfig] = Field(min_length=1, title="Observed channels")
    targets: list[str] = Field(min_length=1, title="Targets")
    """Channel names (of `past`) the model outputs."""
    known_future: list[ChannelConfig] = Field(default_factory=list, title="Known-future channels")
    """Channels known in advance over the horizon, e.g. clear-sky irradiance."""
    calendar: bool = Field(default=True, title="Calendar features")
    """Hour/day-of-week sin/cos."""
    seasonal_inputs: SeasonalInputsConfig | None = Field(default=None, title="Seasonal inputs")
    """Feed seasonal-naive forecasts of the targets over the horizon; the device then keeps the longest lag or profile
    of history (e.g. a week) and decides once it has it."""
    gap_policy: GapPolicyConfig = Field(default_factory=GapPolicyConfig, title="Gap policy")


class SplitConfig(StrictModel):
    """Time-ordered train / validation / test split, cut at whole local days, never shuffled across time."""

    val_fraction: float = Field(default=0.15, gt=0, lt=1, title="Validation share of days")
    test_fraction: float = Field(default=0.15, gt=0, lt=1, title="Test share of days")

    @model_validator(mode="after")
    def _room_for_training(self) -> SplitConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10 % for training")
        return self


class ProtocolConfig(StrictModel):
    """How forecast origins are chosen: all of them at origin_hour local time, or every stride from it."""

    origin_hour: int = Field(default=0, ge=0, le=23, title="Origin hour")
    """Local hour of the daily forecast origin."""
    train_stride: Duration = Field(
        default="1h",
        title="Training origin stride",
        description="Training windows start at origin_hour local and every this long after it (a divisor of "
        "a day, e.g. '1d' for origin_hour only, '6h', '1h').",
    )
    val_stride: Duration = Field(
        default="6h",
        title="Validation origin stride",
        description="Validation (epoch choice) origins at origin_hour local and every this long after it: "
        "rolling origins give early stopping enough samples to choose an epoch.",
    )
    min_val_origins: int = Field(default=20, ge=1, title="Minimum validation origins")
    """Refuse to train when validation has fewer usable origins: fewer cannot choose an epoch."""
    rolling_every_hours: int | None = Field(default=6, gt=0, le=24, title="Rolling origin interval")
    """Also report test metrics for intraday origins every this many local hours (same 24 h horizon, same baselines) as
    metrics.test_rolling; null = day-ahead only."""


class ModelConfig(StrictModel):
    """Architecture and size; the same hyperparameters build the Keras and the PyTorch model."""

    architecture: Literal["tcn_forecaster", "conv_autoencoder"] = Field(title="Architecture")
    filters: int = Field(default=32, gt=0, title="Conv filters")
    kernel_size: int = Field(default=5, gt=0, title="Kernel size")
    hidden: int = Field(default=64, gt=0, title="Hidden units")
    """Bottleneck/dense width."""
    decoder_channels: int = Field(default=8, gt=0, title="Decoder channels")
    """Per-step features decoded for the horizon."""
    latent_channels: int = Field(default=4, gt=0, title="Latent channels")
    """Autoencoder bottleneck channels per step."""
    dropout: float = Field(default=0.0, ge=0, lt=1, title="Dropout")
    quantiles: list[float] = Field(default_factory=list, title="Quantile levels")
    """Forecast these quantiles as well, e.g. [0.1, 0.5, 0.9]: increasing, including 0.5 (the point forecast). They are
    trained with the pinball loss (training.loss then does not apply) and cannot cross. Empty = a point forecast."""
    recalibrate_quantiles: bool = Field(default=False, title="Recalibrate quantiles")
    """Ship the levels with each distance from the median scaled so that its coverage on the validation split is nominal
    (the bundle carries the scales). The report shows test coverage of the raw and the recalibrated levels either
    way. On W1/W2 the raw P10-P90 covered 76-84 % of test values in both frameworks; recalibrating on the validation
    days helped some runs and over-widened others (benchmarks/results/quantiles.md)."""

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, value: list[float]) -> list[float]:
        return list(check_quantile_levels(tuple(value)))


class TrainingConfig(StrictModel):
    """Optimiser and stopping."""

    epochs: int = Field(default=60, gt=0, title="Maximum epochs")
    batch_size: int = Field(default=64, gt=0, title="Batch size")
    learning_rate: float = Field(default=2e-3, gt=0, title="Learning rate")
    patience: int = Field(default=8, ge=1, title="Early-stopping patience (epochs)")
    loss: Literal["mae", "mse"] = Field(default="mae", title="Loss")
    weight_decay: float = Field(default=0.0, ge=0, title="Weight decay")
    """Decoupled (AdamW) weight decay, same in both frameworks."""
    threads: int = Field(default=1, gt=0, title="CPU threads")
    """Intra-op threads; 1 is fastest for these small models on a shared machine."""


class LightGBMConfig(StrictModel):
    """The LightGBM baseline (lag + calendar features, one model for every horizon step)."""

    enabled: bool = Field(default=True, title="Run LightGBM")
    n_estimators: int = Field(default=300, gt=0, title="Trees")
    learning_rate: float = Field(default=0.05, gt=0, title="Learning rate")
    num_leaves: int = Field(default=31, gt=1, title="Leaves per tree")
    train_stride: Duration = Field(
        default="2h", title="Training origin stride", description="LightGBM training origins, aligned like the model's."
    )


class BaselinesConfig(StrictModel):
    """Baselines scored on exactly the model's test windows."""

    clear_sky_channel: str | None = Field(default=None, title="Clear-sky channel")
    """Known-future clear-sky irradiance channel; enables clear-sky-scaled persistence."""
    lightgbm: LightGBMConfig = Field(default_factory=LightGBMConfig, title="LightGBM baseline")


class LabelledSeries(FileSource):
    """A labelled series the anomaly detector is evaluated on."""

    column: str = Field(title="Value column")
    """Mapped onto the model's single target channel."""
    label_column: str = Field(title="Label column")
    """1/True where the sample is anomalous."""


class AnomalyConfig(StrictModel):
    """Threshold calibration, labelled evaluation data and the rule baselines (W3); lengths are durations."""

    score_span: Duration | None = Field(
        default=None,
        title="Scored span",
        description="Newest part of the window the score averages, e.g. '15min'; default the newest sample.",
    )
    threshold_quantile: float = Field(default=0.995, gt=0, lt=1, title="Threshold quantile")
    """Of validation scores."""
    train_stride: Duration | None = Field(
        default=None,
        title="Training window stride",
        description="Training windows end every this long, e.g. '2h'; default every sample.",
    )
    labelled: list[LabelledSeries] = Field(min_length=1, title="Labelled evaluation series")
    zscore_window: Duration = Field(
        default="4h", title="Rolling z-score window", description="At least two samples long."
    )
    zscore_threshold: float = Field(default=3.0, gt=0, title="Rolling z-score threshold")
    stale_run: Duration = Field(
        default="1h",
        title="Stale run length",
        description="A non-zero value repeated this long (at least two samples) is a frozen sensor.",
    )
    stale_rule_in_detector: bool = Field(default=True, title="Stale rule in the shipped detector")
    """Flag a frozen sensor (equal non-zero samples for stale_run) next to the model's score: a reconstruction model
    reproduces a flat line almost perfectly, so it cannot see one. The model alone is reported as
    metrics.test_model_only."""

    @model_validator(mode="before")
    @classmethod
    def _durations(cls, data: Any) -> Any:
        renamed = {
            "score_steps": "score_span",
            "train_stride_steps": "train_stride",
            "stale_run_steps": "stale_run",
            "zscore_window": "zscore_window",
        }
        return _refuse_row_counts(data, renamed, "anomaly")


class TaskConfig(StrictModel):
    """One training task: data, features, protocol, model and training settings."""

    name: str = Field(min_length=1, title="Task name")
    """Model name used in bundles and reports."""
    task: TaskKind = Field(title="Task kind")
    seed: int = Field(default=0, ge=0, title="Random seed")
    data: DataConfig
    features: FeaturesConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    model: ModelConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    anomaly: AnomalyConfig | None = Field(default=None, title="Anomaly settings (W3 only)")

    @model_validator(mode="after")
    def _consistent(self) -> TaskConfig:
        names = [c.channel for c in self.features.past]
        unknown = [t for t in self.features.targets if t not in names]
        if unknown:
            raise ValueError(f"features.targets {unknown} are not among features.past channels {names}")
        future = [c.channel for c in self.features.known_future]
        clear = self.baselines.clear_sky_channel
        if clear is not None and clear not in future:
            raise ValueError(f"baselines.clear_sky_channel {clear!r} must be one of features.known_future {future}")
        if self.task == "anomaly":
            if duration_seconds(self.features.horizon) != 0 or self.model.architecture != "conv_autoencoder":
                raise ValueError("task anomaly needs features.horizon: 0h and model.architecture: conv_autoencoder")
            if self.anomaly is None:
                raise ValueError("task anomaly needs an `anomaly:` section with labelled series")
            if len(self.features.targets) != 1:
                raise ValueError("task anomaly scores one target channel; list exactly one in features.targets")
            if self.model.quantiles:
                raise ValueError("model.quantiles are for forecasts; remove them from an anomaly task")
        elif duration_seconds(self.features.horizon) == 0 or self.model.architecture != "tcn_forecaster":
            raise ValueError(f"task {self.task} needs features.horizon > 0 and model.architecture: tcn_forecaster")
        return self


TASK_CONFIG_HINT = "fix these fields (schema: configs/task.schema.json)"


def parse_config(data: dict[str, Any], source: str = "task config", base_dir: Path | None = None) -> TaskConfig:
    """Validate a config mapping, turning pydantic's errors into a ConfigError naming each field.

    Relative data paths are made absolute against ``base_dir`` (the config file's folder; default the
    shipped configs/ folder, whose ``../data/...`` paths name the packaged data, in a checkout and in an
    installed wheel alike), so a run folder's copy of the config still finds its data.
    """
    folder = base_dir if base_dir is not None else resource_path("configs")
    data = dict(data)
    if isinstance(data.get("data"), dict):
        data["data"] = _absolute_path(data["data"], folder)
        fleet = data["data"].get("fleet")
        if isinstance(fleet, dict) and isinstance(fleet.get("db"), str) and not is_dsn(fleet["db"]):
            db = fleet["db"]
            resolved = db if Path(db).is_absolute() else os.path.normpath(folder / db)
            data["data"] = {**data["data"], "fleet": {**fleet, "db": resolved}}
    anomaly = data.get("anomaly")
    if isinstance(anomaly, dict) and isinstance(anomaly.get("labelled"), list):
        labelled = [_absolute_path(item, folder) if isinstance(item, dict) else item for item in anomaly["labelled"]]
        data["anomaly"] = {**anomaly, "labelled": labelled}
    return validate_data(data, TaskConfig, source, TASK_CONFIG_HINT)


def _absolute_path(section: dict[str, Any], folder: Path) -> dict[str, Any]:
    path = section.get("path")
    if isinstance(path, str) and not Path(path).is_absolute():
        return {**section, "path": os.path.normpath(folder / path)}
    return section


def load_config(path: str | Path) -> TaskConfig:
    """Read and validate a YAML task config; its data paths are relative to the file."""
    path = Path(path)
    raw = read_yaml_mapping(path, "task config", "check the path")
    return parse_config(raw, f"task config {path}", base_dir=path.parent.absolute())


def dump_config(config: TaskConfig) -> str:
    """The resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def schema_json() -> str:
    """The JSON schema of :class:`TaskConfig`, as committed in configs/task.schema.json."""
    return json.dumps(TaskConfig.model_json_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """Regenerate the committed JSON schema."""
    path.write_text(schema_json())
    return path
