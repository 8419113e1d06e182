"""The data directory: where it is, and the node's key file.

Owns: resolving the data directory (`--data-dir`, then config, then `$XDG_DATA_HOME/s2s-node`,
then `~/.local/share/s2s-node`), creating it, and the signing key file `<data_dir>/signing.key`
(the raw 32-byte ed25519 seed, mode 0600, created once and never overwritten).

Design: DESIGN.md sections 3 and 11.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from s2s_node.core.keys import SEED_BYTES, SigningKey, signing_key_from_seed

KEY_FILE = "signing.key"
APP_DIR = "s2s-node"


class DataDirError(Exception):
    """The data directory or a file in it cannot be used; the message names the path."""


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/s2s-node`, else `~/.local/share/s2s-node`."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / APP_DIR


def resolve_data_dir(explicit: str | os.PathLike[str] | None) -> Path:
    """The data directory to use: the explicit one (expanded) or the default."""
    if explicit is None or str(explicit) == "":
        return default_data_dir()
    return Path(explicit).expanduser()


def ensure_data_dir(path: Path) -> None:
    """Create the data directory (mode 0700) if it does not exist."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise DataDirError(f"cannot create data directory {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise DataDirError(f"{path} is not a directory")


def load_signing_key(path: Path) -> SigningKey:
    """Read the key file of a data directory."""
    key_path = path / KEY_FILE
    try:
        seed = key_path.read_bytes()
    except FileNotFoundError:
        raise DataDirError(
            f"no key at {key_path}: run `s2s-node init --data-dir {path}` first"
        ) from None
    except OSError as exc:
        raise DataDirError(f"cannot read {key_path}: {exc.strerror}") from None
    if len(seed) != SEED_BYTES:
        raise DataDirError(
            f"{key_path} is {len(seed)} bytes, not a {SEED_BYTES}-byte ed25519 seed;"
            " refusing to use or replace it"
        )
    return signing_key_from_seed(seed)


def create_signing_key(path: Path) -> tuple[SigningKey, bool]:
    """Load the key of `path`, creating it first if there is none.

    Returns the key and whether it was created now. An existing key is never overwritten: the
    file is created with O_EXCL and written in full before it is renamed into place, so a crash
    never leaves a truncated key behind.
    """
    ensure_data_dir(path)
    key_path = path / KEY_FILE
    if key_path.exists():
        return load_signing_key(path), False
    seed = os.urandom(SEED_BYTES)
    tmp_path = path / f".{KEY_FILE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, seed)
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if a key appeared meanwhile (another `init`): never overwrite it.
        os.link(tmp_path, key_path)
    except FileExistsError:
        return load_signing_key(path), False
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise DataDirError(f"cannot write {key_path}: {exc.strerror}") from None
        raise DataDirError(f"cannot create {key_path}: {exc.strerror}") from None
    finally:
        tmp_path.unlink(missing_ok=True)
    _fsync_dir(path)
    return signing_key_from_seed(seed), True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
