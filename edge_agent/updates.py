"""The agent's side of the remote commands: model updates, rollback, status and config reload.

A bundle received over MQTT is staged, verified (signature, hashes, self-test) and only then swapped in
by the :class:`~edge_agent.model_manager.ModelManager`, which keeps the previous bundle and puts the new
one on probation: if it degrades (NaN, exception, latency) in its first inferences, it is rolled back
and the rollback reported.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pydantic import JsonValue

from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import BundleError, ConfigError, SelfTestError
from edge_agent.health import AgentHealth, HealthReasons
from edge_agent.messages import AlertContent
from edge_agent.model_manager import ModelManager
from edge_agent.reporting.commands import UpdateOutcome


class AgentCommands:
    """Implements the reporter's ``ModelUpdater`` and ``AgentControl`` on the agent's parts.

    Commands arrive on the reporter's thread; every change to the running model or config happens under
    the model manager's lock, which the agent holds for a whole cycle, so it lands between two cycles.
    ``apply_config`` takes over a re-read config (:meth:`edge_agent.live_config.LiveConfig.apply`).
    """

    def __init__(
        self,
        models: ModelManager,
        health: AgentHealth,
        apply_config: Callable[[AgentConfig], str],
        config_path: Path | None = None,
        reasons: HealthReasons | None = None,
    ) -> None:
        self.models = models
        self.reasons = reasons or HealthReasons()
        self.health = health
        self.apply_config = apply_config
        self.config_path = config_path

    def apply(self, archive: Path, allow_downgrade: bool = False) -> UpdateOutcome:
        """Install a bundle archive received over MQTT, refusing it (and keeping the old model) on any doubt."""
        staged = self.models.store.stage(archive)
        try:
            bundle = self.models.verify(staged, allow_downgrade)
        except (BundleError, ConfigError) as exc:
            shutil.rmtree(staged, ignore_errors=True)
            self._refused(exc)
            raise
        except Exception as exc:  # a model that cannot even load is refused like a failed self-test
            shutil.rmtree(staged, ignore_errors=True)
            self._refused(exc)
            raise SelfTestError(f"new model failed to load: {exc}") from exc
        with self.models.lock:
            outcome = self.models.install(staged, bundle)
        self.models.notify(AlertContent(severity="info", code="model-updated", message=outcome.message))
        return outcome

    def rollback(self) -> UpdateOutcome:
        """Go back to the previous bundle."""
        with self.models.lock:
            return self.models.rollback("rollback requested by command")

    def status_report(self) -> dict[str, JsonValue]:
        """A snapshot for the ``status`` command."""
        supervisor, health = self.models.supervisor, self.health
        state, reason = self.reasons.state()
        if supervisor.degraded and "model" not in self.reasons:  # between a swap and the next announce
            state, reason = "degraded", supervisor.degraded_reason
        return {
            "state": state,
            "reason": reason,
            "model": self.models.model_info().model_dump(),
            "bundle": str(supervisor.bundle_dir),
            "bundle_sha256": self.models.bundle_sha256(),
            "update": self.models.last_update,
            "cycles": health.cycles,
            "overruns": health.overruns,
            "inferences": health.inferences,
            "skipped_inferences": health.skipped_inferences,
            "sensor_errors": health.sensor_errors,
            "latency_p99_ms": health.latency.percentile(99),
            "latency_moving_average_ms": health.latency.moving_average_ms,
        }

    def reload_config(self) -> str:
        """Re-read the config file; loop, anomaly, channel and clock settings apply from the next cycle."""
        if self.config_path is None:
            raise ConfigError("this agent was started without a config file; nothing to reload")
        config = load_config(self.config_path)
        with self.models.lock:
            return self.apply_config(config)

    def _refused(self, exc: Exception) -> None:
        message = f"model update refused, old model kept: {exc}"
        self.models.notify(AlertContent(severity="warning", code="model-update-refused", message=message))
