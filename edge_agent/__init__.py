"""gridedge's device side: sensors, feature pipeline, model bundles, on-device inference and reporting.

This package also owns the contracts that the central side imports (bundle format, feature pipeline,
MQTT payloads), so that training and serving cannot drift. It never imports tensorflow, keras or torch.
"""

__version__ = "0.1.0"
