"""`gridedge agent doctor`: a field technician's checklist, in plain words, run on the device.

Each check says what it looked at and, when it fails, what to do. Checks that depend on an earlier one
(the model on the bundle, the latency on the model) are reported as skipped rather than failing twice.
"""

from __future__ import annotations

import importlib.util
import math
import socket
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edge_agent.bundle import Bundle, read_bundle
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import GridedgeError
from edge_agent.keys import load_public_key
from edge_agent.runtimes import load_model, run_self_test
from edge_agent.sensors.registry import build_source

Verdict = Literal["pass", "fail", "warn", "skip"]
LATENCY_RUNS = 200


@dataclass(frozen=True)
class Check:
    """One line of the checklist."""

    name: str
    verdict: Verdict
    detail: str


def run_checks(config_path: Path, broker_timeout_s: float = 5.0) -> Iterator[Check]:
    """Run every check in order, yielding each result as soon as it is known."""
    try:
        config = load_config(config_path)
    except GridedgeError as exc:
        yield Check("config", "fail", str(exc))
        return
    yield Check("config", "pass", f"{config_path} is valid (site {config.site}, device {config.device})")
    yield from _sensor_checks(config)
    bundle = yield from _bundle_check(config)
    yield from _model_checks(config, bundle)
    yield _broker_check(config, broker_timeout_s)


def _sensor_checks(config: AgentConfig) -> Iterator[Check]:
    seen: dict[str, float] = {}
    for source_config in config.sensors:
        name = f"sensor {source_config.name}"
        try:
            source = build_source(source_config, config.base_dir)
        except GridedgeError as exc:
            yield Check(name, "fail", str(exc))
            continue
        try:
            reading = source.read()
        finally:
            source.close()
        shown = ", ".join(
            f"{ch}={cv.value:.4g} {cv.unit}" if math.isfinite(cv.value) else f"{ch}=missing"
            for ch, cv in reading.channels.items()
        )
        seen.update(reading.values())
        problems = [f"{dev}: {err}" for dev, err in reading.device_errors.items()]
        problems += [f"{ch} {why}" for ch, why in reading.flagged().items()]
        if reading.device_errors:
            yield Check(name, "fail", f"{'; '.join(problems)}. Check wiring, address and unit id. Read: {shown}")
        elif problems:
            yield Check(name, "warn", f"{'; '.join(problems)}. Read: {shown}")
        else:
            yield Check(name, "pass", shown or "no channels")
    yield _channel_map_check(config, seen)
    if config.planning is not None:
        yield _planning_check(config, seen)


def _channel_map_check(config: AgentConfig, seen: dict[str, float]) -> Check:
    try:
        public_key = load_public_key(config.bundle.public_key)
        bundle = read_bundle(config.bundle.path, public_key)
    except GridedgeError:
        return Check("channel map", "skip", "needs a valid bundle (see below)")
    spec = bundle.manifest.input
    needed = {c: config.channel_link(c).source for c in spec.past_channel_names if c not in spec.derived_past_channels}
    absent = {m: s for m, s in needed.items() if s not in seen}
    if absent:
        return Check(
            "channel map",
            "fail",
            f"the model needs {sorted(absent)} but no sensor provides {sorted(absent.values())}; "
            "add them to `channels:` in the config or fix the register map",
        )
    return Check("channel map", "pass", f"every model input is read: {needed}")


def _planning_check(config: AgentConfig, seen: dict[str, float]) -> Check:
    """The planner's inputs are read (SoC, load, PV) and what it may write, in one line."""
    planning = config.planning
    assert planning is not None
    needed = {"SoC": planning.soc.source, "load": planning.load.measured.source, "PV": planning.pv.measured.source}
    absent = {what: channel for what, channel in needed.items() if not math.isfinite(seen.get(channel, math.nan))}
    actuation = planning.actuation
    writes = (
        "advisory only (nothing is written)"
        if actuation is None
        else "writes "
        + ", ".join(f"{row.quantity} -> {row.device}.{row.holding_register}" for row in actuation.setpoints)
    )
    if importlib.util.find_spec("highspy") is None:
        return Check(
            "planning",
            "fail",
            "the planner's solver (highspy) is not installed: the fallback rule decides every plan. Install "
            f"highspy (wheels for aarch64 and x86_64; none for armv7). Planning {writes}",
        )
    if absent:
        return Check(
            "planning",
            "fail",
            f"no usable reading of {absent}: without them the rule replaces the planner; fix the channel names "
            f"or the sensors. Planning {writes}",
        )
    soc = planning.soc.convert(seen[planning.soc.source])
    return Check(
        "planning", "pass", f"SoC {soc:.0%}, load and PV read; every {planning.interval_minutes:g} min, {writes}"
    )


