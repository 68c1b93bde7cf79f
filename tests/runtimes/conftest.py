"""Real model files for the runtime tests: a tiny two-input Keras model converted to TFLite and ONNX.

The model follows the I/O contract (inputs "past" (N, 8, 3) and "future" (N, 4, 2), output (N, 4, 1));
its weights are random but fixed, which is all a runtime needs to be checked against the float model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

PAST, FUTURE = (8, 3), (4, 2)


@dataclass
class TinyModels:
    keras_model: object
    feeds: dict[str, np.ndarray]
    tflite_fp32: Path
    tflite_int8: Path
    onnx_fp32: Path
    onnx_int8: Path

    def reference(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.keras_model(feeds, training=False))  # type: ignore[operator]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    import keras

    from gridedge.export import converters

    keras.utils.set_random_seed(1)
    past = keras.Input(PAST, name="past")
    future = keras.Input(FUTURE, name="future")
    convolved = keras.layers.Conv1D(4, 3, activation="relu")(past)
    x = keras.layers.Concatenate()([keras.layers.Flatten()(convolved), keras.layers.Flatten()(future)])
    x = keras.layers.Dense(16, activation="relu", bias_initializer="random_normal")(x)
    out = keras.layers.Reshape((4, 1))(keras.layers.Dense(4)(x))
    model = keras.Model({"past": past, "future": future}, out)
    rng = np.random.default_rng(0)
    feeds = {
        "past": rng.normal(size=(64, *PAST)).astype(np.float32),
        "future": rng.normal(size=(64, *FUTURE)).astype(np.float32),
    }
    calibration = converters.calibration_batches(feeds)
    folder = tmp_path_factory.mktemp("tiny")
    paths = {}
    for precision in ("fp32", "int8"):
        path = folder / f"tiny.{precision}.tflite"
        path.write_bytes(converters.keras_to_tflite(model, precision, calibration))
        paths[f"tflite_{precision}"] = path
    onnx_fp32 = converters.keras_to_onnx(model, folder / "tiny.fp32.onnx", {"past": PAST, "future": FUTURE})
    onnx_int8 = converters.quantise_onnx(onnx_fp32, folder / "tiny.int8.onnx", "static", calibration)
    return TinyModels(model, feeds, paths["tflite_fp32"], paths["tflite_int8"], onnx_fp32, onnx_int8)
