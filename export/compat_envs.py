"""Separate virtual environments that hold the exact old runtimes a compatibility target promises.

A compatibility target (``tflite-runtime-2.14``, ``ort-1.16``) is only worth its name when the artefact
was loaded and run in that exact runtime version. Those runtimes cannot share the central Python (they
need numpy<2), so each gets its own venv, built once and cached under ``$GRIDEDGE_COMPAT_VENVS``
(default ``gridedge/venvs`` in the user's cache folder, shared by every project). A small runner
script, executed by the venv's python, loads the artefact, runs the given inputs and prints the outputs
as JSON.

Current runtimes (``litert``, ``ort``) are checked in-process with the edge runtimes instead.

The PyTorch -> TFLite converter (litert-torch) gets a venv of its own the same way: its chain pins
typing-extensions<4.13 (xdsl), which forces an older pydantic, and pulls jax and transformers, none of
which gridedge's environment should carry (see :mod:`export.torch_tflite`).

Run ``python -m gridedge.export.compat_envs`` to build every venv ahead of the tests.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edge_agent.runtimes.targets import COMPATIBILITY_TARGETS, CompatibilityTarget
from gridedge.export.errors import CompatibilityError

VENVS_ENV_VAR = "GRIDEDGE_COMPAT_VENVS"
_MARKER = "gridedge-requirements.txt"


def runner_script(name: str) -> Path:
    """A script of this package that a venv's own python runs (wheels install unpacked: a real file)."""
    return Path(str(files("gridedge.export").joinpath(name)))


_RUNNER = runner_script("compat_runner.py")


# The old runtimes that need a venv of their own, as the one target table defines them.
COMPAT_ENVS: dict[str, CompatibilityTarget] = {
    name: target for name, target in COMPATIBILITY_TARGETS.items() if target.isolated
}


def venvs_root() -> Path:
    """Where compatibility venvs are cached: ``$GRIDEDGE_COMPAT_VENVS``, else ``$XDG_CACHE_HOME/gridedge/venvs``.

    A per-user cache rather than the current folder, because the litert-torch venv is about 2 GB and an
    installed gridedge is run from many folders.
    """
    configured = os.environ.get(VENVS_ENV_VAR)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "gridedge" / "venvs"


def _python_of(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


# PyTorch -> TFLite converter. torch must stay at the CPU build gridedge trains with (any other torch
# pulls multi-GB CUDA wheels, and the exported program is read by the same torch that wrote it); the
# conversion chain below it (PT2E quantiser, MLIR converter, jax lowerings) is pinned to the versions
# whose output was checked against LiteRT and tflite-runtime 2.14.
TORCH_TFLITE_ENV = "litert-torch"
TORCH_TFLITE_REQUIREMENTS = (
    "torch==2.13.0",
    "litert-torch==0.10.0",
    "litert-converter==0.5.0",
    "ai-edge-quantizer==0.10.0",
    "ai-edge-litert==2.3.0",
    "torchao==0.18.0",
    "jax==0.10.2",
    "jaxlib==0.10.2",
)


def _env_is_ready(env_dir: Path, requirements: tuple[str, ...]) -> bool:
    marker = env_dir / _MARKER
    wanted = "\n".join(requirements) + "\n"
    return marker.is_file() and marker.read_text() == wanted and _python_of(env_dir).exists()


def _build_venv(name: str, requirements: tuple[str, ...], root: Path) -> Path:
    """Build (or reuse) venv ``root/name`` holding exactly ``requirements``; returns its python.

    The venv is reused when its recorded requirements match; otherwise it is rebuilt in a temporary
    folder and renamed into place, so an interrupted build never leaves a half-installed venv behind.
    """
    env_dir = root / name
    if _env_is_ready(env_dir, requirements):
        return _python_of(env_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(staging)
        result = subprocess.run(
            [str(_python_of(staging)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *requirements],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise CompatibilityError(
                f"could not install {list(requirements)} into {name!r} (pip exit "
                f"{result.returncode}): {result.stderr.strip()[-800:]}"
            )
        (staging / _MARKER).write_text("\n".join(requirements) + "\n")
        if env_dir.exists():
            shutil.rmtree(env_dir)
        # Scripts in bin/ keep the staging path in their shebang; only bin/python (a symlink that finds
        # pyvenv.cfg beside it) is used, and it does not care where the folder lives.
        staging.rename(env_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return _python_of(env_dir)


def ensure_env(target: str, root: Path | None = None) -> Path:
    """Build (or reuse) the venv for ``target`` and return its python executable."""
    if target not in COMPAT_ENVS:
        raise CompatibilityError(
            f"no isolated environment is defined for target {target!r}; known: {sorted(COMPAT_ENVS)}"
        )
    return _build_venv(target, COMPAT_ENVS[target].requirements, root or venvs_root())


def ensure_torch_tflite_env(root: Path | None = None) -> Path:
    """Build (or reuse) the litert-torch converter venv (~2 GB, a few minutes) and return its python."""
    return _build_venv(TORCH_TFLITE_ENV, TORCH_TFLITE_REQUIREMENTS, root or venvs_root())


def torch_tflite_python(root: Path | None = None) -> Path | None:
    """The converter venv's python when it is built with the pinned requirements, else None."""
    env_dir = (root or venvs_root()) / TORCH_TFLITE_ENV
    return _python_of(env_dir) if _env_is_ready(env_dir, TORCH_TFLITE_REQUIREMENTS) else None


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
        "runtime": env.artefact_runtime,
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
    """Build every compatibility venv and the converter venv (used by .ci/run so the tests find them ready)."""
    builds: list[tuple[str, Callable[[], Path]]] = [(t, functools.partial(ensure_env, t)) for t in COMPAT_ENVS]
    builds.append((TORCH_TFLITE_ENV, ensure_torch_tflite_env))
    for name, build in builds:
        sys.stdout.write(f"{name}: building or reusing ...\n")
        sys.stdout.flush()
        started = time.perf_counter()
        python = build()
        sys.stdout.write(f"{name}: {python} ({time.perf_counter() - started:.0f} s)\n")


if __name__ == "__main__":
    main()
