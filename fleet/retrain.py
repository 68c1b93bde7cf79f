"""``gridedge fleet retrain``: retrain sites on their own recent data, ship only models that beat the running one.

A retraining plan (YAML) names the sites, each site's task config (a default and per-site overrides) and
the rules. A run:

1. selects sites from the fleet store: all, a group, those whose reported drift crossed a threshold, or
   those whose reported forecasts, scored against the telemetry that followed, are worse than the running
   bundle's test error by a factor;
2. runs one job per site on Dask distributed (:mod:`gridedge.fleet.engine`): the job pins the site's
   recent series (``data.fleet``, the last ``since`` of the device's own clock) to a fixed time range,
   trains the task config on it, exports and signs the challenger, then runs the champion (the bundle
   the device reports running, found in the fleet's model registry) and the challenger with the device's
   runtime on the same recent test windows, each through its own feature pipeline;
3. decides per site: ship when the challenger's error is lower than the champion's by at least
   ``min_improvement`` (or the site runs no model yet), keep otherwise; a failed job is a row of the
   report, never the end of the run;
4. registers the winners with their lineage and records a staged rollout for each
   (:func:`gridedge.fleet.rollouts.create_rollout`), writes ``deploy.json`` and a report (markdown, JSON
   and a PNG of old vs new error per site).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field

from edge_agent.bundle import MANIFEST_NAME, parse_manifest
from edge_agent.errors import ConfigError
from edge_agent.versions import semver_key
from edge_agent.yamlconfig import StrictModel, load_yaml_model
from gridedge.fleet.store import FleetStore
from gridedge.trainer.config import Duration

Selection = Literal["all", "group", "drift", "error"]
# A retrained site model serves data that moved (why it was retrained): its int8 ranges cover the targets
# shifted in level by the default drift threshold (export's level_margin_std).
RETRAIN_LEVEL_MARGIN_STD = 2.0
ERROR_SUMMARIES = 7  # newest summaries whose forecasts are scored against the telemetry that followed


class PlanSite(StrictModel):
    """One site of the plan: which device reports its meter, its group, and its task config if not the default."""

    site: str = Field(title="Site")
    """Site id, as in the device's topics."""
    device: str = Field(title="Device")
    """Device whose model-step telemetry is the site's series."""
    group: str | None = Field(default=None, title="Group")
    """Selectable with --group."""
    task: str | None = Field(default=None, title="Task config")
    """This site's task config (relative to the plan)."""


class RetrainPlan(StrictModel):
    """The retraining plan: task configs per site and the rules of a run."""

    task: str = Field(title="Default task config")
    """Task config YAML, relative to the plan file."""
    framework: Literal["keras", "torch"] = Field(default="torch", title="Training framework")
    since: Duration = Field(
        default="30d", title="Recent data", description="Train and compare on the last this-long of each series."
    )
    drift_threshold: float = Field(default=2.0, gt=0, title="Drift threshold")
    """|z| of any input channel that selects a site."""
    error_ratio_threshold: float = Field(default=1.5, gt=0, title="Error threshold")
    """Live forecast MAE (reported forecasts vs the telemetry that followed) over the running bundle's test MAE at
    export that selects a site."""
    min_improvement: float = Field(default=0.02, ge=0, lt=1, title="Minimum improvement")
    """Relative error cut a challenger needs."""
    export_targets: list[str] | None = Field(default=None, title="Compatibility targets")
    """Export targets; default those of the framework."""
    sites: list[PlanSite] = Field(min_length=1, title="Sites")


def load_plan(path: Path) -> tuple[RetrainPlan, Path]:
    """The plan and its folder (task paths are relative to it)."""
    plan = load_yaml_model(path, RetrainPlan, "retrain plan", missing_hint="pass an existing plan file")
    return plan, path.resolve().parent


@dataclass(frozen=True)
class SiteJob:
    """Everything one site's job needs, picklable: it runs in a Dask worker process."""

    site: str
    device: str
    task_path: str
    framework: Literal["keras", "torch"]
    since: str
    store: dict[str, str]  # {"path": ...} or {"dsn": ...}
    key_path: str
    out_dir: str
    name: str
    version: str
    min_improvement: float
    champion: dict[str, Any] | None  # registry row of the bundle the device runs
    running: str | None  # name@version the device reports, registered or not
    export_targets: tuple[str, ...] | None = None


