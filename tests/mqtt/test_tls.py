"""TLS with a CA, a broker certificate and a client certificate (mutual TLS) against a real Mosquitto."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
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
from gridedge.broker import LocalMosquitto

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


def mutual_tls_broker(tmp_path: Path, client: str) -> tuple[Path, LocalMosquitto]:
    """A CA, a broker certificate and a ``client`` certificate in ``tmp_path/pki``, and a (not yet started)
    broker that demands a client certificate signed by that CA."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = issue(pki, "ca", None)
    issue(pki, "broker", ca, server=True)
    issue(pki, client, ca)
    broker = LocalMosquitto(
        tmp_path / "broker",
        extra_config=f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'broker.pem'}\nkeyfile {pki / 'broker.key'}\n"
        "require_certificate true",
    )
    return pki, broker


def test_mutual_tls_connects_and_publishes(tmp_path: Path, make_config: Callable[..., MqttConfig]) -> None:
    pki, broker = mutual_tls_broker(tmp_path, "device")
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


def test_fleet_listen_does_mutual_tls_and_fails_loudly_without_a_certificate(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    pki, broker = mutual_tls_broker(tmp_path, "fleet")

    def listen(*tls: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gridedge.cli", "fleet", "listen", "--port", str(broker.port),
             "--db", str(tmp_path / "fleet.sqlite3"), "--duration", "0.5", "--connect-timeout", "3", *tls],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=30, check=False,
        )

    with broker:
        refused = listen("--cafile", str(pki / "ca.pem"))
        assert refused.returncode == 2, refused.stderr
        assert "client certificate" in refused.stderr and "received 0" not in refused.stderr
        accepted = listen(
            "--cafile", str(pki / "ca.pem"), "--cert", str(pki / "fleet.pem"), "--key", str(pki / "fleet.key")
        )
        assert accepted.returncode == 0, accepted.stderr
        assert "received 0" in accepted.stderr
    unreachable = listen("--cafile", str(pki / "ca.pem"))
    assert unreachable.returncode == 2 and "unreachable" in unreachable.stderr, unreachable.stderr


def test_the_agent_log_names_a_refused_client_certificate(
    tmp_path: Path, make_config: Callable[..., MqttConfig], caplog: pytest.LogCaptureFixture
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = issue(pki, "ca", None)
    issue(pki, "broker", ca, server=True)
    broker = LocalMosquitto(
        tmp_path / "broker",
        extra_config=f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'broker.pem'}\nkeyfile {pki / 'broker.key'}\n"
        "require_certificate true",
    )
    with broker, caplog.at_level("WARNING", logger="edge_agent.reporting.mqtt"):
        reporter = MqttReporter(make_config(broker.port, broker={"tls": {"ca_file": str(pki / "ca.pem")}}))
        reporter.start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and "client certificate" not in caplog.text:
                time.sleep(0.05)
        finally:
            reporter.close()
    assert "refused our client certificate" in caplog.text, caplog.text
    assert "(Unspecified error)" not in caplog.text
