"""The agent as a systemd service: READY/WATCHDOG/STOPPING notifications and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.agent import Agent, AgentCore
from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from edge_agent.reporting.base import MemoryReporter
from edge_agent.updates import AgentCommands
from gridedge.sim.site import SimulatedSite, SiteServer

pytestmark = [pytest.mark.modbus, pytest.mark.slow]


def test_sigterm_stops_cleanly_after_notifying_systemd(tmp_path: Path, make_config: Any, exported: Any) -> None:
    notify_path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(notify_path))
    systemd.settimeout(0.5)
    with SiteServer(SimulatedSite(speed=3600.0), port=0).start_in_thread() as site:
        config = make_config(tmp_path, exported.keras, exported.keys, site.port, "litert", loop={"cadence_s": 0.05})
        path = tmp_path / "config.yaml"
        path.write_text(config.model_dump_json())
        agent = subprocess.Popen(
            [sys.executable, "-m", "gridedge.cli", "agent", "run", "--config", str(path)],
            env={"NOTIFY_SOCKET": str(notify_path), "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        messages: list[str] = []
        deadline = time.monotonic() + 120
        while messages.count("WATCHDOG=1") < 5 and time.monotonic() < deadline:
            try:
                messages.append(systemd.recv(1024).decode())
            except TimeoutError:
                assert agent.poll() is None, agent.communicate()[1][-2000:]
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
        while True:
            try:
                messages.append(systemd.recv(1024).decode())
            except TimeoutError:
                break
    systemd.close()
    assert agent.returncode == 0, stderr[-2000:]
    assert messages[0] == "READY=1"
    assert messages.count("WATCHDOG=1") >= 5
    assert messages[-1] == "STOPPING=1"
    assert "signal 15: stopping after this cycle" in stderr


def test_reload_config_applies_loop_settings_and_refuses_what_needs_a_restart(
    tmp_path: Path, make_config: Any, exported: Any
) -> None:
    path = tmp_path / "config.yaml"
    raw = make_config(tmp_path, exported.keras, exported.keys, 5020, "litert").model_dump(mode="json")
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    core = AgentCore.from_config(config)
    commands = AgentCommands(core.models, core.health, core.live.apply, path)
    agent = Agent(config, MemoryReporter(), core=core)

    raw["loop"]["latency_budget_ms"] = 25.0
    raw["anomaly"]["raise_after"] = 5
    path.write_text(yaml.safe_dump(raw))
    assert "applied" in commands.reload_config()
    assert agent.supervisor.policy.latency_budget_ms == 25.0 and agent.config.anomaly.raise_after == 5

    raw["sensors"][0]["port"] = 6020
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"changes to \['sensors'\] need an agent restart"):
        commands.reload_config()
    assert agent.config.sensors[0].port == 5020
