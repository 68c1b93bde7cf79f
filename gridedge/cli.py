"""The ``gridedge`` command line.

Each package owns its subcommands in a light ``cli`` module (heavy libraries are imported inside the
commands), so ``gridedge --help`` and ``gridedge agent`` work on a device with only the ``edge`` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from edge_agent.errors import GridedgeError

app = typer.Typer(
    name="gridedge",
    help="Machine learning on microgrid controllers: train, export, provision, run and watch the fleet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create the Ed25519 key pair that signs model bundles.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

_err = Console(stderr=True)


@keys_app.command("new")
def keys_new(
    out: Path = typer.Option(..., "--out", help="Folder for bundle-signing.key (0600) and bundle-signing.pub."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key pair in that folder."),
) -> None:
    """Create a signing key pair: keep the private key on the build machine, copy the .pub to devices."""
    from edge_agent.keys import new_keypair

    private_path, public_path = new_keypair(out, overwrite=force)
    typer.echo(f"private key: {private_path} (mode 0600, keep it secret)")
    typer.echo(f"public key:  {public_path} (copy to every device)")


def main() -> None:
    """Console entry point: run the app and turn gridedge's own errors into one clear line and exit 2."""
    try:
        app()
    except (GridedgeError, FileExistsError) as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
