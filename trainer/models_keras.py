"""Keras models and training loop.

Functional models with inputs named ``past`` (and ``future`` for forecasts), built only from Conv1D,
Dense, Flatten, Reshape, Concatenate and Add: every op converts to TFLite and quantises to int8 (no
Lambda layers, no recurrent cells). The same hyperparameters build the PyTorch twin in ``models_torch``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from gridedge.trainer.config import TaskConfig
from gridedge.trainer.tasks import PreparedTask, Split

MODEL_FILE = "model.keras"


@dataclass
class KerasFit:
    model: Any
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]]
    seconds: float


def _configure(seed: int, threads: int) -> None:
    import keras
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
    import keras
    from keras import layers

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
    y = layers.Conv1D(n_t, 1, name="head_out")(y)
    out = layers.Add(name="forecast")([y, linear])
    return keras.Model(inputs=inputs, outputs=out, name="tcn_forecaster")


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


def fit(config: TaskConfig, prepared: PreparedTask, hp: dict[str, Any]) -> KerasFit:
    """Train with AdamW and early stopping on validation loss; the best epoch's weights are kept."""
    _configure(config.seed, config.training.threads)
    import keras

    train_cfg = config.training
    model = build_model(hp)
    optimizer = keras.optimizers.AdamW(learning_rate=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    model.compile(optimizer=optimizer, loss=train_cfg.loss)
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
    return KerasFit(model, len(rows), best, rows, seconds)


def predict(model: Any, feeds: dict[str, NDArray[np.float32]], batch_size: int = 512) -> NDArray[np.float32]:
    """Normalised outputs for named feeds, without Keras' per-call overhead on small batches."""
    names = [t.name.split(":")[0] for t in model.inputs]
    ordered = [np.asarray(feeds[n], dtype=np.float32) for n in names]
    n = len(ordered[0])
    outputs = [
        np.asarray(
            model(
                [a[i : i + batch_size] for a in ordered] if len(ordered) > 1 else ordered[0][i : i + batch_size],
                training=False,
            )
        )
        for i in range(0, n, batch_size)
    ]
    return np.concatenate(outputs, axis=0).astype(np.float32)


def save(model: Any, out_dir: Path) -> Path:
    path = out_dir / MODEL_FILE
    model.save(path)
    return path


def load(out_dir: Path) -> Any:
    import keras

    return keras.models.load_model(out_dir / MODEL_FILE)


def count_params(model: Any) -> int:
    return int(model.count_params())
