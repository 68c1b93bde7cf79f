"""What the fleet looks like to a person: rows built once from the store, shown by the CLI and the web page.

Times shown are ages ("3 min") or ISO 8601 UTC; never raw epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from rich import box
from rich.table import Table

if TYPE_CHECKING:
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
