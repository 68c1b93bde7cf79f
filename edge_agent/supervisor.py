"""Supervised inference: the model decides while it behaves, the baseline decides when it does not.

The supervisor loads a bundle (signature, hashes), runs the model's self-test before trusting it, and on
every cycle checks the output. A load failure, a failed self-test, NaN/inf output, an exception or a
latency over budget for several cycles in a row switches to the fallback predictor: the state becomes
"degraded" with the reason, and the caller raises one alert per switch. The model is retried every
``retry_every`` cycles and trusted again after ``recover_after`` good cycles in a row, so a transient
fault does not pin a site to the baseline for months.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from edge_agent.arrays import FloatArray
from edge_agent.bundle import Artefact, Bundle, verify_files, verify_manifest
from edge_agent.config import LoopSection
from edge_agent.errors import GridedgeError
from edge_agent.features import FeaturePipeline, ModelInputs
from edge_agent.keys import load_public_key
from edge_agent.runtimes import ModelRuntime, RuntimeConfig, load_model, run_self_test

# A fallback sees the raw past window (steps, channels) in units and returns normalised outputs shaped
# like the model's, so everything downstream treats both sources alike.
FallbackPredictor = Callable[[FloatArray, NDArray[np.int64]], FloatArray]


@dataclass(frozen=True)
class Prediction:
    """One cycle's result: normalised output, which source produced it, and how long the model took."""

    output: FloatArray
    source: Literal["model", "baseline"]
    latency_ms: float | None
    fault: str | None = None


class ModelSupervisor:
    """Owns the trusted model (if any) and the fallback, and knows which one is deciding and why."""

    def __init__(
        self,
        bundle_dir: Path,
        public_key: Path,
        runtime: RuntimeConfig,
        fallback: Callable[[Bundle], FallbackPredictor],
        artefact_file: str | None = None,
        policy: LoopSection | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.public_key = Path(public_key)
        self.runtime_config = runtime
        self.artefact_file = artefact_file
        # The loop section of the agent config is the policy itself (latency budget and strikes, retry and
        # recovery counts), so a config reload replaces it in one assignment.
        self.policy = policy or LoopSection()
        self._make_fallback = fallback
        self.bundle: Bundle | None = None
        self.artefact: Artefact | None = None
        self.runtime: ModelRuntime | None = None
        self.pipeline: FeaturePipeline | None = None
        self.fallback: FallbackPredictor | None = None
        self.degraded_reason: str | None = None
        self.self_test_error: float | None = None
        self._strikes = 0
        self._cycles_degraded = 0
        self._good_in_a_row = 0

    @property
    def degraded(self) -> bool:
        return self.degraded_reason is not None

    def load(self) -> None:
        """Verify the bundle and self-test its model; on failure keep what can run and say why.

        A manifest that fails verification leaves no pipeline (nothing can be computed safely). A signed
        manifest whose model file is damaged, or a model that fails to load or self-test, still leaves
        the verified pipeline and the fallback running.
        """
        self.runtime = None
        try:
            manifest = verify_manifest(self.bundle_dir, load_public_key(self.public_key))
        except GridedgeError as exc:
            self.bundle, self.pipeline, self.fallback = None, None, None
            self.degraded_reason = f"bundle refused: {exc}"
            return
        self.bundle = Bundle(root=self.bundle_dir, manifest=manifest)
        self.pipeline = FeaturePipeline(manifest.input)
        self.fallback = self._make_fallback(self.bundle)
        try:
            verify_files(self.bundle_dir, manifest)
            self.artefact, runtime = load_model(self.bundle, self.artefact_file, self.runtime_config)
            self.self_test_error = run_self_test(runtime, self.bundle.manifest, self.artefact)
        except (GridedgeError, OSError, RuntimeError, ValueError) as exc:
            self.degraded_reason = f"model not trusted: {exc}"
            return
        self.runtime = runtime
        self.degraded_reason = None
        self._strikes = self._good_in_a_row = self._cycles_degraded = 0

    def predict(self, inputs: ModelInputs, raw_window: FloatArray, starts: NDArray[np.int64]) -> Prediction:
        """Decide with the model when it is trusted (or due for a retry), else with the fallback."""
        if self.fallback is None:
            raise GridedgeError(f"no verified bundle to decide with ({self.degraded_reason})")
        if self.runtime is not None and (not self.degraded or self._retry_due()):
            prediction = self._run_model(inputs)
            if prediction is not None:
                return prediction
        return self.baseline(raw_window, starts, self.degraded_reason)

    def baseline(self, raw_window: FloatArray, starts: NDArray[np.int64], reason: str | None) -> Prediction:
        """Decide with the fallback predictor regardless of the model's health (e.g. a window with gaps)."""
        if self.fallback is None:
            raise GridedgeError(f"no verified bundle to decide with ({self.degraded_reason})")
        return Prediction(output=self.fallback(raw_window, starts), source="baseline", latency_ms=None, fault=reason)

    def _retry_due(self) -> bool:
        self._cycles_degraded += 1
        return self._cycles_degraded % self.policy.retry_every == 0 or self._good_in_a_row > 0

    def _run_model(self, inputs: ModelInputs) -> Prediction | None:
        assert self.runtime is not None
        started = time.perf_counter()
        try:
            output = self.runtime.run(inputs.as_feeds())
        except Exception as exc:  # any runtime failure must not stop the loop; it is reported instead
            return self._fault(f"model raised {type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - started) * 1e3
        if not np.isfinite(output).all():
            return self._fault("model output contains NaN or inf")
        if latency_ms > self.policy.latency_budget_ms:
            self._strikes += 1
            if self._strikes >= self.policy.latency_strikes:
                return self._fault(
                    f"inference took {latency_ms:.1f} ms, over the {self.policy.latency_budget_ms:.0f} ms "
                    f"budget {self._strikes} cycles in a row"
                )
        else:
            self._strikes = 0
        if self.degraded:
            self._good_in_a_row += 1
            if self._good_in_a_row < self.policy.recover_after:
                return None
            self.degraded_reason = None
            self._good_in_a_row = self._cycles_degraded = 0
        return Prediction(output=output, source="model", latency_ms=latency_ms)

    def _fault(self, reason: str) -> Prediction | None:
        self.degraded_reason = reason
        self._good_in_a_row = 0
        self._strikes = 0
        return None
