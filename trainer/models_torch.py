"""The PyTorch backend: twins of the Keras models, their training loop, persistence and export hooks.

Modules take ``forward(past, future=None)`` with time-major ``(N, T, F)`` tensors like the Keras models
and the device runtimes, use only Conv1d/Linear/ReLU/reshape/cat (ONNX opset 17, static int8 QDQ), and
are rebuilt from ``model_config.json`` by :func:`build_module`.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm.auto import tqdm

from edge_agent.bundle import Precision
from gridedge.trainer import quantiles
from gridedge.trainer.backends import MODEL_FILES, Feeds, FitResult, Framework, FrameworkBackend
from gridedge.trainer.config import TaskConfig
from gridedge.trainer.tasks import PreparedTask

STATE_FILE, CONFIG_FILE = MODEL_FILES["torch"]


def _same(kernel: int, dilation: int = 1) -> int:
    return dilation * (kernel - 1) // 2


class TCNForecaster(nn.Module):
    """Dilated conv encoder over the past window + linear skip path + conv head over the horizon."""

    def __init__(self, hp: dict[str, Any]) -> None:
        super().__init__()
        w, h, f, k = hp["input_steps"], hp["horizon_steps"], hp["filters"], hp["kernel_size"]
        fp, ff, n_t, d = hp["past_features"], hp["future_features"], hp["n_targets"], hp["decoder_channels"]
        self.h, self.n_t, self.d = h, n_t, d
        self.conv_in = nn.Conv1d(fp, f, k, padding=_same(k))
        self.tcn = nn.ModuleList([nn.Conv1d(f, f, k, padding=_same(k, dil), dilation=dil) for dil in (2, 4)])
        self.down1 = nn.Conv1d(f, f, k, stride=4, padding=_same(k))
        self.down2 = nn.Conv1d(f, f, k, stride=4, padding=_same(k))
        length = w
        for _ in range(2):
            length = (length + 2 * _same(k) - k) // 4 + 1
        self.dense = nn.Linear(f * length, hp["hidden"])
        self.dropout = nn.Dropout(hp["dropout"])
        self.horizon_dense = nn.Linear(hp["hidden"], h * d)
        self.mix = nn.Conv1d(fp, 1, 1)
        self.linear = nn.Linear(w, h * n_t)
        self.head_conv = nn.Conv1d(d + n_t + ff, f, 3, padding=1)
        self.head_out = nn.Conv1d(f, n_t, 1)
        # Linear path from each horizon step's known-future inputs to its output (as in the Keras twin).
        self.future_skip = nn.Conv1d(ff, n_t, 1) if ff else None
        self.relu = nn.ReLU()
        levels = hp.get("quantiles") or []
        self.quantile_head = bool(levels)
        if levels:
            # Non-negative gaps between neighbouring levels, added outwards from the median by a fixed
            # matrix, so the levels cannot cross (gridedge.trainer.quantiles); same head as the Keras twin.
            self.head_gaps = nn.Conv1d(f, n_t * quantiles.gap_count(levels), 1)
            assert self.head_gaps.bias is not None
            nn.init.constant_(self.head_gaps.bias, quantiles.GAP_BIAS)
            matrix = torch.from_numpy(quantiles.mixing_matrix(levels, n_t))
            self.quantile_mix = nn.Linear(matrix.shape[0], matrix.shape[1], bias=False)
            self.quantile_mix.weight = nn.Parameter(matrix.T.contiguous(), requires_grad=False)

    def forward(self, past: torch.Tensor, future: torch.Tensor | None = None) -> torch.Tensor:
        x_in = past.permute(0, 2, 1)
        x = self.relu(self.conv_in(x_in))
        for conv in self.tcn:
            x = x + self.relu(conv(x))
        x = self.relu(self.down2(self.relu(self.down1(x))))
        x = self.dropout(self.relu(self.dense(x.flatten(1))))
        z = self.horizon_dense(x).reshape(-1, self.h, self.d)
        linear = self.linear(self.mix(x_in).flatten(1)).reshape(-1, self.h, self.n_t)
        parts = [z, linear] if future is None else [z, linear, future]
        y = torch.cat(parts, dim=2).permute(0, 2, 1)
        y = self.relu(self.head_conv(y))
        median = self.head_out(y).permute(0, 2, 1) + linear
        if self.future_skip is not None and future is not None:
            median = median + self.future_skip(future.permute(0, 2, 1)).permute(0, 2, 1)
        if not self.quantile_head:
            return median
        gaps = self.relu(self.head_gaps(y)).permute(0, 2, 1)
        return self.quantile_mix(torch.cat([median, gaps], dim=2))


class ConvAutoencoder(nn.Module):
    """Conv encoder -> dense bottleneck -> dense + conv decoder, reconstructing the target channel(s)."""

    def __init__(self, hp: dict[str, Any]) -> None:
        super().__init__()
        w, f, k, fp = hp["input_steps"], hp["filters"], hp["kernel_size"], hp["past_features"]
        self.w, self.d = w, hp["decoder_channels"]
        self.enc_conv1 = nn.Conv1d(fp, f, k, padding=_same(k))
        self.enc_conv2 = nn.Conv1d(f, f, k, stride=2, padding=_same(k))
        length = (w + 2 * _same(k) - k) // 2 + 1
        self.enc_dense = nn.Linear(f * length, hp["hidden"])
        self.dropout = nn.Dropout(hp["dropout"])
        self.latent = nn.Linear(hp["hidden"], hp["latent_channels"])
        self.dec_dense = nn.Linear(hp["latent_channels"], w * self.d)
        self.dec_conv = nn.Conv1d(self.d, f, k, padding=_same(k))
        self.reconstruction = nn.Conv1d(f, hp["n_targets"], 1)
        self.relu = nn.ReLU()

    def forward(self, past: torch.Tensor, future: torch.Tensor | None = None) -> torch.Tensor:
        x = self.relu(self.enc_conv1(past.permute(0, 2, 1)))
        x = self.relu(self.enc_conv2(x))
        x = self.dropout(self.relu(self.enc_dense(x.flatten(1))))
        y = self.relu(self.dec_dense(self.latent(x))).reshape(-1, self.w, self.d).permute(0, 2, 1)
        y = self.reconstruction(self.relu(self.dec_conv(y)))
        return y.permute(0, 2, 1)


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "tcn_forecaster": TCNForecaster,
    "conv_autoencoder": ConvAutoencoder,
}


def build_module(hp: dict[str, Any]) -> nn.Module:
    """Rebuild a module from its hyperparameters (the content of model_config.json)."""
    return ARCHITECTURES[hp["architecture"]](hp)


def _tensors(feeds: Feeds) -> tuple[torch.Tensor, torch.Tensor | None]:
    past = torch.from_numpy(np.ascontiguousarray(feeds["past"], dtype=np.float32))
    future = feeds.get("future")
    return past, None if future is None else torch.from_numpy(np.ascontiguousarray(future, dtype=np.float32))


def predict(model: nn.Module, feeds: Feeds, batch_size: int = 1024) -> NDArray[np.float32]:
    """Normalised outputs for named feeds (eval mode, no gradients)."""
    model.eval()
    past, future = _tensors(feeds)
    outputs = []
    with torch.no_grad():
        for i in range(0, len(past), batch_size):
            fut = None if future is None else future[i : i + batch_size]
            outputs.append(model(past[i : i + batch_size], fut).numpy())
    return np.concatenate(outputs, axis=0).astype(np.float32)


def pinball_loss(levels: Sequence[float]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The PyTorch pinball loss of a quantile head: targets ``(N, H, T)``, outputs ``(N, H, T * Q)``."""
    tau = torch.tensor(list(levels), dtype=torch.float32)

    def pinball(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        split = output.reshape(*target.shape, len(tau))
        diff = target.unsqueeze(-1) - split
        return torch.maximum(tau * diff, (tau - 1) * diff).mean()

    return pinball


def fit(config: TaskConfig, prepared: PreparedTask, hp: dict[str, Any]) -> FitResult:
    """Train with AdamW and early stopping on validation loss; the best epoch's weights are kept."""
    train_cfg = config.training
    torch.manual_seed(config.seed)
    torch.set_num_threads(train_cfg.threads)
    model = build_module(hp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay)
    levels = hp.get("quantiles") or []
    point_loss = nn.L1Loss() if train_cfg.loss == "mae" else nn.MSELoss()
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = pinball_loss(levels) if levels else point_loss
    past, future = _tensors(prepared.train.inputs.as_feeds())
    target = torch.from_numpy(prepared.train.targets_normalised)
    val_feeds = prepared.val.inputs.as_feeds()
    val_target = prepared.val.targets_normalised
    order_rng = np.random.default_rng(config.seed)
    best_loss, best_state, best_epoch, stale = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(1, train_cfg.epochs + 1), desc=f"torch {config.name}", unit="epoch", leave=False)
    for epoch in bar:
        model.train()
        order = torch.from_numpy(order_rng.permutation(len(past)))
        total = 0.0
        for i in range(0, len(order), train_cfg.batch_size):
            idx = order[i : i + train_cfg.batch_size]
            optimizer.zero_grad()
            out = model(past[idx], None if future is None else future[idx])
            loss = loss_fn(out, target[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        val_out = predict(model, val_feeds)
        if levels:
            val_loss = quantiles.pinball_raw(val_out, val_target, levels)
        else:
            diff = val_out - val_target
            val_loss = float(np.mean(np.abs(diff)) if train_cfg.loss == "mae" else np.mean(diff**2))
        history.append({"epoch": epoch, "loss": total / len(past), "val_loss": val_loss})
        bar.set_postfix(loss=f"{total / len(past):.4f}", val=f"{val_loss:.4f}")
        if val_loss < best_loss:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= train_cfg.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, len(history), train_cfg.epochs, best_epoch, history, time.perf_counter() - started)


class TorchBackend:
    """PyTorch: ``model.pt`` + ``model_config.json`` in the run folder; ONNX in-process, TFLite via litert-torch."""

    key: Framework = "torch"
    model_files: tuple[str, ...] = MODEL_FILES["torch"]
    library_packages: tuple[str, ...] = ("torch",)

    def build(self, hp: dict[str, Any]) -> nn.Module:
        return build_module(hp)

    def fit(self, config: TaskConfig, prepared: PreparedTask, hp: dict[str, Any]) -> FitResult:
        return fit(config, prepared, hp)

    def predict(self, model: nn.Module, feeds: Feeds) -> NDArray[np.float32]:
        return predict(model, feeds)

    def save(self, model: nn.Module, hp: dict[str, Any], run_dir: Path) -> None:
        torch.save(model.state_dict(), run_dir / STATE_FILE)
        (run_dir / CONFIG_FILE).write_text(
            json.dumps({"architecture": hp["architecture"], "hyperparameters": hp}, indent=2, sort_keys=True) + "\n"
        )

    def load(self, run_dir: Path) -> nn.Module:
        """Rebuild the module from model_config.json and load model.pt into it (eval mode)."""
        saved = json.loads((run_dir / CONFIG_FILE).read_text())
        model = build_module(saved["hyperparameters"])
        model.load_state_dict(torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True))
        model.eval()
        return model

    def count_params(self, model: nn.Module) -> int:
        return int(sum(p.numel() for p in model.parameters()))

    def to_onnx(self, model: nn.Module, path: Path, example: Feeds) -> Path:
        from gridedge.export import converters

        return converters.torch_to_onnx(model, path, {n: v[:1] for n, v in example.items()})

    def to_tflite(
        self, model: nn.Module, calibration: Sequence[Feeds], workdir: Path, stem: str, notes: list[str]
    ) -> dict[Precision, Path]:
        from gridedge.export import torch_tflite

        # litert-torch runs in its own venv (export.torch_tflite); it writes fp32 and full-integer int8.
        converted = torch_tflite.torch_to_tflite(model, calibration, workdir, stem)
        notes.append(
            "PyTorch -> TFLite converted in the litert-torch venv: "
            + ", ".join(f"{k} {v}" for k, v in converted.versions.items())
            + f" (fixed batch 1; conversion seconds {converted.seconds})"
        )
        files: dict[Precision, Path] = {precision: path for precision, path in converted.files.items()}
        return files


BACKEND: FrameworkBackend = TorchBackend()
