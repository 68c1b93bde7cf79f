"""A private Mosquitto broker process on a free loopback port, for tests, benchmarks and demos.

It never touches a broker someone else runs: it writes its own config into its own folder and can be
stopped and restarted on the same port to simulate an outage.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from edge_agent.errors import GridedgeError

DEFAULT_BINARY = "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` has passed; its last answer, as a bool.

    Messages cross a real broker asynchronously, so tests and benchmarks wait for an effect (a row
    stored, a message collected) instead of sleeping a fixed time; the last check runs after the deadline
    so that a slow machine still gets one more look.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())


class LocalMosquitto:
    """Runs ``mosquitto -c <workdir>/mosquitto.conf``; ``extra_config`` lines are appended verbatim.

    With ``persistence`` the broker saves sessions and queued messages on stop and restores them on
    start, as a production broker would across a restart.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_config: str = "",
        binary: str | None = None,
        persistence: bool = False,
    ):
        found = binary or (DEFAULT_BINARY if Path(DEFAULT_BINARY).exists() else shutil.which("mosquitto"))
        if found is None:
            raise GridedgeError("mosquitto is not installed; install it (apt-get install mosquitto)")
        self.binary = found
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_config = extra_config
        self.persistence = persistence
        self._process: subprocess.Popen[bytes] | None = None
        self._port_holder: socket.socket | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # Started as root, mosquitto switches to user "mosquitto", which cannot write our folder.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            # Let clients keep many QoS 1 messages in flight: outbox replays and receivers batch acks.
            "max_inflight_messages 1000",
            "max_queued_messages 100000",
            self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout_s: float = 5.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.running:
            return
        self._release_port()
        self._write_config()
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise GridedgeError(
                    f"mosquitto exited at start (code {self._process.returncode}): "
                    f"{self.log_path.read_text(errors='replace')[-500:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop(hold_port=False)
        raise GridedgeError(f"mosquitto did not listen on port {self.port} within {timeout_s} s")

    def stop(self, hold_port: bool = True) -> None:
        """Stop the broker (SIGTERM, then SIGKILL if it lingers).

        With ``hold_port`` the port stays bound (not listening: clients are refused) until the next
        :meth:`start`, so that no other program on the machine takes it during a long outage.
        """
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
            self._process = None
        if hold_port and self._port_holder is None:
            holder = socket.socket()
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", self.port))
            self._port_holder = holder
        elif not hold_port:
            self._release_port()

    def kill(self) -> None:
        """Crash the broker (SIGKILL): what it acknowledged but had not delivered or saved is lost, as in
        a power cut. The port stays held until :meth:`start`."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(5)
            self._process = None
        self.stop()

    def _release_port(self) -> None:
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> LocalMosquitto:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop(hold_port=False)
