"""The run folder: what ``gridedge train`` writes and ``gridedge export`` reads, as one typed model.

A run folder holds:

* ``task.yaml`` — the resolved task config (every default written out);
* ``feature_spec.json`` — the model inputs, with the normalisation statistics fitted on the training split;
* ``output_spec.json`` — what the output means (horizon, units, anomaly threshold);
* ``report.json`` — framework, seed, metrics next to the baselines, training history, data provenance;
* the model files of its framework (``model.keras``, or ``model.pt`` + ``model_config.json``);
* ``report.md`` and PNG plots for people (not read back).

:meth:`RunFolder.read` checks all of it at once and raises one :class:`ConfigError` that names every
missing or invalid file, so the trainer's API and the exporter cannot disagree on what a run is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.bundle import Lineage, OutputSpec
from edge_agent.errors import ConfigError
from edge_agent.features import FeatureSpec
from gridedge.trainer.backends import MODEL_FILES, Framework, backend
from gridedge.trainer.config import TaskConfig, TaskKind, dump_config

TASK_FILE = "task.yaml"
FEATURE_SPEC_FILE = "feature_spec.json"
OUTPUT_SPEC_FILE = "output_spec.json"
REPORT_FILE = "report.json"
REQUIRED_FILES = (TASK_FILE, FEATURE_SPEC_FILE, OUTPUT_SPEC_FILE, REPORT_FILE)


class RunReport(BaseModel):
    """``report.json``: the fields export relies on are typed; the rest (history, plots...) rides along."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    name: str
    task: TaskKind
    framework: Framework
    seed: int
    metrics: dict[str, Any]
    """Float model metrics by split (val, test, ...)."""
    baselines: dict[str, Any]
    """Baseline metrics by baseline name, then split."""
    data: dict[str, Any]
    """Data provenance: the source and its sha256 fingerprint."""
    library_versions: dict[str, str]
    lineage: Lineage | None = Field(default=None)
    """Data, config hash and code version (newer runs)."""

    @property
    def data_fingerprint(self) -> str:
        return str(self.data.get("fingerprint_sha256", ""))


class RunFolder(BaseModel):
    """A training run on disk: its config, specs (with normalisation statistics), report and framework."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    path: Path
    config: TaskConfig
    spec: FeatureSpec
    output: OutputSpec
    report: RunReport

    @field_validator("spec")
    @classmethod
    def _normalised(cls, spec: FeatureSpec) -> FeatureSpec:
        if spec.normalisation is None:
            raise ValueError("has no normalisation statistics; the model cannot be served without them")
        return spec

    @property
    def framework(self) -> Framework:
        return self.report.framework

    @property
    def model_files(self) -> tuple[str, ...]:
        return MODEL_FILES[self.framework]

    def write(self) -> Path:
        """Write the config, specs and report into :attr:`path` (the backend saves the model beside them)."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / TASK_FILE).write_text(dump_config(self.config))
        (self.path / FEATURE_SPEC_FILE).write_text(self.spec.model_dump_json(indent=2) + "\n")
        (self.path / OUTPUT_SPEC_FILE).write_text(self.output.model_dump_json(indent=2) + "\n")
        report = self.report.model_dump(mode="json")
        (self.path / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        return self.path

    def load_model(self) -> Any:
        """The trained model, rebuilt by its framework's backend (imports that framework only)."""
        return backend(self.framework).load(self.path)

    @classmethod
    def read(cls, path: str | Path) -> RunFolder:
        """Read and validate a run folder; one ConfigError names every missing or invalid file."""
        folder = Path(path)
        if not folder.is_dir():
            raise ConfigError(f"training folder {folder} does not exist; pass the folder `gridedge train` wrote")
        problems = [f"missing {name}" for name in REQUIRED_FILES if not (folder / name).is_file()]
        frameworks = [fw for fw, files in MODEL_FILES.items() if all((folder / f).is_file() for f in files)]
        if len(frameworks) != 1:
            present = sorted(p.name for p in folder.iterdir() if p.name.startswith("model"))
            problems.append(
                "it must hold exactly one model: " + " or ".join(" + ".join(f) for f in MODEL_FILES.values())
                + f" (found {present})"
            )
        if problems:
            raise ConfigError(
                f"{folder} is not a complete training run: {'; '.join(problems)} — re-run `gridedge train`"
            )
        fields = {
            "config": _parse(folder, TASK_FILE, lambda text: TaskConfig.model_validate(yaml.safe_load(text))),
            "spec": _parse(folder, FEATURE_SPEC_FILE, FeatureSpec.model_validate_json),
            "output": _parse(folder, OUTPUT_SPEC_FILE, OutputSpec.model_validate_json),
            "report": _parse(folder, REPORT_FILE, RunReport.model_validate_json),
        }
        if fields["report"].framework != frameworks[0]:
            raise ConfigError(
                f"{folder / REPORT_FILE} says framework {fields['report'].framework!r} but the folder holds a "
                f"{frameworks[0]} model; re-run `gridedge train`"
            )
        try:
            return cls(path=folder, **fields)
        except ValidationError as exc:
            raise ConfigError(f"{folder / FEATURE_SPEC_FILE} is invalid: {_first_error(exc)}") from exc


def _parse(folder: Path, name: str, parse: Any) -> Any:
    """Parse one file of the run folder; any failure becomes a ConfigError naming that file."""
    try:
        return parse((folder / name).read_text())
    except ValidationError as exc:
        raise ConfigError(f"{folder / name} is invalid: {_first_error(exc)}; re-run `gridedge train`") from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{folder / name} cannot be read: {exc}; re-run `gridedge train`") from exc


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(p) for p in item["loc"]) or "(top level)"
    return f"{where}: {item['msg']}" + (f" ({error.error_count() - 1} more)" if error.error_count() > 1 else "")
