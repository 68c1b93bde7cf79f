"""MQTT benchmark: outbox throughput (QoS 1, local Mosquitto), receiver ingest rate, outage soak.

Starts its own Mosquitto on a free loopback port (never the shared one on 1883) and writes
benchmarks/results/mqtt.json and benchmarks/results/mqtt.md.

    PYTHONPATH=$PWD python benchmarks/bench_mqtt.py                 # ~4 minutes (measured at load 5 on 2 cores)
    PYTHONPATH=$PWD python benchmarks/bench_mqtt.py --only ingest   # receiver ingest runs only, ~3 minutes
    PYTHONPATH=$PWD python benchmarks/bench_mqtt.py --outage-s 600  # the 10-minute outage soak of DESIGN.md

With ``--only``, the other part's figures are kept from the previous results file (its date is stated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from benchreport import markdown_table, publish
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edge_agent.messages import (
    AlertContent,
    ChannelAggregate,
    ChannelDrift,
    Forecast,
    LatencyStats,
    ModelInfo,
    OutboxStats,
    SummaryContent,
)
from edge_agent.reporting.base import MessageBuilder
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig
from gridedge.broker import LocalMosquitto, wait_until
from gridedge.fleet.receiver import FleetReceiver, tune_gc
from gridedge.fleet.store import FleetStore, Received

RESULTS_JSON = Path(__file__).parent / "results" / "mqtt.json"
# The keys each part of the benchmark writes (``--only`` keeps the other part's from the last run).
OUTBOX_PART = ("broker", "outbox_live", "outbox_replay", "store_ingest", "outage")
INGEST_PART = ("summaries", "publishers", "live", "receiver_ingest")
TARGET_OUTBOX_MSG_S = 1000
TARGET_INGEST_SUMMARIES_S = 5000
BACKEND_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
GROUP = "bench"
DEVICES_PER_PUBLISHER = 50
console = Console()


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def realistic_summary() -> SummaryContent:
    """A summary the size of a real one: 8 channels, a 96-step forecast, drift and latency."""
    now = datetime.now(UTC)
    channels = {
        f"ch{i}": ChannelAggregate(count=300, missing=2, mean=1.5 + i, min=0.1, max=4.0 + i, last=1.2, unit="kW")
        for i in range(8)
    }
    return SummaryContent(
        window_start=now - timedelta(minutes=5),
        window_end=now,
        channels=channels,
        forecasts=[Forecast(target="ch0", unit="kW", origin=now, step_s=900, values=[1.0 + i / 96 for i in range(96)])],
        model=ModelInfo(name="w1-load", version="1.2.0", runtime="tflite", precision="int8"),
        latency=LatencyStats(count=300, p50_ms=0.04, p95_ms=0.06, p99_ms=0.09, max_ms=0.3),
        drift={name: ChannelDrift(z_mean=0.1, std_ratio=1.0) for name in channels},
    )


def device_config(port: int, workdir: Path, device: str, replay_rate: float = 50.0) -> MqttConfig:
    return MqttConfig.model_validate(
        {
            "site": "bench",
            "device": device,
            "broker": {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
            "outbox": {"path": str(workdir / f"{device}.sqlite3"), "replay_rate_per_s": replay_rate},
            "command_staging_dir": str(workdir / "staging"),
        }
    )


def bench_outbox_live(broker: LocalMosquitto, workdir: Path, count: int) -> dict[str, Any]:
    """Messages/s from publish_alert() to the last PUBACK, every message committed to SQLite first."""
    reporter = MqttReporter(device_config(broker.port, workdir, "live"))
    reporter.start()
    assert reporter.wait_connected(10)
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("outbox live QoS 1", total=count)
        for index in range(count):
            reporter.publish_alert(AlertContent(severity="info", code="bench", message=f"m{index}", value=index))
            if index % 200 == 0:
                bar.update(task, completed=index)
        bar.update(task, completed=count)
    drained = reporter.flush(120)
    elapsed = time.perf_counter() - started
    reporter.close()
    return {"messages": count, "seconds": elapsed, "msg_per_s": count / elapsed, "all_acknowledged": drained}


def bench_outbox_replay(broker: LocalMosquitto, workdir: Path, count: int) -> dict[str, Any]:
    """Messages/s replayed from a backlog built while the broker was down (rate cap lifted)."""
    broker.stop()
    reporter = MqttReporter(device_config(broker.port, workdir, "replay", replay_rate=1e6))
    reporter.start()
    for index in range(count):
        reporter.publish_alert(AlertContent(severity="info", code="bench", message=f"m{index}"))
    broker.start()
    assert reporter.wait_connected(10)
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("outbox replay", total=count)
        while (depth := reporter.outbox.stats().depth) > 0 and time.perf_counter() - started < 120:
            bar.update(task, completed=count - depth)
            time.sleep(0.05)
        bar.update(task, completed=count - reporter.outbox.stats().depth)
    elapsed = time.perf_counter() - started
    reporter.close()
    return {"messages": count, "seconds": elapsed, "msg_per_s": count / elapsed}


def summary_payloads(count: int, devices: int, prefix: str = "dev") -> list[tuple[str, bytes]]:
    """``count`` encoded summaries from ``devices`` devices taking turns, each with consecutive seqs."""
    content = realistic_summary()
    stats = OutboxStats(depth=0, bytes=0)
    builders = [MessageBuilder("bench", f"{prefix}{d:03d}") for d in range(devices)]
    payloads = []
    for index in range(count):
        builder = builders[index % devices]
        message = builder.summary(index // devices, content, stats)
        payloads.append((f"gridedge/v1/bench/{builder.device}/summary", message.model_dump_json().encode()))
    return payloads


def bench_store_ingest(workdir: Path, count: int) -> dict[str, Any]:
    """Summaries/s through FleetStore.ingest (validation excluded), batches of 1000, SQLite."""
    from edge_agent.messages import SummaryMessage

    store = FleetStore(path=workdir / "ingest.sqlite3")
    items = [
        Received(SummaryMessage.model_validate_json(payload), payload.decode(), time.time())
        for _, payload in summary_payloads(count, 50)
    ]
    started = time.perf_counter()
    for offset in range(0, count, 1000):
        store.ingest(items[offset : offset + 1000], "bench")
    elapsed = time.perf_counter() - started
    store.close()
    return {"summaries": count, "seconds": elapsed, "summaries_per_s": count / elapsed}


def publish_summaries(
    port: int, count: int, ready: Any | None, index: int = 0, finished: Any | None = None
) -> None:
    """Publish ``count`` pre-encoded summaries at full speed, QoS 1, once ``ready`` is set, and store
    in ``finished[index]`` the perf_counter time of the last PUBACK (run as a child process, its CPU is
    off the receiver's clock; several such processes keep the publishing side from being the limit)."""
    payloads = summary_payloads(count, DEVICES_PER_PUBLISHER, prefix=f"p{index}-dev")
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-publisher-{index}", protocol=mqtt.MQTTv5)
    # No inflight cap: paho rescans its whole queue on every PUBACK once messages are queued.
    publisher.max_inflight_messages_set(0)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    if ready is not None:
        ready.wait()
    infos = [publisher.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(300)
    if finished is not None:
        finished[index] = time.perf_counter()
    publisher.disconnect()
    publisher.loop_stop()


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far, from /proc (0 when there is no process)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_properties() -> Properties:
    """CONNECT properties of a subscriber: its session outlives a disconnect (its queue is the backlog)
    and the broker may send it many messages before the first acknowledgement."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = 65535
    return properties


def prime_session(port: int, client_id: str, group: str) -> None:
    """Create a subscriber's persistent session on the shared subscription and leave: the broker queues
    its share of what is published until it comes back."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port, clean_start=True, properties=session_properties())
    client.loop_start()
    client.subscribe(f"$share/{group}/gridedge/v1/+/+/summary", qos=1)
    assert subscribed.wait(30), "the subscriber session could not subscribe"
    client.disconnect()
    client.loop_stop()


def mark_connected(cpu: Any, writer_pid: int | None = None) -> None:
    """Note when a subscriber connected and its CPU time then (``cpu[2:5]``): the start of its run."""
    cpu[2], cpu[3], cpu[4] = cpu_seconds(os.getpid()), cpu_seconds(writer_pid), time.perf_counter()


def count_only(
    port: int, client_id: str, group: str, go: Any, connected: Any, stop: Any, counter: Any, cpu: Any
) -> None:
    """Child process: paho alone on the shared subscription, counting summaries (QoS 1, acknowledged by
    paho on arrival): the ceiling a receiver process is measured against."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    received = 0

    def on_message(*_: Any) -> None:
        nonlocal received
        received += 1

    def on_connect(*_: Any) -> None:
        mark_connected(cpu)
        client.subscribe(f"$share/{group}/gridedge/v1/+/+/summary", qos=1)
        connected.set()

    client.on_message = on_message
    client.on_connect = on_connect
    go.wait()
    client.connect("127.0.0.1", port, clean_start=False, properties=session_properties())
    client.loop_start()
    while not stop.wait(0.1):
        counter.value, cpu[0] = received, cpu_seconds(os.getpid())
    counter.value = received
    client.disconnect()
    client.loop_stop()


def run_receiver(
    port: int, client_id: str, group: str, location: dict[str, Any], writer_process: bool, go: Any, connected: Any,
    stop: Any, counter: Any, cpu: Any,
) -> None:
    """Child process: one FleetReceiver of the shared group storing into ``location`` (validation and
    storage in its writer process or writer thread), publishing how many summaries it has stored and the
    CPU time of its network process and of its writer process."""
    store = FleetStore(**location)
    receiver = FleetReceiver(
        BrokerConfig(port=port, client_id=client_id), store, group=group, name=client_id, session_expiry_s=3600,
        writer_process=writer_process,
    )
    tune_gc()  # as `gridedge fleet listen` does
    go.wait()
    receiver.start()
    # start() returns once its writer is ready and the connection is under way: the backlog flows
    # from here (the SUBACK that wait_connected() waits for comes after the queued messages).
    mark_connected(cpu, receiver.writer_pid)
    if receiver.wait_connected(60):
        connected.set()
    while not stop.wait(0.1):
        counter.value = receiver.stats.stored
        cpu[0], cpu[1] = cpu_seconds(os.getpid()), cpu_seconds(receiver.writer_pid)
    receiver.stop()
    counter.value = receiver.stats.stored
    store.close()


def stored_rows(location: dict[str, Any]) -> tuple[int, dict[str, int], float]:
    """Stored summaries, how many each receiver stored, and bytes per stored row measured in the
    database (PostgreSQL: every message partition with its indexes and TOAST; SQLite: the file)."""
    query = "SELECT receiver, COUNT(*) FROM fleet_messages WHERE kind = 'summary' GROUP BY receiver"
    if "dsn" in location:
        import psycopg

        with psycopg.connect(location["dsn"]) as db:
            split = {str(name): int(n) for name, n in db.execute(query).fetchall()}
            row = db.execute(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname = 'fleet_messages' AND p.relnamespace = to_regnamespace(current_schema())::oid"
            ).fetchone()
            size = float(row[0]) if row else 0.0
    else:
        with sqlite3.connect(location["path"], timeout=30) as db:
            split = {str(name): int(n) for name, n in db.execute(query).fetchall()}
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = float(Path(location["path"]).stat().st_size)
    total = sum(split.values())
    return total, split, size / total if total else 0.0


def fresh_postgres_schema(base_dsn: str) -> str:
    """A DSN whose search_path is a new, empty schema (so runs do not see each other's rows)."""
    import psycopg

    schema = f"rcv_bench_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    with psycopg.connect(base_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    return f"{base_dsn} options='-csearch_path={schema}'"


def drop_postgres_schema(base_dsn: str, dsn: str) -> None:
    import psycopg

    schema = dsn.rsplit("search_path=", 1)[1].rstrip("'")
    with psycopg.connect(base_dsn, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def bench_ingest(
    port: int, workdir: Path, count: int, subscribers: int, publishers: int, backend: str,
    writer_process: bool = True, pg_dsn: str | None = None, live: bool = False,
) -> dict[str, Any]:
    """Summaries/s from MQTT through ``subscribers`` processes on one shared subscription: ``backend``
    "paho" only counts them, "sqlite" and "postgres" run a FleetReceiver each (validation, dedup,
    commit, then the acks) into one store.

    By default the ``publishers`` processes first fill the subscribers' queued sessions at the broker
    and the clock runs from the first subscriber's connection to the last summary: the publishers are
    off the clock (the catch-up after downtime). ``live`` starts the subscribers first and the clock
    with the publishers."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    location: dict[str, Any] = {}
    if backend == "postgres":
        assert pg_dsn
        location = {"dsn": fresh_postgres_schema(pg_dsn)}
    elif backend == "sqlite":
        location = {"path": workdir / f"ingest-{time.time_ns()}.sqlite3"}
    if location:
        FleetStore(**location).close()  # create the schema once, before the children race to
    writer = "process" if writer_process else "thread"
    group = f"{GROUP}-{time.time_ns()}"  # sessions of earlier runs must not take a share
    client_ids = [f"{group}-{backend}-{index}" for index in range(subscribers)]
    stop, ready, go = context.Event(), context.Event(), context.Event()
    counters = [context.Value("q", 0) for _ in range(subscribers)]
    # Per subscriber: CPU seconds of its network and writer processes now, the same at its connection,
    # and the time of its connection.
    cpus = [context.Array("d", 5) for _ in range(subscribers)]
    finished = context.Array("d", publishers)
    share = [count // publishers + (1 if index < count % publishers else 0) for index in range(publishers)]
    senders = [
        context.Process(target=publish_summaries, args=(port, share[index], ready, index, finished))
        for index in range(publishers)
    ]
    for sender in senders:
        sender.start()

    def publish() -> float:
        ready.set()
        started = time.perf_counter()
        for sender in senders:
            sender.join(600)
        return count / (max(finished[:]) - started)

    publish_per_s = None
    if not live:
        for client_id in client_ids:
            prime_session(port, client_id, group)
        time.sleep(3.0)  # the publishers encode their payloads before the clock starts
        publish_per_s = publish()
    children, connections = [], []
    for client_id, counter, cpu in zip(client_ids, counters, cpus, strict=True):
        connected = context.Event()
        if backend == "paho":
            child = context.Process(
                target=count_only, args=(port, client_id, group, go, connected, stop, counter, cpu)
            )
        else:
            child = context.Process(
                target=run_receiver,
                args=(port, client_id, group, location, writer_process, go, connected, stop, counter, cpu),
            )
        child.start()
        children.append(child)
        connections.append(connected)
    time.sleep(5.0)  # the subscribers import and prepare, then all start at once
    load = os.getloadavg()[0]
    go.set()
    started = 0.0
    if live:
        for connected in connections:
            assert connected.wait(120), "a subscriber process could not connect"
        time.sleep(3.0)
        for cpu in cpus:
            cpu[2:4] = cpu[0:2]
        started = time.perf_counter()
        rate: list[float] = []
        thread = threading.Thread(target=lambda: rate.append(publish()))
    done = 0
    what = "paho alone" if backend == "paho" else f"{BACKEND_NAMES[backend]} (writer {writer})"
    with progress() as bar:
        task = bar.add_task(f"{what}, {subscribers} subscriber(s)", total=count)
        if live:
            thread.start()
        while done < count and time.perf_counter() - (started or time.perf_counter()) < 600:
            time.sleep(0.05)
            if not started and any(connected.is_set() for connected in connections):
                # The receivers' start (imports, writer process) is off the clock: it runs from the first
                # connection, when the broker starts sending the backlog.
                started = min(cpu[4] for cpu in cpus if cpu[4] > 0)
            done = sum(counter.value for counter in counters)
            bar.update(task, completed=done)
    elapsed = time.perf_counter() - started
    time.sleep(0.3)  # one more CPU sample from every subscriber
    # CPU seconds of each subscriber process and of its writer process during the run: the rate each
    # process reaches with a core of its own, whatever else the machine was doing.
    network_cpu, writer_cpu = (max(cpu[part] - cpu[part + 2] for cpu in cpus) for part in (0, 1))
    if live:
        thread.join(600)
        publish_per_s = rate[0]
    stop.set()
    for child in children:
        child.join(60)
    result = {
        "backend": backend,
        "writer": writer if location else None,
        "subscribers": subscribers,
        "publishers": publishers,
        "mode": "live" if live else "backlog",
        "summaries": count,
        "done": done,
        "seconds": elapsed,
        "summaries_per_s": done / elapsed,
        "publish_per_s": publish_per_s,
        "load_average": load,
        "network_cpu_s": network_cpu,
        "writer_cpu_s": writer_cpu,
        "per_core_per_s": done / subscribers / max(network_cpu, writer_cpu, 1e-9),
    }
    if location:
        result["stored"], result["per_receiver"], result["bytes_per_row"] = stored_rows(location)
    if backend == "postgres":
        assert pg_dsn
        drop_postgres_schema(pg_dsn, location["dsn"])
    return result


def ingest_runs(port: int, workdir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every ingest configuration, one after the other in one run: paho alone, then receivers into
    SQLite and PostgreSQL with 1 and ``args.receivers`` processes, and the writer thread for the choice."""
    counts = sorted({1, args.receivers})
    plan: list[tuple[str, int, bool]] = [("paho", n, True) for n in counts]
    for backend in ["sqlite", *(["postgres"] if args.pg_dsn else [])]:
        plan += [(backend, 1, False), *((backend, n, True) for n in counts)]
    return [
        bench_ingest(
            port, workdir, args.summaries, n, args.publishers, backend, writer_process, args.pg_dsn, args.live
        )
        for backend, n, writer_process in plan
    ]


def bench_outage(broker: LocalMosquitto, workdir: Path, outage_s: float, rate: float) -> dict[str, Any]:
    """Publish at ``rate`` msg/s, stop the broker for ``outage_s``, restart: count loss and duplicates."""
    store = FleetStore(path=workdir / "outage.sqlite3")
    # A plain subscription: Mosquitto 2.0.11 does not restore shared subscriptions from persistence.
    receiver = FleetReceiver(
        BrokerConfig(port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.5), store, group=None,
        name="outage-receiver",
    )
    receiver.start()
    assert receiver.wait_connected(10)
    reporter = MqttReporter(device_config(broker.port, workdir, "outage", replay_rate=200))
    reporter.start()
    assert reporter.wait_connected(10)
    lead_s = 2.0
    total_s = lead_s * 2 + outage_s
    sent = 0
    started = time.monotonic()
    stopped = restarted = False
    with progress() as bar:
        task = bar.add_task(f"outage soak ({outage_s:.0f} s down)", total=int(total_s * rate))
        while (now := time.monotonic() - started) < total_s:
            if not stopped and now >= lead_s:
                broker.stop()
                stopped = True
            if stopped and not restarted and now >= lead_s + outage_s:
                broker.start()
                restarted = True
            reporter.publish_alert(AlertContent(severity="info", code="soak", message=f"m{sent}"))
            sent += 1
            bar.update(task, completed=sent)
            time.sleep(max(0.0, (sent / rate) - (time.monotonic() - started)))
    drained = reporter.flush(120)
    wait_until(lambda: len(store.messages(kind="alert")) >= sent, 60, poll_s=0.01)
    reporter.close()
    receiver.stop()
    rows = store.messages(kind="alert")
    indices = [int(json.loads(row["payload"])["message"][1:]) for row in rows]
    store.close()
    return {
        "outage_s": outage_s,
        "rate_msg_per_s": rate,
        "sent": sent,
        "received_unique": len(set(indices)),
        "lost": len(set(range(sent)) - set(indices)),
        "duplicates_stored": len(indices) - len(set(indices)),
        "historical": sum(bool(row["is_historical"]) for row in rows),
        "in_seq_order": indices == sorted(indices),
        "outbox_drained": drained,
    }


def mosquitto_version(binary: str) -> str:
    output = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
    return output.splitlines()[0].removeprefix("mosquitto version ") if output else "unknown"


def _met(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def ingest_table(runs: list[dict[str, Any]]) -> list[str]:
    """One line per ingest run: rate, ratio to paho alone with as many processes, scaling over 1 process."""
    paho = {run["subscribers"]: run["summaries_per_s"] for run in runs if run["backend"] == "paho"}
    single = {
        (run["backend"], run["writer"]): run["summaries_per_s"] for run in runs if run["subscribers"] == 1
    }
    rows = []
    for run in runs:
        rate, n = run["summaries_per_s"], run["subscribers"]
        if run["backend"] == "paho":
            what, stored, target, met = "paho alone, counting (QoS 1)", "-", "-", None
        else:
            what = f"receiver -> {BACKEND_NAMES[run['backend']]}, writer {run['writer']}"
            stored = f"{run['stored']:,}/{run['summaries']:,}"
            target, met = f">= {TARGET_INGEST_SUMMARIES_S:,} per process", rate / n >= TARGET_INGEST_SUMMARIES_S
        base = single.get((run["backend"], run["writer"]))
        rows.append((
            what, n, f"{rate:,.0f}", f"{rate / paho[n]:.0%}" if n in paho else "-",
            f"{rate / base:.2f}x" if base and n > 1 else "-", stored,
            f"{run['per_core_per_s']:,.0f}",
            f"{run['publish_per_s']:,.0f}" if run["publish_per_s"] else "-", f"{run['load_average']:.1f}", target,
            _met(met),
        ))
    return markdown_table(
        ("subscriber", "processes", "summaries/s", "of paho alone", "scaling", "stored", "per CPU-second",
         "publishers msg/s",
         "load", "target", "met"),
        rows,
    )


def write_results(results: dict[str, Any]) -> None:
    live, replay = results["outbox_live"], results["outbox_replay"]
    ingest, outage = results["store_ingest"], results["outage"]
    rows = [
        ("Outbox live, QoS 1 to local Mosquitto", f"{live['msg_per_s']:,.0f} msg/s", f">= {TARGET_OUTBOX_MSG_S:,}",
         _met(live["msg_per_s"] >= TARGET_OUTBOX_MSG_S)),
        ("Outbox replay after outage (cap lifted)", f"{replay['msg_per_s']:,.0f} msg/s", "-", "-"),
        ("FleetStore.ingest, SQLite, batches of 1000 (validation excluded)",
         f"{ingest['summaries_per_s']:,.0f} summaries/s", "-", "-"),
        (f"Outage soak: {outage['outage_s']:.0f} s down at {outage['rate_msg_per_s']:.0f} msg/s",
         f"{outage['sent']} sent, {outage['lost']} lost, {outage['duplicates_stored']} duplicated",
         "0 lost, 0 duplicated", _met(outage["lost"] == 0 and outage["duplicates_stored"] == 0)),
    ]
    runs = results["receiver_ingest"]
    sizes = ", ".join(
        f"{BACKEND_NAMES[run['backend']]} {run['bytes_per_row']:,.0f}"
        for run in runs if run["backend"] != "paho" and run["subscribers"] == 1 and run["writer"] == "process"
    )
    intro = (
        f"{results['when']} on {results['machine']}; Mosquitto {results['broker']} on loopback; 1-minute load "
        f"average {results['load_average_at_start']:.1f} at start (the machine is shared; each ingest run states "
        "its own). Re-run: `PYTHONPATH=$PWD python benchmarks/bench_mqtt.py` (`--only ingest` for the receiver "
        "runs alone)."
        + "".join(
            f" The {part} figures are from the run of {results[key]} (`--only`)."
            for key, part in (("outbox_when", "outbox and soak"), ("ingest_when", "receiver ingest"))
            if key in results
        )
    )
    table = [
        *markdown_table(("measurement", "result", "target", "met"), rows),
        "",
        "## Receiver ingest from a real Mosquitto",
        "",
        f"{results['summaries']:,} realistic summaries (3.1 KB: 8 channels, 96-step forecast), published QoS 1 "
        f"by {results['publishers']} processes ({DEVICES_PER_PUBLISHER} devices each, payloads encoded before "
        "the clock starts), received by 1 or more processes on one MQTT 5 shared subscription. "
        + ("Published while the subscribers run. " if results.get("live") else
           "Each run drains a backlog the publishers queued at the broker first (the publishers are off the "
           "clock; it is also the catch-up after receiver downtime); the clock runs from the subscribers' "
           "connection to the last summary. ")
        + "A receiver validates every payload from bytes, deduplicates, commits, then acknowledges. 'of paho "
        "alone' compares with paho counting with as many processes in the same run; 'scaling' with the same "
        "receiver with 1 process; 'per CPU-second' is summaries per CPU-second of the busiest process (network "
        "or writer): the rate each reaches with a core of its own, whatever else the machine does. "
        f"Bytes per stored summary row, measured in the database: {sizes}.",
        "",
        *ingest_table(runs),
    ]
    publish("mqtt", results, "MQTT benchmark", intro, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", choices=["outbox", "ingest"], help="run one part: the outbox and soak runs, or the receiver ingest"
    )
    parser.add_argument("--messages", type=int, default=5000, help="messages for the outbox runs")
    parser.add_argument("--summaries", type=int, default=20000, help="summaries for the ingest runs")
    parser.add_argument("--receivers", type=int, default=2, help="receiver processes of the scale-out run")
    parser.add_argument("--publishers", type=int, default=3, help="publisher processes of the ingest runs")
    parser.add_argument(
        "--live", action="store_true", help="ingest runs publish while the receivers run (default: drain a backlog)"
    )
    parser.add_argument("--outage-s", type=float, default=10.0, help="broker outage of the soak (600 = 10 min)")
    parser.add_argument("--outage-rate", type=float, default=10.0, help="messages/s during the soak")
    parser.add_argument(
        "--pg-dsn", default="host=127.0.0.1 dbname=test", help="PostgreSQL for the receiver runs ('' to skip)"
    )
    args = parser.parse_args()
    previous = RESULTS_JSON.exists() and json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
    if args.only and not previous:
        parser.error(f"--only needs the other part's figures from a full run in {RESULTS_JSON}")
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "load_average_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="gridedge-bench-mqtt-") as tmp:
        workdir = Path(tmp)
        if args.only == "ingest":
            results |= {key: previous[key] for key in OUTBOX_PART}
            results["outbox_when"] = previous.get("outbox_when", previous["when"])
        else:
            broker = LocalMosquitto(workdir / "broker", persistence=True)
            broker.start()
            try:
                results |= {
                    "broker": mosquitto_version(broker.binary),
                    "outbox_live": bench_outbox_live(broker, workdir, args.messages),
                    "outbox_replay": bench_outbox_replay(broker, workdir, args.messages),
                    "store_ingest": bench_store_ingest(workdir, args.summaries),
                    "outage": bench_outage(broker, workdir, args.outage_s, args.outage_rate),
                }
            finally:
                broker.stop(hold_port=False)
        if args.only == "outbox":
            results |= {key: previous[key] for key in INGEST_PART}
            results["ingest_when"] = previous.get("ingest_when", previous["when"])
        else:
            results |= {"summaries": args.summaries, "publishers": args.publishers, "live": args.live}
            # The ingest runs get a broker of their own, without persistence: it is never restarted, and
            # the backlogs they queue stay out of the outage soak's persistence file.
            with LocalMosquitto(workdir / "ingest-broker") as ingest_broker:
                results["broker"] = mosquitto_version(ingest_broker.binary)
                results["receiver_ingest"] = ingest_runs(ingest_broker.port, workdir, args)
    write_results(results)


if __name__ == "__main__":
    main()
