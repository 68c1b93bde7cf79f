"""`gridedge fleet serve` in a real headless Chromium, over live data: real MqttReporters publish to a real
Mosquitto, a real receiver stores, the real CLI serves; a screenshot of each page is checked."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle import pack_archive, write_bundle
from edge_agent.messages import (
    AlertContent,
    ChannelAggregate,
    ChannelDrift,
    Forecast,
    ModelInfo,
    SummaryContent,
)
from edge_agent.reporting.config import MqttConfig
from edge_agent.reporting.mqtt import MqttReporter
from edge_agent.transport import BrokerConfig
from gridedge.broker import LocalMosquitto, free_port, wait_until
from gridedge.fleet.receiver import FleetReceiver
from gridedge.fleet.rollouts import RolloutStore, Target, create_rollout
from gridedge.fleet.store import FleetStore

# The browser binary itself, not Debian's /usr/bin/chromium wrapper: the wrapper refuses to start when
# /proc/cpuinfo lists no "sse3" flag, which some virtual machines' kernels omit on CPUs that have it.
CHROMIUM, CHROMEDRIVER = Path("/usr/lib/chromium/chromium"), Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.mqtt,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]


def reporter(port: int, tmp_path: Path, site: str, device: str) -> MqttReporter:
    config = MqttConfig.model_validate(
        {
            "site": site,
            "device": device,
            "broker": {"port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
            "outbox": {"path": str(tmp_path / f"{device}.sqlite3")},
            "command_staging_dir": str(tmp_path / f"staging-{device}"),
        }
    )
    started = MqttReporter(config)
    started.start()
    assert started.wait_connected(10)
    return started


def summary(hour: int, level: float) -> SummaryContent:
    """A summary an hour after the previous one: measured mean and a 24-step forecast of p_load."""
    end = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(hours=hour)
    return SummaryContent(
        window_start=end - timedelta(hours=1),
        window_end=end,
        channels={"p_load": ChannelAggregate(count=60, mean=level + (hour % 6) * 0.3, unit="kW")},
        forecasts=[
            Forecast(target="p_load", unit="kW", origin=end, step_s=3600,
                     values=[level + 0.1 + ((hour + 1 + step) % 6) * 0.3 for step in range(24)])
        ],
        model=ModelInfo(name="w1-load", version="1.2.0", runtime="tflite", precision="int8"),
        drift={"p_load": ChannelDrift(z_mean=0.4, std_ratio=1.1)},
    )


def png_size(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decoded first rows): a blank page has one or two."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    chunks, offset = b"", 8
    while offset < len(data):
        length = struct.unpack(">I", data[offset : offset + 4])[0]
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            chunks += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    pixels = zlib.decompress(chunks)
    return width, height, len(set(pixels[: width * 4 * 200]))


def record_rollout(store: FleetStore, site: str, archive: bytes) -> None:
    """A rollout over the three devices as a runner records it: the canary updated, one device refused."""
    rollout = create_rollout(store, archive, [Target(site, d) for d in ("inv-1", "inv-2", "meter-9")], canaries=1)
    rollouts = RolloutStore(store)
    rollouts.set_outcome(rollout.rollout_id, Target(site, "inv-1"), "updated")
    rollouts.set_state(rollout.rollout_id, "running", 1)
    rollouts.set_outcome(rollout.rollout_id, Target(site, "inv-2"), "refused", "manifest signature does not verify")


@pytest.fixture
def live_fleet(
    broker: LocalMosquitto, tmp_path: Path, manifest: Any, model_file: Path, signing_key: Any
) -> Iterator[tuple[Path, str]]:
    """A fleet store fed over MQTT by three devices: two running (one with alerts), one stopped cleanly;
    and a rollout to them, half way."""
    site = f"farm-{uuid.uuid4().hex[:6]}"
    database = tmp_path / "fleet.sqlite3"
    store = FleetStore(path=database)
    receiver = FleetReceiver(BrokerConfig(port=broker.port), store, group=f"g-{uuid.uuid4().hex[:6]}")
    receiver.start()
    assert receiver.wait_connected(10)
    devices = [reporter(broker.port, tmp_path, site, name) for name in ("inv-1", "inv-2", "meter-9")]
    try:
        for index, device in enumerate(devices):
            for hour in range(12):
                device.publish_summary(summary(hour, 1.5 + index))
        devices[0].publish_alert(AlertContent(severity="warning", code="drift", message="p_load drifted"))
        for device in devices:
            assert device.flush(10)
        devices[2].close()
        assert wait_until(
            lambda: {(row["device"], row["state"]) for row in store.devices() if row["site"] == site}
            == {("inv-1", "online"), ("inv-2", "online"), ("meter-9", "stopped")},
            20,
        )
        assert wait_until(lambda: len(store.messages(site=site, kind="summary")) == 36, 20)
        bundle = write_bundle(tmp_path / "bundle", manifest, {"model_int8.tflite": model_file}, signing_key)
        record_rollout(store, site, pack_archive(bundle, tmp_path / "bundle.tar.gz").read_bytes())
        yield database, site
    finally:
        for device in devices[:2]:
            device.close()
        receiver.stop()
        store.close()


@pytest.fixture
def serve(live_fleet: tuple[Path, str]) -> Iterator[tuple[str, str, str]]:
    """`gridedge fleet serve` on a free port, with a token; yields (base url, token, site)."""
    database, site = live_fleet
    port, token = free_port(), uuid.uuid4().hex
    server = subprocess.Popen(
        [sys.executable, "-m", "gridedge.cli", "fleet", "serve", "--db", str(database), "--port", str(port),
         "--auth-token-env", "FLEET_WEB_TOKEN"],
        env={**os.environ, "PYTHONPATH": str(REPO), "FLEET_WEB_TOKEN": token},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(base, timeout=1)
        except urllib.error.HTTPError:
            return True  # 401: the server answers
        except OSError:
            return False
        return True

    try:
        assert wait_until(up, 30), server.stdout.read() if server.poll() is not None and server.stdout else "no answer"
        yield base, token, site
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_fleet_pages_in_a_headless_browser(serve: tuple[str, str, str], browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    base, token, site = serve
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base, timeout=5)
    assert refused.value.code == 401
    # The browser sends the token as HTTP Basic's password, as it would after its login prompt.
    browser.execute_cdp_cmd("Network.enable", {})
    credentials = base64.b64encode(f"fleet:{token}".encode()).decode()
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {credentials}"}})

    browser.get(base + "/")
    rows = {
        row.get_attribute("data-device"): [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")
    }
    inv1 = rows[f"{site}/inv-1"]
    assert inv1[2] == "online" and inv1[3] == "w1-load 1.2.0 (tflite)" and inv1[4].endswith("ago")
    assert inv1[5] == "1" and inv1[6] == "0.40"  # alerts, drift
    assert rows[f"{site}/meter-9"][2] == "stopped"
    (rollout_row,) = browser.find_elements(By.CSS_SELECTOR, "#rollouts tbody tr")
    cells = [cell.text for cell in rollout_row.find_elements(By.TAG_NAME, "td")]
    assert cells[1] == "w1-load 1.0.0" and cells[2] == "running", cells
    assert cells[3].splitlines() == ["canaries: 1/1 done", "rest: 0/2 done, 1 failed, 1 open"], cells
    fleet_shot = tmp_path / "fleet-page.png"
    assert browser.save_screenshot(str(fleet_shot))

    rollout_row.find_element(By.TAG_NAME, "a").click()
    assert wait_until(lambda: "/rollout/" in browser.current_url, 10)
    outcomes = {
        row.get_attribute("data-device"): [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#rollout-devices tbody tr")
    }
    assert outcomes[f"{site}/inv-1"][2:4] == ["canaries", "updated"]
    assert outcomes[f"{site}/inv-2"][2:5] == ["rest", "refused", "manifest signature does not verify"]
    assert outcomes[f"{site}/meter-9"][3] == "waiting"
    bars = browser.find_elements(By.CSS_SELECTOR, "#stages .bar .ok")
    assert [bar.size["width"] > 0 for bar in bars] == [True, False]  # the canary stage's bar is filled
    rollout_shot = tmp_path / "rollout-page.png"
    assert browser.save_screenshot(str(rollout_shot))
    browser.back()

    browser.find_element(By.LINK_TEXT, "inv-1").click()
    assert wait_until(lambda: browser.current_url.endswith(f"/device/{site}/inv-1"), 10)
    names = [line.get_attribute("data-name") for line in browser.find_elements(By.CSS_SELECTOR, "svg polyline")]
    assert names == ["measured", "forecast, 1 step ahead", "latest forecast"]
    assert all(
        len(line.get_attribute("points").split()) >= 12
        for line in browser.find_elements(By.CSS_SELECTOR, "svg polyline")
    )
    alerts = browser.find_element(By.ID, "alerts").text
    assert "drift" in alerts and "p_load drifted" in alerts
    assert "w1-load 1.2.0 tflite int8" in browser.find_element(By.ID, "models").text
    device_shot = tmp_path / "device-page.png"
    assert browser.save_screenshot(str(device_shot))

    for shot in (fleet_shot, rollout_shot, device_shot):
        width, height, distinct = png_size(shot)
        assert (width, height) == (1400, 1000) or width >= 800, (width, height)
        assert shot.stat().st_size > 20_000 and distinct > 10, f"{shot} looks blank"
