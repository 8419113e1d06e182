"""Local users and their access tokens (the client API's accounts).

Owns: `AccountTable`: creating local users, issuing and revoking access tokens, and finding
the user of a token. Tokens are stored as their SHA-256 only, so a copy of the database does
not hand out working tokens. Must not: generate tokens (the caller passes a random one) or
decide who may log in.

Design: DESIGN.md section 10 (client API with an access token) and 9.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from s2s_node.core.canonical import JsonDict, encode_canonical_json, parse_json_object
from s2s_node.store.database import Database


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenOwner:
    """Who an access token belongs to."""

    user_id: str
    device_id: str


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class AccountTable:
    """Local users and access tokens."""

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db = db

    def create_user(self, user_id: str, now_ms: int, profile: JsonDict | None = None) -> bool:
        """Create a user; False (nothing changed) if it exists already."""
        data = encode_canonical_json(profile or {})
        with self._db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO users (user_id, created_ms, profile) VALUES (?, ?, ?)",
                (user_id, now_ms, data),
            )
        return cur.rowcount > 0

    def get_profile(self, user_id: str) -> JsonDict | None:
        """The user's profile object, or None if there is no such user."""
        row = self._db.fetch_one("SELECT profile FROM users WHERE user_id = ?", (user_id,))
        return None if row is None else parse_json_object(bytes(row[0]))

    def set_profile(self, user_id: str, profile: JsonDict) -> None:
        data = encode_canonical_json(profile)
        with self._db.transaction() as conn:
            cur = conn.execute("UPDATE users SET profile = ? WHERE user_id = ?", (data, user_id))
            if cur.rowcount == 0:
                raise KeyError(user_id)

    def users(self) -> list[str]:
        return [str(u) for (u,) in self._db.fetch_all("SELECT user_id FROM users ORDER BY 1")]

    def add_token(self, token: str, user_id: str, device_id: str, now_ms: int) -> None:
        """Issue `token` for a local user; `KeyError` if the user does not exist."""
        with self._db.transaction() as conn:
            if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
                raise KeyError(user_id)
            conn.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ms)"
                " VALUES (?, ?, ?, ?)",
                (_token_hash(token), user_id, device_id, now_ms),
            )

    def owner_of(self, token: str) -> TokenOwner | None:
        """The user and device of a token, or None for an unknown or revoked one."""
        row = self._db.fetch_one(
            "SELECT user_id, device_id FROM access_tokens WHERE token_hash = ?",
            (_token_hash(token),),
        )
        return None if row is None else TokenOwner(user_id=str(row[0]), device_id=str(row[1]))

    def revoke_token(self, token: str) -> bool:
        with self._db.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM access_tokens WHERE token_hash = ?", (_token_hash(token),)
            )
        return cur.rowcount > 0