def _bundle_check(config: AgentConfig) -> Generator[Check, None, Bundle | None]:
    try:
        public_key = load_public_key(config.bundle.public_key)
        bundle = read_bundle(config.bundle.path, public_key)
    except GridedgeError as exc:
        yield Check("bundle", "fail", str(exc))
        return None
    manifest = bundle.manifest
    yield Check(
        "bundle",
        "pass",
        f"{manifest.name} {manifest.version} ({manifest.task}, from {manifest.source_framework}): "
        f"signature and {len(manifest.artefacts)} file hash(es) verified",
    )
    return bundle


def _model_checks(config: AgentConfig, bundle: Bundle | None) -> Iterator[Check]:
    if bundle is None:
        yield Check("model self-test", "skip", "needs a verified bundle")
        yield Check("inference latency", "skip", "needs a model")
        return
    try:
        artefact, runtime = load_model(bundle, config.bundle.artefact, config.runtime)
        worst = run_self_test(runtime, bundle.manifest, artefact)
    except Exception as exc:  # any failure to run the model is the answer this check exists to give
        yield Check("model self-test", "fail", f"{exc}. The agent would run on the baseline predictor.")
        yield Check("inference latency", "skip", "needs a model that passed its self-test")
        return
    info = runtime.info
    yield Check(
        "model self-test",
        "pass",
        f"{artefact.file} ({artefact.precision}) on {info.name} {info.version}: "
        f"{len(bundle.manifest.test_vectors)} test vector(s), max error {worst:.2g} ≤ {artefact.self_test_atol:.2g}",
    )
    feeds = {k: np.asarray(v, dtype=np.float32) for k, v in bundle.manifest.test_vectors[0].inputs.items()}
    timings = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        runtime.run(feeds)
        timings.append((time.perf_counter() - started) * 1e3)
    p50, p99 = np.percentile(timings, [50, 99])
    budget = config.loop.latency_budget_ms
    verdict: Verdict = "pass" if p99 <= budget else "fail"
    yield Check(
        "inference latency",
        verdict,
        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms over {LATENCY_RUNS} runs (budget {budget:.0f} ms)"
        + ("" if verdict == "pass" else "; raise loop.latency_budget_ms or use the int8 artefact"),
    )


def _broker_check(config: AgentConfig, timeout_s: float) -> Check:
    if config.mqtt is None:
        return Check("broker", "warn", "no mqtt section: reports stay in the device log")
    from edge_agent.transport import make_client

    broker = config.mqtt.broker
    try:
        socket.create_connection((broker.host, broker.port), timeout=timeout_s).close()
    except OSError as exc:
        return Check(
            "broker",
            "fail",
            f"cannot open TCP {broker.host}:{broker.port} ({exc}); check the network, the host name and "
            "the firewall. The agent keeps deciding and stores reports in its outbox meanwhile",
        )
    connected = threading.Event()
    outcome: list[str] = []

    def on_connect(client: object, userdata: object, flags: object, reason_code: object, properties: object) -> None:
        outcome.append(str(reason_code))
        connected.set()

    try:
        client = make_client(broker, f"{config.mqtt.client_id()}-doctor")
        client.on_connect = on_connect
        client.connect(broker.host, broker.port, broker.keepalive_s)
    except (GridedgeError, OSError, ValueError) as exc:
        return Check("broker", "fail", f"MQTT connection to {broker.host}:{broker.port} failed: {exc}")
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            return Check(
                "broker", "fail", f"{broker.host}:{broker.port} accepted TCP but no MQTT answer in {timeout_s} s"
            )
    finally:
        client.disconnect()
        client.loop_stop()
    if outcome and outcome[0] != "Success":
        return Check("broker", "fail", f"broker refused the connection: {outcome[0]}; check credentials and ACL")
    return Check("broker", "pass", f"MQTT {broker.protocol} connection to {broker.host}:{broker.port} accepted")
