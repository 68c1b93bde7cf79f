"""Build the folder a field technician copies onto a device.

A device profile (``firmware_configs/<name>.yaml``: runtime, loop timing, compatibility target) is merged
with the site's values (identity, sensors, broker), validated as a whole agent config, and checked
against the bundle: the bundle must verify with the fleet key and hold an artefact proven on the
profile's compatibility target. The output folder holds everything the agent needs, with relative paths,
so it can be copied anywhere. It is built beside ``--out`` and renamed into place only when everything
checked out, so a refused provision leaves no folder a technician could mistake for a good one:

    config.yaml                 the agent config
    bundle/                     the verified model bundle
    keys/bundle-signing.pub     the fleet's public key
    keys/device.{crt,key}       with --ca: the device's MQTT client identity, CN "<site>/<device>"
    registers/*.yaml            register maps the sensors use
    systemd/gridedge-agent.service
    wheelhouse/                 with --wheelhouse: every wheel the device needs, for its platform
    install.sh, release.env     with --wheelhouse: the offline, atomic installer and what it installs
    INSTALL.md                  what to run on the device
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from edge_agent.bundle import Bundle, read_bundle, unpack_archive
from edge_agent.config import AgentConfig, load_config
from edge_agent.errors import ConfigError
from edge_agent.fsutil import atomic_write_text, fsync_dir
from edge_agent.keys import OPERATOR_KEY_NAME, PUBLIC_KEY_NAME, load_public_key
from edge_agent.runtimes.ort import target_of_version
from edge_agent.runtimes.registry import served_model_needs_onnxruntime
from edge_agent.runtimes.targets import choose_artefact, compatibility_target
from edge_agent.sensors.registers import register_map_path
from edge_agent.yamlconfig import StrictModel, load_yaml_model, read_yaml_mapping, validate_data
from gridedge.identity import CA_CERT_NAME, DEVICE_CERT_NAME, DEVICE_KEY_NAME, issue_device_certificate
from gridedge.resources import resource_path
from gridedge.wheelhouse import build_gridedge_wheel, fill_wheelhouse

PROFILE_DIR = resource_path("firmware_configs")


class ProfileInfo(StrictModel):
    """What a device profile targets."""

    name: str = Field(title="Name")
    """Profile name, as given to --profile."""
    description: str = Field(title="Description")
    """The hardware and OS image it is for."""
    arch: Literal["aarch64", "armv7l", "x86_64"] = Field(title="Architecture")
    """CPU architecture."""
    python: str = Field(pattern=r"^3\.\d+$", title="Python")
    """Python version of the device's venv, e.g. 3.11."""
    glibc: str = Field(pattern=r"^2\.\d+$", title="glibc")
    """The OS image's glibc: the newest manylinux wheels it runs."""
    compatibility_target: str = Field(title="Compatibility target")
    """Runtime version the bundle's artefact must have been proven on, e.g. litert, ort-1.16."""
    requirements: list[str] = Field(min_length=1, title="Requirements")
    """Pinned pip requirements of the device's venv besides gridedge: its runtime and libraries."""


class DeviceProfile(StrictModel):
    """A firmware profile: target facts plus the agent settings every device of that kind shares."""

    profile: ProfileInfo
    agent: dict[str, Any]
    """Partial agent config; site values are merged over it."""


