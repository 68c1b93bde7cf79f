"""One way to read a YAML file into a pydantic model, one way to say what is wrong with it.

Every config gridedge reads (agent config, task config, device profile, site values, register map, sensor
list) goes through :func:`load_yaml_model`, so every bad file gets the same kind of message: the file, the
dotted field path (``features.past[0].column``), what is wrong, the value given and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from edge_agent.errors import ConfigError

M = TypeVar("M")


class StrictModel(BaseModel):
    """Base of every gridedge config and contract model: an unknown key is an error, never ignored.

    A typo such as ``cadance_s`` must stop the load instead of silently keeping the default. Models that
    must not change after loading add ``frozen=True`` as a class keyword.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def field_path(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as a reader writes it: ``features.past[0].column``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def validation_problems(exc: ValidationError) -> list[str]:
    """One ``field: problem (got value)`` line per error pydantic found."""
    problems = []
    for error in exc.errors():
        value = error.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
        problems.append(f"{field_path(error['loc'])}: {error['msg']}{shown}")
    return problems


def format_validation_error(exc: ValidationError, source: str, hint: str = "") -> str:
    """``source is invalid`` plus one line per problem; a single problem fits on one line."""
    problems = validation_problems(exc)
    tail = f"; {hint}" if hint else ""
    if len(problems) == 1:
        return f"{source} is invalid: {problems[0]}{tail}"
    listed = "\n".join(f"  - {problem}" for problem in problems)
    return f"{source} is invalid, {len(problems)} problems:\n{listed}" + (f"\n{hint}" if hint else "")


def read_yaml(path: Path, what: str = "config", missing_hint: str = "") -> Any:
    """Parse a YAML file, turning a missing, unreadable, binary or malformed file into a ConfigError.

    ``what`` names the kind of file in messages; ``missing_hint`` says where a missing one comes from.
    """
    path = Path(path)
    tail = f"; {missing_hint}" if missing_hint else ""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read {what} {path}: not found{tail}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}{tail}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not a text file (byte {data[exc.start]:#04x} at offset {exc.start} is not UTF-8); "
            "pass the YAML file"
        ) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} {path} is not valid YAML: {problem}{where}") from exc


def validate_data(data: Any, schema: type[M] | TypeAdapter[M], source: str, hint: str = "") -> M:
    """Validate already-parsed data against a model (or a TypeAdapter), with :func:`format_validation_error`."""
    adapter = schema if isinstance(schema, TypeAdapter) else TypeAdapter(schema)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, hint)) from exc


def read_yaml_mapping(path: Path, what: str = "config", missing_hint: str = "") -> dict[str, Any]:
    """:func:`read_yaml` for files whose top level must be a mapping of settings."""
    data = read_yaml(path, what, missing_hint)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path} must be a YAML mapping of settings at the top level, not {type(data).__name__}"
        )
    return data


def load_yaml_model(
    path: Path, model: type[M], what: str = "config", hint: str = "", missing_hint: str = ""
) -> M:
    """Read ``path`` and validate it as ``model``; every failure is a ConfigError naming file and field.

    ``hint`` (what to do about invalid fields) ends validation messages; ``missing_hint`` a missing file's.
    """
    return validate_data(read_yaml_mapping(path, what, missing_hint), model, f"{what} {path}", hint)
