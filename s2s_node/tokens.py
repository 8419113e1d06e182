"""Access tokens of the client API: the server user's token file and new local users' tokens.

Owns: `<data_dir>/access_token` (the server user's bare token, mode 0600, created once by
`s2s-node init` or the first `run`, never overwritten), making random tokens and device IDs,
validating the localpart of a new local user, and the store steps that register a user and a
token (`store.accounts` keeps only the tokens' SHA-256). Must not: answer HTTP requests
(net.client_api does) or decide who may create tokens.

"Local users other than the server user exist only by token creation" (issue 9): a user is
created the first time a token is made for it.

Design: DESIGN.md sections 3 (server user, local users), 10 and 11 (`access_token`).
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from s2s_node.core.ids import IdError, IdReason, UserId, parse_user_id, server_user
from s2s_node.datadir import DataDirError, ensure_data_dir, load_signing_key

if TYPE_CHECKING:  # the store (sqlite3) is loaded only when used: `s2s-node init` stays light
    from s2s_node.store import Store

TOKEN_FILE = "access_token"
# 32 random bytes: as hard to guess as the signing key.
TOKEN_BYTES = 32
TOKEN_PREFIX = "s2s_"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedToken:
    """A token just issued (the only time the bare token is known to the node)."""

    user_id: UserId
    device_id: str
    access_token: str


def build_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def build_device_id() -> str:
    return "S2S" + secrets.token_hex(5).upper()


def parse_localpart(localpart: object, server: str) -> UserId:
    """The user ID of a new local user: the localpart must follow the grammar for new users
    (not the historical one), so `""` (the server user) is not a new user. `IdError` if not."""
    if not isinstance(localpart, str):
        raise IdError(IdReason.NOT_A_STRING, "the localpart is not a string")
    return parse_user_id(f"@{localpart}:{server}", historical=False)


def issue_token(store: Store, user_id: str, now_ms: int, token: str | None = None) -> IssuedToken:
    """Create `user_id` if new and register a token for it (a given one, or a new one)."""
    bare = token or build_token()
    device_id = build_device_id()
    with store.transaction():
        store.accounts.create_user(user_id, now_ms)
        store.accounts.add_token(bare, user_id, device_id, now_ms)
    return IssuedToken(user_id=UserId(user_id), device_id=device_id, access_token=bare)


def read_token_file(data_dir: Path) -> str | None:
    """The server user's token from `<data_dir>/access_token`, or None if there is no file."""
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataDirError(f"cannot read {path}: {exc.strerror}") from None
    if not token:
        raise DataDirError(f"{path} is empty; remove it to have a new token made")
    return token


def write_token_file(data_dir: Path, token: str) -> bool:
    """Write the token file (0600) unless one exists; True if this call wrote it.

    Same pattern as the key file: a temporary file written in full, then linked into place,
    so an existing file is never overwritten and a crash never leaves a truncated token.
    """
    path = data_dir / TOKEN_FILE
    tmp = data_dir / f".{TOKEN_FILE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (token + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise DataDirError(f"cannot write {path}: {exc.strerror}") from None
        raise DataDirError(f"cannot create {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return True


def ensure_server_token(store: Store, data_dir: Path, server: str, now_ms: int) -> str:
    """The server user's token: the file's (registered in the store if the store lacks it,
    e.g. a new database), or a new one written to the file. Runs in the store's writer."""
    user = server_user(server)
    token = read_token_file(data_dir)
    if token is None:
        token = build_token()
        if not write_token_file(data_dir, token):  # another process wrote one meanwhile
            token = read_token_file(data_dir)
            assert token is not None
    owner = store.accounts.owner_of(token)
    if owner is None:
        issue_token(store, user, now_ms, token)
    elif owner.user_id != user:
        raise DataDirError(
            f"{data_dir / TOKEN_FILE} holds a token of {owner.user_id}, not of the server user"
        )
    return token


def init_access_token(data_dir: Path, now_ms: int | None = None) -> bool:
    """`s2s-node init`: the database and the server user's token. True if the token file was
    made now. With a token file present nothing is opened (a running node holds the store)."""
    ensure_data_dir(data_dir)
    if read_token_file(data_dir) is not None:
        return False
    from s2s_node.store import Store, StoreError  # noqa: PLC0415

    key = load_signing_key(data_dir)
    try:
        store = Store.open(data_dir)
    except StoreError as exc:
        raise DataDirError(f"cannot create {data_dir / TOKEN_FILE}: {exc}") from None
    try:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        ensure_server_token(store, data_dir, key.identifier, now)
    finally:
        store.close()
    return True


__all__ = [
    "TOKEN_FILE",
    "IssuedToken",
    "build_token",
    "ensure_server_token",
    "init_access_token",
    "issue_token",
    "parse_localpart",
    "read_token_file",
    "write_token_file",
]