@dataclass
class SiteOutcome:
    """One row of the report."""

    site: str
    device: str
    decision: Literal["ship", "keep", "failed"]
    reason: str
    champion: str | None = None
    challenger: str | None = None
    old_mae: float | None = None
    new_mae: float | None = None
    windows: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    bundle: str | None = None
    archive: str | None = None
    seconds: float = 0.0
    worker: str = ""
    rollout: str | None = None  # the staged rollout recorded for a winner


def next_version(version: str | None) -> str:
    """The challenger's version: the running one with the minor raised, 1.0.0 for a first model."""
    if version is None:
        return "1.0.0"
    major, minor, _, _ = semver_key(version)
    return f"{major}.{minor + 1}.0"


def live_error(store: FleetStore, site: str, device: str) -> tuple[float | None, int]:
    """MAE of the forecasts in the device's newest summaries against the model-step telemetry that followed,
    and how many forecast steps it is over (None, 0 when none can be scored yet)."""
    actuals: dict[str, dict[float, float]] = {}
    errors = []
    for row in store.recent_messages(site, device, "summary", ERROR_SUMMARIES):
        for forecast in json.loads(row["payload"]).get("forecasts", []):
            target = forecast["target"]
            if target not in actuals:
                series = store.series(site, device, channels=[target])
                actuals[target] = {r["start_s"]: r["value"] for r in series if r["value"] is not None}
            origin = datetime.fromisoformat(forecast["origin"]).timestamp()
            for k, value in enumerate(forecast["values"]):
                actual = actuals[target].get(origin + k * forecast["step_s"])
                if value is not None and actual is not None:
                    errors.append(abs(value - actual))
    return (float(np.mean(errors)), len(errors)) if errors else (None, 0)


def error_ratio(store: FleetStore, row: dict[str, Any]) -> tuple[float | None, str]:
    """The device's live error over its running bundle's test MAE at export, or None and why not."""
    registered = store.model(row["model_name"], row["model_version"]) if row.get("model_name") else None
    if registered is None:
        return None, "its running model is not registered"
    manifest = parse_manifest((Path(registered["location"]) / MANIFEST_NAME).read_bytes())
    runtime = row.get("model_runtime")
    family = manifest.serving.family if manifest.serving else "network"
    served = [a for a in manifest.artefacts if a.runtime == runtime and a.family == family]
    at_export = next((a.metrics.get("mae") for a in served), None)
    at_export = at_export or manifest.metrics.get("float", {}).get("mae")
    live, steps = live_error(store, row["site"], row["device"])
    if live is None or not at_export:
        return None, "no reported forecast can be scored yet"
    return live / at_export, f"live MAE {live:.3f} over {steps} steps, {live / at_export:.2f}x its test MAE"


def select_sites(
    plan: RetrainPlan, store: FleetStore, selection: Selection, group: str | None = None
) -> tuple[list[PlanSite], dict[str, str]]:
    """The plan's sites the selection names, and why each of the others was left out."""
    reports = {(row["site"], row["device"]): row for row in store.devices()}
    chosen, skipped = [], {}
    for entry in plan.sites:
        row = reports.get((entry.site, entry.device))
        if selection == "group" and entry.group != group:
            skipped[entry.site] = f"not in group {group}"
        elif selection == "error":
            ratio, why = error_ratio(store, row) if row else (None, "it never reported")
            if ratio is None or ratio < plan.error_ratio_threshold:
                skipped[entry.site] = f"{why} (threshold {plan.error_ratio_threshold}x)"
            else:
                chosen.append(entry)
        elif selection == "drift":
            drift = row["drift_max"] if row else None
            if drift is None or drift < plan.drift_threshold:
                shown = "none reported" if drift is None else f"{drift:.2f}"
                skipped[entry.site] = f"drift {shown} below {plan.drift_threshold}"
            else:
                chosen.append(entry)
        else:
            chosen.append(entry)
    return chosen, skipped


