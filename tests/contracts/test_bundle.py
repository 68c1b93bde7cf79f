"""The bundle contract: a device accepts exactly the bundles the fleet signed, and says why it refuses."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    pack_archive,
    read_bundle,
    unpack_archive,
    write_bundle,
)
from edge_agent.errors import BundleFormatError, ExistingFileError, IntegrityError, SignatureError
from edge_agent.keys import load_private_key, load_public_key, new_keypair


@pytest.fixture
def bundle_dir(tmp_path: Path, manifest: Manifest, model_file: Path, signing_key: Ed25519PrivateKey) -> Path:
    return write_bundle(tmp_path / "bundle", manifest, {"model_int8.tflite": model_file}, signing_key)


def test_round_trip_through_archive(
    tmp_path: Path, bundle_dir: Path, manifest: Manifest, signing_key: Ed25519PrivateKey
) -> None:
    archive = pack_archive(bundle_dir, tmp_path / "w1.tar.gz")
    unpacked = unpack_archive(archive, tmp_path / "device" / "bundle")
    bundle = read_bundle(unpacked, signing_key.public_key())
    assert bundle.manifest == manifest
    assert bundle.path_of(bundle.manifest.artefacts[0]).read_bytes() == (bundle_dir / "model_int8.tflite").read_bytes()


def test_unsigned_bundle_is_refused(bundle_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    (bundle_dir / SIGNATURE_NAME).unlink()
    with pytest.raises(SignatureError, match=r"unsigned"):
        read_bundle(bundle_dir, signing_key.public_key())


def test_bundle_signed_with_another_key_is_refused(bundle_dir: Path) -> None:
    with pytest.raises(SignatureError, match=r"signed with another key"):
        read_bundle(bundle_dir, Ed25519PrivateKey.generate().public_key())


def test_edited_manifest_is_refused(bundle_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    path = bundle_dir / MANIFEST_NAME
    path.write_bytes(path.read_bytes().replace(b'"1.0.0"', b'"1.0.1"'))
    with pytest.raises(SignatureError, match=r"edited after signing"):
        read_bundle(bundle_dir, signing_key.public_key())


def test_altered_model_file_is_refused(bundle_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    model = bundle_dir / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"'model_int8.tflite' does not match the manifest"):
        read_bundle(bundle_dir, signing_key.public_key())


def test_missing_model_file_is_refused(bundle_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    (bundle_dir / "model_int8.tflite").unlink()
    with pytest.raises(IntegrityError, match=r"'model_int8.tflite' listed in the manifest is missing"):
        read_bundle(bundle_dir, signing_key.public_key())


def test_unknown_format_version_is_refused_even_when_signed(bundle_dir: Path, signing_key: Ed25519PrivateKey) -> None:
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_bytes())
    raw["format_version"] = 99
    payload = json.dumps(raw).encode()
    (bundle_dir / MANIFEST_NAME).write_bytes(payload)
    (bundle_dir / SIGNATURE_NAME).write_bytes(signing_key.sign(payload))
    with pytest.raises(BundleFormatError, match=r"format_version 99 is not supported"):
        read_bundle(bundle_dir, signing_key.public_key())


def test_provenance_a_newer_trainer_records_is_kept_not_refused(
    bundle_dir: Path, signing_key: Ed25519PrivateKey
) -> None:
    raw = json.loads((bundle_dir / MANIFEST_NAME).read_bytes())
    raw["provenance"]["recorded_by_a_newer_trainer"] = {"cluster": "dask://10.0.0.5:8786"}
    payload = json.dumps(raw).encode()
    (bundle_dir / MANIFEST_NAME).write_bytes(payload)
    (bundle_dir / SIGNATURE_NAME).write_bytes(signing_key.sign(payload))
    provenance = read_bundle(bundle_dir, signing_key.public_key()).manifest.provenance
    assert provenance.model_dump()["recorded_by_a_newer_trainer"] == {"cluster": "dask://10.0.0.5:8786"}


def test_writer_refuses_a_manifest_that_does_not_match_the_file(
    tmp_path: Path, manifest: Manifest, model_file: Path, signing_key: Ed25519PrivateKey
) -> None:
    model_file.write_bytes(b"other bytes")
    with pytest.raises(IntegrityError, match=r"rebuild the manifest"):
        write_bundle(tmp_path / "b", manifest, {"model_int8.tflite": model_file}, signing_key)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("cut", [0, 10, 200, -50])
def test_truncated_archive_is_refused_without_a_crash(tmp_path: Path, bundle_dir: Path, cut: int) -> None:
    data = pack_archive(bundle_dir, tmp_path / "a.tar.gz").read_bytes()
    with pytest.raises(BundleFormatError, match=r"not a readable bundle archive|no manifest"):
        unpack_archive(data[:cut], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_garbage_archive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleFormatError, match=r"not a readable bundle archive"):
        unpack_archive(b"\x1f\x8b" + b"garbage" * 100, tmp_path / "out")


def test_archive_escaping_its_folder_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.sh")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"boom"))
    with pytest.raises(BundleFormatError, match=r"unsafe entry name '../evil.sh'"):
        unpack_archive(buffer.getvalue(), tmp_path / "out")
    assert not (tmp_path / "evil.sh").exists()


def test_failed_update_keeps_the_previous_unpacked_bundle(tmp_path: Path, bundle_dir: Path) -> None:
    target = unpack_archive(pack_archive(bundle_dir, tmp_path / "a.tar.gz"), tmp_path / "current")
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(BundleFormatError):
        unpack_archive(b"not gzip", target)
    assert sorted(p.name for p in target.iterdir()) == before


def test_key_files_round_trip_with_private_key_mode_0600(
    tmp_path: Path, bundle_dir: Path, manifest: Manifest, model_file: Path
) -> None:
    private_path, public_path = new_keypair(tmp_path / "keys")
    assert private_path.stat().st_mode & 0o777 == 0o600
    signed = write_bundle(tmp_path / "b2", manifest, {"model_int8.tflite": model_file}, load_private_key(private_path))
    assert read_bundle(signed, load_public_key(public_path)).manifest.name == "w1-load"
    with pytest.raises(ExistingFileError, match=r"refusing to replace a signing key"):
        new_keypair(tmp_path / "keys")


def test_a_public_key_file_is_not_taken_for_a_private_key(tmp_path: Path) -> None:
    _, public_path = new_keypair(tmp_path / "keys")
    with pytest.raises(SignatureError, match=r"not an unencrypted PEM private key"):
        load_private_key(public_path)


def test_output_bounds_are_optional_and_one_per_target() -> None:
    from pydantic import ValidationError

    from edge_agent.bundle import OutputSpec

    old = {"kind": "forecast", "horizon_steps": 4, "target_channels": ["p"], "target_units": ["W"], "anomaly": None}
    assert OutputSpec.model_validate(old).bounds == ()
    bounded = OutputSpec.model_validate({**old, "bounds": [{"min_value": 0, "max_value": 3500}]})
    assert bounded.bounds[0].max_value == 3500 and not bounded.bounds[0].zero_when_sun_down
    with pytest.raises(ValidationError, match="2 entries for targets"):
        OutputSpec.model_validate({**old, "bounds": [{"min_value": 0}, {"min_value": 0}]})
