"""int8 calibration of anomaly models covers the faults they look for, not only normal training windows."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from gridedge.export import converters

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
