"""The self-test a device runs before it trusts a model: reproduce the bundle's test vectors."""

from __future__ import annotations

import numpy as np

from edge_agent.bundle import Artefact, Manifest
from edge_agent.errors import SelfTestError
from edge_agent.runtimes.base import ModelRuntime


def run_self_test(runtime: ModelRuntime, manifest: Manifest, artefact: Artefact) -> float:
    """Run every test vector; return the largest absolute error, or raise SelfTestError naming it.

    Each output is compared with what this very artefact produced at export time, within the
    artefact's recorded ``self_test_atol``.
    """
    if not manifest.test_vectors:
        raise SelfTestError(
            f"{manifest.name} {manifest.version}: the bundle carries no test vectors, so {artefact.file} "
            "cannot be self-tested; re-export it with gridedge export"
        )
    worst = 0.0
    for index, vector in enumerate(manifest.test_vectors):
        expected_list = vector.artefact_outputs.get(artefact.file)
        if expected_list is None:
            raise SelfTestError(
                f"{artefact.file}: test vector {index} records no output for this artefact; re-export"
            )
        feeds = {name: np.asarray(value, dtype=np.float32) for name, value in vector.inputs.items()}
        try:
            output = runtime.run(feeds)
        except Exception as exc:  # any failure of the runtime means the model is not trusted
            raise SelfTestError(f"{artefact.file}: test vector {index} failed to run: {exc}") from exc
        expected = np.asarray(expected_list, dtype=np.float32)
        if output.shape != expected.shape:
            raise SelfTestError(
                f"{artefact.file}: test vector {index} gives shape {output.shape}, expected {expected.shape}"
            )
        if not np.isfinite(output).all():
            raise SelfTestError(f"{artefact.file}: test vector {index} produced NaN or inf")
        error = float(np.max(np.abs(output - expected)))
        worst = max(worst, error)
        if error > artefact.self_test_atol:
            raise SelfTestError(
                f"{artefact.file}: test vector {index} max abs error {error:.3g} exceeds self_test_atol "
                f"{artefact.self_test_atol:.3g}; this runtime does not reproduce the exported model — "
                "check the runtime version against the artefact's compatibility targets"
            )
    return worst
