"""A measured quantity's physically plausible range, written once for every config that carries one.

A channel spec, a replayed column, a Modbus register and the trainer's channel and column rules all say
"values below ``min_value`` or above ``max_value`` cannot be real". They share this model so that the
fields, their documentation, the "minimum above maximum" check and the test of a value are the same
everywhere: the device flags what the trainer treats as missing.
"""

from __future__ import annotations

from typing import Self

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from edge_agent.yamlconfig import StrictModel


class PlausibleRange(StrictModel):
    """Base of models with an optional physical range; ``None`` leaves that side open."""

    min_value: float | None = Field(default=None, title="Minimum")
    """Lowest plausible value: flagged below it, missing in training."""
    max_value: float | None = Field(default=None, title="Maximum")
    """Highest plausible value: flagged above it, missing in training."""

    @model_validator(mode="after")
    def _range_ordered(self) -> Self:
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise ValueError(f"min_value {self.min_value:g} is above max_value {self.max_value:g}; swap them")
        return self

    def violation(self, value: float) -> str:
        """Why ``value`` cannot be real (``"below ..."``/``"above ..."``), or ``""`` when it is plausible."""
        if self.min_value is not None and value < self.min_value:
            return f"below the physical minimum {self.min_value:g}"
        if self.max_value is not None and value > self.max_value:
            return f"above the physical maximum {self.max_value:g}"
        return ""

    def outside(self, values: NDArray[np.floating]) -> NDArray[np.bool_]:
        """Mask of the values outside the range; NaN is not outside (it is missing already)."""
        mask = np.zeros(np.shape(values), dtype=bool)
        if self.min_value is not None:
            mask |= values < self.min_value
        if self.max_value is not None:
            mask |= values > self.max_value
        return mask
