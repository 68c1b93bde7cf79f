"""gridedge's exception hierarchy for the device side.

    GridedgeError                 every error gridedge raises on purpose
    ├── ConfigError               a config file or value is wrong (names the field and the fix)
    ├── FeatureError              data cannot be turned into model input (names the channel/step)
    ├── BundleError               a model bundle cannot be trusted or read
    │   ├── BundleFormatError     unreadable archive/manifest, unknown format version
    │   ├── SignatureError        unsigned, wrong key, manifest edited after signing
    │   ├── IntegrityError        a file is missing or its sha256 differs from the manifest
    │   └── SelfTestError         the model does not reproduce the bundle's test vectors
    └── MissingExtraError         an optional dependency is not installed (names the extra)

Messages say what was wrong *and* what to do. Third-party errors are translated at the boundary with
``raise ... from exc`` so the original cause stays visible.
"""

from __future__ import annotations


class GridedgeError(Exception):
    """Base class of every error gridedge raises on purpose."""


class ConfigError(GridedgeError):
    """A configuration file or value is invalid."""


class FeatureError(GridedgeError):
    """Input data cannot be turned into model features."""


class BundleError(GridedgeError):
    """A model bundle cannot be read or trusted."""


class BundleFormatError(BundleError):
    """The bundle archive or manifest is unreadable or of an unknown format version."""


class SignatureError(BundleError):
    """The manifest signature is missing, made with another key, or does not match the manifest."""


class IntegrityError(BundleError):
    """A file listed in the manifest is missing or its content differs from its recorded hash."""


class SelfTestError(BundleError):
    """The model did not reproduce the bundle's test vectors on this device."""


class MissingExtraError(GridedgeError, ImportError):
    """An optional dependency is missing; the message names the extra that provides it."""


def missing_extra(module: str, extra: str) -> MissingExtraError:
    """Build the error for a missing optional dependency, naming the pip extra to install."""
    return MissingExtraError(
        f"the optional dependency {module!r} is not installed; install it with `pip install 'gridedge[{extra}]'`"
    )
