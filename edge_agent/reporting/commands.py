"""Remote commands: ``gridedge/v1/{site}/{device}/cmd/{name}`` in, a result on ``cmd/{name}/result``.

:class:`CommandProcessor` turns one request payload into one :class:`CommandReply` and never raises:
malformed JSON, unknown commands, bad arguments and failing handlers all become error replies.
The MQTT reporter subscribes, runs the processor off the network thread and publishes the replies
(on the MQTT 5 response topic with the correlation data when the request carried them).

The agent plugs in what only it can do through two small protocols:

* :class:`AgentControl` answers ``status`` and ``reload-config``;
* :class:`ModelUpdater` verifies and swaps bundles for ``model-update`` and ``rollback``;
* :class:`Replayer` republishes retained messages for ``replay``.

Before any of them runs, a :class:`~edge_agent.reporting.authentication.CommandGuard` checks the
operator's signature, target, time window and nonce; without a guard every state-changing command is
refused (``ping`` and ``status`` stay open).

``model-update`` carries a signed bundle archive, base64 in ``args.data``, split into chunks when large
(:func:`model_update_requests` builds them). Every chunk is a signed command carrying the
archive's total size and sha256, so the operator signature is verified before any byte is staged, and a
transfer larger than ``max_update_bytes`` or than the free space (minus ``staging_reserve_bytes``) is
refused at its first chunk. Chunks are staged on disk, never more than the announced size; staged
chunks of a transfer left unfinished for ``staging_max_age_s`` are deleted, and all of them at start.
When the last one is in, the archive's size and sha256 are checked and the file is handed to
:meth:`ModelUpdater.apply`, which must
verify signature and hashes, refuse a downgrade unless the signed ``allow_downgrade`` flag is set,
self-test, swap atomically and keep the previous bundle, or raise a
:class:`~edge_agent.errors.GridedgeError` (e.g. ``BundleError``) saying why it refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import Field, JsonValue, ValidationError

from edge_agent.errors import GridedgeError
from edge_agent.fsutil import atomic_write_bytes, free_bytes
from edge_agent.messages import CommandRequest, ModelInfo
from edge_agent.reporting.authentication import SIGNED_COMMANDS, CommandGuard
from edge_agent.yamlconfig import StrictModel, validation_problems

logger = logging.getLogger(__name__)

# Room an update must leave on the disk (the outbox and the logs need it too).
DEFAULT_STAGING_RESERVE_BYTES = 16 * 1024 * 1024
DEFAULT_STAGING_MAX_AGE_S = 3600.0
COMMANDS = ("ping", "status", "reload-config", "set-log-level", "rollback", "model-update", "replay")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class UpdateOutcome(StrictModel):
    """What a model swap or rollback did."""

    active: ModelInfo = Field(...)
    """The model running now."""
    previous: ModelInfo | None = Field(None)
    """The model kept for rollback, if any."""
    message: str = Field("")
    """Human-readable account of what happened."""
    bundle_sha256: str | None = Field(None)
    """sha256 of the active bundle's signed manifest: its identity for fleet rollouts."""


@runtime_checkable
class ModelUpdater(Protocol):
    """Verifies and installs model bundles on behalf of the ``model-update`` and ``rollback`` commands."""

    def apply(self, archive: Path, allow_downgrade: bool = False) -> UpdateOutcome:
        """Install the bundle archive at ``archive``: verify signature and hashes, refuse a lower version
        of the running model unless ``allow_downgrade``, self-test, swap atomically keeping the previous
        bundle. Raise a GridedgeError to refuse; the running model must then stay in place. The archive
        file is deleted after the call returns."""

    def rollback(self) -> UpdateOutcome:
        """Go back to the previous bundle; raise a GridedgeError when there is none."""


@runtime_checkable
class AgentControl(Protocol):
    """Agent hooks for the ``status`` and ``reload-config`` commands."""

    def status_report(self) -> dict[str, JsonValue]:
        """A JSON-able snapshot of the agent (state, model, last cycle ...)."""

    def reload_config(self) -> str:
        """Re-read the configuration and apply it; raise a ConfigError to refuse. Returns a summary."""


