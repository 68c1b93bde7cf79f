"""Model updates on the device: verify, self-test, swap atomically, keep the previous bundle, roll back.

Installed bundles live in ``<state_dir>/bundles/<name>-<version>-<id>/``; two symlinks say which is
``current`` and which is ``previous``. A symlink is replaced with one ``rename``, so a power cut during an
update leaves either the old or the new model active, never a mix. The agent starts from ``current``
when it exists (an update survives a restart), else from the provisioned ``bundle.path``.

After a swap the new model is on probation for its first inferences: if it degrades the agent (NaN,
exception, latency), :meth:`BundleStore` swaps back and the agent reports the rollback.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import JsonValue

from edge_agent.bundle import Bundle, read_bundle, unpack_archive
from edge_agent.errors import BundleError, ConfigError, SelfTestError
from edge_agent.fsutil import fsync_dir
from edge_agent.keys import load_public_key
from edge_agent.messages import AlertContent, ModelInfo
from edge_agent.reporting.commands import UpdateOutcome
from edge_agent.runtimes import load_model, run_self_test
from edge_agent.versions import refuse_downgrade

if TYPE_CHECKING:
    from edge_agent.agent import Agent

logger = logging.getLogger(__name__)
PROBATION_INFERENCES = 3


def _info(bundle: Bundle | None) -> ModelInfo:
    if bundle is None:
        return ModelInfo()
    return ModelInfo(name=bundle.manifest.name, version=bundle.manifest.version)


class BundleStore:
    """The installed bundles of one device and the ``current``/``previous`` links between them."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "bundles"
        self.current_link = self.root / "current"
        self.previous_link = self.root / "previous"

    def current(self) -> Path | None:
        return self.current_link.resolve() if self.current_link.is_symlink() else None

    def previous(self) -> Path | None:
        return self.previous_link.resolve() if self.previous_link.is_symlink() else None

    def stage(self, archive: Path) -> Path:
        """Unpack an archive into a fresh folder of the store (not yet trusted, not yet active)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return unpack_archive(archive, self.root / f"incoming-{time.time_ns()}")

    def install(self, staged: Path, bundle: Bundle) -> Path:
        """Give a verified staged bundle its final name inside the store."""
        digest = bundle.manifest.artefacts[0].sha256[:8]
        final = self.root / f"{bundle.manifest.name}-{bundle.manifest.version}-{digest}"
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
        fsync_dir(self.root)
        return final

    def activate(self, target: Path, previous: Path | None) -> None:
        """Point ``current`` at ``target`` and ``previous`` at what ran before, each with one rename."""
        if previous is not None:
            self._point(self.previous_link, previous)
        self._point(self.current_link, target)
        self._prune()

    def _point(self, link: Path, target: Path) -> None:
        temporary = link.with_name(f".{link.name}.{os.getpid()}")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        temporary.replace(link)
        fsync_dir(self.root)

    def _prune(self) -> None:
        """Keep only the current and previous bundles (a device's disk is small)."""
        keep = {p for p in (self.current(), self.previous()) if p is not None}
        for path in self.root.iterdir():
            if path.is_dir() and not path.is_symlink() and path.resolve() not in keep:
                shutil.rmtree(path, ignore_errors=True)


class AgentCommands:
    """The agent's side of the remote commands: model updates, rollback, status and config reload.

    Commands arrive on the reporter's thread; every change to the running model happens under the
    agent's lock, between two cycles. The reporter is built before the agent (the agent reports through
    it), so the agent is attached afterwards with :meth:`bind`.
    """

    def __init__(self, config_path: Path | None = None) -> None:
        self.config_path = config_path
        self._agent: Agent | None = None

    def bind(self, agent: Agent) -> None:
        """Attach the agent whose model and config the commands act on."""
        self._agent = agent

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            raise ConfigError("the agent is still starting; retry the command in a few seconds")
        return self._agent

    @property
    def store(self) -> BundleStore:
        return BundleStore(self.agent.config.state_dir)

    @property
    def lock(self) -> threading.Lock:
        return self.agent.lock

    def apply(self, archive: Path, allow_downgrade: bool = False) -> UpdateOutcome:
        """Install a bundle archive received over MQTT, refusing it (and keeping the old model) on any doubt."""
        staged = self.store.stage(archive)
        try:
            bundle = read_bundle(staged, load_public_key(self.agent.config.bundle.public_key))
            refuse_downgrade(self.agent.supervisor.bundle, bundle, allow_downgrade)
            artefact, runtime = load_model(bundle, self.agent.config.bundle.artefact, self.agent.config.runtime)
            run_self_test(runtime, bundle.manifest, artefact)
        except (BundleError, ConfigError) as exc:
            shutil.rmtree(staged, ignore_errors=True)
            self._alert("model-update-refused", f"model update refused, old model kept: {exc}")
            raise
        except Exception as exc:  # a model that cannot even load is refused like a failed self-test
            shutil.rmtree(staged, ignore_errors=True)
            self._alert("model-update-refused", f"model update refused, old model kept: {exc}")
            raise SelfTestError(f"new model failed to load: {exc}") from exc
        with self.lock:
            before = self.agent.supervisor.bundle
            previous_path = self.agent.supervisor.bundle_dir
            installed = self.store.install(staged, bundle)
            self.store.activate(installed, previous_path)
            self.agent.switch_bundle(installed, probation=PROBATION_INFERENCES, fallback_to=previous_path)
        message = f"now running {bundle.manifest.name} {bundle.manifest.version}; previous kept for rollback"
        self._alert("model-updated", message, severity="info")
        return UpdateOutcome(active=_info(bundle), previous=_info(before), message=message)

    def rollback(self) -> UpdateOutcome:
        """Go back to the previous bundle."""
        with self.lock:
            return self.agent.rollback("rollback requested by command")

    def status_report(self) -> dict[str, JsonValue]:
        """A snapshot for the ``status`` command."""
        agent = self.agent
        health = agent.health
        return {
            "state": "degraded" if agent.supervisor.degraded else "online",
            "reason": agent.supervisor.degraded_reason,
            "model": agent.model_info().model_dump(),
            "bundle": str(agent.supervisor.bundle_dir),
            "cycles": health.cycles,
            "overruns": health.overruns,
            "inferences": health.inferences,
            "skipped_inferences": health.skipped_inferences,
            "sensor_errors": health.sensor_errors,
            "latency_p99_ms": health.latency.percentile(99),
            "latency_moving_average_ms": health.latency.moving_average_ms,
        }

    def reload_config(self) -> str:
        """Re-read the config file; sensors, loop and anomaly settings apply from the next cycle."""
        if self.config_path is None:
            raise ConfigError("this agent was started without a config file; nothing to reload")
        from edge_agent.config import load_config

        config = load_config(self.config_path)
        with self.lock:
            return self.agent.apply_config(config)

    def _alert(self, code: str, message: str, severity: str = "warning") -> None:
        logger.warning("%s: %s", code, message)
        self.agent.reporter.publish_alert(AlertContent(severity=severity, code=code, message=message))
