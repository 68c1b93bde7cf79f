"""Where the fleet store is: one answer for every ``gridedge fleet`` command.

Precedence, first found wins (the order of git, kubectl and psql):

1. ``--db FILE`` (SQLite) or ``--dsn DSN`` (PostgreSQL) on the command line;
2. the environment: ``GRIDEDGE_FLEET_DSN`` or ``GRIDEDGE_FLEET_DB``;
3. a config file: ``--config FILE``, else ``$GRIDEDGE_FLEET_CONFIG``, else
   ``$XDG_CONFIG_HOME/gridedge/fleet.yaml`` (``~/.config/gridedge/fleet.yaml``) when it exists, holding
   ``db:`` (relative to the file) or ``dsn:``, and optionally ``retention_days:``;
4. ``./fleet.sqlite3``.

Only ``fleet listen`` creates a missing SQLite file; every command that reads the fleet refuses one
and says where it looked, instead of reporting an empty fleet from a new empty file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from edge_agent.errors import FleetError
from edge_agent.yamlconfig import StrictModel, load_yaml_model

DB_ENV = "GRIDEDGE_FLEET_DB"
DSN_ENV = "GRIDEDGE_FLEET_DSN"
CONFIG_ENV = "GRIDEDGE_FLEET_CONFIG"
DEFAULT_DB = Path("fleet.sqlite3")


class FleetFileConfig(StrictModel):
    """The fleet config file (``~/.config/gridedge/fleet.yaml``)."""

    db: Path | None = Field(None)
    """SQLite file of the fleet store, relative to this file."""
    dsn: str | None = Field(None)
    """PostgreSQL DSN of the fleet store (instead of db)."""
    retention_days: float | None = Field(None, gt=0)
    """Keep stored messages this many days; older ones are dropped by the receiver."""
    series_retention_days: float | None = Field(None, gt=0)
    """Keep model-step telemetry (the training data of `fleet retrain`) this many days; usually longer than the
    messages, to cover the seasons a model must learn."""
    probation_timeout_s: float | None = Field(None, gt=0)
    """Default of `fleet deploy --probation-timeout`: seconds a device may stay on probation after installing a
    rollout's bundle before it counts as failed (probation-timeout); 3600 when unset."""
    groups: dict[str, list[str]] = Field(default_factory=dict)
    """Named device groups for `fleet deploy --group`: SITE/DEVICE patterns (shell-style, e.g. farm-*/inverter-*)
    matched against the devices the fleet store knows."""

    @model_validator(mode="after")
    def _one_store(self) -> FleetFileConfig:
        if self.db is not None and self.dsn is not None:
            raise ValueError("give either db (SQLite) or dsn (PostgreSQL), not both")
        return self


@dataclass(frozen=True)
class Retention:
    """How long the fleet store keeps what it receives, in days; None keeps it for ever."""

    messages_days: float | None = None
    series_days: float | None = None


@dataclass(frozen=True)
class StoreLocation:
    """A resolved fleet store and where that answer came from (shown in errors)."""

    path: Path | None
    dsn: str | None
    source: str
    retention: Retention = Retention()

    def describe(self) -> str:
        """The store for humans, without a DSN's password."""
        if self.dsn is not None:
            return "PostgreSQL DSN" + f" ({self.source})"
        return f"{self.path} ({self.source})"


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/gridedge/fleet.yaml``, ``~/.config/gridedge/fleet.yaml`` without it."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gridedge" / "fleet.yaml"


def _config_file(config: Path | None) -> tuple[Path | None, str]:
    if config is not None:
        return config, "--config"
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]), f"${CONFIG_ENV}"
    path = default_config_path()
    return (path, str(path)) if path.is_file() else (None, "")


def fleet_file_config(config: Path | None = None) -> FleetFileConfig:
    """The fleet config file (``--config``, ``$GRIDEDGE_FLEET_CONFIG`` or the default), empty when none."""
    config_path, _ = _config_file(config)
    if config_path is None:
        return FleetFileConfig()
    return load_yaml_model(config_path, FleetFileConfig, "fleet config", missing_hint="pass an existing --config")


def fleet_groups(config: Path | None = None) -> dict[str, list[str]]:
    """The ``groups:`` of the fleet config file."""
    return fleet_file_config(config).groups


def resolve_store(
    db: Path | None = None, dsn: str | None = None, config: Path | None = None, *, must_exist: bool = True
) -> StoreLocation:
    """The fleet store the options, environment and config file name (see the module docstring)."""
    if db is not None and dsn is not None:
        raise FleetError("give either --db (SQLite) or --dsn (PostgreSQL), not both")
    config_path, config_source = _config_file(config)
    file_config = (
        load_yaml_model(config_path, FleetFileConfig, "fleet config", missing_hint="pass an existing --config")
        if config_path is not None
        else FleetFileConfig()
    )
    retention = Retention(file_config.retention_days, file_config.series_retention_days)
    if dsn is not None:
        return StoreLocation(None, dsn, "--dsn", retention)
    if db is not None:
        location = StoreLocation(db, None, "--db", retention)
    elif os.environ.get(DSN_ENV):
        return StoreLocation(None, os.environ[DSN_ENV], f"${DSN_ENV}", retention)
    elif os.environ.get(DB_ENV):
        location = StoreLocation(Path(os.environ[DB_ENV]), None, f"${DB_ENV}", retention)
    elif file_config.dsn is not None:
        return StoreLocation(None, file_config.dsn, config_source, retention)
    elif file_config.db is not None and config_path is not None:
        location = StoreLocation(config_path.parent / file_config.db, None, config_source, retention)
    else:
        location = StoreLocation(DEFAULT_DB, None, "default", retention)
    assert location.path is not None
    if must_exist and not location.path.is_file():
        raise FleetError(
            f"fleet store {location.path} not found ({location.source}); give the file `gridedge fleet listen` "
            f"writes with --db, ${DB_ENV} or db: in {default_config_path()} (or a PostgreSQL DSN with --dsn / "
            f"${DSN_ENV})"
        )
    return location
