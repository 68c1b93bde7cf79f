"""What decides on the device: the supervised model, the installed bundles, probation after a swap, rollback.

:class:`ModelManager` publishes nothing itself, so it can be built before the reporter (whose command
handler needs it) and tested without one: alerts of swaps and rollbacks wait in :meth:`take_notices`,
and :class:`ModelAnnouncer` publishes them with the device state.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from edge_agent.alerts import AlertLatch
from edge_agent.baselines import persistence, seasonal_naive
from edge_agent.bundle import Bundle, bundle_digest, read_bundle
from edge_agent.bundle_store import BundleStore
from edge_agent.config import AgentConfig
from edge_agent.errors import BundleError, ConfigError
from edge_agent.features import DERIVED_CHANNELS, FeaturePipeline, FeatureSpec, fill_gaps
from edge_agent.health import HealthReasons
from edge_agent.keys import load_public_key
from edge_agent.messages import AlertContent, ModelInfo
from edge_agent.reporting.base import Reporter
from edge_agent.reporting.commands import UpdateOutcome
from edge_agent.runtimes import load_model, run_self_test
from edge_agent.supervisor import FallbackPredictor, ModelSupervisor
from edge_agent.systemd import notify
from edge_agent.versions import refuse_downgrade

if TYPE_CHECKING:
    from pydantic import JsonValue

logger = logging.getLogger(__name__)
SECONDS_PER_DAY = 86_400
# Inferences a new model must survive after a swap before it is trusted without a way back.
PROBATION_INFERENCES = 3


def baseline_for(bundle: Bundle) -> FallbackPredictor:
    """The predictor that replaces the model when it misbehaves, shaped like the model's output.

    Forecasts fall back to the seasonal-naive forecast of the previous day when the window holds a day,
    else to persistence. Reconstruction models get the (filled) input back, so their score is zero and
    the agent judges the window with the rule detectors instead.
    """
    spec = bundle.manifest.input
    pipeline = FeaturePipeline(spec)
    targets = [spec.past_channel_names.index(t) for t in spec.target_channels]
    day_steps = SECONDS_PER_DAY // spec.sample_period_s

    def predict(raw_window: NDArray[np.float32], starts: NDArray[np.int64]) -> NDArray[np.float32]:
        history = fill_gaps(raw_window[:, targets], spec.gap_policy)
        history = _last_resort_fill(history, pipeline, spec.target_channels)
        if not spec.is_forecast:
            return pipeline.normalise_targets(history)[np.newaxis]
        if len(history) >= day_steps:
            forecast = seasonal_naive(history, spec.horizon_steps, day_steps)
        else:
            forecast = persistence(history, spec.horizon_steps)
        return pipeline.normalise_targets(forecast)

    return predict


def _last_resort_fill(
    history: NDArray[np.float32], pipeline: FeaturePipeline, channels: tuple[str, ...]
) -> NDArray[np.float32]:
    """Gaps too long to fill take the training mean, so the fallback always yields a number."""
    means = pipeline.stats.inverse(np.zeros((1, len(channels)), dtype=np.float32), channels)[0]
    return np.where(np.isfinite(history), history, means).astype(np.float32)


def _info(bundle: Bundle | None) -> ModelInfo:
    return ModelInfo(name=bundle.manifest.name, version=bundle.manifest.version) if bundle else ModelInfo()


class ModelManager:
    """Owns the model supervisor and the bundle store; swaps, probation and rollback happen here.

    :attr:`lock` is held by the agent for a whole cycle and by every swap or rollback, so a model never
    changes in the middle of a decision.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.bundle_settings = config.bundle
        self.runtime_config = config.runtime
        self.store = BundleStore(config.state_dir)
        self.supervisor = ModelSupervisor(
            config.bundle.path,
            config.bundle.public_key,
            config.runtime,
            baseline_for,
            config.bundle.artefact,
            config.loop,
        )
        self.lock = threading.Lock()
        self._notices: deque[AlertContent] = deque()
        self._probation = 0
        self._fallback_bundle: Path | None = None
        # The last update's fate, for the fleet's rollouts (status command): probation, passed, rolled-back.
        self.last_update: dict[str, JsonValue] | None = None

    @property
    def spec(self) -> FeatureSpec | None:
        """The input contract of the bundle in use, None before a verified bundle is loaded."""
        return self.supervisor.bundle.manifest.input if self.supervisor.bundle else None

    def start(self) -> None:
        """Load the bundle a model update installed (it survives a restart), else the provisioned one.

        A damaged installed bundle must not keep the device from starting: the last good one runs
        instead (``previous``, then the provisioned ``bundle.path``), with one ``bundle-fallback`` alert.
        A bundle whose manifest verifies but whose model does not is kept only when nothing better loads
        (it still runs the baseline of its verified pipeline).
        """
        candidates = [p for p in (self.store.current(), self.store.previous()) if p is not None]
        candidates.append(self.bundle_settings.path)
        refused: list[str] = []
        runnable: Path | None = None
        for path in dict.fromkeys(candidates):
            self.supervisor.bundle_dir = path
            self.supervisor.load()
            if self.supervisor.bundle is not None and not self.supervisor.degraded:
                break
            refused.append(f"{path}: {self.supervisor.degraded_reason}")
            if runnable is None and self.supervisor.bundle is not None:
                runnable = path
        else:
            if runnable is None:
                raise ConfigError(
                    f"cannot run without a verified bundle: {'; '.join(refused)}. Copy a bundle signed with the "
                    "fleet key into bundle.path (see `gridedge agent doctor`)"
                )
            self.supervisor.bundle_dir = runnable
            self.supervisor.load()
        if refused and self.supervisor.bundle_dir != candidates[0]:
            message = f"installed bundle not usable ({'; '.join(refused)}); running {self.supervisor.bundle_dir}"
            self.notify(AlertContent(severity="critical", code="bundle-fallback", message=message))
        self._check_loaded()

    def load(self) -> None:
        """Verify and self-test the bundle at ``supervisor.bundle_dir``; refuse to run without one."""
        self.supervisor.load()
        self._check_loaded()

    def _check_loaded(self) -> None:
        if self.supervisor.bundle is None:
            raise ConfigError(
                f"cannot run without a verified bundle: {self.supervisor.degraded_reason}. Copy a bundle "
                "signed with the fleet key into bundle.path (see `gridedge agent doctor`)"
            )
        spec = self.supervisor.bundle.manifest.input
        if not spec.future_is_derivable:
            raise ConfigError(
                f"the model needs known-future channels {list(spec.future_channel_names)} that the device "
                f"cannot compute (it derives {sorted(DERIVED_CHANNELS)}); deploy a model without them"
            )

    def verify(self, staged: Path, allow_downgrade: bool = False) -> Bundle:
        """Check a staged bundle's signature and hashes, refuse a downgrade that was not asked for, and
        self-test its model, without touching the running one."""
        bundle = read_bundle(staged, load_public_key(self.bundle_settings.public_key))
        refuse_downgrade(self.supervisor.bundle, bundle, allow_downgrade)
        artefact, runtime = load_model(bundle, self.bundle_settings.artefact, self.runtime_config)
        run_self_test(runtime, bundle.manifest, artefact)
        return bundle

    def install(self, staged: Path, bundle: Bundle) -> UpdateOutcome:
        """Make a verified staged bundle the current one, on probation (call with :attr:`lock` held)."""
        before = self.supervisor.bundle
        previous_path = self.supervisor.bundle_dir
        installed = self.store.install(staged, bundle)
        self.store.activate(installed, previous_path)
        digest = bundle_digest(installed)
        self.last_update = {"bundle_sha256": digest, "state": "probation", "reason": None}
        self.switch_bundle(installed, probation=PROBATION_INFERENCES, fallback_to=previous_path)
        if self.last_update["state"] == "rolled-back":
            message = f"{bundle.manifest.name} {bundle.manifest.version} installed and rolled back at once"
            return UpdateOutcome(
                active=_info(self.supervisor.bundle), previous=_info(bundle), message=message,
                bundle_sha256=self.bundle_sha256(),
            )
        message = f"now running {bundle.manifest.name} {bundle.manifest.version}; previous kept for rollback"
        return UpdateOutcome(active=_info(bundle), previous=_info(before), message=message, bundle_sha256=digest)

    def bundle_sha256(self) -> str | None:
        """Identity of the bundle deciding now (:func:`~edge_agent.bundle.bundle_digest`), None if unreadable."""
        try:
            return bundle_digest(self.supervisor.bundle_dir)
        except OSError:
            return None

    def switch_bundle(self, path: Path, probation: int, fallback_to: Path | None) -> None:
        """Run the bundle at ``path`` from the next cycle; roll back to ``fallback_to`` if it degrades
        within its first ``probation`` inferences. Call with :attr:`lock` held."""
        self.supervisor.bundle_dir = path
        self.load()
        self._probation = probation
        self._fallback_bundle = fallback_to
        if self.supervisor.degraded:
            self._end_probation_with_rollback()

    def rollback(self, reason: str) -> UpdateOutcome:
        """Return to the previous bundle (call with :attr:`lock` held); raises when there is none."""
        previous = self.store.previous()
        if previous is None or not previous.exists():
            raise BundleError("no previous bundle to roll back to on this device")
        failed = self.supervisor.bundle
        self.store.activate(previous, self.supervisor.bundle_dir)
        self.supervisor.bundle_dir = previous
        self._probation = 0
        self.load()
        restored = self.supervisor.bundle
        message = f"rolled back to {_info(restored).name} {_info(restored).version} ({reason})"
        if self.last_update is not None and self.last_update["state"] == "probation":
            self.last_update = {**self.last_update, "state": "rolled-back", "reason": reason}
        self.notify(AlertContent(severity="warning", code="model-rollback", message=message))
        return UpdateOutcome(
            active=_info(restored), previous=_info(failed) if failed else None, message=message,
            bundle_sha256=self.bundle_sha256(),
        )

    def after_inference(self) -> bool:
        """Count one inference of a model on probation; True when it degraded and was rolled back."""
        if self._probation <= 0:
            return False
        if self.supervisor.degraded and self._fallback_bundle is not None:
            self._end_probation_with_rollback()
            return True
        self._probation -= 1
        if self._probation == 0 and self.last_update is not None and self.last_update["state"] == "probation":
            self.last_update = {**self.last_update, "state": "passed"}
            info = self.model_info()
            self.notify(
                AlertContent(
                    severity="info", code="model-probation-passed",
                    message=f"{info.name} {info.version} passed its probation of {PROBATION_INFERENCES} inferences",
                )
            )
        return False

    def _end_probation_with_rollback(self) -> None:
        reason = f"new model failed during its first inferences: {self.supervisor.degraded_reason}"
        logger.error(reason)
        self.rollback(reason)

    def model_info(self) -> ModelInfo:
        """Name, version, runtime and precision of what is deciding now."""
        bundle, artefact = self.supervisor.bundle, self.supervisor.artefact
        if bundle is None:
            return ModelInfo()
        trusted = artefact is not None and not self.supervisor.degraded
        return ModelInfo(
            name=bundle.manifest.name,
            version=bundle.manifest.version,
            runtime=artefact.runtime if trusted and artefact else "baseline",
            precision=artefact.precision if trusted and artefact else None,
        )

    def notify(self, alert: AlertContent) -> None:
        """Queue an alert for the agent to publish (safe from the command thread)."""
        logger.warning("%s: %s", alert.code, alert.message)
        self._notices.append(alert)

    def take_notices(self) -> list[AlertContent]:
        """The queued alerts, oldest first; the queue is empty afterwards."""
        notices = []
        while self._notices:
            notices.append(self._notices.popleft())
        return notices


