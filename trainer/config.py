"""The task config: one YAML file that trains the same task in Keras or PyTorch.

It names the data slice and columns, the feature window and horizon, the split and evaluation protocol,
the model size and the training settings. ``configs/task.schema.json`` is generated from
:class:`TaskConfig` (:func:`schema_json`); a test fails when the committed schema is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from edge_agent.features import GapPolicy, SiteLocation
from edge_agent.yamlconfig import StrictModel, load_yaml_model, validate_data
from gridedge.resources import resource_path

SCHEMA_PATH = resource_path("configs", "task.schema.json")
TaskKind = Literal["load_forecast", "pv_forecast", "anomaly"]


class ChannelConfig(StrictModel):
    """One input channel: which column of the slice, under which name, in which unit."""

    column: str = Field(title="Column", description="Column of the data slice to read.")
    name: str | None = Field(
        default=None, title="Channel name", description="Name inside the model; defaults to the column."
    )
    unit: str | None = Field(
        default=None, title="Unit", description="Physical unit; defaults to the slice's unit for the column."
    )
    scale: float = Field(
        default=1.0,
        gt=0,
        title="Scale",
        description="Raw values are multiplied by this, e.g. 1/rating to express power as a fraction.",
    )
    min_value: float | None = Field(default=None, title="Minimum", description="Lowest plausible value.")
    max_value: float | None = Field(default=None, title="Maximum", description="Highest plausible value.")

    @property
    def channel(self) -> str:
        return self.name or self.column


class DataConfig(StrictModel):
    """Which shipped slice to read, and which part of it."""

    slice: str = Field(title="Data slice", description="Name of a slice in data/, e.g. w1_load_uci_15min.")
    start: str | None = Field(
        default=None, title="Start", description="First UTC time to use (ISO); default the slice's start."
    )
    end: str | None = Field(
        default=None, title="End", description="Last UTC time to use (ISO); default the slice's end."
    )
    timezone: str | None = Field(
        default=None,
        title="Site time zone",
        description="IANA zone for calendar features and local midnight; default the slice's own zone.",
    )
    location: SiteLocation | None = Field(
        default=None,
        title="Site location",
        description="Latitude/longitude of the site; derived channels such as clear_sky_ghi are computed "
        "from it (the device computes them the same way).",
    )
    exclude_upstream_filled: bool = Field(
        default=False,
        title="Exclude upstream-filled days",
        description="Drop forecast targets containing rows that copy the previous day in every column.",
    )


class FeaturesConfig(StrictModel):
    """Model inputs and outputs, turned into an edge_agent FeatureSpec."""

    input_steps: int = Field(gt=0, title="Input window", description="Past samples the model sees.")
    horizon_steps: int = Field(
        ge=0, title="Horizon", description="Samples forecast; 0 for a reconstruction (anomaly) model."
    )
    past: list[ChannelConfig] = Field(min_length=1, title="Observed channels")
    targets: list[str] = Field(
        min_length=1, title="Targets", description="Channel names (of `past`) the model outputs."
    )
    known_future: list[ChannelConfig] = Field(
        default_factory=list,
        title="Known-future channels",
        description="Channels known in advance over the horizon, e.g. clear-sky irradiance.",
    )
    calendar: bool = Field(default=True, title="Calendar features", description="Hour/day-of-week sin/cos.")
    gap_policy: GapPolicy = Field(default_factory=GapPolicy, title="Gap policy")


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
    """How forecast origins are chosen."""

    origin_hour: int = Field(
        default=0, ge=0, le=23, title="Origin hour", description="Local hour of the daily forecast origin."
    )
    train_stride_steps: int = Field(
        default=4,
        gt=0,
        title="Training origin stride",
        description="Training samples start every this many steps (evaluation is once a day).",
    )
    rolling_every_hours: int | None = Field(
        default=6,
        gt=0,
        le=24,
        title="Rolling origin interval",
        description="Also report test metrics for intraday origins every this many local hours (same 24 h "
        "horizon, same baselines) as metrics.test_rolling; null = day-ahead only.",
    )


class ModelConfig(StrictModel):
    """Architecture and size; the same hyperparameters build the Keras and the PyTorch model."""

    architecture: Literal["tcn_forecaster", "conv_autoencoder"] = Field(title="Architecture")
    filters: int = Field(default=32, gt=0, title="Conv filters")
    kernel_size: int = Field(default=5, gt=0, title="Kernel size")
    hidden: int = Field(default=64, gt=0, title="Hidden units", description="Bottleneck/dense width.")
    decoder_channels: int = Field(
        default=8, gt=0, title="Decoder channels", description="Per-step features decoded for the horizon."
    )
    latent_channels: int = Field(
        default=4, gt=0, title="Latent channels", description="Autoencoder bottleneck channels per step."
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, title="Dropout")


class TrainingConfig(StrictModel):
    """Optimiser and stopping."""

    epochs: int = Field(default=60, gt=0, title="Maximum epochs")
    batch_size: int = Field(default=64, gt=0, title="Batch size")
    learning_rate: float = Field(default=2e-3, gt=0, title="Learning rate")
    patience: int = Field(default=8, ge=1, title="Early-stopping patience (epochs)")
    loss: Literal["mae", "mse"] = Field(default="mae", title="Loss")
    weight_decay: float = Field(
        default=0.0, ge=0, title="Weight decay", description="Decoupled (AdamW) weight decay, same in both frameworks."
    )
    threads: int = Field(
        default=1,
        gt=0,
        title="CPU threads",
        description="Intra-op threads; 1 is fastest for these small models on a shared machine.",
    )


class LightGBMConfig(StrictModel):
    """The LightGBM baseline (lag + calendar features, one model for every horizon step)."""

    enabled: bool = Field(default=True, title="Run LightGBM")
    n_estimators: int = Field(default=300, gt=0, title="Trees")
    learning_rate: float = Field(default=0.05, gt=0, title="Learning rate")
    num_leaves: int = Field(default=31, gt=1, title="Leaves per tree")
    train_stride_steps: int = Field(default=8, gt=0, title="Training origin stride")


class BaselinesConfig(StrictModel):
    """Baselines scored on exactly the model's test windows."""

    clear_sky_channel: str | None = Field(
        default=None,
        title="Clear-sky channel",
        description="Known-future clear-sky irradiance channel; enables clear-sky-scaled persistence.",
    )
    lightgbm: LightGBMConfig = Field(default_factory=LightGBMConfig, title="LightGBM baseline")