@runtime_checkable
class Replayer(Protocol):
    """Republishes retained messages for the ``replay`` command."""

    def replay(self, args: dict[str, JsonValue]) -> dict[str, JsonValue]:
        """Validate the arguments, republish what is held and say what is not (raise to refuse)."""


class ModelUpdateChunk(StrictModel):
    """Arguments of one ``model-update`` request."""

    transfer_id: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    """Id shared by all chunks."""
    chunk_index: int = Field(..., ge=0)
    """Position of this chunk, from 0."""
    chunk_count: int = Field(..., ge=1, le=100_000)
    """Number of chunks in the transfer."""
    total_bytes: int = Field(..., ge=1)
    """Size of the whole archive."""
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")
    """sha256 of the whole archive, hex."""
    data: str = Field(...)
    """This chunk's bytes, base64."""
    allow_downgrade: bool = Field(False)
    """Install even when it is a lower version of the running model (signed)."""


class SetLogLevelArgs(StrictModel):
    """Arguments of ``set-log-level``."""

    level: str = Field(...)
    """DEBUG, INFO, WARNING, ERROR or CRITICAL."""
    logger: str = Field("")
    """Logger name; empty for the root logger."""


@dataclass
class CommandReply:
    """The outcome of one command, before the reporter wraps it into a CommandResult message."""

    command: str
    outcome: str
    request_id: str | None = None
    error: str | None = None
    data: dict[str, JsonValue] = field(default_factory=dict)


def model_update_requests(
    archive: bytes, chunk_bytes: int = 256 * 1024, allow_downgrade: bool = False
) -> list[CommandRequest]:
    """Split a bundle archive into ``model-update`` requests (what an operator tool signs and publishes)."""
    digest = hashlib.sha256(archive).hexdigest()
    transfer_id = digest[:16] + f"-{int(time.time())}"
    chunks = [archive[i : i + chunk_bytes] for i in range(0, len(archive), chunk_bytes)]
    return [
        CommandRequest(
            args={
                "transfer_id": transfer_id,
                "chunk_index": index,
                "chunk_count": len(chunks),
                "total_bytes": len(archive),
                "sha256": digest,
                "data": base64.b64encode(chunk).decode("ascii"),
                **({"allow_downgrade": True} if allow_downgrade else {}),
            }
        )
        for index, chunk in enumerate(chunks)
    ]


