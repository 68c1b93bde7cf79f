"""gridedge's one exception hierarchy, shared by the device and the central side.

    GridedgeError                 every error gridedge raises on purpose (the CLI exits 2 with its message)
    ├── ConfigError               a config file or value is wrong (names the file, the field and the fix)
    │   └── DataError             the data file a config names cannot be read or used (names the field, the count)
    ├── FeatureError              data cannot be turned into model input (names the channel/step)
    ├── BundleError               a model bundle cannot be trusted or read
    │   ├── BundleFormatError     unreadable archive/manifest, unknown format version
    │   ├── SignatureError        unsigned, wrong key, manifest edited after signing, unreadable key file
    │   ├── IntegrityError        a file is missing or its sha256 differs from the manifest
    │   └── SelfTestError         the model does not reproduce the bundle's test vectors
    ├── ModelLoadError            a runtime cannot load a model file or find its inputs
    ├── OutboxError               the outbox cannot store a message
    ├── ExistingFileError         an output exists and replacing it would lose something (keys)
    ├── ServiceError              a process gridedge starts (broker, simulated site, a demo step) failed
    ├── FleetError                the fleet store cannot be opened, or a receiver cannot reach its broker
    ├── MissingExtraError         an optional dependency is not installed (names the extra)
    └── ExportError               (gridedge.export.errors) a trained run cannot become a trusted bundle
        ├── TrainingRunError, CalibrationError, ConversionError, CompatibilityError, ParityError

Messages say what was wrong *and* what to do. Third-party errors are translated at the boundary with
``raise ... from exc`` so the original cause stays visible.

Every ``gridedge`` command exits with one of these codes (``gridedge --help`` shows them too):
0 done; 1 a check ran and failed (``agent doctor``, ``sensors read``); 2 refused: bad input, a usage
error or any GridedgeError, with one ``error:`` line naming the file/field; 3 an internal error (a bug:
the traceback is printed); 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERNAL_ERROR = 3


class GridedgeError(Exception):
    """Base class of every error gridedge raises on purpose."""


class ConfigError(GridedgeError):
    """A configuration file or value is invalid."""


class DataError(ConfigError):
    """The data a task config names cannot be read, or leaves no usable sample (says why, with counts)."""


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


class ModelLoadError(GridedgeError):
    """A runtime cannot load a model file, or its inputs do not match the bundle's feature spec."""


class OutboxError(GridedgeError):
    """The outbox cannot store a message (for example one larger than the whole byte cap)."""


class ExistingFileError(GridedgeError):
    """An output file exists and replacing it would lose something (e.g. a signing key)."""


class ServiceError(GridedgeError):
    """A process gridedge starts or drives (broker, simulated site, a demo step) did not come up or failed."""


class FleetError(GridedgeError):
    """The fleet store cannot be opened, or the file given is not a fleet store."""


class MissingExtraError(GridedgeError, ImportError):
    """An optional dependency is missing; the message names the extra that provides it."""


def missing_extra(module: str, extra: str) -> MissingExtraError:
    """Build the error for a missing optional dependency, naming the pip extra to install."""
    return MissingExtraError(
        f"the optional dependency {module!r} is not installed; install it with `pip install 'gridedge[{extra}]'`"
    )
