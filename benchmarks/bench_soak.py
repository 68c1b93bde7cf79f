"""Soak under faults: N agents report to a fleet receiver while the broker and the agents are killed.

What runs (all on loopback, all real): a Mosquitto broker with persistence, the simulated site over
Modbus TCP, ``gridedge fleet listen`` into SQLite, and N ``gridedge agent run`` processes with telemetry
on (1 msg/s each) and short summaries. During the run the broker is killed with SIGKILL
(``--broker-kills`` times, down for a few seconds each) and random agents are killed with SIGKILL
(``--agent-kills`` times, restarted at once). Then every agent is stopped cleanly, its outbox drains,
and ``gridedge fleet replay-gaps`` asks the devices for what the fleet is missing.

The accounting, per device, over every message the device stored in its outbox (its ``delivered`` and
``outbox`` tables; the sequence numbers it used for status messages and replies are not stored, may
legitimately never arrive, and are reported by the device as unavailable):
  received          stored messages the fleet holds
  lost_silently     stored messages the fleet neither holds nor lists as a gap: the failure this measures
  gaps_reported     sequence numbers the fleet still lists as missing after the replay
Target (DESIGN.md): 0 messages lost; what the fleet could not fill, it reports.

Results: benchmarks/results/soak.{json,md}. Defaults take about 12 minutes; ``--minutes 2`` for a look.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SITE = "soak"


def log(message: str) -> None:
    print(f"[bench_soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def agent_config(workdir: Path, bundle: Path, index: int, modbus_port: int, mqtt_port: int) -> Path:
    from gridedge.sites import site_values

    raw = site_values("simulated-household", modbus_port, devices=("meter", "battery"))
    device = f"ctrl-{index:02d}"
    raw.update(
        {
            "site": SITE,
            "device": device,
            "state_dir": str(workdir / device),
            "bundle": {"path": str(bundle), "public_key": str(workdir / "keys" / "bundle-signing.pub")},
            "runtime": {"type": "litert"},
            "loop": {"cadence_s": 1.0},
            "commands": {"operator_public_key": str(workdir / "keys" / "operator.pub")},
            "mqtt": {
                "site": SITE,
                "device": device,
                "broker": {"host": "127.0.0.1", "port": mqtt_port, "reconnect_max_s": 2.0},
                "telemetry": {"enabled": True, "max_per_s": 1.0},
                "summary_interval_s": 10.0,
            },
        }
    )
    path = workdir / f"{device}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def start_agent(config: Path, logs: Path) -> subprocess.Popen[bytes]:
    with (logs / f"{config.stem}.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridedge.cli", "agent", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def stored_seqs(state_dir: Path) -> set[int]:
    """Sequence numbers of every message this device put into its outbox (delivered or still queued)."""
    with sqlite3.connect(state_dir / "outbox.sqlite3") as db:
        rows = db.execute("SELECT seq FROM delivered UNION SELECT seq FROM outbox").fetchall()
    return {int(seq) for (seq,) in rows}


def fleet_ranges(database: Path, table: str) -> dict[str, list[tuple[int, int]]]:
    with sqlite3.connect(database) as db:
        rows = db.execute(f"SELECT device, first_seq, last_seq FROM {table} WHERE site = ?", (SITE,)).fetchall()
    ranges: dict[str, list[tuple[int, int]]] = {}
    for device, first, last in rows:
        ranges.setdefault(device, []).append((int(first), int(last)))
    return ranges


def covered(seq: int, ranges: list[tuple[int, int]]) -> bool:
    return any(first <= seq <= last for first, last in ranges)


def account(workdir: Path, database: Path, devices: list[str]) -> dict[str, Any]:
    from gridedge.fleet.store import FleetStore

    received = fleet_ranges(database, "fleet_seq_ranges")
    store = FleetStore(path=database)
    try:
        gaps = store.gaps(SITE)
    finally:
        store.close()
    per_device = {}
    for device in devices:
        stored = stored_seqs(workdir / device)
        have = received.get(device, [])
        missing = [seq for seq in sorted(stored) if not covered(seq, have)]
        listed = gaps.get((SITE, device), [])
        per_device[device] = {
            "stored": len(stored),
            "received": len(stored) - len(missing),
            "lost_silently": sum(1 for seq in missing if not covered(seq, listed)),
            "gaps_reported": sum(last - first + 1 for first, last in listed),
        }
    totals = {key: sum(d[key] for d in per_device.values()) for key in ("stored", "received", "lost_silently")}
    totals["gaps_reported"] = sum(d["gaps_reported"] for d in per_device.values())
    return {"devices": per_device, "totals": totals}


def write_results(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    totals = results["accounting"]["totals"]
    lines = [
        "# Soak under faults",
        "",
        f"{results['agents']} agents at a 1 s cadence with telemetry (1 msg/s each) and 10 s summaries, "
        f"{results['minutes']} minutes; broker SIGKILLed {results['broker_kills']} times "
        f"(down {results['broker_down_s']} s each), agents SIGKILLed {results['agent_kills']} times; "
        "then a clean stop, outbox drain and `fleet replay-gaps`.",
        "",
        "| stored by devices | held by the fleet | lost silently | still reported as gaps |",
        "|---|---|---|---|",
        f"| {totals['stored']} | {totals['received']} | {totals['lost_silently']} | {totals['gaps_reported']} |",
        "",
        f"Replay: {results['replay']}",
    ]
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench-soak")
    parser.add_argument("--bundles", type=Path, required=True, help="A bench_agent.py workdir (its keras bundle).")
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--broker-kills", type=int, default=5)
    parser.add_argument("--agent-kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from edge_agent.keys import new_keypair
    from gridedge.broker import LocalMosquitto
    from gridedge.sim.site import SimulatedSite, SiteServer

    rng = random.Random(args.seed)
    workdir = args.workdir.resolve()
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "bundle-signing.pub").write_bytes((args.bundles / "keys" / "bundle-signing.pub").read_bytes())
    operator_key, _ = new_keypair(keys, overwrite=True, kind="operator")
    bundle = (args.bundles / "bundle-keras").resolve()
    database = workdir / "fleet.sqlite3"
    database.unlink(missing_ok=True)

    broker = LocalMosquitto(workdir / "broker", persistence=True)
    broker.start()
    duration_s = args.minutes * 60
    broker_down_s = 4.0
    with SiteServer(SimulatedSite(), port=0).start_in_thread() as site:
        listener = subprocess.Popen(
            [sys.executable, "-m", "gridedge.cli", "fleet", "listen", "--port", str(broker.port), "--db",
             str(database), "--reconnect-max", "2"],
            stdout=(logs / "listen.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        configs = [agent_config(workdir, bundle, i, site.port, broker.port) for i in range(args.agents)]
        agents = [start_agent(config, logs) for config in configs]
        log(f"{args.agents} agents, broker on {broker.port}, site on {site.port}; {args.minutes} min of faults")
        events = sorted(
            [(rng.uniform(0.05, 0.9) * duration_s, "broker") for _ in range(args.broker_kills)]
            + [(rng.uniform(0.02, 0.95) * duration_s, "agent") for _ in range(args.agent_kills)]
        )
        started = time.monotonic()
        for at, kind in events:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if kind == "broker":
                log("broker: SIGKILL")
                broker.kill()
                time.sleep(broker_down_s)
                broker.start()
            else:
                victim = rng.randrange(len(agents))
                log(f"agent {configs[victim].stem}: SIGKILL, restarted")
                agents[victim].send_signal(signal.SIGKILL)
                agents[victim].wait()
                agents[victim] = start_agent(configs[victim], logs)
        time.sleep(max(0.0, started + duration_s - time.monotonic()))
        log("stopping agents cleanly; waiting for their outboxes to drain")
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
        for agent in agents:
            agent.wait(60)
        # A stopped agent keeps its queue: start each once more for a few cycles to drain it.
        for config in configs:
            raw = yaml.safe_load(config.read_text(encoding="utf-8"))
            raw["loop"]["max_cycles"] = 15
            config.write_text(yaml.safe_dump(raw), encoding="utf-8")
        drains = [start_agent(config, logs) for config in configs]
        replay_log = logs / "replay.log"
        time.sleep(5)
        log("asking the devices to replay the fleet's gaps")
        replay = subprocess.run(
            [sys.executable, "-m", "gridedge.cli", "fleet", "replay-gaps", "--db", str(database), "--port",
             str(broker.port), "--key", str(operator_key)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        replay_log.write_text(replay.stdout + replay.stderr, encoding="utf-8")
        for drain in drains:
            drain.wait(120)
        time.sleep(3)
        listener.send_signal(signal.SIGINT)
        listener.wait(30)
    broker.stop(hold_port=False)
    accounting = account(workdir, database, [c.stem for c in configs])
    results = {
        "agents": args.agents,
        "minutes": args.minutes,
        "broker_kills": args.broker_kills,
        "broker_down_s": broker_down_s,
        "agent_kills": args.agent_kills,
        "replay": (replay.stdout.strip().splitlines() or [f"exit {replay.returncode}"])[-1],
        "accounting": accounting,
        "machine": {"cpus": os.cpu_count()},
    }
    write_results(results)
    log(json.dumps(accounting["totals"]))


if __name__ == "__main__":
    main()