class CommandProcessor:
    """Executes command requests; every request gets exactly one reply and nothing is raised."""

    def __init__(
        self,
        staging_dir: Path,
        max_update_bytes: int,
        control: AgentControl | None = None,
        updater: ModelUpdater | None = None,
        guard: CommandGuard | None = None,
        replayer: Replayer | None = None,
        staging_reserve_bytes: int = DEFAULT_STAGING_RESERVE_BYTES,
        staging_max_age_s: float = DEFAULT_STAGING_MAX_AGE_S,
    ):
        self.staging_dir = staging_dir
        self.max_update_bytes = max_update_bytes
        self.staging_reserve_bytes = staging_reserve_bytes
        self.staging_max_age_s = staging_max_age_s
        self.control = control
        self.updater = updater
        self.guard = guard
        self.replayer = replayer
        self._started = time.monotonic()
        # A transfer cut by a restart cannot be resumed by the agent: its chunks only take space.
        self._forget_other_transfers(None)

    def handle(self, command: str, payload: bytes) -> CommandReply:
        """Run one command given its name (topic level) and raw payload."""
        try:
            return self._handle(command, payload)
        except Exception as exc:  # the last line: whatever the payload, the caller gets a reply
            logger.exception("command %s could not be handled", command[:64])
            return CommandReply(command, "error", None, f"the request could not be handled: {exc!r}")

    def _handle(self, command: str, payload: bytes) -> CommandReply:
        try:
            request = CommandRequest.model_validate_json(payload)
        except ValidationError as exc:
            request_id = _salvage_request_id(payload)
            problem = _payload_problem(payload) or f"is invalid: {validation_problems(exc)[0]}"
            return CommandReply(
                command,
                "error",
                request_id,
                f"the request payload {problem}; send a JSON object like "
                '{"schema_version": "1.0", "request_id": "...", "args": {...}}',
            )
        if command not in COMMANDS:
            return CommandReply(
                command,
                "error",
                request.request_id,
                f"unknown command {command!r}; known commands: {', '.join(COMMANDS)}",
            )
        try:
            self._authenticate(command, request)
            outcome, data = self._dispatch(command, request)
        except ValidationError as exc:
            return CommandReply(
                command, "error", request.request_id, f"bad arguments for {command}: {validation_problems(exc)[0]}"
            )
        except GridedgeError as exc:
            return CommandReply(command, "error", request.request_id, str(exc))
        except Exception as exc:  # a failing hook must not take the agent down: report it instead
            logger.exception("command %s failed", command)
            return CommandReply(
                command,
                "error",
                request.request_id,
                f"internal error while running {command}: {exc!r}; see the agent log",
            )
        return CommandReply(command, outcome, request.request_id, None, data)

    def _authenticate(self, command: str, request: CommandRequest) -> None:
        if self.guard is not None:
            self.guard.check(command, request)
        elif command in SIGNED_COMMANDS:
            raise GridedgeError(
                f"refused: {command} must be signed, and this agent has no operator key to check signatures "
                "(set commands.operator_public_key in its config)"
            )

    def _dispatch(self, command: str, request: CommandRequest) -> tuple[str, dict[str, JsonValue]]:
        if command == "ping":
            return "ok", {"pong": True, "uptime_s": round(time.monotonic() - self._started, 3)}
        if command == "set-log-level":
            args = SetLogLevelArgs.model_validate(request.args)
            level = args.level.upper()
            if level not in LOG_LEVELS:
                raise GridedgeError(f"unknown log level {args.level!r}; use one of {', '.join(LOG_LEVELS)}")
            logging.getLogger(args.logger or None).setLevel(level)
            return "ok", {"logger": args.logger or "root", "level": level}
        if command in ("status", "reload-config"):
            if self.control is None:
                raise GridedgeError(f"this agent does not support {command} (no control hooks installed)")
            if command == "status":
                return "ok", self.control.status_report()
            return "ok", {"message": self.control.reload_config()}
        if command == "replay":
            if self.replayer is None:
                raise GridedgeError("this agent does not support replay (no outbox to replay from)")
            return "ok", self.replayer.replay(request.args)
        if self.updater is None:
            raise GridedgeError(f"this agent does not support {command} (no model updater installed)")
        if command == "rollback":
            return "ok", self.updater.rollback().model_dump(mode="json")
        return self._model_update(ModelUpdateChunk.model_validate(request.args))

    def _model_update(self, chunk: ModelUpdateChunk) -> tuple[str, dict[str, JsonValue]]:
        assert self.updater is not None  # checked by _dispatch
        if chunk.total_bytes > self.max_update_bytes:
            raise GridedgeError(
                f"the update announces {chunk.total_bytes} bytes, more than max_update_bytes="
                f"{self.max_update_bytes}; raise the limit or send a smaller bundle"
            )
        if chunk.chunk_index >= chunk.chunk_count:
            raise GridedgeError(
                f"chunk_index {chunk.chunk_index} is out of range for chunk_count {chunk.chunk_count}"
            )
        try:
            data = base64.b64decode(chunk.data, validate=True)
        except binascii.Error as exc:
            raise GridedgeError(f"chunk {chunk.chunk_index} data is not valid base64 ({exc})") from exc
        transfer_dir = self.staging_dir / chunk.transfer_id
        self._forget_other_transfers(chunk.transfer_id)
        self._check_space(transfer_dir, chunk, len(data))
        atomic_write_bytes(transfer_dir / f"{chunk.chunk_index:06d}.part", data)
        received = sorted(transfer_dir.glob("*.part"))
        progress: dict[str, JsonValue] = {
            "transfer_id": chunk.transfer_id,
            "received_chunks": len(received),
            "chunk_count": chunk.chunk_count,
        }
        if len(received) < chunk.chunk_count:
            return "in-progress", progress
        try:
            archive = transfer_dir / "archive.bin"
            hasher = hashlib.sha256()
            with archive.open("wb") as out:
                for part in received:
                    data = part.read_bytes()
                    hasher.update(data)
                    out.write(data)
            size = archive.stat().st_size
            digest = hasher.hexdigest()
            if size != chunk.total_bytes or digest != chunk.sha256:
                raise GridedgeError(
                    f"the assembled archive has {size} bytes and sha256 {digest[:12]}..., expected "
                    f"{chunk.total_bytes} bytes and {chunk.sha256[:12]}...; resend the whole transfer"
                )
            outcome = self.updater.apply(archive, chunk.allow_downgrade)
        finally:
            shutil.rmtree(transfer_dir, ignore_errors=True)
        return "ok", {**progress, **outcome.model_dump(mode="json")}

    def _check_space(self, transfer_dir: Path, chunk: ModelUpdateChunk, size: int) -> None:
        """Refuse a chunk that would stage more than announced or leave less than the reserve free."""
        previous = transfer_dir / f"{chunk.chunk_index:06d}.part"
        staged = sum(p.stat().st_size for p in transfer_dir.glob("*.part") if p != previous)
        if staged + size > chunk.total_bytes:
            raise GridedgeError(
                f"chunk {chunk.chunk_index} would stage {staged + size} bytes, more than the {chunk.total_bytes} "
                "the transfer announced; resend the whole transfer"
            )
        # Still to come: the rest of the chunks, then the assembled archive (as large as the whole).
        needed = chunk.total_bytes - staged + chunk.total_bytes + self.staging_reserve_bytes
        free = free_bytes(self.staging_dir)
        if free < needed:
            shutil.rmtree(transfer_dir, ignore_errors=True)
            raise GridedgeError(
                f"not enough disk space for a {chunk.total_bytes}-byte update: {free} bytes free, "
                f"{needed} needed (twice the update plus a reserve of {self.staging_reserve_bytes}); "
                "free space on the device or send a smaller bundle"
            )

    def forget_abandoned_transfers(self) -> None:
        """Delete staged chunks of transfers that received nothing for ``staging_max_age_s``."""
        if not self.staging_dir.is_dir():
            return
        cutoff = time.time() - self.staging_max_age_s
        for transfer in self.staging_dir.iterdir():
            if transfer.is_dir() and transfer.stat().st_mtime < cutoff:
                logger.warning("deleting the chunks of abandoned model transfer %s", transfer.name)
                shutil.rmtree(transfer, ignore_errors=True)

    def _forget_other_transfers(self, transfer_id: str | None) -> None:
        # One transfer at a time: a new transfer id abandons older partial ones so disk use stays bounded.
        if not self.staging_dir.is_dir():
            return
        for stale in self.staging_dir.iterdir():
            if stale.is_dir() and stale.name != transfer_id:
                shutil.rmtree(stale, ignore_errors=True)


def _payload_problem(payload: bytes) -> str | None:
    """What makes ``payload`` unreadable as JSON, or None when it is JSON."""
    try:
        json.loads(payload)
    except RecursionError:
        return "is too deeply nested to decode"
    except ValueError:
        return "is not JSON"
    return None


def _salvage_request_id(payload: bytes) -> str | None:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    request_id = document.get("request_id") if isinstance(document, dict) else None
    if not isinstance(request_id, str) or len(request_id) > 64:
        return None
    try:
        request_id.encode("utf-8")  # a lone surrogate ("\ud800") cannot go back on the wire
    except UnicodeEncodeError:
        return None
    return request_id

