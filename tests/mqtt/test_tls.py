"""TLS with a CA, a broker certificate and a client certificate (mutual TLS) against a real Mosquitto."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.errors import ConfigError
from edge_agent.messages import AlertContent
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import TlsConfig
from gridedge.fleet.mosquitto import LocalMosquitto

pytestmark = pytest.mark.mqtt


def issue(
    folder: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, server: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    certificate = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certificate, key


def test_mutual_tls_connects_and_publishes(tmp_path: Path, make_config: Callable[..., MqttConfig]) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = issue(pki, "ca", None)
    issue(pki, "broker", ca, server=True)
    issue(pki, "device", ca)
    broker = LocalMosquitto(
        tmp_path / "broker",
        extra_config=f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'broker.pem'}\nkeyfile {pki / 'broker.key'}\n"
        "require_certificate true",
    )
    tls = {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "device.pem"), "key_file": str(pki / "device.key")}
    with broker:
        reporter = MqttReporter(make_config(broker.port, broker={"tls": tls}))
        reporter.start()
        try:
            assert reporter.wait_connected(5), (broker.log_path.read_text())[-2000:]
            reporter.publish_alert(AlertContent(severity="info", code="tls", message="encrypted"))
            assert reporter.flush(5)
        finally:
            reporter.close()


def test_tls_config_errors_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cert_file and tls\.key_file must be given together"):
        TlsConfig(cert_file=tmp_path / "device.pem")
    with pytest.raises(ConfigError, match=r"check tls\.ca_file"):
        TlsConfig(ca_file=tmp_path / "missing.pem").ssl_context()
