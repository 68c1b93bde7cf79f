"""`gridedge export`: trained run folder -> signed model bundle (+ .tar.gz) and an export report.

Heavy libraries are imported inside the command so `gridedge --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge_agent.runtimes.targets import COMPATIBILITY_TARGETS

app = typer.Typer(add_completion=False, help="Quantise, check parity, prove runtimes and sign a model bundle.")


@app.command("export")
def export_command(
    train_dir: Annotated[Path, typer.Argument(help="Folder written by `gridedge train`.")],
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM) that signs the bundle.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write; BUNDLE.tar.gz is written too.")],
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            help=f"Compatibility target, repeatable: {', '.join(COMPATIBILITY_TARGETS)} "
            "(default: litert+ort for Keras, ort for PyTorch).",
        ),
    ] = None,
    max_degradation: Annotated[
        float,
        typer.Option(
            help="Largest relative loss of the test metric an artefact may show; one over it is left out of the "
            "bundle while every target and the served model keep one that passed."
        ),
    ] = 0.02,
    require_all_artefacts: Annotated[
        bool, typer.Option(help="Refuse the export when any artefact fails the parity gate.")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Bundle name (default: the task config's name and the framework).")
    ] = None,
    version: Annotated[str, typer.Option(help="Semantic version of the bundle.")] = "0.1.0",
    onnx_dynamic_int8: Annotated[
        bool, typer.Option(help="Also write a dynamic-int8 ONNX artefact (often slower than fp32).")
    ] = False,
    fault_margin_std: Annotated[
        float,
        typer.Option(help="Anomaly models: int8 ranges cover spikes this many std past the training range."),
    ] = 4.0,
    level_margin_std: Annotated[
        float,
        typer.Option(
            help="Forecasters: int8 ranges also cover targets shifted this many std past the training range "
            "(for data that moved; 0 = off)."
        ),
    ] = 0.0,
    blend_weight: Annotated[
        list[float] | None,
        typer.Option(
            "--blend-weight",
            min=0.0,
            max=1.0,
            help="Network share w the served w·network + (1−w)·LightGBM may take, repeatable (default: 0 0.25 "
            "0.5 0.75 1; 1 = the network, 0 = LightGBM). The share nearest 0.5 is served unless another is "
            "clearly better on validation.",
        ),
    ] = None,
) -> None:
    """Export TRAIN_DIR into a signed bundle; anything refused exits 2 with the reason (`gridedge --help`)."""
    from rich.console import Console

    from edge_agent.bundle import pack_archive
    from edge_agent.keys import load_private_key
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.report import write_report
    from gridedge.export.run_loader import default_bundle_name, load_source, read_run

    console = Console(stderr=True, soft_wrap=True)
    private_key = load_private_key(key)
    run = read_run(train_dir)
    options = ExportOptions(
        name=name or default_bundle_name(run),
        version=version,
        targets=tuple(target) if target else None,
        max_degradation=max_degradation,
        require_all_artefacts=require_all_artefacts,
        onnx_dynamic_int8=onnx_dynamic_int8,
        fault_margin_std=fault_margin_std,
        level_margin_std=level_margin_std,
        **({"blend_weights": tuple(blend_weight)} if blend_weight else {}),
    )
    console.print(f"loading {train_dir}")
    source = load_source(train_dir)
    result = export_bundle(source, out, private_key, options, progress=lambda m: console.print(m))
    archive = pack_archive(result.bundle_dir, out.with_name(out.name + ".tar.gz"))
    paths = write_report(result, out.with_name(out.name + "-report"))
    typer.echo(paths["md"].read_text())
    typer.echo(f"bundle: {result.bundle_dir}\narchive: {archive}\nreport: {paths['json']}")
