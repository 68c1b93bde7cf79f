"""int8 calibration covers what the device will see, not only normal training windows: the faults an anomaly
model looks for, and a forecaster's inputs shifted in level (a site whose load moved)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from edge_agent.runtimes.ort import OnnxRuntime, OnnxRuntimeConfig
from gridedge.export import converters
from gridedge.export.evaluate import predict_batched
from gridedge.export.pipeline import level_channels
from gridedge.fleet.retrain import RETRAIN_LEVEL_MARGIN_STD

pytestmark = pytest.mark.slow


def test_fault_windows_spike_past_the_training_range_on_both_sides(w3_keras_source) -> None:
    past = w3_keras_source.calibration["past"]
    windows = converters.fault_windows(w3_keras_source.calibration, [0], margin_std=4.0, count=10)
    assert len(windows) == 10
    spikes = np.concatenate([w["past"] for w in windows])
    assert spikes.max() == pytest.approx(past.max() + 4.0)
    assert spikes.min() == pytest.approx(past.min() - 4.0)
    # One spike per window; every other sample is a real training sample.
    for window in windows:
        outside = (window["past"] > past.max()) | (window["past"] < past.min())
        assert outside.sum() == 1


def test_int8_input_range_covers_the_fault_margin(w3_keras_source, tmp_path) -> None:
    feeds = w3_keras_source.calibration
    calibration = converters.calibration_batches(feeds) + converters.fault_windows(feeds, [0], margin_std=4.0)
    path = tmp_path / "w3.int8.tflite"
    path.write_bytes(converters.keras_to_tflite(w3_keras_source.model, "int8", calibration))
    runtime = LiteRTRuntime(path, LiteRTConfig(), w3_keras_source.input_names, w3_keras_source.input_shapes)
    scale, zero_point = runtime.input_quantisation["past"]
    representable = (scale * (-128 - zero_point), scale * (127 - zero_point))
    assert representable[0] <= feeds["past"].min() - 4.0 + scale
    assert representable[1] >= feeds["past"].max() + 4.0 - scale


def test_shifted_windows_reach_the_margin_within_the_physical_range(w1_torch_source) -> None:
    past = w1_torch_source.calibration["past"]
    (channel,) = level_channels(w1_torch_source.spec)  # the target: 0-15 kW
    windows = converters.shifted_windows(w1_torch_source.calibration, [channel], 2.0, 10)
    shifted = np.concatenate([w["past"] for w in windows])
    assert shifted[..., 0].max() == pytest.approx(past[..., 0].max() + 2.0, abs=1e-5)
    # Down, the shift stops at 0 kW: the household's least is closer to it than 2 std.
    assert past[..., 0].min() - 2.0 < channel.low < past[..., 0].min()
    assert shifted[..., 0].min() == pytest.approx(channel.low, abs=1e-5)
    for n, window in zip(np.linspace(0, len(past) - 1, num=10).astype(int), windows, strict=True):
        level = window["past"][0, :, 0] - past[n, :, 0]
        moved = window["past"][0, :, 0] > channel.low + 1e-6
        assert np.ptp(level[moved]) < 1e-5  # a level shift (clipped at the range), not a reshaped series
        np.testing.assert_array_equal(window["past"][..., 1:], past[n : n + 1, :, 1:])  # calendar untouched


def test_int8_forecaster_follows_a_level_shift_past_the_training_range(w1_torch_source, tmp_path) -> None:
    """A site whose load moved 1.5 std above anything in training (drift below the retrain threshold): the int8
    model calibrated as `fleet retrain` does stays within an output step of the float model instead of clipping
    at the training maximum."""
    source = w1_torch_source
    fp32 = tmp_path / "w1.fp32.onnx"
    source.backend.to_onnx(source.model, fp32, {n: source.test.feeds[n][:1] for n in source.input_names})
    calibration = converters.calibration_batches(source.calibration) + converters.shifted_windows(
        source.calibration, level_channels(source.spec), RETRAIN_LEVEL_MARGIN_STD
    )
    int8 = converters.quantise_onnx(fp32, tmp_path / "w1.int8.onnx", "static", calibration)
    feeds = {name: value.copy() for name, value in source.test.feeds.items()}
    top = source.calibration["past"][..., 0].max() + 1.5
    feeds["past"][..., 0] += top - feeds["past"][..., 0].max(axis=1, keepdims=True)
    runtime = OnnxRuntime(int8, OnnxRuntimeConfig(providers=("CPUExecutionProvider",)), source.input_names)
    error = np.abs(predict_batched(runtime.run, feeds) - source.predict(feeds)).mean()
    step = converters.onnx_output_scale(int8)
    assert step is not None and error < step, (error, step)
