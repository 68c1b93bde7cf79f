"""Errors of the export step; each message names the problem and what to do about it.

    GridedgeError (edge_agent.errors)
    └── ExportError               a trained run cannot be turned into a trustworthy bundle
        ├── TrainingRunError      the training folder is missing, incomplete or inconsistent
        ├── CalibrationError      too few valid training windows to calibrate int8 quantisation
        ├── ConversionError       a converter failed or produced a file its runtime cannot load
        ├── CompatibilityError    an artefact does not load/run in a promised compatibility target
        └── ParityError           a quantised artefact degrades the test metric beyond the bound
"""

from __future__ import annotations

from edge_agent.errors import GridedgeError


class ExportError(GridedgeError):
    """A trained run cannot be turned into a trustworthy bundle."""


class TrainingRunError(ExportError):
    """The training folder is missing, incomplete or inconsistent with its model."""


class CalibrationError(ExportError):
    """Not enough valid training windows to calibrate int8 quantisation."""


class ConversionError(ExportError):
    """A converter failed, or produced a file its runtime cannot load."""


class CompatibilityError(ExportError):
    """An artefact does not load or run in a compatibility target it was meant for."""


class ParityError(ExportError):
    """A quantised artefact degrades the test metric by more than the configured bound."""