class ModelAnnouncer:
    """Publishes the device state when it changes ("degraded" raises one alert, recovery one clear)
    and the alerts the model manager queued.

    The model is one concern of :class:`~edge_agent.health.HealthReasons` (``model``); the disk and the
    worker threads are others, so the published state is ``degraded`` while any of them has a reason.
    """

    def __init__(self, reporter: Reporter, models: ModelManager, reasons: HealthReasons | None = None) -> None:
        self.reporter = reporter
        self.models = models
        self.reasons = reasons or HealthReasons()
        self.fallback = AlertLatch(reporter, "model-fallback", "model-recovered", severity="critical")
        self._model_degraded: bool | None = None
        self._published: tuple[str, str | None] | None = None

    def announce(self) -> None:
        """Publish what changed since the last call."""
        supervisor = self.models.supervisor
        reason = supervisor.degraded_reason
        if supervisor.degraded != self._model_degraded:
            if reason is not None:
                self.reasons.set("model", reason)
                self.fallback.raise_once("model", f"model replaced by the baseline predictor: {reason}")
            else:
                self.reasons.clear("model")
                self.fallback.clear_once("model", "model trusted again")
            self._model_degraded = supervisor.degraded
        state = self.reasons.state()
        if state != self._published:
            self.reporter.publish_status(state[0], state[1], self.models.model_info())
            if state[0] == "degraded":
                notify(f"STATUS=degraded: {state[1]}")
            elif self._published is not None:
                notify("STATUS=online")
            logger.log(logging.WARNING if state[0] == "degraded" else logging.INFO, "state %s (%s)", *state)
            self._published = state
        for notice in self.models.take_notices():
            self.reporter.publish_alert(notice)
