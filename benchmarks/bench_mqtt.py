"""MQTT benchmark: outbox throughput (QoS 1, local Mosquitto), receiver ingest rate, outage soak.

Starts its own Mosquitto on a free loopback port (never the shared one on 1883) and writes
benchmarks/results/mqtt.json and benchmarks/results/mqtt.md.

    python benchmarks/bench_mqtt.py                 # quick: ~1 minute
    python benchmarks/bench_mqtt.py --outage-s 600  # the 10-minute outage soak of DESIGN.md
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
from gridedge.fleet.receiver import FleetReceiver
from gridedge.fleet.store import FleetStore, Received

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_OUTBOX_MSG_S = 1000
TARGET_INGEST_SUMMARIES_S = 5000
BACKEND_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
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


def summary_payloads(count: int, devices: int) -> list[tuple[str, bytes]]:
    content = realistic_summary()
    stats = OutboxStats(depth=0, bytes=0)
    builders = [MessageBuilder("bench", f"dev{d:03d}") for d in range(devices)]
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


def publish_summaries(port: int, count: int, ready: Any | None) -> None:
    """Publish ``count`` summaries at full speed, QoS 1, once ``ready`` is set (as a child process, it keeps
    its CPU off the receiver's clock)."""
    payloads = summary_payloads(count, 50)
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    # No inflight cap: paho rescans its whole queue on every PUBACK once messages are queued.
    publisher.max_inflight_messages_set(0)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    if ready is not None:
        ready.wait()
    infos = [publisher.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(120)
    publisher.disconnect()
    publisher.loop_stop()


def run_receiver(port: int, location: dict[str, Any], name: str, connected: Any, stop: Any) -> None:
    """Child process: one receiver of the shared group "bench", storing into ``location`` (its own writer
    process validates and stores)."""
    store = FleetStore(**location)
    receiver = FleetReceiver(BrokerConfig(port=port), store, group="bench", name=name, session_expiry_s=0)
    receiver.start()
    if receiver.wait_connected(10):
        connected.set()
    stop.wait(300)
    receiver.stop()
    store.close()


def count_rows(location: dict[str, Any], at_least: int) -> int:
    """Stored summaries; on SQLite cheap (MAX(rowid)) until the table could hold ``at_least`` of them."""
    if "dsn" in location:
        import psycopg

        with psycopg.connect(location["dsn"]) as db:
            row = db.execute("SELECT COUNT(*) FROM fleet_messages WHERE kind = 'summary'").fetchone()
            return int(row[0]) if row else 0
    with sqlite3.connect(location["path"], timeout=30) as db:
        upper = int(db.execute("SELECT COALESCE(MAX(rowid), 0) FROM fleet_messages").fetchone()[0])
        if upper < at_least:
            return upper
        return int(db.execute("SELECT COUNT(*) FROM fleet_messages WHERE kind = 'summary'").fetchone()[0])


def split_by_receiver(location: dict[str, Any]) -> dict[str, int]:
    """Stored summaries per receiver name."""
    query = "SELECT receiver, COUNT(*) FROM fleet_messages WHERE kind = 'summary' GROUP BY receiver"
    if "dsn" in location:
        import psycopg

        with psycopg.connect(location["dsn"]) as db:
            return {str(name): int(n) for name, n in db.execute(query).fetchall()}
    with sqlite3.connect(location["path"]) as db:
        return dict(db.execute(query).fetchall())


def fresh_postgres_schema(base_dsn: str) -> str:
    """A DSN whose search_path is a new, empty schema (so runs do not see each other's rows)."""
    import psycopg

    schema = f"gridedge_bench_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    with psycopg.connect(base_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    return f"{base_dsn} options='-csearch_path={schema}'"


def drop_postgres_schema(base_dsn: str, dsn: str) -> None:
    import psycopg

    schema = dsn.rsplit("search_path=", 1)[1].rstrip("'")
    with psycopg.connect(base_dsn, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def bench_receivers(
    broker: LocalMosquitto, workdir: Path, count: int, receivers: int, pg_dsn: str | None = None
) -> dict[str, Any]:
    """Summaries/s from MQTT into one store (SQLite file, or PostgreSQL given ``pg_dsn``) through
    ``receivers`` processes on a shared subscription (JSON validation, dedup and commit included; the
    publisher runs in its own process)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    backend = "postgres" if pg_dsn else "sqlite"
    location: dict[str, Any] = (
        {"dsn": fresh_postgres_schema(pg_dsn)} if pg_dsn else {"path": workdir / f"receivers-{receivers}.sqlite3"}
    )
    FleetStore(**location).close()  # create the schema once, before the children race to
    stop = context.Event()
    children = []
    for index in range(receivers):
        connected = context.Event()
        child = context.Process(
            target=run_receiver, args=(broker.port, location, f"bench-{receivers}-{index}", connected, stop)
        )
        child.start()
        assert connected.wait(60), "a receiver process could not connect"
        children.append(child)
    ready = context.Event()
    publisher = context.Process(target=publish_summaries, args=(broker.port, count, ready))
    publisher.start()
    time.sleep(3.0)  # the publisher builds its payloads before the clock starts
    ready.set()
    started = time.perf_counter()
    stored = 0
    with progress() as bar:
        task = bar.add_task(f"ingest into {backend}, {receivers} receiver process(es)", total=count)
        while stored < count and time.perf_counter() - started < 180:
            time.sleep(0.2)
            stored = count_rows(location, count)
            bar.update(task, completed=stored)
    elapsed = time.perf_counter() - started
    stop.set()
    for child in [*children, publisher]:
        child.join(60)
    split = split_by_receiver(location)
    if pg_dsn:
        drop_postgres_schema(pg_dsn, location["dsn"])
    return {
        "backend": backend,
        "receivers": receivers,
        "summaries": count,
        "stored": stored,
        "seconds": elapsed,
        "summaries_per_s": stored / elapsed,
        "per_receiver": split,
    }


def _queue_backlog(broker: LocalMosquitto, client_id: str, count: int) -> None:
    """Create a persistent session subscribed to every summary, leave, and publish ``count`` summaries to it."""
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.connect("127.0.0.1", broker.port, clean_start=True, properties=properties)
    subscriber.loop_start()
    subscriber.subscribe("gridedge/v1/+/+/summary", qos=1)
    assert subscribed.wait(10), "the backlog session could not subscribe"
    subscriber.disconnect()
    subscriber.loop_stop()
    publish_summaries(broker.port, count, None)


def bench_drain(broker: LocalMosquitto, workdir: Path, count: int) -> dict[str, Any]:
    """Catch-up after receiver downtime: a backlog of ``count`` queued summaries drained by one receiver,
    next to paho alone draining the same backlog (no validation, no storage) as the ceiling."""
    _queue_backlog(broker, "bench-drain-paho", count)
    received = 0
    done = threading.Event()

    def on_message(*_: Any) -> None:
        nonlocal received
        received += 1
        if received >= count:
            done.set()

    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = 65535
    raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-drain-paho", protocol=mqtt.MQTTv5)
    raw.on_message = on_message
    started = time.perf_counter()
    raw.connect("127.0.0.1", broker.port, clean_start=False, properties=properties)
    raw.loop_start()
    done.wait(300)
    paho_seconds = time.perf_counter() - started
    raw.disconnect()
    raw.loop_stop()

    _queue_backlog(broker, "bench-drain-receiver", count)
    store = FleetStore(path=workdir / "drain.sqlite3")
    receiver = FleetReceiver(
        BrokerConfig(port=broker.port, client_id="bench-drain-receiver"), store, group=None, name="drain"
    )
    started = time.perf_counter()
    receiver.start()
    with progress() as bar:
        task = bar.add_task("drain a queued backlog, 1 receiver", total=count)
        while receiver.stats.stored < count and time.perf_counter() - started < 300:
            time.sleep(0.05)
            bar.update(task, completed=receiver.stats.stored)
    receiver_seconds = time.perf_counter() - started
    stored = receiver.stats.stored
    receiver.stop()
    store.close()
    return {
        "summaries": count,
        "paho_only_per_s": received / paho_seconds,
        "stored": stored,
        "receiver_per_s": stored / receiver_seconds,
    }


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


def write_results(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mqtt.json").write_text(json.dumps(results, indent=2) + "\n")
    live, replay = results["outbox_live"], results["outbox_replay"]
    ingest, outage, drain = results["store_ingest"], results["outage"], results["drain"]
    drain_share = drain["receiver_per_s"] / drain["paho_only_per_s"]
    rows = [
        ("Outbox live, QoS 1 to local Mosquitto", f"{live['msg_per_s']:,.0f} msg/s", f">= {TARGET_OUTBOX_MSG_S:,}",
         live["msg_per_s"] >= TARGET_OUTBOX_MSG_S),
        ("Outbox replay after outage (cap lifted)", f"{replay['msg_per_s']:,.0f} msg/s", "-", None),
        ("FleetStore.ingest, SQLite, batches of 1000", f"{ingest['summaries_per_s']:,.0f} summaries/s",
         f">= {TARGET_INGEST_SUMMARIES_S:,}", ingest["summaries_per_s"] >= TARGET_INGEST_SUMMARIES_S),
        *[
            (f"Receiver MQTT -> {BACKEND_NAMES[run.get('backend', 'sqlite')]}, {run['receivers']} process(es) "
             "(validate, dedup, commit)",
             f"{run['summaries_per_s']:,.0f} summaries/s ({run['stored']}/{run['summaries']} stored)",
             f">= {TARGET_INGEST_SUMMARIES_S:,}", run["summaries_per_s"] >= TARGET_INGEST_SUMMARIES_S)
            for run in results["receiver_ingest"]
        ],
        ("Receiver draining a queued backlog (catch-up after downtime), 1 process",
         f"{drain['receiver_per_s']:,.0f} summaries/s ({drain['stored']}/{drain['summaries']} stored; paho alone "
         f"{drain['paho_only_per_s']:,.0f}/s, the receiver reaches {drain_share:.0%} of it)",
         f">= {TARGET_INGEST_SUMMARIES_S:,}", drain["receiver_per_s"] >= TARGET_INGEST_SUMMARIES_S),
        (f"Outage soak: {outage['outage_s']:.0f} s down at {outage['rate_msg_per_s']:.0f} msg/s",
         f"{outage['sent']} sent, {outage['lost']} lost, {outage['duplicates_stored']} duplicated",
         "0 lost, 0 duplicated", outage["lost"] == 0 and outage["duplicates_stored"] == 0),
    ]
    lines = [
        "# MQTT benchmark",
        "",
        f"{results['when']} on {results['machine']}; Mosquitto {results['broker']} on loopback; "
        f"1-minute load average {results['load_average_at_start']:.1f} at start (the machine is shared).",
        "",
        "| measurement | result | target | met |",
        "|---|---|---|---|",
    ]
    for name, value, target, met in rows:
        lines.append(f"| {name} | {value} | {target} | {'-' if met is None else ('yes' if met else 'NO')} |")
    (RESULTS / "mqtt.md").write_text("\n".join(lines) + "\n")
    console.print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000, help="messages for the outbox runs")
    parser.add_argument("--summaries", type=int, default=20000, help="summaries for the ingest runs")
    parser.add_argument("--receivers", type=int, default=2, help="receiver processes of the scale-out run")
    parser.add_argument("--outage-s", type=float, default=10.0, help="broker outage of the soak (600 = 10 min)")
    parser.add_argument("--outage-rate", type=float, default=10.0, help="messages/s during the soak")
    parser.add_argument(
        "--pg-dsn", default="host=127.0.0.1 dbname=test", help="PostgreSQL for the receiver runs ('' to skip)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridedge-bench-mqtt-") as tmp:
        workdir = Path(tmp)
        broker = LocalMosquitto(workdir / "broker", persistence=True)
        broker.start()
        try:
            results: dict[str, Any] = {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
                "load_average_at_start": os.getloadavg()[0],
                "broker": mosquitto_version(broker.binary),
                "outbox_live": bench_outbox_live(broker, workdir, args.messages),
                "outbox_replay": bench_outbox_replay(broker, workdir, args.messages),
                "store_ingest": bench_store_ingest(workdir, args.summaries),
                "receiver_ingest": [
                    bench_receivers(broker, workdir, args.summaries, count, pg_dsn)
                    for pg_dsn in ([None, args.pg_dsn] if args.pg_dsn else [None])
                    for count in sorted({1, args.receivers})
                ],
                "drain": bench_drain(broker, workdir, args.summaries),
                "outage": bench_outage(broker, workdir, args.outage_s, args.outage_rate),
            }
        finally:
            broker.stop(hold_port=False)
    write_results(results)


if __name__ == "__main__":
    main()
