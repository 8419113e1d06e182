"""Node identity: ed25519 keys and the self-certifying node identifier.

Owns: making a signing key from a 32-byte seed, and the bijection between a verify key and the
node identifier (the lowercase unpadded RFC 4648 base32 of the 32-byte verify key, 52 characters
of `[a-z2-7]`). Must not: generate randomness or read files (the shell passes the seed in).

Design: DESIGN.md section 3. The identifier is the Matrix `server_name`; its key ID is
`ed25519:1`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from s2s_node.core.canonical import encode_base64
from s2s_node.core.ids import ServerName

KEY_ID = "ed25519:1"
SEED_BYTES = 32
IDENTIFIER_LENGTH = 52  # ceil(256 / 5)
_IDENTIFIER = re.compile(r"[a-z2-7]{52}")


class IdentityError(ValueError):
    """A seed, key or identifier is malformed."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An ed25519 signing key with the key ID it is published under."""

    seed: bytes
    key_id: str
    nacl_key: nacl.signing.SigningKey

    @property
    def verify_key(self) -> nacl.signing.VerifyKey:
        return self.nacl_key.verify_key

    @property
    def verify_key_bytes(self) -> bytes:
        return bytes(self.nacl_key.verify_key)

    @property
    def identifier(self) -> ServerName:
        """The node identifier this key certifies."""
        return identifier_from_verify_key(self.verify_key_bytes)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of `message`."""
        return self.nacl_key.sign(message).signature

    def __repr__(self) -> str:  # never print the seed
        verify_key = encode_base64(self.verify_key_bytes)
        return f"SigningKey(key_id={self.key_id!r}, verify_key={verify_key!r})"


def signing_key_from_seed(seed: bytes, key_id: str = KEY_ID) -> SigningKey:
    """Build the ed25519 signing key for a 32-byte seed."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise IdentityError(f"an ed25519 seed is {SEED_BYTES} bytes")
    return SigningKey(seed=seed, key_id=key_id, nacl_key=nacl.signing.SigningKey(seed))


def identifier_from_verify_key(verify_key: bytes) -> ServerName:
    """The node identifier of a 32-byte ed25519 verify key."""
    if len(verify_key) != 32:
        raise IdentityError("an ed25519 verify key is 32 bytes")
    return ServerName(base64.b32encode(verify_key).decode("ascii").rstrip("=").lower())


def is_identifier(value: str) -> bool:
    """True if `value` is the canonical identifier of some ed25519 key."""
    try:
        verify_key_bytes_from_identifier(value)
    except IdentityError:
        return False
    return True


def verify_key_bytes_from_identifier(identifier: str) -> bytes:
    """The 32-byte verify key an identifier encodes; `IdentityError` if it is not one."""
    if not _IDENTIFIER.fullmatch(identifier):
        raise IdentityError(f"{identifier[:60]!r} is not a 52-character base32 node identifier")
    try:
        raw = base64.b32decode(identifier.upper() + "====")
    except binascii.Error:
        raise IdentityError(f"{identifier!r} is not base32") from None
    if identifier_from_verify_key(raw) != identifier:
        raise IdentityError(f"{identifier!r} is not the canonical encoding of its key")
    return raw


def verify_key_from_identifier(identifier: str) -> nacl.signing.VerifyKey:
    """The ed25519 verify key of a node identifier."""
    return nacl.signing.VerifyKey(verify_key_bytes_from_identifier(identifier))


def verify_key_from_bytes(raw: bytes) -> nacl.signing.VerifyKey:
    """A verify key from 32 raw bytes (e.g. decoded from a key document)."""
    if len(raw) != 32:
        raise IdentityError("an ed25519 verify key is 32 bytes")
    try:
        return nacl.signing.VerifyKey(raw)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise IdentityError("not an ed25519 verify key") from None
