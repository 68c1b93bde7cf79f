"""Assemble an :class:`~edge_agent.agent.Agent` from a config file: reporter, model updater, commands."""

from __future__ import annotations

import logging
from pathlib import Path

from edge_agent import __version__
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.reporting.authentication import CommandGuard
from edge_agent.reporting.base import Reporter
from edge_agent.reporting.log import LogReporter
from edge_agent.updates import AgentCommands

logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


def build_agent(config_path: Path) -> Agent:
    """Load the config and wire the agent to MQTT (if configured) or to the device log."""
    config = load_config(config_path)
    reporter: Reporter
    if config.mqtt is None:
        reporter = LogReporter(config.site, config.device)
        return Agent(config, reporter)
    from edge_agent.reporting.mqtt import MqttReporter

    commands = AgentCommands(config_path)
    guard = CommandGuard.from_config(config.commands, config.site, config.device, config.state_dir)
    mqtt_reporter = MqttReporter(
        config.mqtt, control=commands, updater=commands, agent_version=__version__, guard=guard
    )
    agent = Agent(config, mqtt_reporter)
    commands.bind(agent)
    mqtt_reporter.start()
    return agent