def make_jobs(
    plan: RetrainPlan, folder: Path, sites: list[PlanSite], store: FleetStore, key: Path, out_dir: Path
) -> list[SiteJob]:
    """One job per selected site, with its champion looked up in the fleet's model registry."""
    reports = {(row["site"], row["device"]): row for row in store.devices()}
    jobs = []
    for entry in sites:
        row = reports.get((entry.site, entry.device), {})
        name, version = row.get("model_name"), row.get("model_version")
        champion = store.model(name, version) if name and version else None
        task_path = (folder / (entry.task or plan.task)).resolve()
        if not task_path.is_file():
            raise ConfigError(f"retrain plan: task config {task_path} of site {entry.site} not found")
        base = yaml.safe_load(task_path.read_text()).get("name", "model")
        jobs.append(
            SiteJob(
                site=entry.site,
                device=entry.device,
                task_path=str(task_path),
                framework=plan.framework,
                since=plan.since,
                store={k: str(v) for k, v in store.reopen_arguments().items()},
                key_path=str(key.resolve()),
                out_dir=str((out_dir / entry.site).resolve()),
                name=name or f"{base}-{entry.site}",
                version=next_version(version),
                min_improvement=plan.min_improvement,
                champion=champion,
                running=f"{name}@{version}" if name else None,
                export_targets=tuple(plan.export_targets) if plan.export_targets else None,
            )
        )
    return jobs


def run_site(job: SiteJob) -> SiteOutcome:
    """Train, export, compare and decide for one site; any failure becomes a ``failed`` outcome."""
    started = time.monotonic()
    outcome = SiteOutcome(job.site, job.device, "failed", "", champion=job.running, worker=f"pid {os.getpid()}")
    try:
        _run_site(job, outcome)
    except Exception as exc:  # one site's failure is its report row, never the run's end
        outcome.decision = "failed"
        outcome.reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(job.out_dir) / "error.txt").write_text(traceback.format_exc())
    outcome.seconds = time.monotonic() - started
    return outcome


def _pinned_task(job: SiteJob) -> Any:
    """The site's task config reading its own recent series, pinned to a fixed time range so training,
    export and the comparison all see the same rows while the store keeps growing."""
    from gridedge.trainer import datasets
    from gridedge.trainer.config import parse_config

    task_path = Path(job.task_path)
    raw = yaml.safe_load(task_path.read_text())
    db = job.store.get("dsn") or job.store["path"]
    data = {k: v for k, v in raw["data"].items() if k != "path"}
    data["fleet"] = {"db": db, "site": job.site, "device": job.device, "since": job.since}
    raw = {**raw, "name": job.name, "data": data}
    config = parse_config(raw, f"task config {task_path} for {job.site}", base_dir=task_path.parent)
    frame = datasets.load(config.data).frame
    data["fleet"]["since"] = None
    data["start"], data["end"] = frame.index[0].isoformat(), frame.index[-1].isoformat()
    return parse_config(raw, f"task config {task_path} for {job.site}", base_dir=task_path.parent)


def _run_site(job: SiteJob, outcome: SiteOutcome) -> None:
    from edge_agent.bundle import pack_archive, read_bundle
    from edge_agent.keys import load_private_key
    from gridedge.export.errors import ExportError
    from gridedge.export.pipeline import ExportOptions, export_bundle
    from gridedge.export.run_loader import load_source
    from gridedge.trainer.api import prepare_task
    from gridedge.trainer.training import train

    out = Path(job.out_dir)
    task = _pinned_task(job)
    report = train(task, job.framework, out / "run", plots=False, progress=lambda _line: None)
    outcome.data = report["lineage"]["data"]
    key = load_private_key(Path(job.key_path))
    options = ExportOptions(
        name=job.name,
        version=job.version,
        targets=job.export_targets,
        latency_runs=20,
        level_margin_std=RETRAIN_LEVEL_MARGIN_STD,
    )
    try:
        exported = export_bundle(load_source(out / "run"), out / "bundle", key, options)
    except ExportError as exc:
        outcome.decision, outcome.reason = "keep", f"challenger not exportable: {exc}"[:300]
        return
    outcome.challenger = f"{job.name}@{job.version}"
    public = key.public_key()
    prepared = prepare_task(task)
    split = prepared.test_rolling if prepared.test_rolling is not None and len(prepared.test_rolling) else prepared.test
    challenger = read_bundle(exported.bundle_dir, public)
    new_errors = bundle_errors(challenger, prepared, split)
    if job.champion is None:
        outcome.new_mae = float(np.nanmean(new_errors))
        outcome.windows = int(np.isfinite(new_errors).sum())
        if job.running is None:
            _ship(outcome, exported.bundle_dir, pack_archive, "the site runs no model yet")
        else:
            outcome.decision = "keep"
            outcome.reason = (
                f"running model {job.running} is not in the fleet's registry (gridedge fleet register-model): "
                "no champion to compare with"
            )
        return
    champion = read_bundle(Path(job.champion["location"]), public)
    old_errors = bundle_errors(champion, prepared, split)
    both = np.isfinite(old_errors) & np.isfinite(new_errors)
    if not both.any():
        outcome.decision, outcome.reason = "keep", "no test window both models can forecast"
        return
    outcome.windows = int(both.sum())
    outcome.old_mae, outcome.new_mae = float(old_errors[both].mean()), float(new_errors[both].mean())
    gain = 1.0 - outcome.new_mae / outcome.old_mae if outcome.old_mae > 0 else 0.0
    versus = f"MAE {outcome.new_mae:.3f} vs {outcome.old_mae:.3f} ({100 * gain:+.1f} %) on {outcome.windows} windows"
    if gain >= job.min_improvement:
        _ship(outcome, exported.bundle_dir, pack_archive, f"challenger better: {versus}")
    else:
        outcome.decision = "keep"
        outcome.reason = f"challenger not {100 * job.min_improvement:.0f} % better: {versus}"


