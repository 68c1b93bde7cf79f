"""The Keras backend: models, training loop, persistence and export hooks.

Functional models with inputs named ``past`` (and ``future`` for forecasts), built only from Conv1D,
Dense, Flatten, Reshape, Concatenate and Add: every op converts to TFLite and quantises to int8 (no
Lambda layers, no recurrent cells). The same hyperparameters build the PyTorch twin in ``models_torch``.
TensorFlow is imported in one place, :func:`import_keras`, which also quiets its C++ logging.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from edge_agent.bundle import Precision
from gridedge.trainer import quantiles
from gridedge.trainer.backends import MODEL_FILES, Feeds, FitResult, Framework, FrameworkBackend
from gridedge.trainer.config import TaskConfig
from gridedge.trainer.tasks import PreparedTask, Split

(MODEL_FILE,) = MODEL_FILES["keras"]
TFLITE_PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "dynamic-int8", "int8")
# TensorFlow's C++ runtime logs through absl straight to file descriptor 2: on import an absl preamble
# and oneDNN/CPU-feature INFO lines, during fit a spurious tf.data ERROR that lands inside the progress
# bar. None of it is actionable for a gridedge user (real failures raise Python exceptions, and Python
# warnings from Keras/TensorFlow are untouched); set TF_CPP_MIN_LOG_LEVEL=0 to see it all again.
_CPP_LOG_LEVEL = "3"
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")


@contextlib.contextmanager
def _without_import_chatter() -> Iterator[None]:
    """Hold back what C++ writes to stderr while TensorFlow loads; re-emit all but absl INFO lines.

    The import-time INFO lines are logged before absl is initialised, where TF_CPP_MIN_LOG_LEVEL does
    not reach them; warnings and errors logged then still come through.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = _worth_reading(capture.read().decode(errors="replace"))
            if kept:
                sys.stderr.write(kept)


def _worth_reading(text: str) -> str:
    """Drop the absl preamble and INFO records (with their continuation lines); keep everything else."""
    kept, in_info = [], False
    for line in text.splitlines(keepends=True):
        record = _ABSL_LINE.match(line)
        if record is not None:
            in_info = record.group(1) == "I"
        if line.strip() == _ABSL_PREAMBLE or in_info:
            continue
        kept.append(line)
    return "".join(kept)


