"""`pip install .` (not editable) into a fresh venv, run from an empty folder elsewhere: the quick demo,
`provision` with a shipped profile and the shipped example site, and `sim site` all work.

Every resource (profiles, register maps, site example, systemd unit, task configs, data slices) must come
from the wheel: the repository is not on ``sys.path`` and the working folder is empty. The venv layers the
test environment's site-packages through a ``.pth`` file for the heavy dependencies (TensorFlow, LiteRT
...), written only after pip has installed the wheel, so pip never sees the editable install there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.mqtt, pytest.mark.modbus]

REPO = Path(__file__).resolve().parents[2]
# The checkout minus what is not part of the distribution (and may be large or stale, like build/).
NOT_SHIPPED = (".git", ".venv*", "build", "*.egg-info", "__pycache__", "*_cache", ".hypothesis", "runs", "tests")
SHIPPED_RESOURCES = (
    "gridedge/resources/firmware_configs/raspberry-pi-4.yaml",
    "gridedge/resources/firmware_configs/x86-gateway.yaml",
    "gridedge/resources/firmware_configs/schema.json",
    "gridedge/resources/firmware_configs/sites/simulated-household.yaml",
    "gridedge/resources/firmware_configs/systemd/gridedge-agent.service",
    "gridedge/resources/configs/w1_load.yaml",
    "gridedge/resources/data/README.md",
    "gridedge/resources/data/w1_load_uci_15min.csv.gz",
    "gridedge/resources/data/w2_pv_system50_15min.csv.gz",
    "edge_agent/sensors/register_maps/load_meter.yaml",
    "edge_agent/sensors/register_maps/battery_bms.yaml",
    "edge_agent/sensors/register_maps/inverter_sunspec.yaml",
)


def _build_wheel(root: Path) -> Path:
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
         "-w", str(root / "dist")],
        check=True, cwd=root, timeout=300,
    )  # fmt: skip
    return next((root / "dist").glob("gridedge-*.whl"))


def _install(wheel: Path, env_dir: Path) -> Path:
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300
    )
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    layered = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site_packages) / "zz_test_dependencies.pth").write_text("\n".join(sorted(layered)) + "\n")
    return python


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The built wheel and the python of a fresh venv it is installed in (built once for this module)."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(root)
    return wheel, _install(wheel, root / "venv")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRIDEDGE_COMPAT_VENVS")}
    env.update({"COLUMNS": "200", "PYTHONWARNINGS": "ignore"})
    return env


def test_an_installed_wheel_runs_the_demo_provisions_and_serves_the_simulated_site(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, python = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [r for r in SHIPPED_RESOURCES if r not in names]
    assert not [n for n in names if n.split("/")[0] in {"trainer", "export", "fleet", "data", "firmware_configs"}]

    gridedge = str(python.parent / "gridedge")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = _clean_env()

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, cwd=empty, env=env, timeout=timeout)

    where = run(str(python), "-c", "import json, sys, gridedge, edge_agent; "
                "print(json.dumps([gridedge.__file__, edge_agent.__file__, sys.path]))")  # fmt: skip
    gridedge_file, edge_file, path = json.loads(where.stdout)
    venv_dir = str(python.parent.parent)
    assert gridedge_file.startswith(venv_dir) and edge_file.startswith(venv_dir)
    assert not [p for p in path if p and Path(p).resolve() == REPO.resolve()]

    demo = run(gridedge, "demo", "--quick", "--days", "0.5", "--workdir", "demo", timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "All checks passed: this device is ready." in demo.stdout
    assert "summaries received by the fleet: 0" not in (empty / "demo" / "demo_report.md").read_text()

    example = run(gridedge, "provision", "--example-site")
    assert example.returncode == 0, example.stderr
    site = empty / "site.yaml"
    site.write_text(example.stdout)
    made = run(gridedge, "provision", "--profile", "raspberry-pi-4", "--site", "site.yaml", "--bundle",
               "demo/bundle.tar.gz", "--public-key", "demo/keys/bundle-signing.pub", "--out", "device")  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert {p.name for p in (empty / "device" / "registers").iterdir()} == {
        "load_meter.yaml", "battery_bms.yaml", "inverter_sunspec.yaml",
    }  # fmt: skip
    assert (empty / "device" / "systemd" / "gridedge-agent.service").is_file()

    port = _free_port()
    values = yaml.safe_load(site.read_text())
    values["sensors"][0]["port"] = port
    site.write_text(yaml.safe_dump(values))
    served = subprocess.Popen(
        [gridedge, "sim", "site", "--port", str(port), "--speed", "60", "--status-every", "0"],
        stdout=subprocess.PIPE, text=True, cwd=empty, env=env,
    )  # fmt: skip
    try:
        assert served.stdout is not None
        assert "simulated site on" in served.stdout.readline()
        read = run(gridedge, "sensors", "read", "--config", "site.yaml")
        assert read.returncode == 0, read.stdout + read.stderr
        assert "meter.active_power" in read.stdout and "battery.soc" in read.stdout
    finally:
        served.terminate()
        served.wait(10)


def test_an_installed_wheel_checks_and_trains_a_users_csv_and_parquet_from_a_config_alone(
    installed: tuple[Path, Path], own_load_frame: Any, own_data_config: Any, tmp_path: Path
) -> None:
    """A naive local clock across both DST changes (CSV) and the same series in Parquet: no code edited."""
    _, python = installed
    gridedge = str(python.parent / "gridedge")
    env = _clean_env()
    for data_file in ("house.csv", "house.parquet"):
        folder = tmp_path / data_file.replace(".", "_")
        folder.mkdir()
        if data_file.endswith(".csv"):
            own_load_frame.to_csv(folder / data_file, index=False)
        else:
            own_load_frame.to_parquet(folder / data_file)
        config = own_data_config(folder, data_file).name

        def run(*args: str, cwd: Path = folder) -> subprocess.CompletedProcess[str]:
            return subprocess.run([gridedge, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)

        check = run("data", "check", config)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "8 repeated local times" in check.stdout and "ready to train" in check.stdout
        trained = run("train", config, "--out", "run")
        assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
        report = json.loads((folder / "run" / "report.json").read_text())
        assert report["data"]["path"] == str(folder / data_file)
        assert report["metrics"]["test"]["n_origins"] > 10
