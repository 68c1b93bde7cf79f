"""The model bundle: the one contract between the central side and the device.

A bundle is a folder holding ``manifest.json``, the model file(s) it lists and ``manifest.sig``, a
detached Ed25519 signature of the exact manifest bytes. For transport the folder is packed into a single
``.tar.gz`` archive. A device trusts a bundle only when the signature verifies against its public key,
every listed file exists with the recorded sha256 and size, and the model reproduces the test vectors.

Verification raises a specific :class:`~edge_agent.errors.BundleError` subclass naming what failed:
unsigned, wrong key or edited manifest (:class:`SignatureError`), missing or altered file
(:class:`IntegrityError`), unreadable archive or unknown format version (:class:`BundleFormatError`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from edge_agent.errors import BundleFormatError, IntegrityError, SignatureError
from edge_agent.features import FeatureSpec, OutputBounds
from edge_agent.fsutil import atomic_write_bytes, fsync_dir
from edge_agent.messages import MAX_QUANTILE_LEVELS
from edge_agent.yamlconfig import StrictModel, format_validation_error

FORMAT_VERSION = 1
# Bundles whose output needs decoding an older agent does not know (quantile levels, output bounds such
# as PV's zero at night) are format 2: such an agent refuses them by version ("upgrade gridedge on the
# device") instead of misreading the output. Bundles without them stay format 1.
QUANTILE_FORMAT_VERSION = 2
# Bundles that carry more than one model family (a network and a LightGBM tree ensemble) and mark the one to
# serve are format 3: an older agent would pick by precision alone and might run the model that lost.
FAMILY_FORMAT_VERSION = 3
# Bundles that serve a blend of the two families (one ONNX graph, w·network + (1−w)·LightGBM) are format 4: an
# agent that knows only the two families would refuse the "blend" family with a validation error, not by version.
BLEND_FORMAT_VERSION = 4
SUPPORTED_FORMAT_VERSIONS = frozenset({1, 2, 3, 4})
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
# An archive from the network is untrusted: refuse absurd sizes before unpacking anything.
MAX_ARCHIVE_MEMBER_BYTES = 512 * 1024 * 1024

Task = Literal["load_forecast", "pv_forecast", "anomaly"]
Runtime = Literal["tflite", "onnx"]
Precision = Literal["fp32", "fp16", "dynamic-int8", "int8"]
# What kind of model an artefact holds: the trained network (any precision), the LightGBM tree ensemble, or a
# blend of the two in one graph (the network's int8 and LightGBM, weighed by ``Serving.network_weight``).
Family = Literal["network", "lightgbm", "blend"]


class AnomalySpec(StrictModel, frozen=True):
    """How a reconstruction becomes an anomaly decision."""

    threshold: float
    """Score above which a window is anomalous (normalised units)."""
    score_steps: int = Field(gt=0)
    """Newest samples of the window that the score averages."""
    stale_run_steps: int | None = Field(default=None, ge=2)
    """Also flag the newest sample when the target has repeated the same non-zero value this many samples (a frozen
    sensor, which reconstruction cannot see); null = the model's score alone."""


def check_quantile_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    """Quantile levels a model may predict: increasing, inside (0, 1), with 0.5 (the point forecast)."""
    if not levels:
        return levels
    if any(not 0 < level < 1 for level in levels):
        raise ValueError(f"quantile levels must lie strictly between 0 and 1, got {list(levels)}")
    if any(b <= a for a, b in pairwise(levels)):
        raise ValueError(f"quantile levels must be strictly increasing, got {list(levels)}")
    if 0.5 not in levels:
        raise ValueError(f"quantile levels must include 0.5, the median is the point forecast; got {list(levels)}")
    if len(levels) < 2 or len(levels) > MAX_QUANTILE_LEVELS:
        raise ValueError(f"give 2 to {MAX_QUANTILE_LEVELS} quantile levels (0.5 and others), got {list(levels)}")
    return levels


