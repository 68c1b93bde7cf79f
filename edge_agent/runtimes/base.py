"""The small protocol every on-device runtime implements, and helpers they share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from edge_agent.arrays import FloatArray
from edge_agent.bundle import Precision
from edge_agent.errors import ModelLoadError
from edge_agent.runtimes.targets import PRECISION_PREFERENCE
from edge_agent.yamlconfig import StrictModel


class RuntimeSettings(StrictModel, frozen=True):
    """What every runtime backend's config has: which precision to run when a bundle offers several."""

    prefer_precision: tuple[Precision, ...] = Field(
        default=PRECISION_PREFERENCE, min_length=1, title="Preferred precisions"
    )
    """Artefact precisions in order of preference, e.g. [fp32, int8] where int8 measured slower; precisions left out are
    used only when nothing listed is in the bundle."""


@dataclass(frozen=True)
class RuntimeInfo:
    """What a loaded model reports about itself, e.g. for status messages and `agent doctor`."""

    name: str
    version: str
    artefact: str
    input_names: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]


@runtime_checkable
class ModelRuntime(Protocol):
    """A loaded model: float32 feeds by input name in, one float32 output out (normalised units)."""

    @property
    def info(self) -> RuntimeInfo: ...

    def run(self, feeds: Mapping[str, FloatArray]) -> FloatArray: ...


def check_feeds(
    feeds: Mapping[str, FloatArray], expected: Sequence[str], artefact: str
) -> dict[str, FloatArray]:
    """Return ``feeds`` restricted to ``expected`` names as float32, or say which input is missing."""
    missing = [name for name in expected if name not in feeds]
    if missing:
        raise ModelLoadError(
            f"{artefact}: model needs input(s) {list(expected)} but feeds give {sorted(feeds)}; "
            f"missing {missing} — does the bundle's feature spec match this model?"
        )
    return {name: np.ascontiguousarray(feeds[name], dtype=np.float32) for name in expected}


class AffineQuantiser:
    """Affine int quantisation of one tensor, real = scale * (q - zero_point), with reused buffers.

    A runtime calls this once per inference on tiny tensors, where numpy's per-call overhead dominates:
    in-place ufuncs on preallocated buffers keep it at a few microseconds (np.round/np.clip: ~30 µs).
    """

    def __init__(self, scale: float, zero_point: int, dtype: np.dtype) -> None:
        info = np.iinfo(dtype)
        self.dtype = np.dtype(dtype)
        # 0-d arrays: numpy broadcasts them with less per-call overhead than scalars.
        self.scale, self.zero_point = np.array(scale, np.float32), np.array(zero_point, np.float32)
        self._inverse = np.array(1.0 / scale, np.float32)
        self._low, self._high = np.array(info.min, np.float32), np.array(info.max, np.float32)
        self._buffers: dict[tuple[int, ...], tuple[FloatArray, NDArray[np.integer]]] = {}

    def _buffer(self, shape: tuple[int, ...]) -> tuple[FloatArray, NDArray[np.integer]]:
        if shape not in self._buffers:
            self._buffers[shape] = (np.empty(shape, np.float32), np.empty(shape, self.dtype))
        return self._buffers[shape]

    def quantise(self, values: FloatArray) -> NDArray[np.integer]:
        """Round to the nearest step and saturate to the integer type (returns a reused buffer)."""
        work, out = self._buffer(values.shape)
        np.multiply(values, self._inverse, out=work)
        np.add(work, self.zero_point, out=work)
        np.rint(work, out=work)
        np.maximum(work, self._low, out=work)
        np.minimum(work, self._high, out=work)
        out[...] = work
        return out

    def dequantise(self, values: NDArray[np.integer]) -> FloatArray:
        """Back to real values (a new array the caller may keep)."""
        result = np.subtract(values, self.zero_point, dtype=np.float32)
        np.multiply(result, self.scale, out=result)
        return result


def quantise(values: FloatArray, scale: float, zero_point: int, dtype: np.dtype) -> NDArray[np.integer]:
    """Affine quantisation real -> q = round(real / scale) + zero_point, saturated to ``dtype``."""
    return AffineQuantiser(scale, zero_point, dtype).quantise(np.asarray(values, dtype=np.float32)).copy()


def dequantise(values: NDArray[np.integer], scale: float, zero_point: int) -> FloatArray:
    """Inverse of :func:`quantise`: real = scale * (q - zero_point)."""
    return AffineQuantiser(scale, zero_point, np.dtype(values.dtype)).dequantise(values)
