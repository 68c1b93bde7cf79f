"""Why an MQTT connection failed, in words: refused certificate, untrusted broker, unreachable, refused login.

paho reports a TLS alert or a reset socket as ``Unspecified error`` on disconnect; the underlying error
only reaches its log. :class:`ConnectionDiagnosis` listens there and turns the last error (or the CONNACK
reason code) into a sentence that says what to check.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

# (substring of the error text, lowercase) -> what it means for the operator.
_CAUSES = (
    ("certificate_required", "the broker refused our client certificate (none was sent): configure cert and key"),
    ("certificate unknown", "the broker refused our client certificate: is it signed by the broker's CA?"),
    ("unknown ca", "the broker refused our client certificate: is it signed by the broker's CA?"),
    ("bad certificate", "the broker refused our client certificate: is it signed by the broker's CA?"),
    ("certificate_unknown", "the broker refused our client certificate: is it signed by the broker's CA?"),
    ("bad_certificate", "the broker refused our client certificate: is it signed by the broker's CA?"),
    ("certificate verify failed", "the broker's certificate is not trusted: check the CA file and host name"),
    ("wrong version number", "the broker does not speak TLS on this port (or TLS is required and off)"),
    ("connection refused", "the broker is unreachable: nothing listens on that host and port"),
    ("timed out", "the broker is unreachable: the connection timed out"),
    ("no route to host", "the broker is unreachable: no route to host"),
    ("name or service not known", "the broker host name does not resolve"),
)


def explain(error: str) -> str:
    """A sentence naming the cause of a connection error text, with the text itself."""
    lowered = error.lower()
    for needle, meaning in _CAUSES:
        if needle in lowered:
            return f"{meaning} ({error})"
    return error


class _ErrorRecorder(logging.LoggerAdapter):
    """paho's logger: passes everything on to the ``paho`` logger and hands errors to the diagnosis."""

    def __init__(self, diagnosis: ConnectionDiagnosis):
        super().__init__(logging.getLogger("paho"))
        self.diagnosis = diagnosis

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        # Errors only: paho's warnings ("Client is not connected") repeat on every retry and say nothing.
        if level >= logging.ERROR:
            self.diagnosis.record(str(msg) % args)
        super().log(level, msg, *args, **kwargs)


class ConnectionDiagnosis:
    """Remembers the last socket/TLS error paho logged for a client; :meth:`describe` explains it."""

    def __init__(self, client: mqtt.Client):
        self._lock = threading.Lock()
        self._last_error: str | None = None
        # A logger, not paho's on_log callback: for on_log paho formats every line, a debug line per
        # message received included, which cost a fleet receiver ~10% of its network process's CPU.
        client.enable_logger(cast(logging.Logger, _ErrorRecorder(self)))

    def record(self, error: BaseException | str) -> None:
        """Note an error (paho's, or one raised outside paho's loop such as a first, blocking connect)."""
        with self._lock:
            self._last_error = str(error) or type(error).__name__

    def probe(self, host: str, port: int, timeout_s: float = 2.0) -> None:
        """Open a plain TCP connection to learn why paho could not (it does not log connect errors)."""
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as exc:
            self.record(exc)

    def describe(self, reason_code: ReasonCode | None = None) -> str:
        """The best explanation available: a refusing CONNACK, else the last logged error."""
        if reason_code is not None and reason_code.is_failure and str(reason_code) != "Unspecified error":
            return f"the broker refused the connection: {reason_code}"
        with self._lock:
            last = self._last_error
        if last is not None:
            return explain(last)
        return str(reason_code) if reason_code is not None else "no error recorded"
