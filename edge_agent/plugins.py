"""The one registry shape of gridedge's plugins (runtimes, sensor sources): key -> backend class.

Each backend lives in one file with its key, its pydantic config (``type: Literal[KEY]``) and its class.
The agent config is a pydantic union discriminated on ``type``, so it imports every backend *module*; that
is cheap because a backend module imports only pydantic and numpy at module level and imports its heavy
library (pymodbus, pyserial, pyarrow, ai-edge-litert, onnxruntime) inside the class, when a config
actually builds one. The registry therefore maps a key straight to the class — there is no
``"module:Class"`` string to resolve — and a Pi still never imports a library its config does not use
(``tests/contracts/test_edge_light.py`` imports the config and checks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from edge_agent.errors import ConfigError

B = TypeVar("B")


class BackendRegistry(Generic[B]):
    """The backends of one kind of plugin, by config key."""

    def __init__(self, kind: str, backends: Mapping[str, B]) -> None:
        self.kind = kind
        self._backends = dict(backends)

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def get(self, key: str) -> B:
        """The backend registered under ``key``; an unknown key is a ConfigError listing the known ones."""
        if key not in self._backends:
            raise ConfigError(f"unknown {self.kind} {key!r}; use one of {sorted(self._backends)}")
        return self._backends[key]
