"""What the fleet looks like to a person: rows built once from the store, shown by the CLI and the web page.

Times shown are ages ("3 min") or ISO 8601 UTC; never raw epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from rich import box
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from gridedge.fleet.rollouts import Rollout
    from gridedge.fleet.store import FleetStore

# Store columns holding epoch seconds; exports write them as ISO 8601 UTC.
TIME_COLUMNS = frozenset({"state_at", "last_seen", "received_at"})
STATE_COLOURS = {"online": "green", "degraded": "yellow", "offline": "red", "stopped": "bright_black", "silent": "red"}


def iso_utc(epoch_s: float | None, timespec: Literal["seconds", "milliseconds"] = "milliseconds") -> str:
    """ISO 8601 UTC text of epoch seconds (``""`` for unknown)."""
    if epoch_s is None:
        return ""
    return datetime.fromtimestamp(float(epoch_s), UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def age_label(seconds: float) -> str:
    """A short age: ``42 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def ranges_label(ranges: list[tuple[int, int]], shown: int = 3) -> str:
    """``5-6, 8`` for inclusive ranges, the first ``shown`` of them."""
    text = ", ".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges[:shown])
    return text + (", ..." if len(ranges) > shown else "")


@dataclass(frozen=True)
class FleetRow:
    """One device as a fleet manager reads it; ``state`` is ``silent`` when a device that said it was up
    has not been heard for too long."""

    site: str
    device: str
    state: str
    state_reason: str | None
    last_seen: float
    age_s: float
    model: str
    model_name: str | None
    model_version: str | None
    runtime: str | None
    alerts: int
    last_alert: str | None
    drift_max: float | None
    outbox_depth: int | None
    dropped: int | None
    missing: int
    gap_ranges: str
    dead_letters: int


def fleet_rows(store: FleetStore, now: float, stale_after_s: float) -> list[FleetRow]:
    """Every device with its gaps and dead letters, sorted by site and device."""
    gaps = store.gaps()
    dead = store.dead_letters_by_device()
    rows = []
    for row in store.devices():
        key = (row["site"], row["device"])
        state = row["state"] or "unknown"
        age = now - row["last_seen"]
        if state in ("online", "degraded") and age > stale_after_s:
            state = "silent"
        device_gaps = gaps.get(key, [])
        rows.append(
            FleetRow(
                site=row["site"],
                device=row["device"],
                state=state,
                state_reason=row["state_reason"],
                last_seen=row["last_seen"],
                age_s=age,
                model=" ".join(str(part) for part in (row["model_name"], row["model_version"]) if part) or "-",
                model_name=row["model_name"],
                model_version=row["model_version"],
                runtime=row["model_runtime"],
                alerts=int(row["alerts"]),
                last_alert=row["last_alert"],
                drift_max=row["drift_max"],
                outbox_depth=row["outbox_depth"],
                dropped=row["dropped"],
                missing=sum(last - first + 1 for first, last in device_gaps),
                gap_ranges=ranges_label(device_gaps),
                dead_letters=dead.get(key, 0),
            )
        )
    return rows


def _number(value: float | None, format_spec: str = "") -> str:
    return "-" if value is None else format(value, format_spec)


def fleet_table(rows: list[FleetRow]) -> Table:
    """The fleet as a rich table that fits 80 columns: no side borders, device over site and model over
    version in two-line cells that fold (never cut) long names; the gap ranges are printed under the
    table by the caller."""
    table = Table(
        title=f"gridedge fleet ({len(rows)} devices)", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0)
    )
    table.add_column("device\nsite", overflow="fold", min_width=12)
    table.add_column("state", no_wrap=True)
    table.add_column("seen", no_wrap=True, justify="right")
    table.add_column("model\nversion", overflow="fold", min_width=10)
    table.add_column("alerts", no_wrap=True, justify="right")
    table.add_column("drift", no_wrap=True, justify="right")
    table.add_column("queued", no_wrap=True, justify="right")
    table.add_column("lost", no_wrap=True, justify="right")
    table.add_column("gaps", no_wrap=True, justify="right")
    for row in rows:
        colour = STATE_COLOURS.get(row.state, "white")
        table.add_row(
            f"{row.device}\n[dim]{row.site}[/]",
            f"[{colour}]{row.state}[/]",
            age_label(row.age_s),
            f"{row.model_name}\n{row.model_version}" if row.model_name else "-",
            str(row.alerts),
            _number(row.drift_max, ".2f"),
            _number(row.outbox_depth),
            _number(row.dropped),
            str(row.missing) if row.missing else "-",
        )
    return table


