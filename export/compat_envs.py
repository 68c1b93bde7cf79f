"""Separate virtual environments that hold the exact old runtimes a compatibility target promises.

A compatibility target (``tflite-runtime-2.14``, ``ort-1.16``) is only worth its name when the artefact
was loaded and run in that exact runtime version. Those runtimes cannot share the central Python (they
need numpy<2), so each gets its own venv, built once and cached under ``$GRIDEDGE_COMPAT_VENVS``
(default ``.venvs/`` in the repository). A small runner script, executed by the venv's python, loads the
artefact, runs the given inputs and prints the outputs as JSON.

Current runtimes (``litert``, ``ort``) are checked in-process with the edge runtimes instead.

Run ``python -m export.compat_envs`` to build every venv ahead of the tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from export.errors import CompatibilityError

REPO_ROOT = Path(__file__).resolve().parent.parent
VENVS_ENV_VAR = "GRIDEDGE_COMPAT_VENVS"
_MARKER = "gridedge-requirements.txt"
_RUNNER = Path(__file__).with_name("compat_runner.py")


@dataclass(frozen=True)
class CompatEnv:
    """An isolated runtime: the pip requirements that pin it and the runtime kind it serves."""

    target: str
    runtime: str
    requirements: tuple[str, ...]
    module: str


COMPAT_ENVS: dict[str, CompatEnv] = {
    "tflite-runtime-2.14": CompatEnv(
        target="tflite-runtime-2.14",
        runtime="tflite",
        requirements=("tflite-runtime==2.14.0", "numpy<2"),
        module="tflite_runtime",
    ),
    "ort-1.16": CompatEnv(
        target="ort-1.16",
        runtime="onnx",
        requirements=("onnxruntime==1.16.3", "numpy<2"),
        module="onnxruntime",
    ),
}


def venvs_root() -> Path:
    """Where compatibility venvs are cached (``$GRIDEDGE_COMPAT_VENVS`` or ``.venvs/`` in the repo)."""
    return Path(os.environ.get(VENVS_ENV_VAR) or REPO_ROOT / ".venvs")


def _python_of(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def ensure_env(target: str, root: Path | None = None) -> Path:
    """Build (or reuse) the venv for ``target`` and return its python executable.

    The venv is reused when its recorded requirements match; otherwise it is rebuilt in a temporary
    folder and renamed into place, so an interrupted build never leaves a half-installed venv behind.
    """
    if target not in COMPAT_ENVS:
        raise CompatibilityError(
            f"no isolated environment is defined for target {target!r}; known: {sorted(COMPAT_ENVS)}"
        )
    env = COMPAT_ENVS[target]
    root = root or venvs_root()
    env_dir = root / target
    wanted = "\n".join(env.requirements) + "\n"
    marker = env_dir / _MARKER
    if marker.is_file() and marker.read_text() == wanted and _python_of(env_dir).exists():
        return _python_of(env_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target}.", dir=root))
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(staging)
        result = subprocess.run(
            [str(_python_of(staging)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *env.requirements],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise CompatibilityError(
                f"could not install {list(env.requirements)} for target {target!r} (pip exit "
                f"{result.returncode}): {result.stderr.strip()[-800:]}"
            )
        (staging / _MARKER).write_text(wanted)
        if env_dir.exists():
            shutil.rmtree(env_dir)
        # Scripts in bin/ keep the staging path in their shebang; only bin/python (a symlink that finds
        # pyvenv.cfg beside it) is used, and it does not care where the folder lives.
        staging.rename(env_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return _python_of(env_dir)


def run_in_env(
    target: str, model_path: Path, feeds: list[dict[str, NDArray[np.float32]]], root: Path | None = None
) -> tuple[str, list[NDArray[np.float32]]]:
    """Run ``model_path`` on each feed dict inside ``target``'s venv; returns (runtime version, outputs).

    Inputs and outputs are float32 in normalised units; the runner quantises and dequantises int8
    tensors with the model's own parameters, as the device runtime does.
    """
    env = COMPAT_ENVS.get(target)
    if env is None:
        raise CompatibilityError(f"target {target!r} has no isolated environment; known: {sorted(COMPAT_ENVS)}")
    python = ensure_env(target, root)
    request = {
        "runtime": env.runtime,
        "model": str(Path(model_path).resolve()),
        "feeds": [{name: value.tolist() for name, value in feed.items()} for feed in feeds],
    }
    result = subprocess.run(
        [str(python), str(_RUNNER)], input=json.dumps(request), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise CompatibilityError(
            f"{Path(model_path).name} does not run in {target}: {result.stderr.strip()[-1500:]}"
        )
    answer = json.loads(result.stdout)
    return answer["version"], [np.asarray(out, dtype=np.float32) for out in answer["outputs"]]


def main() -> None:
    """Build every compatibility venv (used by .ci/run so the tests find them ready)."""
    for target in COMPAT_ENVS:
        python = ensure_env(target)
        sys.stdout.write(f"{target}: {python}\n")


if __name__ == "__main__":
    main()
