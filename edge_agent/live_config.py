"""The agent config in force, and its hot reload (the ``reload-config`` command).

Loop, anomaly, channel and clock settings apply from the next cycle; identity, sensors, runtime, bundle,
MQTT and the state folder need a restart, and a reload that changes them is refused by name. The parts
that follow a setting subscribe to the reload, so the command handler needs nothing but :meth:`apply`.
"""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError

RESTART_FIELDS = ("site", "device", "sensors", "runtime", "bundle", "mqtt", "state_dir", "commands")


class LiveConfig:
    """Holds the config in force and tells its subscribers when a reload replaces it."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._subscribers: list[Callable[[AgentConfig], None]] = []

    def subscribe(self, take: Callable[[AgentConfig], None]) -> None:
        """Call ``take`` with every config a reload applies."""
        self._subscribers.append(take)

    def apply(self, config: AgentConfig) -> str:
        """Take over a re-read config (call between cycles); raises ConfigError for changes needing a restart."""
        changed = [name for name in RESTART_FIELDS if getattr(config, name) != getattr(self.config, name)]
        if changed:
            raise ConfigError(f"changes to {changed} need an agent restart (systemctl restart gridedge-agent)")
        self.config = config
        for take in self._subscribers:
            take(config)
        return "loop, anomaly, channel and clock settings applied"
