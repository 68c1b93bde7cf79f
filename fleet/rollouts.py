"""Staged model rollouts from the fleet side: a signed bundle reaches devices canaries first, over the
existing ``cmd/model-update`` path, and every device's outcome is recorded in the fleet store.

The Python API, for ``gridedge fleet deploy`` and for jobs that produce bundles (retraining)::

    rollout = create_rollout(store, archive_bytes, targets, canaries=2, max_failure_ratio=0.2)
    with RolloutRunner(broker, store, operator_key) as runner:
        runner.run([rollout.rollout_id], timeout_s=600)   # or runner.advance(rollout_id) in a loop of yours

**Stages.** Stage 0 holds ``canaries`` devices (those the store last saw online first, then by name),
stage 1 the rest. Stage 1 starts only when every canary has an outcome and the failures stay within the
ratio; the rollout is ``done`` when every device has one.

**Per device** (only while its retained status says it is online or degraded), the runner:

1. asks ``status``: a device whose ``bundle_sha256`` (the sha256 of the signed manifest,
   :func:`edge_agent.bundle.bundle_digest`) is the rollout's is recorded ``current`` and is sent nothing,
   so re-running a rollout never installs twice;
2. sends the signed archive in ``model-update`` chunks: an error reply is ``refused`` with the device's
   own reason (bad signature, failed self-test, downgrade, no artefact for its runtime ...);
3. keeps an accepted update on ``probation`` and asks ``status`` again until the device says the new
   model passed its first inferences (``updated``) or was rolled back (``rolled-back``, with the reason).
   A device still on probation ``probation_timeout_s`` after the install (silent, offline, or never
   reporting the new model as passed) is ``failed`` with the reason ``probation-timeout``, so that a
   stage is decided and the failure counts towards halting.

A device that is offline (its status says offline or stopped, or a command timed out) stays ``waiting``
and gets the update when its next birth says it is back, as long as a runner is running: ``gridedge
fleet deploy --wait`` (until the rollout ends or its timeout) or ``gridedge fleet listen
--drive-rollouts`` (every active rollout, for as long as the receiver runs). A device that times out
``max_attempts`` times while reported online is ``failed``.

**Halting.** When the failures (``refused``, ``rolled-back``, ``failed``) exceed ``max_failure_ratio``
of the devices of the started stages, the rollout is ``halted``: nothing more is sent, devices not yet
sent are ``skipped``; devices on probation are still followed to their outcome.

**Rollback** (:func:`rollback_rollout`): the devices this rollout installed (``updated`` or on
``probation``) get a signed ``rollback`` command, which puts their previous bundle back; a device that no
longer runs the rollout's bundle is left alone. Offline ones are reverted when they return.

Claims are conditional updates of the store, so two runners on one store do not send twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle import archive_digest
from edge_agent.errors import FleetError
from edge_agent.messages import TOPIC_LEVEL_PATTERN
from edge_agent.reporting.commands import model_update_requests
from edge_agent.transport import BrokerConfig
from gridedge.fleet.commands import CommandClient, CommandError, sign_command, sign_request
from gridedge.fleet.store import FleetStore

logger = logging.getLogger(__name__)

WAITING, SENDING, PROBATION = "waiting", "sending", "probation"
UPDATED, CURRENT = "updated", "current"
REFUSED, ROLLED_BACK, FAILED, SKIPPED = "refused", "rolled-back", "failed", "skipped"
REVERT_WAITING, REVERTING, REVERTED, REVERT_FAILED = "revert-waiting", "reverting", "reverted", "revert-failed"
SUCCESS = frozenset({UPDATED, CURRENT})
FAILURE = frozenset({REFUSED, ROLLED_BACK, FAILED})
# Outcomes the runner still has work for.
OPEN = frozenset({WAITING, SENDING, PROBATION, REVERT_WAITING, REVERTING})

RUNNING, DONE, HALTED, ROLLING_BACK, ROLLED_BACK_STATE = "running", "done", "halted", "rolling-back", "rolled-back"
ACTIVE_STATES = frozenset({RUNNING, HALTED, ROLLING_BACK})
REACHABLE = frozenset({"online", "degraded"})
# A claim older than this was left by a runner that died mid-send: the device is tried again.
STALE_CLAIM_S = 600.0
# How long a device may stay on probation: the agent's probation is its first 3 inferences, which
# take up to 45 minutes at a 15-minute model step. Rollouts recorded before the setting existed get it.
DEFAULT_PROBATION_TIMEOUT_S = 3600.0
PROBATION_TIMEOUT = "probation-timeout"

ROLLOUT_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS fleet_rollouts (
        rollout_id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        bundle_name TEXT NOT NULL,
        bundle_version TEXT NOT NULL,
        bundle_sha256 TEXT NOT NULL,
        archive_sha256 TEXT NOT NULL,
        canaries BIGINT NOT NULL,
        max_failure_ratio DOUBLE PRECISION NOT NULL,
        allow_downgrade BOOLEAN NOT NULL,
        stage BIGINT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        probation_timeout_s DOUBLE PRECISION
    )""",
    # base64 text: the same column type on SQLite and PostgreSQL; bundles are small.
    """CREATE TABLE IF NOT EXISTS fleet_bundle_archives (
        archive_sha256 TEXT PRIMARY KEY,
        archive TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS fleet_rollout_devices (
        rollout_id TEXT NOT NULL,
        site TEXT NOT NULL,
        device TEXT NOT NULL,
        stage BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        attempts BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (rollout_id, site, device)
    )""",
]
ROLLOUT_COLUMNS = (
    "rollout_id", "created_at", "updated_at", "bundle_name", "bundle_version", "bundle_sha256", "archive_sha256",
    "canaries", "max_failure_ratio", "allow_downgrade", "stage", "state", "reason", "probation_timeout_s",
)
DEVICE_COLUMNS = ("rollout_id", "site", "device", "stage", "outcome", "reason", "attempts", "updated_at")
REASON_CHARS = 1024


