"""Publisher run as a separate process by the SIGKILL test: prints each alert index once it is committed.

Usage: python publisher_script.py PORT SITE DEVICE OUTBOX START COUNT RATE
"""

import sys
import time
from pathlib import Path

from edge_agent.messages import AlertContent
from edge_agent.reporting import MqttConfig, create_reporter


def main() -> None:
    port, site, device, outbox, start, count, rate = sys.argv[1:8]
    config = MqttConfig.model_validate(
        {
            "site": site,
            "device": device,
            "broker": {"port": int(port), "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
            "outbox": {"path": outbox, "replay_rate_per_s": 2000},
            "command_staging_dir": str(Path(outbox).parent / "staging"),
        }
    )
    reporter = create_reporter(config)
    if not reporter.wait_connected(10):
        sys.exit("publisher could not connect")
    print("connected", flush=True)
    period = 1.0 / float(rate)
    for index in range(int(start), int(start) + int(count)):
        reporter.publish_alert(AlertContent(severity="warning", code="test", message=f"m{index}"))
        print(index, flush=True)
        time.sleep(period)
    reporter.flush(10)
    reporter.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