def profile_path(name_or_path: str) -> Path:
    """A profile file: a path as given, or the named profile shipped with gridedge (firmware_configs/)."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        return path
    shipped = PROFILE_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    available = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown device profile {name_or_path!r}; use a file or one of {available}")


def load_profile(name_or_path: str) -> DeviceProfile:
    """Read and validate a device profile."""
    return load_yaml_model(profile_path(name_or_path), DeviceProfile, "device profile")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Site values over profile defaults: mappings merge key by key, anything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _copy_register_maps(raw: dict[str, Any], values_dir: Path, out_dir: Path) -> None:
    """Copy register-map files the sensors name into out/registers and point the config at the copies.

    A name (``load_meter``) is a shipped map; a path is relative to the site file that names it.
    """
    for source in raw.get("sensors", []):
        for device in source.get("devices", []) if isinstance(source, dict) else []:
            register_map = device.get("register_map")
            if not isinstance(register_map, str):
                continue
            origin = register_map_path(Path(register_map), values_dir)
            if not origin.is_file():
                raise ConfigError(
                    f"sensor device {device.get('name')!r}: register_map {register_map!r} not found at {origin}"
                )
            target = out_dir / "registers" / origin.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, target)
            device["register_map"] = f"registers/{origin.name}"


def _copy_operator_key(raw: dict[str, Any], values_dir: Path, out_dir: Path, given: Path | None) -> None:
    """Copy the operator key (``--operator-key``, else the site file's) into keys/ and point the config at it.

    Without the copy the device folder names a file that exists only on the build machine, and the agent
    would refuse every signed command on site.
    """
    commands = raw.setdefault("commands", {}) if given is not None else raw.get("commands")
    if not isinstance(commands, dict):
        return
    named = given if given is not None else commands.get("operator_public_key")
    if named is None:
        return
    origin = Path(named) if given is not None or Path(named).is_absolute() else values_dir / named
    load_public_key(origin)  # refuses a missing file or a key of the wrong kind, naming the file
    shutil.copyfile(origin, out_dir / "keys" / OPERATOR_KEY_NAME)
    commands["operator_public_key"] = f"keys/{OPERATOR_KEY_NAME}"


def _point_tls_at_device_identity(raw: dict[str, Any]) -> None:
    """Mutual TLS with the certificate ``--ca`` issues; a CA file the site names is kept."""
    broker = raw.setdefault("mqtt", {}).setdefault("broker", {})
    tls = broker.get("tls") or {}
    broker["tls"] = {
        **tls,
        "ca_file": tls.get("ca_file", f"keys/{CA_CERT_NAME}"),
        "cert_file": f"keys/{DEVICE_CERT_NAME}",
        "key_file": f"keys/{DEVICE_KEY_NAME}",
    }


def _onnxruntime_target(info: ProfileInfo) -> str | None:
    """The ONNX Runtime compatibility target of the onnxruntime the profile installs beside its runtime, if any."""
    for requirement in info.requirements:
        name, _, version = requirement.partition("==")
        if name.strip().lower() == "onnxruntime" and version:
            return target_of_version(version.strip())
    return None


def _check_artefact_for_target(bundle: Bundle, config: AgentConfig, info: ProfileInfo) -> tuple[str, str]:
    """The artefact the device will run and the target it is proven on, as the device itself chooses.

    A LiteRT profile that installs onnxruntime runs a served model only ONNX Runtime runs (LightGBM, the blend)
    on it, so that model must be proven on the onnxruntime the profile pins.
    """
    target = compatibility_target(info.compatibility_target)
    if target.backend != config.runtime.type:
        raise ConfigError(
            f"the profile's compatibility target {target.name!r} runs on the {target.backend!r} runtime but "
            f"runtime.type is {config.runtime.type!r}; make them agree"
        )
    onnx_target = _onnxruntime_target(info)
    if onnx_target is not None and served_model_needs_onnxruntime(
        bundle.manifest, config.bundle.artefact, config.runtime
    ):
        target = compatibility_target(onnx_target)
    artefact = choose_artefact(
        bundle.manifest,
        target.artefact_runtime,
        target.name,
        config.bundle.artefact,
        proven_only=True,
        prefer_precision=config.runtime.prefer_precision,
    )
    return artefact.file, target.name


@dataclass(frozen=True)
class DeviceExtras:
    """What ``provision`` adds on request: an offline installer, a device certificate."""

    wheelhouse: bool = False
    """Download the device's wheels and write install.sh (needs the package registry, here not there)."""
    gridedge_wheel: Path | None = None
    """The gridedge wheel to ship; None builds one from the source tree gridedge runs from."""
    ca_cert: Path | None = None
    ca_key: Path | None = None
    """The fleet CA that issues the device's MQTT client certificate."""
    operator_key: Path | None = None
    """The operator's public key that signed fleet commands (model updates, rollouts) must verify against."""


def provision(
    profile_name: str,
    site_values: Path,
    bundle_source: Path,
    public_key: Path,
    out_dir: Path,
    extras: DeviceExtras | None = None,
) -> tuple[AgentConfig, str]:
    """Write a device folder; returns the validated config and the artefact the device will run."""
    extras = extras or DeviceExtras()
    if (extras.ca_cert is None) != (extras.ca_key is None):
        raise ConfigError("--ca and --ca-key go together: the CA certificate and the key that signs with it")
    profile = load_profile(profile_name)
    values = read_yaml_mapping(Path(site_values), "site values")
    raw = deep_merge(profile.agent, values)
    raw["bundle"] = {**raw.get("bundle", {}), "path": "bundle", "public_key": f"keys/{PUBLIC_KEY_NAME}"}
    if extras.ca_cert is not None:
        _point_tls_at_device_identity(raw)
    validate_data(raw, AgentConfig, f"profile {profile_name} + site values {site_values}", "fix them in the site file")

    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        artefact = _build_device_folder(staging, raw, profile, Path(site_values), bundle_source, public_key, extras)
        _replace_folder(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return load_config(out_dir / "config.yaml"), artefact


def _build_device_folder(
    out_dir: Path,
    raw: dict[str, Any],
    profile: DeviceProfile,
    site_values: Path,
    bundle_source: Path,
    public_key: Path,
    extras: DeviceExtras,
) -> str:
    """Fill ``out_dir`` with the device folder; returns the artefact the device will run."""
    _copy_register_maps(raw, site_values.resolve().parent, out_dir)
    (out_dir / "keys").mkdir(exist_ok=True)
    _copy_operator_key(raw, site_values.resolve().parent, out_dir, extras.operator_key)
    key = load_public_key(public_key)
    if Path(bundle_source).is_dir():
        shutil.copytree(bundle_source, out_dir / "bundle")
    else:
        unpack_archive(Path(bundle_source), out_dir / "bundle")
    bundle = read_bundle(out_dir / "bundle", key)
    shutil.copyfile(public_key, out_dir / "keys" / PUBLIC_KEY_NAME)

    config_path = out_dir / "config.yaml"
    header = f"# gridedge agent config: profile {profile.profile.name}, built by `gridedge provision`\n"
    atomic_write_text(config_path, header + yaml.safe_dump(raw, sort_keys=False))
    config = load_config(config_path)
    artefact, target = _check_artefact_for_target(bundle, config, profile.profile)
    _write_service(out_dir)
    if extras.ca_cert is not None and extras.ca_key is not None:
        issue_device_certificate(extras.ca_cert, extras.ca_key, config.site, config.device, out_dir / "keys")
    if extras.wheelhouse:
        _write_installer(out_dir, profile.profile, extras.gridedge_wheel)
    _write_install_notes(out_dir, profile, config, bundle, artefact, target)
    return artefact


def _write_installer(out_dir: Path, info: ProfileInfo, gridedge_wheel: Path | None) -> None:
    """wheelhouse/, install.sh and release.env: the device installs from the folder alone."""
    wheels = out_dir / "wheelhouse"
    wheels.mkdir()
    wheel = gridedge_wheel if gridedge_wheel is not None else build_gridedge_wheel(wheels)
    fill_wheelhouse(wheels, info.requirements, info.arch, info.glibc, info.python, wheel)
    installer = out_dir / "install.sh"
    shutil.copyfile(resource_path("firmware_configs", "install", "install.sh"), installer)
    installer.chmod(0o755)
    version = wheel.name.split("-")[1]
    release = f"{version}-{_content_hash(out_dir)}"
    atomic_write_text(
        out_dir / "release.env", f"GRIDEDGE_RELEASE={release}\nGRIDEDGE_PYTHON_VERSION={info.python}\n"
    )


def _content_hash(folder: Path) -> str:
    """A short hash of every file's path and bytes: the same folder is the same release, any change a new one."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:12]


def _replace_folder(built: Path, out_dir: Path) -> None:
    """Move a finished folder into place; a previous one at ``out_dir`` is removed only afterwards."""
    previous = None
    if out_dir.exists():
        previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        out_dir.rename(previous / out_dir.name)
    built.chmod(0o755)
    built.rename(out_dir)
    fsync_dir(out_dir.parent)
    if previous is not None:
        shutil.rmtree(previous)


def _write_service(out_dir: Path) -> None:
    unit = resource_path("firmware_configs", "systemd", "gridedge-agent.service").read_text(encoding="utf-8")
    target = out_dir / "systemd" / "gridedge-agent.service"
    target.parent.mkdir(exist_ok=True)
    atomic_write_text(target, unit)


def _write_install_notes(
    out_dir: Path, profile: DeviceProfile, config: AgentConfig, bundle: Bundle, artefact: str, target: str
) -> None:
    manifest = bundle.manifest
    text = f"""# Installing gridedge on {config.site}/{config.device}

Profile: {profile.profile.name} — {profile.profile.description}
Model: {manifest.name} {manifest.version} ({manifest.task}), artefact `{artefact}`
proven on `{target}`.

{_install_steps(out_dir, profile.profile)}
Check everything in plain words: `/opt/gridedge/current/venv/bin/gridedge agent doctor --config
/opt/gridedge/current/config.yaml`; follow the service: `journalctl -u gridedge-agent -f`.
"""
    atomic_write_text(out_dir / "INSTALL.md", text)


def _install_steps(out_dir: Path, info: ProfileInfo) -> str:
    if (out_dir / "install.sh").exists():
        return f"""1. Copy this folder to the device (e.g. `rsync -a ./ pi@device:gridedge-install/`). It needs no
   network: `wheelhouse/` holds every wheel for {info.arch}, glibc {info.glibc}, Python {info.python}.
2. On the device: `sudo ./install.sh` — installs into /opt/gridedge/versions/, switches /opt/gridedge/current
   only when the new version is complete and its model self-tested, keeps the previous one, enables the
   systemd unit. Running it again is harmless; if it stops half-way the previous version keeps running."""
    pins = " ".join(f"'{r}'" for r in info.requirements)
    return f"""1. Copy this folder to the device as `/opt/gridedge/current` (`rsync -a`).
2. On the device (needs the package index; `gridedge provision --wheelhouse` makes an offline folder):
   `python{info.python} -m venv /opt/gridedge/current/venv &&
   /opt/gridedge/current/venv/bin/pip install {pins} gridedge`
3. Install the service: copy systemd/gridedge-agent.service to /etc/systemd/system/ with its paths set to
   /opt/gridedge/current, then `sudo systemctl daemon-reload && sudo systemctl enable --now gridedge-agent`."""