def _ship(outcome: SiteOutcome, bundle_dir: Path, pack: Any, reason: str) -> None:
    outcome.decision, outcome.reason = "ship", reason
    outcome.bundle = str(bundle_dir)
    outcome.archive = str(pack(bundle_dir, bundle_dir.with_name(bundle_dir.name + ".tar.gz")))


def bundle_errors(bundle: Any, prepared: Any, split: Any) -> np.ndarray:
    """Mean absolute error per test window of ``bundle``'s artefact run by the device's runtime.

    The inputs are built from the raw recent series with the bundle's own feature pipeline (its channels,
    its normalisation), at the split's origins; a window the bundle cannot read is NaN.
    """
    from edge_agent.features import FeaturePipeline, forecast_samples
    from edge_agent.runtimes.litert import LiteRTConfig
    from edge_agent.runtimes.ort import OnnxRuntimeConfig
    from edge_agent.runtimes.registry import load_model
    from gridedge.export.evaluate import predict_batched

    spec = bundle.manifest.input
    names = list(prepared.spec.past_channel_names)
    missing = [n for n in spec.past_channel_names if n not in names]
    if missing or list(spec.target_channels) != list(prepared.spec.target_channels):
        raise ConfigError(f"{bundle.manifest.name}@{bundle.manifest.version} reads channels {missing} or "
                          "forecasts targets the site's task config does not have")  # fmt: skip
    past = prepared.series.past[:, [names.index(n) for n in spec.past_channel_names]]
    future = None
    if spec.known_future_channels:
        future_names = [c.name for c in prepared.spec.known_future_channels]
        future = prepared.series.future[:, [future_names.index(n) for n in spec.future_channel_names]]
    inputs, targets, origins = forecast_samples(spec, past, prepared.series.timestamps, future, split.origins)
    runtimes = {a.runtime for a in bundle.manifest.artefacts}
    config = OnnxRuntimeConfig() if "onnx" in runtimes else LiteRTConfig()
    _, runtime = load_model(bundle, None, config)
    errors = np.full(len(origins), np.nan)
    valid = np.asarray(inputs.valid, dtype=bool)
    if valid.any():
        feeds = {k: np.asarray(v)[valid] for k, v in inputs.as_feeds().items()}
        decoded = FeaturePipeline(spec).decode(predict_batched(runtime.run, feeds))
        errors[valid] = np.nanmean(np.abs(decoded - targets[valid]), axis=(1, 2))
    return errors


def deploy_manifest(outcomes: list[SiteOutcome]) -> dict[str, Any]:
    """The winners handed to staged rollouts: per site the device, bundle, archive, what it replaces and
    the rollout recorded for it."""
    return {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "deployments": [
            {
                "site": o.site,
                "device": o.device,
                "bundle": o.bundle,
                "archive": o.archive,
                "model": o.challenger,
                "replaces": o.champion,
                "rollout": o.rollout,
                "old_mae": o.old_mae,
                "new_mae": o.new_mae,
            }
            for o in outcomes
            if o.decision == "ship"
        ],
    }