@dataclass(frozen=True, order=True)
class Target:
    """One device a rollout is for."""

    site: str
    device: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """``SITE/DEVICE`` as typed on a command line."""
        site, slash, device = text.partition("/")
        if not slash or not all(re.match(TOPIC_LEVEL_PATTERN, part) for part in (site, device)):
            raise FleetError(f"device {text!r} must be SITE/DEVICE (letters, digits, '_', '.', '-')")
        return cls(site, device)

    def __str__(self) -> str:
        return f"{self.site}/{self.device}"


@dataclass(frozen=True)
class DeviceOutcome:
    """What a rollout did to one device so far."""

    site: str
    device: str
    stage: int
    outcome: str
    reason: str | None
    attempts: int
    updated_at: float


@dataclass(frozen=True)
class Rollout:
    """A rollout as recorded in the fleet store."""

    rollout_id: str
    created_at: float
    updated_at: float
    bundle_name: str
    bundle_version: str
    bundle_sha256: str
    archive_sha256: str
    canaries: int
    max_failure_ratio: float
    allow_downgrade: bool
    stage: int
    state: str
    reason: str | None
    probation_timeout_s: float = DEFAULT_PROBATION_TIMEOUT_S
    devices: list[DeviceOutcome] = field(default_factory=list)

    @property
    def stages(self) -> int:
        return 1 + max((d.stage for d in self.devices), default=0)

    def counts(self, stage: int | None = None) -> dict[str, int]:
        """Devices per outcome (of one stage, or all)."""
        counts: dict[str, int] = {}
        for device in self.devices:
            if stage is None or device.stage == stage:
                counts[device.outcome] = counts.get(device.outcome, 0) + 1
        return counts

    @property
    def settled(self) -> bool:
        """True when no runner has anything left to do: finished, and nobody waiting or on probation."""
        if self.state == RUNNING:
            return False
        return not any(d.outcome in OPEN for d in self.devices)

    def outcome(self, site: str, device: str) -> DeviceOutcome:
        """One device's row; KeyError when the device is not a target."""
        for row in self.devices:
            if (row.site, row.device) == (site, device):
                return row
        raise KeyError(f"{site}/{device}")


