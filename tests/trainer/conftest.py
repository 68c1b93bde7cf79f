"""Tiny versions of the shipped task configs, small enough to train in seconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridedge.provision import deep_merge
from gridedge.trainer.config import TaskConfig, parse_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

TINY: dict[str, dict[str, Any]] = {
    "w1_load": {
        "data": {"start": "2007-01-01", "end": "2007-03-10"},
        "protocol": {"train_stride": "6h"},
        "features": {"input_window": "2d", "horizon": "24h"},
        "baselines": {"lightgbm": {"n_estimators": 20, "train_stride": "12h"}},
    },
    "w2_pv": {
        "data": {"start": "2013-05-01", "end": "2013-07-10"},
        "protocol": {"train_stride": "6h"},
        "baselines": {"lightgbm": {"n_estimators": 20, "train_stride": "12h"}},
    },
    "w3_anomaly": {
        "data": {"start": "2013-04-01", "end": "2013-05-15"},
        "anomaly": {"train_stride": "2h"},
    },
}
TINY_MODEL = {"filters": 4, "hidden": 8, "decoder_channels": 2, "latent_channels": 2}
TINY_TRAINING = {"epochs": 2, "batch_size": 64, "patience": 2}


def _shipped(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    return data


def _tiny_dict(name: str, **overrides: Any) -> dict[str, Any]:
    """A tiny config whose data paths are absolute, so it can be written to any folder and still find them."""
    data = deep_merge(_shipped(name), TINY[name])
    data["data"]["path"] = str(CONFIGS / data["data"]["path"])
    for item in data.get("anomaly", {}).get("labelled", []):
        item["path"] = str(CONFIGS / item["path"])
    data = deep_merge(data, {"model": TINY_MODEL, "training": TINY_TRAINING})
    return deep_merge(data, overrides)


@pytest.fixture
def tiny() -> Callable[..., TaskConfig]:
    """Build a tiny, validated task config: ``tiny("w1_load", seed=3)``."""

    def build(name: str, **overrides: Any) -> TaskConfig:
        return parse_config(_tiny_dict(name, **overrides))

    return build


@pytest.fixture
def tiny_dict() -> Callable[..., dict[str, Any]]:
    """The raw mapping of a tiny config, for tests that write YAML or break fields."""
    return _tiny_dict


@pytest.fixture
def shipped() -> Callable[[str], dict[str, Any]]:
    """The raw mapping of a shipped config in configs/."""
    return _shipped


@pytest.fixture
def configs_dir() -> Path:
    return CONFIGS
