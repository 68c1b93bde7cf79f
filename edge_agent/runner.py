"""Assemble an :class:`~edge_agent.agent.Agent` from a config file: reporter, remote commands, agent.

The order is what breaks the old cycle: the agent's core (model manager, counters, config in force) is
built first, the commands on it, the reporter carrying the commands, and the agent last.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_agent import __version__
from edge_agent.agent import Agent, AgentCore
from edge_agent.config import load_config
from edge_agent.reporting.authentication import CommandGuard
from edge_agent.reporting.log import LogReporter
from edge_agent.updates import AgentCommands

logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


def build_agent(config_path: Path) -> Agent:
    """Load the config and wire the agent to MQTT (if configured) or to the device log."""
    config = load_config(config_path)
    if config.mqtt is None:
        return Agent(config, LogReporter(config.site, config.device))
    from edge_agent.reporting.mqtt import MqttReporter

    core = AgentCore.from_config(config)
    commands = AgentCommands(core.models, core.health, core.live.apply, config_path, core.reasons)
    guard = CommandGuard.from_config(config.commands, config.site, config.device, config.state_dir)
    reporter = MqttReporter(
        config.mqtt,
        control=commands,
        updater=commands,
        agent_version=__version__,
        guard=guard,
        health_reasons=core.reasons,
    )
    agent = Agent(config, reporter, core=core)
    reporter.start()
    return agent