class RolloutStore:
    """The rollout tables of a :class:`~gridedge.fleet.store.FleetStore` (created unless read-only)."""

    def __init__(self, store: FleetStore) -> None:
        self.store = store
        self._selected: str | None = None
        if not store.read_only:
            with store.transaction() as execute:
                for statement in ROLLOUT_SCHEMA:
                    execute(statement, ())
            if "probation_timeout_s" not in self._rollout_columns():
                # A store made before the probation timeout existed: its rollouts get the default.
                with store.transaction() as execute:
                    execute("ALTER TABLE fleet_rollouts ADD COLUMN probation_timeout_s DOUBLE PRECISION", ())

    def _rollout_columns(self) -> set[str]:
        if self.store.postgres:
            rows = self.store.query(
                "SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'fleet_rollouts' "
                "AND table_schema = current_schema()"
            )
        else:
            rows = self.store.query("SELECT name FROM pragma_table_info('fleet_rollouts')")
        return {row["name"] for row in rows}

    def _present(self) -> bool:
        """Whether the tables exist (a read-only store written by an older gridedge has none)."""
        if self.store.postgres:
            rows = self.store.query("SELECT to_regclass('fleet_rollouts') IS NOT NULL AS present")
        else:
            rows = self.store.query(
                "SELECT COUNT(*) > 0 AS present FROM sqlite_master WHERE type = 'table' AND name = 'fleet_rollouts'"
            )
        return bool(rows[0]["present"])

    def add(self, rollout: Rollout, archive: bytes) -> None:
        """Record a new rollout, its device rows and its archive (stored once per archive)."""
        encoded = base64.b64encode(archive).decode("ascii")
        with self.store.transaction() as execute:
            known = execute("UPDATE fleet_bundle_archives SET archive = archive WHERE archive_sha256 = ?",
                            (rollout.archive_sha256,))
            if not known:
                execute("INSERT INTO fleet_bundle_archives (archive_sha256, archive) VALUES (?, ?)",
                        (rollout.archive_sha256, encoded))
            execute(
                f"INSERT INTO fleet_rollouts ({', '.join(ROLLOUT_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in ROLLOUT_COLUMNS)})",
                tuple(getattr(rollout, column) for column in ROLLOUT_COLUMNS),
            )
            for row in rollout.devices:
                execute(
                    f"INSERT INTO fleet_rollout_devices ({', '.join(DEVICE_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in DEVICE_COLUMNS)})",
                    (rollout.rollout_id, row.site, row.device, row.stage, row.outcome, row.reason, row.attempts,
                     row.updated_at),
                )

    def archive(self, archive_sha256: str) -> bytes:
        rows = self.store.query(
            "SELECT archive FROM fleet_bundle_archives WHERE archive_sha256 = ?", (archive_sha256,)
        )
        if not rows:
            raise FleetError(f"the fleet store holds no bundle archive {archive_sha256[:12]}...")
        return base64.b64decode(rows[0]["archive"])

    def list_rollouts(self) -> list[Rollout]:
        """Every rollout with its devices, newest first."""
        if not self._present():
            return []
        return self._load("", ())

    def get(self, rollout_id: str) -> Rollout:
        """One rollout by id or by a unique prefix of it."""
        pattern = rollout_id.replace("%", "").replace("_", "") + "%"
        matches = self._load(" WHERE rollout_id LIKE ?", (pattern,)) if self._present() else []
        exact = [r for r in matches if r.rollout_id == rollout_id]
        if exact or len(matches) == 1:
            return (exact or matches)[0]
        if not matches:
            raise FleetError(f"no rollout {rollout_id!r} in the fleet store; `gridedge fleet rollouts` lists them")
        raise FleetError(f"{rollout_id!r} names {len(matches)} rollouts; give more of the id")

    def _load(self, where: str, params: tuple[Any, ...]) -> list[Rollout]:
        if self._selected is None:
            # A read-only store written by an older gridedge lacks the newer columns: they read as NULL.
            present = self._rollout_columns()
            self._selected = ", ".join(c if c in present else f"NULL AS {c}" for c in ROLLOUT_COLUMNS)
        rollouts = self.store.query(
            f"SELECT {self._selected} FROM fleet_rollouts{where} ORDER BY created_at DESC", params
        )
        ids = [row["rollout_id"] for row in rollouts]
        devices: dict[str, list[DeviceOutcome]] = {rollout_id: [] for rollout_id in ids}
        if ids:
            for row in self.store.query(
                f"SELECT {', '.join(DEVICE_COLUMNS)} FROM fleet_rollout_devices WHERE rollout_id IN "
                f"({', '.join('?' for _ in ids)}) ORDER BY stage, site, device",
                tuple(ids),
            ):
                devices[row["rollout_id"]].append(
                    DeviceOutcome(row["site"], row["device"], int(row["stage"]), row["outcome"], row["reason"],
                                  int(row["attempts"]), float(row["updated_at"]))
                )
        return [
            Rollout(**{**row, "allow_downgrade": bool(row["allow_downgrade"]), "canaries": int(row["canaries"]),
                       "stage": int(row["stage"]), "devices": devices[row["rollout_id"]],
                       "probation_timeout_s": float(row["probation_timeout_s"] or DEFAULT_PROBATION_TIMEOUT_S)})
            for row in rollouts
        ]

    def set_outcome(
        self,
        rollout_id: str,
        target: Target,
        outcome: str,
        reason: str | None = None,
        *,
        expect: Iterable[str] | None = None,
        attempts: int | None = None,
    ) -> bool:
        """Record a device's outcome; with ``expect``, only when its current outcome is one of them (a
        claim: False when another runner got there first). A stale ``sending`` claim counts as waiting."""
        now = time.time()
        statement = (
            "UPDATE fleet_rollout_devices SET outcome = ?, reason = ?, updated_at = ?"
            + (", attempts = ?" if attempts is not None else "")
            + " WHERE rollout_id = ? AND site = ? AND device = ?"
        )
        params: list[Any] = [outcome, None if reason is None else reason[:REASON_CHARS], now]
        if attempts is not None:
            params.append(attempts)
        params += [rollout_id, target.site, target.device]
        if expect is not None:
            expected = sorted(expect)
            stale = f" OR (outcome = '{SENDING}' AND updated_at < ?)" if WAITING in expected else ""
            statement += f" AND (outcome IN ({', '.join('?' for _ in expected)}){stale})"
            params += expected
            if stale:
                params.append(now - STALE_CLAIM_S)
        with self.store.transaction() as execute:
            changed = execute(statement, tuple(params))
            execute("UPDATE fleet_rollouts SET updated_at = ? WHERE rollout_id = ?", (now, rollout_id))
        return changed > 0

    def set_state(self, rollout_id: str, state: str, stage: int, reason: str | None = None) -> None:
        with self.store.transaction() as execute:
            execute(
                "UPDATE fleet_rollouts SET state = ?, stage = ?, reason = ?, updated_at = ? WHERE rollout_id = ?",
                (state, stage, reason, time.time(), rollout_id),
            )

    def move_all(self, rollout_id: str, moves: dict[str, str], reason: str) -> None:
        """Change every device in outcome ``old`` to ``moves[old]`` (halting, rolling back)."""
        now = time.time()
        with self.store.transaction() as execute:
            for old, new in moves.items():
                execute(
                    "UPDATE fleet_rollout_devices SET outcome = ?, reason = ?, updated_at = ? "
                    "WHERE rollout_id = ? AND outcome = ?",
                    (new, reason, now, rollout_id, old),
                )


