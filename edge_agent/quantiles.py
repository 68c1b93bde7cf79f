"""Model outputs into forecasts in units: the point forecast and, for quantile models, every level.

Every output goes through the feature pipeline's ``decode`` (the point forecast and each quantile alike),
so whatever that decode does to a forecast (denormalising, physical bounds) it does to each level too.
A quantile model's output holds one channel per target and level (see :class:`OutputSpec`); the bundle's
recalibration scales each level's distance from the median, and the levels are sorted per step so they
never cross, whatever the artefact's rounding did. The baseline that stands in for a failed quantile
model forecasts the targets only: it decodes to a point forecast without quantiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edge_agent.arrays import FloatArray
from edge_agent.bundle import OutputSpec
from edge_agent.errors import FeatureError
from edge_agent.features import FeaturePipeline


@dataclass(frozen=True)
class DecodedForecast:
    """A forecast in units: ``point`` ``(..., horizon, targets)``; ``quantiles`` ``(..., levels, horizon,
    targets)``, non-decreasing along the levels, or None (a point model, or the baseline standing in)."""

    point: FloatArray
    levels: tuple[float, ...]
    quantiles: FloatArray | None


def split_levels(outputs: NDArray[np.floating], output: OutputSpec) -> FloatArray:
    """A quantile model's output ``(..., horizon, targets * levels)`` as ``(..., horizon, targets, levels)``."""
    array = np.asarray(outputs, dtype=np.float32)
    if array.shape[-1] != output.output_channels:
        raise FeatureError(
            f"model output has {array.shape[-1]} channels; the bundle's output spec needs {output.output_channels} "
            f"({len(output.target_channels)} target(s) x {len(output.quantiles)} quantile levels)"
        )
    return array.reshape(*array.shape[:-1], len(output.target_channels), len(output.quantiles))


def decode_forecast(
    outputs: NDArray[np.floating],
    output: OutputSpec,
    pipeline: FeaturePipeline,
    step_times: NDArray[np.integer] | None = None,
) -> DecodedForecast:
    """Decode normalised model outputs (point or quantile layout) into units, within ``output.bounds``.

    ``step_times`` (UTC seconds of the horizon's steps) are needed when a bound zeroes PV at night.
    """
    array = np.asarray(outputs, dtype=np.float32)
    if not output.quantiles or array.shape[-1] == len(output.target_channels):
        return DecodedForecast(pipeline.decode(array, step_times, output.bounds), (), None)
    levels = split_levels(array, output)
    middle = output.quantiles.index(0.5)
    median = levels[..., middle : middle + 1]
    if output.quantile_scales:
        levels = median + (levels - median) * np.asarray(output.quantile_scales, dtype=np.float32)
    levels = np.sort(levels, axis=-1)
    # The levels axis sits before the horizon: the step times broadcast over it.
    times = None if step_times is None else np.expand_dims(np.asarray(step_times), -2)
    quantiles = pipeline.decode(np.moveaxis(levels, -1, -3), times, output.bounds)
    return DecodedForecast(quantiles[..., middle, :, :], output.quantiles, quantiles)