TABLE_LEGEND = "seen: time since the last message; queued/lost: device outbox; gaps: seq numbers never received"


OUTCOME_COLOURS = {
    "updated": "green", "current": "green", "reverted": "cyan", "refused": "red", "rolled-back": "red",
    "failed": "red", "revert-failed": "red", "probation": "yellow", "sending": "yellow", "waiting": "white",
    "revert-waiting": "white", "skipped": "bright_black",
}
ROLLOUT_STATE_COLOURS = {
    "running": "yellow", "done": "green", "halted": "red", "rolling-back": "yellow", "rolled-back": "cyan"
}


def outcome_counts_label(counts: dict[str, int]) -> str:
    """``3 updated, 1 refused`` in a fixed order (successes, failures, then what is still open)."""
    order = ("updated", "current", "refused", "rolled-back", "failed", "probation", "sending", "waiting",
             "skipped", "revert-waiting", "reverting", "reverted", "revert-failed")
    return ", ".join(f"{counts[name]} {name}" for name in order if counts.get(name))


def rollouts_table(rollouts: list[Rollout], now: float) -> Table:
    """Every rollout in one table that fits 80 columns (bundle over version, counts per outcome folded)."""
    table = Table(title=f"rollouts ({len(rollouts)})", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1))
    table.add_column("rollout\ncreated", overflow="fold", min_width=16)
    table.add_column("bundle\nversion", overflow="fold", min_width=8)
    table.add_column("state\nstage", no_wrap=True)
    table.add_column("devices", overflow="fold", min_width=16)
    for rollout in rollouts:
        colour = ROLLOUT_STATE_COLOURS.get(rollout.state, "white")
        table.add_row(
            f"{rollout.rollout_id}\n[dim]{age_label(now - rollout.created_at)} ago[/]",
            f"{rollout.bundle_name}\n{rollout.bundle_version}",
            f"[{colour}]{rollout.state}[/]\n{rollout.stage + 1}/{rollout.stages}",
            outcome_counts_label(rollout.counts()) or "-",
        )
    return table


def rollout_devices_table(rollout: Rollout, now: float) -> Table:
    """One rollout's devices: stage (canary or rest), outcome, the device's reason, age; fits 80 columns."""
    table = Table(
        title=(
            f"rollout {rollout.rollout_id}: {rollout.bundle_name} {rollout.bundle_version}, {rollout.state}, "
            f"probation timeout {age_label(rollout.probation_timeout_s)}"
        ),
        box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1),
    )
    table.add_column("device\nsite", overflow="fold", min_width=12)
    table.add_column("stage", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("when", no_wrap=True, justify="right")
    table.add_column("reason", overflow="fold", ratio=1)
    for row in rollout.devices:
        colour = OUTCOME_COLOURS.get(row.outcome, "white")
        table.add_row(
            f"{row.device}\n[dim]{row.site}[/]",
            "canary" if row.stage == 0 and rollout.stages > 1 else "rest" if row.stage else "all",
            f"[{colour}]{row.outcome}[/]",
            age_label(now - row.updated_at),
            Text(row.reason or ""),  # the device's words: brackets in them are not markup
        )
    return table


@dataclass(frozen=True)
class StageProgress:
    """How far one stage of a rollout got: devices that succeeded, failed, and are still open."""

    name: str
    total: int
    succeeded: int
    failed: int

    @property
    def open(self) -> int:
        return self.total - self.succeeded - self.failed

    def percent(self, part: int) -> float:
        return 100.0 * part / self.total if self.total else 0.0


def stage_progress(rollout: Rollout) -> list[StageProgress]:
    """One entry per stage (canaries, rest); reverted devices count as done, revert failures as failed."""
    done = {"updated", "current", "reverted"}
    bad = {"refused", "rolled-back", "failed", "revert-failed"}
    stages = []
    for stage in range(rollout.stages):
        counts = rollout.counts(stage)
        name = "all" if rollout.stages == 1 else ("canaries" if stage == 0 else "rest")
        stages.append(
            StageProgress(
                name=name,
                total=sum(counts.values()),
                succeeded=sum(n for outcome, n in counts.items() if outcome in done),
                failed=sum(n for outcome, n in counts.items() if outcome in bad),
            )
        )
    return stages