def create_rollout(
    store: FleetStore,
    archive: bytes,
    targets: Iterable[Target],
    *,
    canaries: int = 1,
    max_failure_ratio: float = 0.2,
    allow_downgrade: bool = False,
    probation_timeout_s: float = DEFAULT_PROBATION_TIMEOUT_S,
) -> Rollout:
    """Record a rollout of the bundle ``archive`` to ``targets`` (nothing is sent yet: see
    :class:`RolloutRunner`). Canaries are the ``canaries`` targets the store last saw online, by name;
    a device on probation longer than ``probation_timeout_s`` after its install counts as failed."""
    chosen = sorted(set(targets))
    if not chosen:
        raise FleetError("a rollout needs at least one target device; name them with --site, --device or --group")
    if canaries < 1:
        raise FleetError(f"canaries must be at least 1, not {canaries}")
    if not 0.0 <= max_failure_ratio <= 1.0:
        raise FleetError(f"max_failure_ratio must be between 0 and 1, not {max_failure_ratio}")
    if not probation_timeout_s > 0:
        raise FleetError(f"probation_timeout_s must be a positive number of seconds, not {probation_timeout_s}")
    manifest, digest = archive_digest(archive)
    online = {(row["site"], row["device"]) for row in store.devices() if row["state"] in REACHABLE}
    chosen.sort(key=lambda t: ((t.site, t.device) not in online, t.site, t.device))
    now = time.time()
    rollout_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    rollout = Rollout(
        rollout_id=rollout_id,
        created_at=now,
        updated_at=now,
        bundle_name=manifest.name,
        bundle_version=manifest.version,
        bundle_sha256=digest,
        archive_sha256=hashlib.sha256(archive).hexdigest(),
        canaries=canaries,
        max_failure_ratio=max_failure_ratio,
        allow_downgrade=allow_downgrade,
        stage=0,
        state=RUNNING,
        reason=None,
        probation_timeout_s=probation_timeout_s,
        devices=[
            DeviceOutcome(t.site, t.device, 0 if index < canaries else 1, WAITING, None, 0, now)
            for index, t in enumerate(chosen)
        ],
    )
    rollouts = RolloutStore(store)
    rollouts.add(rollout, archive)
    return rollouts.get(rollout_id)


