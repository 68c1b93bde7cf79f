"""Supervised worker threads: a worker that dies is restarted and reported, never silently gone.

A :class:`Watchdog` runs each long-lived worker (the outbox pump, the command worker, the fleet
writer ...) in its own thread. When the worker raises, or returns while nobody asked it to stop, the
watchdog logs the traceback, raises one ``worker-died`` alert for that death and runs the worker again
after ``restart_delay_s``. A crash loop is bounded like Frigate's watchdog: more than
``max_restarts`` deaths within ``restart_window_s`` make the device ``degraded`` (a ``worker:<name>``
health reason) with one ``worker-crash-loop`` alert; the watchdog then keeps restarting, every
``crash_loop_delay_s``, without further alerts, and clears the reason (with a ``worker-recovered``
alert) once the worker has run a whole window without dying.

Workers call :meth:`Watchdog.heartbeat` once per iteration. It is also the shipped test seam
(:meth:`Watchdog.inject_fault`): a fault injected for a worker is raised from its next heartbeat, so a
test kills the real thread through its real code path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.health import HealthReasons
from edge_agent.messages import AlertContent

logger = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


class WorkerReturnedError(RuntimeError):
    """A worker returned although the watchdog was not stopping: treated as a death."""


@dataclass(frozen=True)
class RestartPolicy:
    """How fast dead workers come back, and when restarting becomes a crash loop."""

    max_restarts: int = MAX_RESTARTS
    restart_window_s: float = RESTART_WINDOW_S
    restart_delay_s: float = 0.5
    crash_loop_delay_s: float = 30.0


@dataclass
class _Worker:
    name: str
    target: Callable[[], None]
    thread: threading.Thread | None = None
    deaths: deque[float] = field(default_factory=deque)
    crash_looping: bool = False
    fault: BaseException | None = None


class RateLimitedLog:
    """Logs one line per distinct message per ``interval_s``, then the count of the ones held back.

    A full disk makes every write fail the same way many times a second; the log must say so once a
    minute, not fill the (same) disk with thousands of identical lines.
    """

    def __init__(self, log: logging.Logger, interval_s: float = 60.0) -> None:
        self.log = log
        self.interval_s = interval_s
        self._last: dict[str, tuple[float, int]] = {}  # message -> (logged at, held back since)
        self._lock = threading.Lock()

    def warning(self, message: str) -> None:
        """Log ``message`` unless it was logged less than ``interval_s`` ago (then count it)."""
        now = time.monotonic()
        with self._lock:
            logged_at, held = self._last.get(message, (float("-inf"), 0))
            if now - logged_at < self.interval_s:
                self._last[message] = (logged_at, held + 1)
                return
            self._last[message] = (now, 0)
        suffix = f" (and {held} more times in the last {self.interval_s:.0f} s)" if held else ""
        self.log.warning("%s%s", message, suffix, stacklevel=2)


class Watchdog:
    """Runs workers in threads, restarting each one that dies and reporting it (see the module doc)."""

    def __init__(
        self,
        alert: Callable[[AlertContent], None],
        reasons: HealthReasons,
        policy: RestartPolicy | None = None,
        thread_prefix: str = "gridedge",
    ) -> None:
        self._alert = alert
        self.reasons = reasons
        self.policy = policy or RestartPolicy()
        self.thread_prefix = thread_prefix
        self.restarts: dict[str, int] = {}
        self._workers: dict[str, _Worker] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def spawn(self, name: str, target: Callable[[], None]) -> None:
        """Run ``target`` in a supervised thread; it must return only once :meth:`stop` was called."""
        worker = _Worker(name, target)
        self._workers[name] = worker
        self.restarts[name] = 0
        worker.thread = threading.Thread(
            target=self._run, args=(worker,), name=f"{self.thread_prefix}-{name}", daemon=True
        )
        worker.thread.start()

    def heartbeat(self, name: str) -> None:
        """Called by worker ``name`` once per iteration; raises a fault injected for it."""
        worker = self._workers.get(name)
        if worker is not None and worker.fault is not None:
            fault, worker.fault = worker.fault, None
            raise fault

    def inject_fault(self, name: str, fault: BaseException) -> None:
        """Make worker ``name`` raise ``fault`` from its next heartbeat (the test seam)."""
        self._workers[name].fault = fault

    def is_alive(self, name: str) -> bool:
        """Whether worker ``name``'s thread is running (it always is until :meth:`stop`)."""
        thread = self._workers[name].thread
        return thread is not None and thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """No more restarts: workers that return now are done."""
        self._stopping.set()

    def join(self, timeout_s: float) -> None:
        """Wait for every worker thread to end."""
        for worker in self._workers.values():
            if worker.thread is not None:
                worker.thread.join(timeout_s)

    def _run(self, worker: _Worker) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                worker.target()
                if self._stopping.is_set():
                    return
                raise WorkerReturnedError(f"worker {worker.name} returned while the agent was running")
            except Exception as exc:
                if self._stopping.is_set():
                    return
                delay = self._died(worker, exc, started)
            self._stopping.wait(delay)

    def _died(self, worker: _Worker, exc: Exception, started: float) -> float:
        now = time.monotonic()
        policy = self.policy
        logger.error("worker %s died: %s", worker.name, exc, exc_info=exc)
        if worker.crash_looping and now - started >= policy.restart_window_s:
            self._recovered(worker)
        worker.deaths.append(now)
        while worker.deaths and now - worker.deaths[0] > policy.restart_window_s:
            worker.deaths.popleft()
        self.restarts[worker.name] += 1
        what = f"{type(exc).__name__}: {exc}"
        if worker.crash_looping:
            return policy.crash_loop_delay_s
        if len(worker.deaths) > policy.max_restarts:
            worker.crash_looping = True
            reason = (
                f"thread {worker.name} died {len(worker.deaths)} times in {policy.restart_window_s:.0f} s "
                f"(last: {what}); restarting every {policy.crash_loop_delay_s:.0f} s"
            )
            self.reasons.set(f"worker:{worker.name}", reason)
            self._publish(AlertContent(severity="critical", code="worker-crash-loop", message=reason))
            recheck_s = policy.restart_window_s + policy.crash_loop_delay_s
            threading.Timer(recheck_s, self._check_recovery, (worker,)).start()
            return policy.crash_loop_delay_s
        self._publish(
            AlertContent(
                severity="warning",
                code="worker-died",
                message=f"thread {worker.name} died ({what}) and was restarted "
                f"(death {len(worker.deaths)} of at most {policy.max_restarts} in {policy.restart_window_s:.0f} s)",
            )
        )
        return policy.restart_delay_s

    def _check_recovery(self, worker: _Worker) -> None:
        if self._stopping.is_set() or not worker.crash_looping:
            return
        quiet_since = worker.deaths[-1] if worker.deaths else 0.0
        if time.monotonic() - quiet_since >= self.policy.restart_window_s:
            self._recovered(worker)
        else:
            delay = self.policy.restart_window_s - (time.monotonic() - quiet_since)
            threading.Timer(max(delay, 0.1), self._check_recovery, (worker,)).start()

    def _recovered(self, worker: _Worker) -> None:
        with self._lock:
            if not worker.crash_looping:
                return
            worker.crash_looping = False
            worker.deaths.clear()
        self.reasons.clear(f"worker:{worker.name}")
        self._publish(
            AlertContent(
                severity="info",
                code="worker-recovered",
                message=f"thread {worker.name} ran {self.policy.restart_window_s:.0f} s without dying",
            )
        )

    def _publish(self, alert: AlertContent) -> None:
        # Reporting must not become a second way to die: a full disk makes publishing fail too.
        try:
            self._alert(alert)
        except Exception:
            logger.exception("could not publish the %s alert: %s", alert.code, alert.message)
