"""The ``gridedge`` command line.

Each package owns its subcommands in a light ``cli`` module (heavy libraries are imported inside the
commands), so ``gridedge --help`` and ``gridedge agent`` work on a device with only the ``edge`` extra.
The central-side groups (train, export, fleet, sim, plan) are imported only when that command runs or the
top-level help lists them: a device running ``gridedge agent`` loads no trainer, exporter, fleet or
simulator code. Errors are turned into exit codes in one place, :class:`GridedgeGroup`, for every
subcommand alike.
"""

from __future__ import annotations

import importlib
import traceback
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from edge_agent.cli import agent_app
from edge_agent.errors import EXIT_INTERNAL_ERROR, EXIT_REFUSED, GridedgeError
from edge_agent.sensors.cli import sensors_app

if TYPE_CHECKING:
    # typer vendors click: these are the types TyperGroup's methods take and return.
    from typer._click import Command, Context

# Command name -> (module, attribute): a Typer group or a single command function.
CENTRAL_COMMANDS = {
    "train": ("gridedge.trainer.cli", "train_command"),
    "data": ("gridedge.trainer.cli", "data_app"),
    "export": ("gridedge.export.cli", "export_command"),
    "fleet": ("gridedge.fleet.cli", "app"),
    "sim": ("gridedge.sim.cli", "sim_app"),
    "plan": ("gridedge.plan_cli", "plan_command"),
}
EXIT_CODES_EPILOG = (
    "Exit codes: 0 done; 1 a check ran and failed (agent doctor, sensors read); 2 refused: bad input or "
    "usage, one 'error:' line names the file and field; 3 internal error (a bug, traceback printed); "
    "130 interrupted."
)
_err = Console(stderr=True, soft_wrap=True)


class GridedgeGroup(TyperGroup):
    """The root command: imports a central-side command only when asked for, and maps what any
    subcommand raises to gridedge's exit codes (see the epilog)."""

    def list_commands(self, ctx: Context) -> list[str]:
        return [*super().list_commands(ctx), *CENTRAL_COMMANDS]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name not in CENTRAL_COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attribute = CENTRAL_COMMANDS[cmd_name]
        target = getattr(importlib.import_module(module), attribute)
        if isinstance(target, typer.Typer):
            command: Command = typer.main.get_group(target)
        else:
            single = typer.Typer()
            single.command(cmd_name)(target)
            command = typer.main.get_command(single)
        command.name = cmd_name
        return command

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except GridedgeError as exc:
            _err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_REFUSED) from exc
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            traceback.print_exc()
            _err.print(
                f"[bold red]internal error:[/] {escape(type(exc).__name__)}; this is a gridedge bug, please "
                "report it with the traceback above",
                highlight=False,
            )
            raise typer.Exit(EXIT_INTERNAL_ERROR) from exc


class DemoFramework(StrEnum):
    """The demo's two paths: Keras to TFLite int8, PyTorch to ONNX int8."""

    keras = "keras"
    torch = "torch"


app = typer.Typer(
    name="gridedge",
    cls=GridedgeGroup,
    help="Machine learning on microgrid controllers: train, export, provision, run and watch the fleet.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(
    help="Create the Ed25519 key pairs that sign model bundles and operator commands.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(agent_app, name="agent")
app.add_typer(sensors_app, name="sensors")


@keys_app.command("new")
def keys_new(
    out: Path = typer.Option(..., "--out", help="Folder for <kind>.key (0600) and <kind>.pub."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key pair in that folder."),
    kind: str = typer.Option(
        "bundle",
        "--kind",
        help="bundle: bundle-signing.key signs models; operator: operator.key signs commands to devices.",
    ),
) -> None:
    """Create a signing key pair: keep the private key on the build machine, copy the .pub to devices."""
    from edge_agent.keys import KEY_KINDS, new_keypair

    if kind not in KEY_KINDS:
        raise typer.BadParameter(f"use one of {', '.join(KEY_KINDS)}", param_hint="--kind")
    private_path, public_path = new_keypair(out, overwrite=force, kind=kind)
    typer.echo(f"private key: {private_path} (mode 0600, keep it secret)")
    typer.echo(f"public key:  {public_path} (copy to every device)")


def _print_example_site(wanted: bool) -> None:
    if wanted:
        from gridedge.sites import EXAMPLE_SITE, site_file

        typer.echo(site_file(EXAMPLE_SITE).read_text(encoding="utf-8"), nl=False)
        raise typer.Exit()


@app.command("provision")
def provision_device(
    profile: str = typer.Option(..., "--profile", help="Device profile name in firmware_configs/ or a file."),
    site_values: Path = typer.Option(..., "--site", help="YAML with site, device, sensors and broker settings."),
    bundle: Path = typer.Option(..., "--bundle", help="Signed bundle folder or .tar.gz from `gridedge export`."),
    public_key: Path = typer.Option(..., "--public-key", help="The fleet's bundle-signing.pub."),
    out: Path = typer.Option(..., "--out", help="Folder to build; copy it onto the device."),
    wheelhouse: bool = typer.Option(
        False,
        "--wheelhouse",
        help="Download every wheel the device needs (its platform and Python) and write install.sh: the "
        "device then installs offline, atomically, into versioned folders.",
    ),
    gridedge_wheel: Path | None = typer.Option(
        None, "--gridedge-wheel", help="With --wheelhouse: the gridedge wheel to ship (default: built from source)."
    ),
    ca_cert: Path | None = typer.Option(None, "--ca", help="Fleet CA certificate (PEM) issuing the device's."),
    ca_key: Path | None = typer.Option(
        None, "--ca-key", help="Key of --ca: issue the device's MQTT client certificate, CN '<site>/<device>'."
    ),
    operator_key: Path | None = typer.Option(
        None,
        "--operator-key",
        help="The fleet's operator.pub: the device then accepts commands signed with its key (model updates, "
        "rollouts); default: the site file's commands.operator_public_key, if any.",
    ),
    example_site: bool = typer.Option(
        False,
        "--example-site",
        is_eager=True,
        callback=_print_example_site,
        help="Print the shipped example site values (for `> site.yaml`) and exit.",
    ),
) -> None:
    """Build the folder that goes onto a device: config, verified bundle, key, register maps, service."""
    from gridedge.provision import DeviceExtras, provision

    extras = DeviceExtras(
        wheelhouse=wheelhouse, gridedge_wheel=gridedge_wheel, ca_cert=ca_cert, ca_key=ca_key, operator_key=operator_key
    )
    config, artefact = provision(profile, site_values, bundle, public_key, out, extras)
    typer.echo(f"device folder for {config.site}/{config.device} written to {out}")
    typer.echo(f"the device will run {artefact}; next: copy it over and run `gridedge agent doctor` there")


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), "--workdir", help="Folder for every artefact of the demo."),
    framework: DemoFramework = typer.Option(
        DemoFramework.keras, "--framework", help="keras (-> TFLite int8) or torch (-> ONNX int8)."
    ),
    quick: bool = typer.Option(False, "--quick", help="Train on 6 months for 4 epochs, skip LightGBM."),
    days: float = typer.Option(2.0, "--days", help="Simulated days the agent forecasts after its warm-up."),
) -> None:
    """Run the whole chain on real data: train, export, sign, provision, run the agent, watch the fleet."""
    from gridedge.demo import run_demo

    result = run_demo(workdir, framework.value, quick, days)
    typer.echo(f"demo finished: {result.workdir / 'demo_report.md'}")


def main() -> None:
    """Console entry point; :class:`GridedgeGroup` has already turned errors into exit codes."""
    app()


if __name__ == "__main__":
    main()