def import_keras() -> Any:
    """Import Keras (TensorFlow beneath it) with TensorFlow's C++ log noise turned down; the one place."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _CPP_LOG_LEVEL)
    if "tensorflow" not in sys.modules:
        with _without_import_chatter():
            import tensorflow  # noqa: F401
    import keras

    return keras


def _configure(seed: int, threads: int) -> None:
    keras = import_keras()
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already started in this process; its thread pools are fixed by then
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_model(hp: dict[str, Any]) -> Any:
    """Build the Keras model described by ``hp`` (see :func:`trainer.metrics.hyperparameters`)."""
    keras = import_keras()
    layers = keras.layers

    w, h, f, k = hp["input_steps"], hp["horizon_steps"], hp["filters"], hp["kernel_size"]
    past = keras.Input(shape=(w, hp["past_features"]), name="past")
    if hp["architecture"] == "conv_autoencoder":
        x = layers.Conv1D(f, k, padding="same", activation="relu", name="enc_conv1")(past)
        x = layers.Conv1D(f, k, strides=2, padding="same", activation="relu", name="enc_conv2")(x)
        x = layers.Flatten(name="enc_flatten")(x)
        x = layers.Dense(hp["hidden"], activation="relu", name="enc_dense")(x)
        if hp["dropout"]:
            x = layers.Dropout(hp["dropout"], name="dropout")(x)
        z = layers.Dense(hp["latent_channels"], name="latent")(x)
        y = layers.Dense(w * hp["decoder_channels"], activation="relu", name="dec_dense")(z)
        y = layers.Reshape((w, hp["decoder_channels"]), name="dec_reshape")(y)
        y = layers.Conv1D(f, k, padding="same", activation="relu", name="dec_conv")(y)
        out = layers.Conv1D(hp["n_targets"], 1, name="reconstruction")(y)
        return keras.Model(inputs=past, outputs=out, name="conv_autoencoder")

    n_t, d = hp["n_targets"], hp["decoder_channels"]
    x = layers.Conv1D(f, k, padding="same", activation="relu", name="conv_in")(past)
    for dilation in (2, 4):
        residual = layers.Conv1D(
            f, k, padding="same", dilation_rate=dilation, activation="relu", name=f"tcn_d{dilation}"
        )(x)
        x = layers.Add(name=f"tcn_add{dilation}")([x, residual])
    x = layers.Conv1D(f, k, strides=4, padding="same", activation="relu", name="down1")(x)
    x = layers.Conv1D(f, k, strides=4, padding="same", activation="relu", name="down2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hp["hidden"], activation="relu", name="dense")(x)
    if hp["dropout"]:
        x = layers.Dropout(hp["dropout"], name="dropout")(x)
    z = layers.Reshape((h, d), name="horizon_reshape")(layers.Dense(h * d, name="horizon_dense")(x))
    # A linear path from the whole past window straight to the horizon (the "DLinear" part).
    mixed = layers.Conv1D(1, 1, name="mix")(past)
    linear = layers.Dense(h * n_t, name="linear")(layers.Flatten(name="mix_flatten")(mixed))
    linear = layers.Reshape((h, n_t), name="linear_reshape")(linear)
    inputs = [past]
    parts = [z, linear]
    if hp["future_features"]:
        future = keras.Input(shape=(h, hp["future_features"]), name="future")
        inputs.append(future)
        parts.append(future)
    y = layers.Concatenate(name="concat")(parts)
    y = layers.Conv1D(f, 3, padding="same", activation="relu", name="head_conv")(y)
    median_parts = [layers.Conv1D(n_t, 1, name="head_out")(y), linear]
    if hp["future_features"]:
        # A linear path from each horizon step's known-future inputs (seasonal-naive forecasts among them)
        # to its output: the rest of the network learns a correction of that blend.
        median_parts.append(layers.Conv1D(n_t, 1, name="future_skip")(future))
    median = layers.Add(name="forecast")(median_parts)
    levels = hp.get("quantiles") or []
    if not levels:
        return keras.Model(inputs=inputs, outputs=median, name="tcn_forecaster")
    # Quantiles: non-negative gaps between neighbouring levels, added outwards from the median by a
    # fixed matrix, so the levels cannot cross (gridedge.trainer.quantiles).
    gaps = layers.Conv1D(
        n_t * quantiles.gap_count(levels),
        1,
        activation="relu",
        bias_initializer=keras.initializers.Constant(quantiles.GAP_BIAS),
        name="head_gaps",
    )(y)
    parts = layers.Concatenate(name="quantile_parts")([median, gaps])
    mix = layers.Conv1D(n_t * len(levels), 1, use_bias=False, trainable=False, name="quantile_mix")
    out = mix(parts)
    mix.set_weights([quantiles.mixing_matrix(levels, n_t)[np.newaxis]])
    return keras.Model(inputs=inputs, outputs=out, name="tcn_forecaster")


def pinball_loss(levels: Sequence[float]) -> Callable[[Any, Any], Any]:
    """The Keras pinball loss of a quantile head: targets ``(N, H, T)``, outputs ``(N, H, T * Q)``."""
    ops = import_keras().ops
    tau = np.asarray(levels, dtype=np.float32)

    def pinball(y_true: Any, y_pred: Any) -> Any:
        split = ops.reshape(y_pred, (-1, ops.shape(y_pred)[1], ops.shape(y_true)[2], len(tau)))
        diff = ops.expand_dims(y_true, -1) - split
        return ops.mean(ops.maximum(tau * diff, (tau - 1) * diff), axis=(1, 2, 3))

    return pinball


def _feeds(split: Split) -> dict[str, NDArray[np.float32]] | NDArray[np.float32]:
    feeds = split.inputs.as_feeds()
    # A single-input model wants the bare array; a dict makes Keras warn about the input structure.
    return feeds if len(feeds) > 1 else feeds["past"]


class _EpochBar:
    def __init__(self, total: int, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="epoch", leave=False)

    def update(self, logs: dict[str, float]) -> None:
        self.bar.set_postfix(loss=f"{logs.get('loss', 0):.4f}", val=f"{logs.get('val_loss', 0):.4f}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def fit(config: TaskConfig, prepared: PreparedTask, hp: dict[str, Any]) -> FitResult:
    """Train with AdamW and early stopping on validation loss; the best epoch's weights are kept."""
    _configure(config.seed, config.training.threads)
    keras = import_keras()

    train_cfg = config.training
    model = build_model(hp)
    optimizer = keras.optimizers.AdamW(learning_rate=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    levels = hp.get("quantiles") or []
    model.compile(optimizer=optimizer, loss=pinball_loss(levels) if levels else train_cfg.loss)
    bar = _EpochBar(train_cfg.epochs, f"keras {config.name}")
    on_epoch: Callable[[int, dict[str, float]], None] = lambda _epoch, logs: bar.update(logs)  # noqa: E731
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=train_cfg.patience, restore_best_weights=True),
        keras.callbacks.LambdaCallback(on_epoch_end=on_epoch),
    ]
    started = time.perf_counter()
    history = model.fit(
        _feeds(prepared.train),
        prepared.train.targets_normalised,
        validation_data=(_feeds(prepared.val), prepared.val.targets_normalised),
        epochs=train_cfg.epochs,
        batch_size=train_cfg.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    bar.close()
    seconds = time.perf_counter() - started
    losses = history.history
    rows = [
        {"epoch": i + 1, "loss": float(losses["loss"][i]), "val_loss": float(losses["val_loss"][i])}
        for i in range(len(losses["loss"]))
    ]
    best = int(np.argmin(losses["val_loss"])) + 1
    return FitResult(model, len(rows), train_cfg.epochs, best, rows, seconds)


def predict(model: Any, feeds: Feeds, batch_size: int = 512) -> NDArray[np.float32]:
    """Normalised outputs for named feeds, without Keras' per-call overhead on small batches.

    A model built on one Input takes the bare array; one built on several (or on a dict of Inputs)
    takes a dict keyed by the Input names.
    """
    names = [t.name.split(":")[0] for t in model.inputs]
    structured = len(names) > 1 or isinstance(model.input, dict)
    arrays = {n: np.asarray(feeds[n], dtype=np.float32) for n in names}
    outputs = []
    for i in range(0, len(arrays[names[0]]), batch_size):
        batch = {n: a[i : i + batch_size] for n, a in arrays.items()}
        outputs.append(np.asarray(model(batch if structured else batch[names[0]], training=False)))
    return np.concatenate(outputs, axis=0).astype(np.float32)


class KerasBackend:
    """Keras 3 on TensorFlow: ``model.keras`` in the run folder; TFLite in-process, ONNX through tf2onnx."""

    key: Framework = "keras"
    model_files: tuple[str, ...] = MODEL_FILES["keras"]
    library_packages: tuple[str, ...] = ("tensorflow", "keras")

    def build(self, hp: dict[str, Any]) -> Any:
        return build_model(hp)

    def fit(self, config: TaskConfig, prepared: PreparedTask, hp: dict[str, Any]) -> FitResult:
        return fit(config, prepared, hp)

    def predict(self, model: Any, feeds: Feeds) -> NDArray[np.float32]:
        return predict(model, feeds)

    def save(self, model: Any, hp: dict[str, Any], run_dir: Path) -> None:
        model.save(run_dir / MODEL_FILE)

    def load(self, run_dir: Path) -> Any:
        # Inference only: the training loss (a pinball closure for quantile models) is not needed.
        return import_keras().models.load_model(run_dir / MODEL_FILE, compile=False)

    def count_params(self, model: Any) -> int:
        return int(model.count_params())

    def to_onnx(self, model: Any, path: Path, example: Feeds) -> Path:
        from gridedge.export import converters

        return converters.keras_to_onnx(model, path, {n: tuple(v.shape[1:]) for n, v in example.items()})

    def to_tflite(
        self, model: Any, calibration: Sequence[Feeds], workdir: Path, stem: str, notes: list[str]
    ) -> dict[Precision, Path]:
        from gridedge.export import converters

        files: dict[Precision, Path] = {}
        for precision in TFLITE_PRECISIONS:
            # Per-tensor dense weights: one file then serves LiteRT and tflite-runtime 2.14, and the
            # reference W1 int8 file is 32 % of fp32 instead of 37 % (MAE cost measured: 0.1 %).
            data = converters.keras_to_tflite(model, precision, calibration, disable_per_channel_dense=True)
            files[precision] = workdir / f"{stem}.{precision}.tflite"
            files[precision].write_bytes(data)
        return files


BACKEND: FrameworkBackend = KerasBackend()
