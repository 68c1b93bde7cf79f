"""Shared site models for the planning tests: the shipped off-grid example and small variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.planning.site_model import SiteModel, parse_site_model

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware_configs" / "sites" / "offgrid-household-site-model.yaml"


def example_raw() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return raw


@pytest.fixture
def offgrid_site() -> SiteModel:
    return parse_site_model(example_raw(), str(EXAMPLE))
