"""Small real models for the export tests, trained in seconds on real windows from data/.

W1-like: one day of household active power (+ calendar) -> next day, 15-min steps.
W3-like: reconstruction of 16-step windows of inverter 7539's AC power, labelled outliers.
Both follow the model I/O contract (inputs "past"/"future", one output in normalised units).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle import AnomalySpec, OutputSpec, Provenance
from edge_agent.features import ChannelSpec, FeatureSpec, ModelInputs, NormalisationStats, forecast_samples
from edge_agent.keys import new_keypair
from gridedge.datafiles import read_series
from gridedge.export.evaluate import TestSplit, anomaly_scores
from gridedge.export.pipeline import ExportSource

W1_STEPS = 96
W3_STEPS = 16
EPOCHS = 4


@dataclass
class Prepared:
    spec: FeatureSpec
    output: OutputSpec
    train: ModelInputs
    train_targets: np.ndarray
    test: TestSplit


def _valid(inputs: ModelInputs, targets: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    keep = inputs.valid
    return {k: v[keep] for k, v in inputs.as_feeds().items()}, targets[keep]


def prepare_w1() -> Prepared:
    times, columns = read_series("w1_load_uci_15min")
    values = columns["Global_active_power"][:, None]
    spec = FeatureSpec(
        sample_period_s=900,
        input_steps=W1_STEPS,
        horizon_steps=W1_STEPS,
        past_channels=(ChannelSpec(name="Global_active_power", unit="kW", min_value=0, max_value=15),),
        target_channels=("Global_active_power",),
        timezone="Etc/GMT-1",
    )
    split = 96 * 60
    end = split + 96 * 21
    stats = NormalisationStats.fit(values[:split], ["Global_active_power"])
    spec = spec.with_normalisation(stats)
    train, train_targets, _ = forecast_samples(
        spec, values[:split], times[:split], origins=np.arange(W1_STEPS, split - W1_STEPS + 1, 4)
    )
    test, test_targets, _ = forecast_samples(
        spec, values[split:end], times[split:end], origins=np.arange(W1_STEPS, end - split - W1_STEPS + 1, 8)
    )
    test_feeds, test_targets = _valid(test, test_targets)
    output = OutputSpec(
        kind="forecast", horizon_steps=W1_STEPS, target_channels=("Global_active_power",), target_units=("kW",)
    )
    return Prepared(spec, output, train, train_targets, TestSplit(test_feeds, test_targets))


def prepare_w3() -> Prepared:
    times, columns = read_series("w3_inv7539_outliers")
    values = columns["value_normalized"][:, None]
    labels = columns["outlier"] > 0.5
    spec = FeatureSpec(
        sample_period_s=900,
        input_steps=W3_STEPS,
        horizon_steps=0,
        past_channels=(ChannelSpec(name="value_normalized", unit="1"),),
        target_channels=("value_normalized",),
        calendar=False,
    )
    split = 300
    stats = NormalisationStats.fit(values[:split][~labels[:split]], ["value_normalized"])
    spec = spec.with_normalisation(stats)
    train, train_targets, _ = forecast_samples(spec, values[:split], times[:split])
    test, test_targets, origins = forecast_samples(spec, values[split:], times[split:])
    feeds, test_targets = _valid(test, test_targets)
    score_steps = 4
    window_labels = np.array([labels[split + o - score_steps : split + o].any() for o in origins])[test.valid]
    output = OutputSpec(
        kind="reconstruction",
        horizon_steps=0,
        target_channels=("value_normalized",),
        target_units=("1",),
        anomaly=AnomalySpec(threshold=1.0, score_steps=score_steps),
    )
    return Prepared(spec, output, train, train_targets, TestSplit(feeds, test_targets, window_labels))


def _train_targets(prepared: Prepared) -> np.ndarray:
    stats = prepared.spec.normalisation
    assert stats is not None
    return stats.transform(prepared.train_targets, prepared.spec.target_channels)


def keras_model(prepared: Prepared, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    spec = prepared.spec
    past = keras.Input((spec.input_steps, len(spec.past_feature_names)), name="past")
    inputs = {"past": past}
    x = keras.layers.Flatten()(keras.layers.Conv1D(8, 5, strides=2, activation="relu")(past))
    if spec.future_feature_names:
        future = keras.Input((spec.horizon_steps, len(spec.future_feature_names)), name="future")
        inputs["future"] = future
        x = keras.layers.Concatenate()([x, keras.layers.Flatten()(future)])
    steps = spec.horizon_steps or spec.input_steps
    x = keras.layers.Dense(64, activation="relu")(x)
    out = keras.layers.Reshape((steps, len(spec.target_channels)))(
        keras.layers.Dense(steps * len(spec.target_channels))(x)
    )
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mae")
    feeds = {k: v[prepared.train.valid] for k, v in prepared.train.as_feeds().items()}
    model.fit(feeds, _train_targets(prepared)[prepared.train.valid], epochs=EPOCHS, batch_size=64, verbose=0)
    return model


def torch_model(prepared: Prepared, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    spec = prepared.spec
    steps = spec.horizon_steps or spec.input_steps
    n_out = len(spec.target_channels)
    conv_len = (spec.input_steps - 5) // 2 + 1
    flat = 8 * conv_len + (spec.horizon_steps * len(spec.future_feature_names))

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(len(spec.past_feature_names), 8, 5, stride=2)
            self.hidden = torch.nn.Linear(flat, 64)
            self.out = torch.nn.Linear(64, steps * n_out)

        def forward(self, past, future=None):
            x = torch.relu(self.conv(past.transpose(1, 2))).flatten(1)
            if future is not None:
                x = torch.cat([x, future.flatten(1)], dim=1)
            return self.out(torch.relu(self.hidden(x))).reshape(-1, steps, n_out)

    net = Net()
    feeds = {k: torch.from_numpy(v[prepared.train.valid]) for k, v in prepared.train.as_feeds().items()}
    targets = torch.from_numpy(_train_targets(prepared)[prepared.train.valid])
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    count = len(targets)
    for _ in range(EPOCHS * 2):
        order = torch.randperm(count)
        for start in range(0, count, 64):
            idx = order[start : start + 64]
            optimiser.zero_grad()
            loss = (net(*[feeds[n][idx] for n in feeds]) - targets[idx]).abs().mean()
            loss.backward()
            optimiser.step()
    return net.eval()


def make_source(prepared: Prepared, framework: str, model) -> ExportSource:
    output = prepared.output
    source = ExportSource(
        framework=framework,  # type: ignore[arg-type]
        model=model,
        task="anomaly" if output.anomaly else "load_forecast",
        spec=prepared.spec,
        output=output,
        calibration={k: v[prepared.train.valid] for k, v in prepared.train.as_feeds().items()},
        test=prepared.test,
        provenance=Provenance(
            data_fingerprint="tests", config={"fixture": framework}, seed=0, library_versions={}
        ),
    )
    if output.anomaly is not None:
        # Threshold at the 95th percentile of training scores, as a trainer would calibrate it.
        train_out = source.predict(source.calibration)
        scores = anomaly_scores(train_out, source.calibration["past"], prepared.spec, output.anomaly)
        threshold = float(np.percentile(scores, 95))
        source.output = output.model_copy(
            update={"anomaly": AnomalySpec(threshold=threshold, score_steps=output.anomaly.score_steps)}
        )
    return source


def _train_one_epoch(config_path: Path, framework: str, out: Path) -> Path:
    from gridedge.trainer.api import train
    from gridedge.trainer.config import load_config

    config = load_config(config_path)
    config = config.model_copy(update={"training": config.training.model_copy(update={"epochs": 1})})
    train(config, framework, out, plots=False)  # type: ignore[arg-type]
    return out


def _small_shipped_config(name: str, start: str, end: str, epochs: int, trees: int) -> Any:
    import yaml

    from gridedge.trainer.config import parse_config

    folder = Path(__file__).resolve().parents[2] / "configs"
    raw = yaml.safe_load((folder / name).read_text())
    edits = {
        "data": {"start": start, "end": end},
        "protocol": {"train_stride": "6h"},
        "model": {"filters": 4, "hidden": 8, "decoder_channels": 2},
        "training": {"epochs": epochs},
        "baselines": {"lightgbm": {"n_estimators": trees, "train_stride": "12h"}},
    }
    for section, values in edits.items():
        raw.setdefault(section, {}).update(values)
    return parse_config(raw, base_dir=folder)


@pytest.fixture(scope="session")
def small_shipped_config() -> Callable[[str, str, str, int, int], Any]:
    """A shipped task config cut to train in seconds: ``small_shipped_config(file, start, end, epochs, trees)``
    (a data span, a tiny network, sparse training origins, a few LightGBM trees)."""
    return _small_shipped_config


@pytest.fixture(scope="session")
def train_one_epoch() -> Callable[[Path, str, Path], Path]:
    """Write a real trainer run folder: ``train_one_epoch(shipped_config, framework, out)``, one epoch."""
    return _train_one_epoch


@pytest.fixture(scope="session")
def w1_prepared() -> Prepared:
    return prepare_w1()


@pytest.fixture(scope="session")
def w3_prepared() -> Prepared:
    return prepare_w3()


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return new_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def w1_keras_source(w1_prepared: Prepared) -> ExportSource:
    return make_source(w1_prepared, "keras", keras_model(w1_prepared))


@pytest.fixture(scope="session")
def w1_torch_source(w1_prepared: Prepared) -> ExportSource:
    return make_source(w1_prepared, "torch", torch_model(w1_prepared))


@pytest.fixture(scope="session")
def w3_keras_source(w3_prepared: Prepared) -> ExportSource:
    return make_source(w3_prepared, "keras", keras_model(w3_prepared))


@pytest.fixture(scope="session")
def w3_torch_source(w3_prepared: Prepared) -> ExportSource:
    return make_source(w3_prepared, "torch", torch_model(w3_prepared))
