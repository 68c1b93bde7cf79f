"""Ed25519 keys that sign model bundles and operator commands (central side) and verify them (device side).

Two kinds, two pairs: the *bundle-signing* key vouches for models, the *operator* key for commands that
change a device (model updates, rollback, config reload ...). Keeping them apart means the machine that
builds models cannot command devices, and a leaked operator key cannot install a model.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import ExistingFileError, SignatureError
from edge_agent.fsutil import atomic_write_bytes

PRIVATE_KEY_NAME = "bundle-signing.key"
PUBLIC_KEY_NAME = "bundle-signing.pub"
KEY_KINDS = {"bundle": "bundle-signing", "operator": "operator"}
OPERATOR_KEY_NAME = f"{KEY_KINDS['operator']}.pub"


def new_keypair(out_dir: Path, overwrite: bool = False, kind: str = "bundle") -> tuple[Path, Path]:
    """Create a signing key pair of ``kind`` (bundle or operator) as PEM files ``<stem>.key`` (0600,
    readable by its owner only) and ``<stem>.pub``."""
    if kind not in KEY_KINDS:
        raise ValueError(f"unknown key kind {kind!r}; use one of {', '.join(KEY_KINDS)}")
    out_dir = Path(out_dir)
    private_path, public_path = out_dir / f"{KEY_KINDS[kind]}.key", out_dir / f"{KEY_KINDS[kind]}.pub"
    if private_path.exists() and not overwrite:
        raise ExistingFileError(
            f"{private_path} already exists; refusing to replace a signing key (what was signed with it "
            "would stop verifying). Choose another --out folder or pass --force"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    atomic_write_bytes(public_path, public_pem, mode=0o644)
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key, saying what is wrong with the file if it is not one."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise SignatureError(f"private key file {path} not found; create one with `gridedge keys new`") from exc
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key, saying what is wrong with the file if it is not one."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError as exc:
        raise SignatureError(
            f"public key file {path} not found; copy the fleet's {PUBLIC_KEY_NAME} onto the device"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path} is not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key