def hand_off(store: FleetStore, outcomes: list[SiteOutcome], public_key: Ed25519PublicKey) -> None:
    """Register each winner with its lineage and record its staged rollout (one per site: each site has
    its own model); a runner sends it (`gridedge fleet listen --rollout-key`, or `fleet deploy --wait`)."""
    from gridedge.fleet.models import register_bundle
    from gridedge.fleet.rollouts import Target, create_rollout

    for outcome in outcomes:
        if outcome.decision == "ship" and outcome.bundle and outcome.archive:
            register_bundle(store, Path(outcome.bundle), public_key)
            archive = Path(outcome.archive).read_bytes()
            outcome.rollout = create_rollout(store, archive, [Target(outcome.site, outcome.device)]).rollout_id


def outcomes_json(outcomes: list[SiteOutcome], skipped: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
    """The report as JSON: every site, retrained or not."""
    return {
        **extra,
        "sites": [asdict(o) for o in outcomes],
        "not_selected": [{"site": site, "reason": why} for site, why in skipped.items()],
    }


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report_markdown(report: dict[str, Any]) -> str:
    """Every site: old vs new error, decision and reason; then the sites not selected."""
    lines = [
        "# Fleet retraining",
        "",
        f"Selection: {report['selection']}; engine: {report['engine']}; {report['seconds']:.1f} s; "
        f"{report['shipped']} shipped, {report['kept']} kept, {report['failed']} failed.",
        "",
        "| site | running | challenger | old MAE | new MAE | windows | decision | reason | rollout |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["sites"]:
        reason = s["reason"].replace("|", "/")
        lines.append(
            f"| {s['site']} | {s['champion'] or '-'} | {s['challenger'] or '-'} | {_number(s['old_mae'])} | "
            f"{_number(s['new_mae'])} | {s['windows']} | {s['decision']} | {reason} | {s['rollout'] or '-'} |"
        )
    for s in report["not_selected"]:
        lines.append(f"| {s['site']} | | | | | | not selected | {s['reason']} | |")
    return "\n".join(lines) + "\n"


def plot_errors(outcomes: list[SiteOutcome], path: Path) -> Path:
    """A PNG: old vs new MAE per retrained site, winners marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [o.site for o in outcomes]
    x = np.arange(len(sites))
    old = [np.nan if o.old_mae is None else o.old_mae for o in outcomes]
    new = [np.nan if o.new_mae is None else o.new_mae for o in outcomes]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(sites)), 3.4))
    ax.bar(x - 0.2, old, 0.4, label="running model (champion)", color="#999999")
    ax.bar(x + 0.2, new, 0.4, label="retrained (challenger)", color="#2a7ab0")
    for i, o in enumerate(outcomes):
        ax.text(i, 0, {"ship": "ship", "keep": "keep", "failed": "failed"}[o.decision], ha="center", va="bottom",
                fontsize=8, color="white" if o.decision != "failed" else "red")  # fmt: skip
    ax.set_xticks(x, sites, rotation=30, ha="right")
    ax.set_ylabel("MAE on recent test windows")
    ax.set_title("champion vs challenger per site (same windows, device runtime)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(
    out_dir: Path, outcomes: list[SiteOutcome], skipped: dict[str, str], extra: dict[str, Any]
) -> dict[str, Path]:
    """retrain_report.{json,md,png} and deploy.json in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "shipped": sum(o.decision == "ship" for o in outcomes),
        "kept": sum(o.decision == "keep" for o in outcomes),
        "failed": sum(o.decision == "failed" for o in outcomes),
    }
    report = outcomes_json(outcomes, skipped, {**extra, **summary})
    paths = {
        "json": out_dir / "retrain_report.json",
        "markdown": out_dir / "retrain_report.md",
        "deploy": out_dir / "deploy.json",
    }
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["markdown"].write_text(report_markdown(report))
    paths["deploy"].write_text(json.dumps(deploy_manifest(outcomes), indent=2) + "\n")
    if outcomes:
        paths["plot"] = plot_errors(outcomes, out_dir / "retrain_errors.png")
    return paths