def rollback_rollout(store: FleetStore, rollout_id: str) -> Rollout:
    """Mark a rollout for rollback: devices it installed get a signed ``rollback`` from the next runner
    pass, devices not yet sent are skipped. Refused for a rollout already rolled back."""
    rollouts = RolloutStore(store)
    rollout = rollouts.get(rollout_id)
    if rollout.state in (ROLLING_BACK, ROLLED_BACK_STATE):
        raise FleetError(f"rollout {rollout.rollout_id} is already {rollout.state}")
    reason = "rollout rolled back"
    rollouts.set_state(rollout.rollout_id, ROLLING_BACK, rollout.stage, reason)
    rollouts.move_all(
        rollout.rollout_id,
        {UPDATED: REVERT_WAITING, PROBATION: REVERT_WAITING, WAITING: SKIPPED, SENDING: SKIPPED},
        reason,
    )
    return rollouts.get(rollout.rollout_id)


class RolloutRunner:
    """Drives rollouts over one MQTT connection with the operator key; use as a context manager."""

    def __init__(
        self,
        broker: BrokerConfig,
        store: FleetStore,
        key: Ed25519PrivateKey,
        *,
        timeout_s: float = 30.0,
        poll_s: float = 0.5,
        max_attempts: int = 3,
    ) -> None:
        self.rollouts = RolloutStore(store)
        self.key = key
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.client = CommandClient(broker, timeout_s=timeout_s)
        self._states: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._archives: dict[str, bytes] = {}

    def __enter__(self) -> RolloutRunner:
        self.client.__enter__()
        try:
            self.client.watch_status(self._on_status)
        except BaseException:
            self.client.close()
            raise
        # Retained statuses follow the SUBACK: let them land before the first pass judges who is online.
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _on_status(self, site: str, device: str, payload: bytes) -> None:
        try:
            state = str(json.loads(payload)["state"])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self._states[(site, device)] = state
        if state in REACHABLE:
            self._changed.set()

    def reachable(self, target: Target) -> bool:
        """Online or degraded by its last status; a device never heard of is tried (it may be new)."""
        with self._lock:
            state = self._states.get((target.site, target.device))
        return state is None or state in REACHABLE

    def _silent(self, target: Target) -> None:
        """A device that did not answer waits for its next status message before it is tried again."""
        with self._lock:
            self._states[(target.site, target.device)] = "silent"

    # ------------------------------------------------------------------ driving
    def run(
        self,
        rollout_ids: Sequence[str] | None = None,
        timeout_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> list[Rollout]:
        """Advance the given rollouts (None: every active one, for ever) until they are settled, the
        timeout passes or ``stop`` is set; returns their last state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            ids = list(rollout_ids) if rollout_ids is not None else [
                r.rollout_id for r in self.rollouts.list_rollouts() if not r.settled
            ]
            results = [self.advance(rollout_id) for rollout_id in ids]
            if rollout_ids is not None and all(r.settled for r in results):
                return results
            if (deadline is not None and time.monotonic() >= deadline) or (stop is not None and stop.is_set()):
                return results
            self._changed.wait(self.poll_s)
            self._changed.clear()

    def advance(self, rollout_id: str) -> Rollout:
        """One pass over a rollout: send to reachable waiting devices of the started stages, follow
        probations and rollbacks, then halt, open the next stage or finish."""
        rollout = self.rollouts.get(rollout_id)
        if rollout.state == ROLLING_BACK:
            for row in rollout.devices:
                target = Target(row.site, row.device)
                if row.outcome == REVERT_WAITING and self.reachable(target):
                    self._revert(rollout, target)
            rollout = self.rollouts.get(rollout_id)
            if not any(d.outcome in (REVERT_WAITING, REVERTING) for d in rollout.devices):
                self.rollouts.set_state(rollout_id, ROLLED_BACK_STATE, rollout.stage, rollout.reason)
            return self.rollouts.get(rollout_id)
        rollout = self._judge(rollout)
        for row in rollout.devices:
            target = Target(row.site, row.device)
            if row.outcome == PROBATION:
                if self.reachable(target):
                    self._follow_probation(rollout, target)
                if time.time() - row.updated_at > rollout.probation_timeout_s:
                    self._time_out_probation(rollout, target)
            elif (
                row.outcome == WAITING and rollout.state == RUNNING and row.stage <= rollout.stage
                and self.reachable(target)
            ):
                self._install(rollout, target, row.attempts)
        return self._judge(self.rollouts.get(rollout_id))

    def _time_out_probation(self, rollout: Rollout, target: Target) -> None:
        """Fail a device whose probation (started when its outcome became ``probation``) outlasted the
        rollout's timeout, unless the status just asked for decided it."""
        reason = (
            f"{PROBATION_TIMEOUT}: no report of {rollout.bundle_name} {rollout.bundle_version} passing its "
            f"probation within {rollout.probation_timeout_s:g} s of the install"
        )
        if self.rollouts.set_outcome(rollout.rollout_id, target, FAILED, reason, expect=(PROBATION,)):
            logger.warning("rollout %s: %s %s", rollout.rollout_id, target, reason)

    def _judge(self, rollout: Rollout) -> Rollout:
        """Halt on too many failures, else open the next stage or finish when this one is decided."""
        if rollout.state != RUNNING:
            return rollout
        started = [d for d in rollout.devices if d.stage <= rollout.stage]
        failures = sum(d.outcome in FAILURE for d in started)
        if failures > rollout.max_failure_ratio * len(started):
            reason = (
                f"{failures} of {len(started)} devices failed, more than the {rollout.max_failure_ratio:.0%} "
                f"allowed (stage {rollout.stage})"
            )
            logger.warning("rollout %s halted: %s", rollout.rollout_id, reason)
            self.rollouts.set_state(rollout.rollout_id, HALTED, rollout.stage, reason)
            self.rollouts.move_all(rollout.rollout_id, {WAITING: SKIPPED}, "rollout halted")
            return self.rollouts.get(rollout.rollout_id)
        if all(d.outcome in SUCCESS | FAILURE for d in started):
            if rollout.stage + 1 < rollout.stages:
                self.rollouts.set_state(rollout.rollout_id, RUNNING, rollout.stage + 1)
            else:
                self.rollouts.set_state(rollout.rollout_id, DONE, rollout.stage)
            return self._judge(self.rollouts.get(rollout.rollout_id))
        return rollout

    def _archive(self, rollout: Rollout) -> bytes:
        if rollout.archive_sha256 not in self._archives:
            self._archives[rollout.archive_sha256] = self.rollouts.archive(rollout.archive_sha256)
        return self._archives[rollout.archive_sha256]

    def _status(self, target: Target) -> dict[str, Any]:
        request = sign_command(self.key, target.site, target.device, "status")
        result = self.client.send(target.site, target.device, "status", request)
        if result["outcome"] != "ok":
            raise CommandError(f"status refused by {target}: {result.get('error')}")
        data: dict[str, Any] = result["data"]
        return data

    def _install(self, rollout: Rollout, target: Target, attempts: int) -> None:
        if not self.rollouts.set_outcome(rollout.rollout_id, target, SENDING, expect=(WAITING,)):
            return  # another runner has it
        try:
            status = self._status(target)
            if status.get("bundle_sha256") == rollout.bundle_sha256:
                self.rollouts.set_outcome(rollout.rollout_id, target, CURRENT,
                                          f"already runs {rollout.bundle_name} {rollout.bundle_version}")
                return
            result = self._send_update(rollout, target)
        except CommandError as exc:
            self._silent(target)
            outcome = FAILED if attempts + 1 >= self.max_attempts else WAITING
            self.rollouts.set_outcome(rollout.rollout_id, target, outcome, str(exc), attempts=attempts + 1)
            return
        if result["outcome"] != "ok":
            self.rollouts.set_outcome(rollout.rollout_id, target, REFUSED, str(result.get("error")),
                                      attempts=attempts + 1)
        elif result["data"].get("bundle_sha256") == rollout.bundle_sha256:
            self.rollouts.set_outcome(rollout.rollout_id, target, PROBATION, str(result["data"].get("message")),
                                      attempts=attempts + 1)
        else:
            self.rollouts.set_outcome(rollout.rollout_id, target, ROLLED_BACK, str(result["data"].get("message")),
                                      attempts=attempts + 1)

    def _send_update(self, rollout: Rollout, target: Target) -> dict[str, Any]:
        """Every chunk, signed; the first error reply or the last chunk's reply."""
        result: dict[str, Any] = {}
        for request in model_update_requests(self._archive(rollout), allow_downgrade=rollout.allow_downgrade):
            signed = sign_request(self.key, target.site, target.device, "model-update", request)
            result = self.client.send(target.site, target.device, "model-update", signed)
            if result["outcome"] == "error":
                break
        return result

    def _follow_probation(self, rollout: Rollout, target: Target) -> None:
        try:
            status = self._status(target)
        except CommandError:
            self._silent(target)
            return
        update = status.get("update") or {}
        if update.get("bundle_sha256") == rollout.bundle_sha256:
            if update.get("state") == "passed":
                self.rollouts.set_outcome(rollout.rollout_id, target, UPDATED, None, expect=(PROBATION,))
            elif update.get("state") == "rolled-back":
                self.rollouts.set_outcome(rollout.rollout_id, target, ROLLED_BACK, str(update.get("reason")),
                                          expect=(PROBATION,))
        elif status.get("bundle_sha256") == rollout.bundle_sha256:
            # Restarted since the install: the probation counter is gone, the bundle still runs.
            self.rollouts.set_outcome(rollout.rollout_id, target, UPDATED, "running it after a restart",
                                      expect=(PROBATION,))
        else:
            self.rollouts.set_outcome(rollout.rollout_id, target, ROLLED_BACK,
                                      "the device runs another bundle now", expect=(PROBATION,))

    def _revert(self, rollout: Rollout, target: Target) -> None:
        if not self.rollouts.set_outcome(rollout.rollout_id, target, REVERTING, rollout.reason,
                                         expect=(REVERT_WAITING,)):
            return
        try:
            status = self._status(target)
            if status.get("bundle_sha256") != rollout.bundle_sha256:
                self.rollouts.set_outcome(rollout.rollout_id, target, REVERTED,
                                          "no longer ran the rollout's bundle: nothing sent")
                return
            request = sign_command(self.key, target.site, target.device, "rollback")
            result = self.client.send(target.site, target.device, "rollback", request)
        except CommandError as exc:
            self._silent(target)
            self.rollouts.set_outcome(rollout.rollout_id, target, REVERT_WAITING, str(exc))
            return
        if result["outcome"] == "ok":
            self.rollouts.set_outcome(rollout.rollout_id, target, REVERTED, str(result["data"].get("message")))
        else:
            self.rollouts.set_outcome(rollout.rollout_id, target, REVERT_FAILED, str(result.get("error")))


def drive_in_background(runner: RolloutRunner, stop: threading.Event) -> threading.Thread:
    """Run ``runner`` over every active rollout in a daemon thread until ``stop`` is set (``fleet listen
    --drive-rollouts``); a failing pass is logged and retried, never fatal to the receiver."""

    def loop() -> None:
        while not stop.is_set():
            try:
                runner.run(None, timeout_s=runner.poll_s * 20, stop=stop)
            except Exception:  # the store or the broker hiccuped: the next pass starts from the store
                logger.exception("a rollout pass failed; retrying in 5 s")
                stop.wait(5)

    thread = threading.Thread(target=loop, name="gridedge-fleet-rollouts", daemon=True)
    thread.start()
    return thread