class LabelledSeries(StrictModel):
    """A labelled series the anomaly detector is evaluated on."""

    slice: str = Field(title="Data slice")
    column: str = Field(title="Value column", description="Mapped onto the model's single target channel.")
    label_column: str = Field(title="Label column", description="1/True where the sample is anomalous.")


class AnomalyConfig(StrictModel):
    """Threshold calibration, labelled evaluation data and the rule baselines (W3)."""

    score_steps: int = Field(default=1, gt=0, title="Scored steps", description="Newest samples scored.")
    threshold_quantile: float = Field(
        default=0.995, gt=0, lt=1, title="Threshold quantile", description="Of validation scores."
    )
    train_stride_steps: int = Field(default=1, gt=0, title="Training window stride")
    labelled: list[LabelledSeries] = Field(min_length=1, title="Labelled evaluation series")
    zscore_window: int = Field(default=16, ge=2, title="Rolling z-score window")
    zscore_threshold: float = Field(default=3.0, gt=0, title="Rolling z-score threshold")
    stale_run_steps: int = Field(default=4, ge=2, title="Stale run length")
    stale_rule_in_detector: bool = Field(
        default=True,
        title="Stale rule in the shipped detector",
        description="Flag a frozen sensor (stale_run_steps equal non-zero samples) next to the model's score: "
        "a reconstruction model reproduces a flat line almost perfectly, so it cannot see one. The model "
        "alone is reported as metrics.test_model_only.",
    )


class TaskConfig(StrictModel):
    """One training task: data, features, protocol, model and training settings."""

    name: str = Field(min_length=1, title="Task name", description="Model name used in bundles and reports.")
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
            if self.features.horizon_steps != 0 or self.model.architecture != "conv_autoencoder":
                raise ValueError(
                    "task anomaly needs features.horizon_steps: 0 and model.architecture: conv_autoencoder"
                )
            if self.anomaly is None:
                raise ValueError("task anomaly needs an `anomaly:` section with labelled series")
            if len(self.features.targets) != 1:
                raise ValueError("task anomaly scores one target channel; list exactly one in features.targets")
            if self.anomaly.stale_rule_in_detector and self.anomaly.stale_run_steps > self.features.input_steps:
                raise ValueError(
                    f"anomaly.stale_run_steps ({self.anomaly.stale_run_steps}) must fit in features.input_steps "
                    f"({self.features.input_steps}): the device judges a frozen sensor from its window; shorten "
                    "the run or set anomaly.stale_rule_in_detector: false"
                )
        elif self.features.horizon_steps == 0 or self.model.architecture != "tcn_forecaster":
            raise ValueError(
                f"task {self.task} needs features.horizon_steps > 0 and model.architecture: tcn_forecaster"
            )
        return self


TASK_CONFIG_HINT = "fix these fields (schema: configs/task.schema.json)"


def parse_config(data: dict[str, Any], source: str = "task config") -> TaskConfig:
    """Validate a config mapping, turning pydantic's errors into a ConfigError naming each field."""
    return validate_data(data, TaskConfig, source, TASK_CONFIG_HINT)


def load_config(path: str | Path) -> TaskConfig:
    """Read and validate a YAML task config."""
    return load_yaml_model(Path(path), TaskConfig, "task config", TASK_CONFIG_HINT, "check the path")


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
