"""Time and CPU to read 20 Modbus registers from the simulated site over loopback TCP.

The site runs in its own process (``gridedge sim site``) so that only the reading side's CPU is counted,
as it would be on a device polling real hardware. Measured:

* back-to-back reads: wall latency per read (p50/p95/max) and CPU time per read;
* a fixed 1 s cadence for ``--cadence-seconds``: the share of one core the reading process uses,
  idle time included (the agent target is <= 1 % of a core with 20 registers at 1 s);
* the same for the whole site (every register of the three shipped maps) for comparison.

Results go to ``benchmarks/results/bench_modbus.json`` and ``.md``.

    python benchmarks/bench_modbus.py [--reads 500] [--cadence-seconds 10]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pymodbus
from benchreport import markdown_table, publish

from edge_agent.sensors.modbus import ModbusTcpConfig, ModbusTcpSource
from edge_agent.sensors.registers import RegisterMap, load_register_map
from gridedge.sim.site import SITE_DEVICES

REPO = Path(__file__).resolve().parents[1]
REGISTERS = REPO / "firmware_configs" / "registers"


def _subset(register_map: RegisterMap, names: list[str]) -> RegisterMap:
    rows = [spec for spec in register_map.registers if spec.name in names]
    return register_map.model_copy(update={"registers": rows})


def twenty_register_devices() -> list[dict[str, Any]]:
    """Battery (11 registers), meter powers/voltage/current (8) and inverter state (1): 20 registers."""
    maps = {device: load_register_map(REGISTERS / file) for device, (_, file) in SITE_DEVICES.items()}
    subsets = {
        "battery": maps["battery"],
        "meter": _subset(maps["meter"], ["active_power", "reactive_power", "voltage", "current", "grid_power"]),
        "inverter": _subset(maps["inverter"], ["operating_state"]),
    }
    return [
        {"name": device, "unit_id": SITE_DEVICES[device][0], "register_map": register_map, "timeout_s": 1.0}
        for device, register_map in subsets.items()
    ]


def whole_site_devices() -> list[dict[str, Any]]:
    return [
        {"name": device, "unit_id": unit_id, "register_map": str(REGISTERS / file), "timeout_s": 1.0}
        for device, (unit_id, file) in SITE_DEVICES.items()
    ]


def _register_count(source: ModbusTcpSource) -> tuple[int, int]:
    blocks = [block for device_blocks in source.read_plan().values() for block in device_blocks]
    return sum(block.count for block in blocks), len(blocks)


def measure(port: int, devices: list[dict[str, Any]], reads: int, cadence_seconds: float) -> dict[str, Any]:
    config = ModbusTcpConfig.model_validate({"type": "modbus_tcp", "port": port, "devices": devices})
    with ModbusTcpSource(config) as source:
        registers, requests = _register_count(source)
        first = source.read()  # connects
        if first.device_errors:
            raise RuntimeError(f"the site did not answer: {first.device_errors}")
        latencies = []
        cpu_start = time.process_time()
        for _ in range(reads):
            started = time.perf_counter()
            reading = source.read()
            latencies.append(time.perf_counter() - started)
        cpu_per_read = (time.process_time() - cpu_start) / reads
        assert not reading.device_errors
        cycles = max(1, int(cadence_seconds))
        cpu_start, wall_start = time.process_time(), time.monotonic()
        next_tick = wall_start
        for _ in range(cycles):
            source.read()
            next_tick += 1.0
            time.sleep(max(0.0, next_tick - time.monotonic()))
        cadence_cpu = time.process_time() - cpu_start
        cadence_wall = time.monotonic() - wall_start
    lat_us = np.array(latencies) * 1e6
    return {
        "registers": registers,
        "requests_per_read": requests,
        "channels": len(reading.channels),
        "reads": reads,
        "latency_us_p50": round(float(np.percentile(lat_us, 50)), 1),
        "latency_us_p95": round(float(np.percentile(lat_us, 95)), 1),
        "latency_us_max": round(float(lat_us.max()), 1),
        "cpu_us_per_read": round(cpu_per_read * 1e6, 1),
        "cadence_cycles": cycles,
        "cpu_share_at_1s_cadence_percent": round(100.0 * cadence_cpu / cadence_wall, 3),
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=500, help="back-to-back reads per configuration")
    parser.add_argument("--cadence-seconds", type=float, default=10.0, help="length of the 1 s cadence run")
    args = parser.parse_args()
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    port = _free_port()
    command = [sys.executable, "-m", "gridedge.cli"]
    site = subprocess.Popen(
        [*command, "sim", "site", "--port", str(port), "--speed", "60", "--status-every", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert site.stdout is not None
        site.stdout.readline()  # "simulated site on ..." once it listens
        results = {
            "twenty_registers": measure(port, twenty_register_devices(), args.reads, args.cadence_seconds),
            "whole_site": measure(port, whole_site_devices(), args.reads, args.cadence_seconds),
        }
    finally:
        site.terminate()
        site.wait(10)
    report = {
        "benchmark": "modbus_read",
        "transport": "Modbus TCP over loopback, pymodbus sync client, site server in another process",
        "pymodbus": pymodbus.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        # The machine is shared: latency percentiles move with its load, CPU per read much less.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "results": results,
    }
    header = [
        "configuration",
        "registers",
        "requests",
        "channels",
        "p50 µs",
        "p95 µs",
        "max µs",
        "CPU µs/read",
        "CPU % at 1 s",
    ]
    rows = [
        [
            name,
            r["registers"],
            r["requests_per_read"],
            r["channels"],
            r["latency_us_p50"],
            r["latency_us_p95"],
            r["latency_us_max"],
            r["cpu_us_per_read"],
            r["cpu_share_at_1s_cadence_percent"],
        ]
        for name, r in results.items()
    ]
    intro = (
        f"{report['transport']}; pymodbus {report['pymodbus']}, Python {report['python']}, {report['machine']}, "
        f"1-minute load average {report['load_average_1min']} at the end of the run."
    )
    publish("bench_modbus", report, "Modbus read benchmark", intro, markdown_table(header, rows))


if __name__ == "__main__":
    main()
