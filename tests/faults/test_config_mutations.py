"""Random damage to an agent config: it loads, or a ConfigError names the file; never another exception.

The base is the shipped simulated-household site as provisioned; each example changes one thing in it
(a value replaced by junk of another type, a key removed, an unknown key added) or replaces the whole
file with random text or bytes.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from gridedge.sites import site_values

from .conftest import scalar_values

FAULTS = settings.get_profile("gridedge-faults")


def _base() -> dict[str, Any]:
    raw = site_values("simulated-household", 5020)
    raw.update(
        {
            "site": "faults-site",
            "device": "ctrl-1",
            "state_dir": "state",
            "bundle": {"path": "bundle", "public_key": "keys/bundle-signing.pub"},
            "runtime": {"type": "litert"},
        }
    )
    return raw


BASE = _base()
junk = st.one_of(
    scalar_values(non_finite=True, text_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


PATHS = _paths(BASE)


def _mutated(path: tuple[Any, ...], how: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    parent = raw
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "replace":
        parent[last] = value
    elif how == "delete" and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"unknown_{last}"] = value
    return raw


def _load_or_config_error(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config_file = Path(folder) / "agent.yaml"
        config_file.write_bytes(text)
        try:
            load_config(config_file)
        except ConfigError as exc:
            assert str(config_file) in str(exc) or "agent.yaml" in str(exc), str(exc)


@FAULTS
@given(path=st.sampled_from(PATHS), how=st.sampled_from(["replace", "delete", "add"]), value=junk)
def test_one_changed_field_loads_or_names_the_file(path: tuple[Any, ...], how: str, value: Any) -> None:
    _load_or_config_error(yaml.safe_dump(_mutated(path, how, value)).encode())


@FAULTS
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_a_file_of_random_bytes_or_text_names_the_file(data: bytes) -> None:
    _load_or_config_error(data)


@FAULTS
@given(cut=st.floats(0.0, 1.0))
def test_a_config_cut_short_names_the_file(cut: float) -> None:
    text = yaml.safe_dump(BASE).encode()
    _load_or_config_error(text[: int(len(text) * cut)])
