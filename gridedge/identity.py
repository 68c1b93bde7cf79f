"""A device's own MQTT client certificate, issued from the fleet's CA at provisioning time.

The certificate's common name is ``<site>/<device>``. A Mosquitto listener with ``require_certificate true``
and ``use_identity_as_username true`` takes that name as the client's username, so ACL ``pattern`` lines
(``%u``) bind each device to ``gridedge/v1/<site>/<device>/#`` and a stolen key speaks only for its own
device (docs/device-identity.md). The device's private key is made here and written 0600 into the device
folder; the CA's key never leaves the machine that provisions.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.errors import ConfigError
from edge_agent.fsutil import atomic_write_bytes

DEVICE_CERT_NAME = "device.crt"
DEVICE_KEY_NAME = "device.key"
CA_CERT_NAME = "ca.crt"
VALID_DAYS = 825  # the longest client-certificate lifetime common TLS stacks accept without complaint

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def device_identity(site: str, device: str) -> str:
    """The certificate common name, and so the broker username: ``<site>/<device>``."""
    return f"{site}/{device}"


def load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, CaKey]:
    """Read the fleet CA's certificate and key (PEM), checking that they belong together and may sign."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--ca {cert_path}: not a readable PEM certificate ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--ca-key {key_path}: not a readable unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError(f"--ca-key {key_path}: a {type(key).__name__} cannot sign here; use EC, RSA or Ed25519")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(f"--ca-key {key_path} is not the key of the certificate --ca {cert_path}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"--ca {cert_path} is not a CA certificate (basicConstraints CA:TRUE); pass the fleet CA")
    return cert, key


def issue_device_certificate(ca_cert: Path, ca_key: Path, site: str, device: str, keys_dir: Path) -> tuple[Path, Path]:
    """Make the device's key and CA-signed client certificate in ``keys_dir``; returns (cert, key) paths.

    The CA certificate is copied beside them so that the device can also check the broker's certificate
    when the broker's is issued by the same CA.
    """
    authority, authority_key = load_ca(ca_cert, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_identity(site, device))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(authority.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a device clock a little behind still accepts it
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(authority_key, None if isinstance(authority_key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    keys_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = keys_dir / DEVICE_CERT_NAME, keys_dir / DEVICE_KEY_NAME
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(key_path, key_pem, mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    atomic_write_bytes(keys_dir / CA_CERT_NAME, authority.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path