class OutputSpec(StrictModel, frozen=True):
    """What the model's single output means.

    A quantile model (``quantiles`` not empty) outputs one channel per target and level, target-major:
    channel ``t * len(quantiles) + q`` is level ``quantiles[q]`` of target ``t``, in normalised units like
    a point model's output. ``edge_agent.quantiles.decode_forecast`` turns both kinds into units.
    """

    kind: Literal["forecast", "reconstruction"]
    horizon_steps: int = Field(ge=0)
    target_channels: tuple[str, ...] = Field(min_length=1)
    target_units: tuple[str, ...] = Field(min_length=1)
    anomaly: AnomalySpec | None = None
    bounds: tuple[OutputBounds, ...] = Field(default=())
    """Physical limits per target applied after decoding (e.g. PV in [0, rating], 0 at night); empty in bundles written
    before they existed, which are decoded unbounded as before."""
    quantiles: tuple[float, ...] = Field(default=(), max_length=MAX_QUANTILE_LEVELS)
    """Levels of a quantile forecast, increasing, including 0.5 (the point forecast); empty for a point model."""
    quantile_scales: tuple[tuple[float, ...], ...] = Field(default=())
    """Per target, per level: factor applied to each quantile's distance from the median (normalised units) before
    decoding, recalibrated on the validation split; empty = all 1."""

    @field_validator("quantiles")
    @classmethod
    def _levels(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        return check_quantile_levels(value)

    @model_validator(mode="after")
    def _quantile_shape(self) -> OutputSpec:
        if self.quantiles and self.kind != "forecast":
            raise ValueError("quantiles are for forecast outputs, not reconstructions")
        if self.quantile_scales:
            shape = (len(self.target_channels), len(self.quantiles))
            if len(self.quantile_scales) != shape[0] or any(len(row) != shape[1] for row in self.quantile_scales):
                raise ValueError(f"quantile_scales must be {shape[0]} rows (targets) of {shape[1]} (levels)")
            if any(not (scale >= 0 and scale < float("inf")) for row in self.quantile_scales for scale in row):
                raise ValueError("quantile_scales must be finite and non-negative")
        return self

    @model_serializer(mode="wrap")
    def _point_models_as_before(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A point model's manifest keeps its pre-quantile bytes, so agents that predate quantiles read it.
        data = handler(self)
        if isinstance(data, dict):
            for name in ("quantiles", "quantile_scales", "bounds"):
                if not data.get(name):
                    data.pop(name, None)
        return data

    @property
    def output_channels(self) -> int:
        """Channels of the model's output tensor: one per target, times the levels of a quantile model."""
        return len(self.target_channels) * max(1, len(self.quantiles))

    @property
    def format_version(self) -> int:
        """The bundle format this output needs (quantiles or bounds need :data:`QUANTILE_FORMAT_VERSION`)."""
        return QUANTILE_FORMAT_VERSION if self.quantiles or self.bounds else FORMAT_VERSION

    @model_validator(mode="after")
    def _bounds_per_target(self) -> OutputSpec:
        if self.bounds and len(self.bounds) != len(self.target_channels):
            raise ValueError(f"bounds: {len(self.bounds)} entries for targets {list(self.target_channels)}")
        return self


class TensorQuantisation(StrictModel, frozen=True):
    """Affine quantisation of one tensor: real = scale * (q - zero_point)."""

    dtype: Literal["int8", "uint8", "int16"]
    scale: float
    zero_point: int


class Latency(StrictModel, frozen=True):
    p50_us: float
    p99_us: float


class Artefact(StrictModel, frozen=True):
    """One runnable model file and what was proven about it at export time."""

    file: str
    runtime: Runtime
    precision: Precision
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    quantisation: dict[str, TensorQuantisation] = Field(default_factory=dict)
    """Per input/output tensor name, when the tensor is quantised."""
    compatibility_targets: tuple[str, ...] = Field(default=())
    """Runtimes this file was loaded and run in, e.g. litert, ort-1.16."""
    min_runtime_versions: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    """Test-split metrics of this file."""
    latency: Latency | None = None
    self_test_atol: float = Field(gt=0)
    """Largest absolute difference from the recorded test-vector outputs accepted."""
    family: Family = Field(default="network")
    """Model family of this file; the manifest's ``serving`` says which family the device runs."""

    @model_serializer(mode="wrap")
    def _networks_as_before(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A network artefact keeps its pre-family bytes, so agents that predate families read its manifest.
        data = handler(self)
        if isinstance(data, dict) and data.get("family") == "network":
            data.pop("family")
        return data

    @field_validator("file")
    @classmethod
    def _relative_plain_path(cls, value: str) -> str:
        return _safe_relative(value)


class Serving(StrictModel, frozen=True):
    """Which model family the device serves, and the validation scores it was chosen by (never the test split)."""

    family: Family
    split: Literal["val"] = Field(default="val")
    """The split the choice was made on."""
    metric: str
    """Metric compared, lower is better (e.g. mae, in the target's units)."""
    scores: dict[str, float]
    """That metric of each family's model on the validation windows, by family; a blend by its network share
    (``blend:0.5``)."""
    network_weight: float | None = Field(default=None, gt=0, lt=1)
    """Network share w of the served blend (w·network + (1−w)·LightGBM, floats on the validation windows); only
    when the blend family is served."""

    @model_serializer(mode="wrap")
    def _unblended_as_before(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Without a blend the serving mark keeps its format-3 bytes, which agents that predate blends read.
        data = handler(self)
        if isinstance(data, dict) and data.get("network_weight") is None:
            data.pop("network_weight", None)
        return data

    @model_validator(mode="after")
    def _weight_iff_blend(self) -> Serving:
        if (self.family == "blend") != (self.network_weight is not None):
            raise ValueError(
                f"serving.network_weight is {self.network_weight} for family {self.family!r}; it is set exactly "
                "when the blend family is served"
            )
        return self


class TestVector(StrictModel, frozen=True):
    """A real input window and the outputs expected from the float model and from each artefact."""

    inputs: dict[str, list[Any]]
    float_output: list[Any]
    artefact_outputs: dict[str, list[Any]]
    """Output of each artefact (by file name) on these inputs, recorded at export time."""


class DataLineage(StrictModel, frozen=True):
    """The data a model was trained on: where from, which time range, and a hash of its content."""

    source: str
    """file:<path> or fleet:<store>#<site>/<device>."""
    start_utc: str | None = Field(None)
    """First sample used (ISO, UTC)."""
    end_utc: str | None = Field(None)
    """Last sample used (ISO, UTC)."""
    sha256: str
    """Of the bytes read: the file, or the fleet store's rows."""


class Lineage(StrictModel, frozen=True):
    """Where a bundle came from: its data, its task config and the code that trained it."""

    data: DataLineage
    config_sha256: str
    """Of the resolved task config (canonical JSON)."""
    gridedge_version: str
    git_commit: str | None = Field(None)
    """Commit of the checkout that trained it, when it was one."""


class Provenance(StrictModel, frozen=True, extra="allow"):
    """Where the model came from: read by people and the fleet, never by the device's decisions.

    Unknown keys are kept, not refused: a newer trainer that records more provenance must not make the
    devices in the field refuse its models.
    """

    data_fingerprint: str
    config: dict[str, Any]
    seed: int
    library_versions: dict[str, str]
    trained_utc: str | None = None
    lineage: Lineage | None = None


class Manifest(StrictModel, frozen=True):
    """Everything a device needs to know to run, check and report on a model."""

    format_version: int
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
    """Semantic version."""
    task: Task
    source_framework: Literal["keras", "torch"]
    created_utc: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    input: FeatureSpec
    output: OutputSpec
    artefacts: tuple[Artefact, ...] = Field(min_length=1)
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Test metrics of the float model and the baselines, by name."""
    provenance: Provenance
    test_vectors: tuple[TestVector, ...] = Field(default=())
    """Used by the device's self-test."""
    serving: Serving | None = Field(default=None)
    """The model family the device runs, when the bundle holds more than one; null = the network."""

    @model_serializer(mode="wrap")
    def _single_family_as_before(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("serving") is None:
            data.pop("serving", None)
        return data

    @model_validator(mode="after")
    def _format_holds_the_output(self) -> Manifest:
        if self.format_version < self.output.format_version:
            raise ValueError(
                f"an output with quantiles or bounds needs format_version {self.output.format_version}, got "
                f"{self.format_version}"
            )
        families = {a.family for a in self.artefacts}
        if (self.serving is not None or families != {"network"}) and self.format_version < FAMILY_FORMAT_VERSION:
            raise ValueError(
                f"a bundle with model families {sorted(families)} or a serving choice needs format_version "
                f"{FAMILY_FORMAT_VERSION}, got {self.format_version}"
            )
        if "blend" in families and self.format_version < BLEND_FORMAT_VERSION:
            raise ValueError(
                f"a bundle with a blend artefact needs format_version {BLEND_FORMAT_VERSION}, got {self.format_version}"
            )
        if self.serving is not None and self.serving.family not in families:
            raise ValueError(
                f"serving.family is {self.serving.family!r} but the bundle lists no {self.serving.family} artefact "
                f"(it has {[a.file for a in self.artefacts]}); the served model is missing — re-export the bundle"
            )
        return self

    def artefact(self, file: str) -> Artefact:
        """The artefact entry for ``file``; raises IntegrityError naming the files that exist."""
        for entry in self.artefacts:
            if entry.file == file:
                return entry
        raise IntegrityError(f"bundle has no artefact {file!r}; it has {[a.file for a in self.artefacts]}")

    def to_bytes(self) -> bytes:
        """Canonical bytes that are signed and written (sorted keys, so re-serialising is stable)."""
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=1) + "\n").encode()


class Bundle(StrictModel, frozen=True, arbitrary_types_allowed=True):
    """A verified bundle on disk."""

    root: Path
    manifest: Manifest

    def path_of(self, artefact: Artefact) -> Path:
        return self.root / artefact.file


def _safe_relative(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not path.parts or value != str(path):
        raise ValueError(f"bundle file names must be plain relative paths, got {value!r}")
    return value


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large models don't need to fit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_file(path: Path) -> tuple[str, int]:
    """(sha256, size in bytes) of ``path``, as recorded in an artefact entry."""
    return sha256_file(path), path.stat().st_size


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside ``out_dir`` that replaces it when the block succeeds, and vanishes otherwise.

    Building in a staging folder and renaming it into place means a crash or a refused input never leaves
    a half-written bundle where the agent looks for one.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
        fsync_dir(out_dir.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_bundle(out_dir: Path, manifest: Manifest, files: dict[str, Path], private_key: Ed25519PrivateKey) -> Path:
    """Write a signed bundle folder: copy ``files`` (name in bundle -> source path), manifest, signature.

    Hashes and sizes in ``manifest`` must match the files; they are checked here so that a bundle that
    would fail on the device is never written. The folder is built beside ``out_dir`` and renamed into
    place, so a crash never leaves a half-written bundle.
    """
    listed = {a.file for a in manifest.artefacts}
    if listed != set(files):
        raise IntegrityError(
            f"manifest lists {sorted(listed)} but files given are {sorted(files)}; pass exactly the artefacts"
        )
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        for artefact in manifest.artefacts:
            target = staging / artefact.file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[artefact.file], target)
            digest, size = describe_file(target)
            if (digest, size) != (artefact.sha256, artefact.bytes):
                raise IntegrityError(
                    f"{artefact.file}: manifest records sha256 {artefact.sha256[:12]}… / {artefact.bytes} B "
                    f"but the file is {digest[:12]}… / {size} B; rebuild the manifest from the file"
                )
        payload = manifest.to_bytes()
        atomic_write_bytes(staging / MANIFEST_NAME, payload)
        atomic_write_bytes(staging / SIGNATURE_NAME, private_key.sign(payload))
    return out_dir


def read_bundle(root: Path, public_key: Ed25519PublicKey) -> Bundle:
    """Verify and load a bundle folder; raises the BundleError subclass that names what failed."""
    manifest = verify_manifest(root, public_key)
    verify_files(root, manifest)
    return Bundle(root=Path(root), manifest=manifest)


def verify_manifest(root: Path, public_key: Ed25519PublicKey) -> Manifest:
    """Check the signature and format of a bundle's manifest, without looking at the model files.

    A manifest that verifies is trustworthy on its own: a device whose model file is damaged can still
    use its feature spec to run the baseline predictor while it reports the damage.
    """
    root = Path(root)
    manifest_path, signature_path = root / MANIFEST_NAME, root / SIGNATURE_NAME
    if not manifest_path.is_file():
        raise BundleFormatError(f"{root}: no {MANIFEST_NAME}; this is not a gridedge bundle folder")
    payload = manifest_path.read_bytes()
    if not signature_path.is_file():
        raise SignatureError(f"{root}: bundle is unsigned (no {SIGNATURE_NAME}); sign it with `gridedge export --key`")
    try:
        public_key.verify(signature_path.read_bytes(), payload)
    except InvalidSignature as exc:
        raise SignatureError(
            f"{root}: manifest signature does not verify: the manifest was edited after signing or it "
            "was signed with another key; re-export with the fleet's private key"
        ) from exc
    return parse_manifest(payload, source=str(manifest_path))


def verify_files(root: Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists exists with its recorded sha256 and size."""
    root = Path(root)
    for artefact in manifest.artefacts:
        path = root / artefact.file
        if not path.is_file():
            raise IntegrityError(f"{root}: file {artefact.file!r} listed in the manifest is missing")
        digest, size = describe_file(path)
        if digest != artefact.sha256 or size != artefact.bytes:
            raise IntegrityError(
                f"{root}: {artefact.file!r} does not match the manifest (sha256 {digest[:12]}… vs "
                f"{artefact.sha256[:12]}…, {size} vs {artefact.bytes} bytes); the file was altered or "
                "truncated — fetch the bundle again"
            )


def parse_manifest(payload: bytes, source: str = MANIFEST_NAME) -> Manifest:
    """Parse manifest bytes, refusing unknown format versions before validating the rest."""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleFormatError(f"{source}: expected a JSON object at the top level")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleFormatError(
            f"{source}: bundle format_version {version!r} is not supported by this agent (supports "
            f"{sorted(SUPPORTED_FORMAT_VERSIONS)}); upgrade gridedge on the device or export for it"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleFormatError(format_validation_error(exc, f"manifest {source}", "re-export the bundle")) from exc


def bundle_digest(root: Path) -> str:
    """A bundle's identity: the sha256 of its signed manifest, which names every artefact's sha256.

    The fleet computes the same digest from an archive (:func:`archive_digest`), so it can tell that a
    device already runs the bundle it is about to send.
    """
    return hashlib.sha256((Path(root) / MANIFEST_NAME).read_bytes()).hexdigest()


def archive_digest(archive: bytes) -> tuple[Manifest, str]:
    """The manifest (unverified) and :func:`bundle_digest` of a bundle archive held in memory."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            member = tar.extractfile(MANIFEST_NAME)
            payload = member.read() if member is not None else None
    except (tarfile.TarError, EOFError, OSError, zlib.error, KeyError) as exc:
        raise BundleFormatError(f"not a readable bundle archive ({exc.__class__.__name__}: {exc})") from exc
    if payload is None:
        raise BundleFormatError(f"the archive holds no {MANIFEST_NAME}")
    return parse_manifest(payload), hashlib.sha256(payload).hexdigest()


def pack_archive(bundle_dir: Path, archive: Path) -> Path:
    """Pack a bundle folder into one ``.tar.gz`` file for transport (written atomically)."""
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST_NAME).is_file():
        raise BundleFormatError(f"{bundle_dir}: no {MANIFEST_NAME}; pack a folder written by write_bundle")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
            tar.add(path, arcname=path.relative_to(bundle_dir).as_posix(), recursive=False)
    atomic_write_bytes(Path(archive), buffer.getvalue())
    return Path(archive)


def unpack_archive(archive: Path | bytes, out_dir: Path) -> Path:
    """Unpack a bundle archive into ``out_dir`` (replaced atomically), refusing unsafe or broken archives.

    The result is not yet trusted: call :func:`read_bundle` on it.
    """
    out_dir = Path(out_dir)
    data = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
    label = "archive" if isinstance(archive, bytes) else str(archive)
    with staged_folder(out_dir) as staging:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    if not member.isfile():
                        raise BundleFormatError(f"{label}: entry {member.name!r} is not a regular file")
                    try:
                        _safe_relative(member.name)
                    except ValueError as exc:
                        raise BundleFormatError(f"{label}: unsafe entry name {member.name!r}") from exc
                    if member.size > MAX_ARCHIVE_MEMBER_BYTES:
                        raise BundleFormatError(f"{label}: entry {member.name!r} is implausibly large")
                tar.extractall(staging, members=members, filter="data")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise BundleFormatError(
                f"{label}: not a readable bundle archive ({exc.__class__.__name__}: {exc}); the transfer "
                "was truncated or the file is not a gridedge bundle"
            ) from exc
        if not (staging / MANIFEST_NAME).is_file():
            raise BundleFormatError(f"{label}: archive holds no {MANIFEST_NAME}")
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
    return out_dir
