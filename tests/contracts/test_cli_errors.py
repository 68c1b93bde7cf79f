"""One exit-code convention for every command: bad input exits 2 with one `error:` line naming file and field.

0 done, 1 a check failed, 2 refused (bad input or usage), 3 internal error with its traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from edge_agent.errors import EXIT_CHECK_FAILED, EXIT_INTERNAL_ERROR, EXIT_REFUSED, ConfigError
from gridedge.cli import GridedgeGroup, app
from gridedge.provision import deep_merge, load_profile

REPO = Path(__file__).resolve().parents[2]
# The start of a PNG: not UTF-8 at offset 0, as a config picked by mistake would be.
GARBAGE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Bad inputs of every kind, by name; the names are the placeholders of the cases below."""
    paths = {
        "missing": tmp_path / "absent.yaml",
        "bad_yaml": tmp_path / "bad.yaml",
        "garbage": tmp_path / "picture.yaml",
        "agent_bad_field": tmp_path / "agent.yaml",
        "task_bad_field": tmp_path / "task.yaml",
        "site_bad_field": tmp_path / "site.yaml",
        "sensors_bad_field": tmp_path / "sensors.yaml",
    }
    paths["bad_yaml"].write_text("site: [unclosed\n")
    paths["garbage"].write_bytes(GARBAGE)
    site = yaml.safe_load((REPO / "firmware_configs" / "sites" / "simulated-household.yaml").read_text())
    agent = deep_merge(load_profile("x86-gateway").agent, site)
    agent["bundle"] = {"path": "bundle", "public_key": "keys/bundle-signing.pub"}
    agent["loop"] = {"cadence_s": 0}
    paths["agent_bad_field"].write_text(yaml.safe_dump(agent))
    task = yaml.safe_load((REPO / "configs" / "w1_load.yaml").read_text())
    task["training"]["epoch"] = 3
    paths["task_bad_field"].write_text(yaml.safe_dump(task))
    site["site"] = "has spaces"
    paths["site_bad_field"].write_text(yaml.safe_dump(site))
    sensors = {"type": "modbus_tcp", "name": "s", "devices": [{"name": "x", "register_map": "m.yaml", "timout_s": 1}]}
    paths["sensors_bad_field"].write_text(yaml.safe_dump(sensors))
    named = {name: str(path) for name, path in paths.items()}
    named["out"] = str(tmp_path / "out")
    return named


PROVISION = ["provision", "--profile", "x86-gateway", "--bundle", "{missing}", "--public-key", "{missing}",
             "--out", "{out}", "--site"]  # fmt: skip
CASES = {
    # command: (arguments, text the one error line must hold)
    "train missing": (["train", "{missing}"], ["task config {missing}", "not found"]),
    "train invalid yaml": (["train", "{bad_yaml}"], ["{bad_yaml} is not valid YAML", "line 2"]),
    "train binary": (["train", "{garbage}"], ["{garbage} is not a text file"]),
    "train bad field": (["train", "{task_bad_field}"], ["{task_bad_field} is invalid", "training.epoch"]),
    "agent run missing": (["agent", "run", "-c", "{missing}"], ["agent config {missing}", "not found"]),
    "agent run invalid yaml": (["agent", "run", "-c", "{bad_yaml}"], ["{bad_yaml} is not valid YAML"]),
    "agent run binary": (["agent", "run", "-c", "{garbage}"], ["{garbage} is not a text file"]),
    "agent run bad field": (["agent", "run", "-c", "{agent_bad_field}"], ["{agent_bad_field}", "loop.cadence_s"]),
    "sensors read binary": (["sensors", "read", "--config", "{garbage}"], ["sensor config {garbage} is not a text"]),
    "sensors read bad field": (
        ["sensors", "read", "--config", "{sensors_bad_field}"], ["{sensors_bad_field}", "devices[0].timout_s"]
    ),
    "provision missing site": ([*PROVISION, "{missing}"], ["site values {missing}", "not found"]),
    "provision invalid yaml": ([*PROVISION, "{bad_yaml}"], ["site values {bad_yaml} is not valid YAML"]),
    "provision binary site": ([*PROVISION, "{garbage}"], ["site values {garbage} is not a text file"]),
    "provision bad field": ([*PROVISION, "{site_bad_field}"], ["{site_bad_field} is invalid: site:"]),
    "provision binary profile": (
        ["provision", "--profile", "{garbage}", *PROVISION[3:], "{missing}"], ["device profile {garbage} is not a text"]
    ),
    "export binary key": (
        ["export", "{missing}", "--key", "{garbage}", "--out", "{out}"], ["{garbage} is not an unencrypted PEM"]
    ),
    "fleet status missing db": (["fleet", "status", "--db", "{missing}"], ["fleet store {missing} not found"]),
    "fleet status binary db": (["fleet", "status", "--db", "{garbage}"], ["fleet store {garbage}"]),
    "fleet listen bad option": (["fleet", "listen", "--protocol", "4"], ["broker options is invalid: protocol"]),
    "sim site missing data": (["sim", "site", "--port", "0", "--data-dir", "{missing}"], ["{missing}", "not found"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_naming_file_and_field(case: str, files: dict[str, str]) -> None:
    arguments, expected = CASES[case]
    result = CliRunner().invoke(app, [argument.format(**files) for argument in arguments])
    assert result.exit_code == EXIT_REFUSED, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text.format(**files) in lines[0]
    assert "Traceback" not in result.output


def test_keys_refuse_to_replace_a_key_with_exit_2(tmp_path: Path) -> None:
    assert CliRunner().invoke(app, ["keys", "new", "--out", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(app, ["keys", "new", "--out", str(tmp_path)])
    assert again.exit_code == EXIT_REFUSED
    assert again.stderr.startswith("error: ") and "refusing to replace a signing key" in again.stderr


def test_a_usage_error_exits_2() -> None:
    result = CliRunner().invoke(app, ["demo", "--framework", "jax"])
    assert result.exit_code == EXIT_REFUSED and "--framework" in result.output


def test_doctor_reports_a_bad_config_as_a_failed_check_exit_1(files: dict[str, str]) -> None:
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["agent", "doctor", "-c", files["garbage"]])
    assert result.exit_code == EXIT_CHECK_FAILED
    assert "FAIL" in result.output and f"{files['garbage']} is not a text file" in " ".join(result.output.split())


def _group_raising(error: Exception) -> typer.Typer:
    group = typer.Typer(cls=GridedgeGroup)

    @group.command()
    def fail() -> None:
        raise error

    @group.command()
    def other() -> None:
        """A second command, so the group keeps its subcommand names."""

    return group


def test_an_unexpected_exception_is_an_internal_error_with_its_traceback() -> None:
    result = CliRunner().invoke(_group_raising(KeyError("surprise")), ["fail"])
    assert result.exit_code == EXIT_INTERNAL_ERROR
    assert "Traceback" in result.stderr and "KeyError: 'surprise'" in result.stderr
    assert "internal error" in result.stderr


def test_gridedge_errors_keep_brackets_in_their_message() -> None:
    result = CliRunner().invoke(_group_raising(ConfigError("features.past[0].column: ['a', 'b']")), ["fail"])
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr.strip() == "error: features.past[0].column: ['a', 'b']"
