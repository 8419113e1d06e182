"""Matrix identifiers: server names, user IDs, room IDs and event IDs.

Owns: parsing and validating identifiers from untrusted strings into `NewType`s, and the
server-user convention of MSC3348 (`@:<server>`, the empty localpart). Must not: know about keys
(see `keys` for node identifiers) or events.

Spec: appendices, "Identifier Grammar" (user IDs incl. historical ones, server names, room and
event IDs); room version 12 room IDs (MSC4291).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from typing import NewType

ServerName = NewType("ServerName", str)
UserId = NewType("UserId", str)
RoomId = NewType("RoomId", str)
EventId = NewType("EventId", str)

# Every identifier (sigil and domain included) is at most 255 bytes.
MAX_ID_BYTES = 255

_DNS_NAME = re.compile(r"[A-Za-z0-9.\-]{1,255}")
# ASCII digits only: `\d` would also match other scripts' digits.
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_PORT = re.compile(r"[0-9]{1,5}")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_COMPLIANT_LOCALPART = re.compile(r"[a-z0-9._=\-/+]+")
# v4+ event IDs and v12 room IDs: a sigil and 43 characters of URL-safe unpadded base64.
_HASH_ID = re.compile(r"[A-Za-z0-9_\-]{43}")


class IdReason(enum.Enum):
    """Why a string is not a valid identifier of the expected kind."""

    NOT_A_STRING = "not_a_string"
    TOO_LONG = "too_long"
    BAD_SIGIL = "bad_sigil"
    NO_SERVER = "no_server"
    BAD_SERVER_NAME = "bad_server_name"
    BAD_LOCALPART = "bad_localpart"
    BAD_HASH = "bad_hash"


class IdError(ValueError):
    """A string is not a valid identifier of the expected kind."""

    def __init__(self, reason: IdReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def _check_length(value: str, what: str) -> None:
    # surrogatepass: lone surrogates are rejected by the grammar checks, not here.
    if len(value) > MAX_ID_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise IdError(IdReason.TOO_LONG, f"{what} is longer than {MAX_ID_BYTES} bytes")


# Server names repeat in every user and room ID of a room: remember the verdicts on a bounded
# number of them (a pure function; the bound keeps hostile input from growing the cache).
_SERVER_NAME_CACHE_SIZE = 4096


def is_valid_server_name(value: str) -> bool:
    """True if `value` matches the spec's `server_name` grammar."""
    return isinstance(value, str) and _is_valid_server_name(value)


@functools.lru_cache(maxsize=_SERVER_NAME_CACHE_SIZE)
def _is_valid_server_name(value: str) -> bool:
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return False
        host, rest = value[: end + 1], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return False
            port = rest[1:]
        inner = host[1:-1]
        if not _IPV6_CHARS.fullmatch(inner):
            return False
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return False
    else:
        if ":" in value:
            host, port = value.rsplit(":", 1)
        if _IPV4.fullmatch(host):
            if any(int(octet) > 255 for octet in host.split(".")):
                return False
        elif not _DNS_NAME.fullmatch(host):
            return False
    return port is None or (_PORT.fullmatch(port) is not None and int(port) <= 65535)


def _has_forbidden_char(localpart: str) -> bool:
    """NUL or a surrogate: not allowed in any (historical) localpart."""
    return "\x00" in localpart or (
        not localpart.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in localpart)
    )


def parse_server_name(value: object) -> ServerName:
    """Validate a server name (`host[:port]`)."""
    if not isinstance(value, str):
        raise IdError(IdReason.NOT_A_STRING, "server name is not a string")
    _check_length(value, "server name")
    if not is_valid_server_name(value):
        raise IdError(IdReason.BAD_SERVER_NAME, f"{value!r} is not a valid server name")
    return ServerName(value)


def parse_user_id(value: object, *, historical: bool = True) -> UserId:
    """Validate a user ID.

    `historical=True` (the default, for IDs inside events) accepts any localpart without `:`
    or NUL, including the empty one: servers must accept those in events, and the empty
    localpart is the server user of MSC3348. `historical=False` applies the rules for new users.
    """
    if not isinstance(value, str):
        raise IdError(IdReason.NOT_A_STRING, "user ID is not a string")
    _check_user_id(value, historical)
    return UserId(value)


# Verdicts on valid IDs are remembered (`lru_cache` keeps no exceptions): the same senders and
# room IDs come back in every event of a room. Bounded, so hostile input cannot grow it.
_ID_CACHE_SIZE = 16384


@functools.lru_cache(maxsize=_ID_CACHE_SIZE)
def _check_user_id(value: str, historical: bool) -> None:
    _check_length(value, "user ID")
    if not value.startswith("@"):
        raise IdError(IdReason.BAD_SIGIL, f"{value!r} does not start with '@'")
    localpart, sep, server = value[1:].partition(":")
    if not sep:
        raise IdError(IdReason.NO_SERVER, f"{value!r} has no server name")
    if not is_valid_server_name(server):
        raise IdError(IdReason.BAD_SERVER_NAME, f"{value!r} has an invalid server name")
    if historical:
        if _has_forbidden_char(localpart):
            raise IdError(IdReason.BAD_LOCALPART, f"{value!r} has a forbidden character")
    elif not _COMPLIANT_LOCALPART.fullmatch(localpart):
        raise IdError(IdReason.BAD_LOCALPART, f"{value!r} is not a valid new user ID")


def parse_room_id(value: object) -> RoomId:
    """Validate a room ID: `!opaque:server` (v1-v11) or `!` + 43 URL-safe base64 chars (v12)."""
    if not isinstance(value, str):
        raise IdError(IdReason.NOT_A_STRING, "room ID is not a string")
    _check_room_id(value)
    return RoomId(value)


@functools.lru_cache(maxsize=_ID_CACHE_SIZE)
def _check_room_id(value: str) -> None:
    _check_length(value, "room ID")
    if not value.startswith("!"):
        raise IdError(IdReason.BAD_SIGIL, f"{value!r} does not start with '!'")
    localpart, sep, server = value[1:].partition(":")
    if sep:
        if _has_forbidden_char(localpart):
            raise IdError(IdReason.BAD_LOCALPART, f"{value!r} has a forbidden character")
        if not is_valid_server_name(server):
            raise IdError(IdReason.BAD_SERVER_NAME, f"{value!r} has an invalid server name")
    elif not _HASH_ID.fullmatch(localpart):
        raise IdError(IdReason.BAD_HASH, f"{value!r} is neither !id:server nor a v12 room ID")


def parse_event_id(value: object) -> EventId:
    """Validate a room-version-4+ event ID: `$` + 43 URL-safe base64 characters."""
    if not isinstance(value, str):
        raise IdError(IdReason.NOT_A_STRING, "event ID is not a string")
    if not value.startswith("$"):
        raise IdError(IdReason.BAD_SIGIL, f"{value[:60]!r} does not start with '$'")
    if not _HASH_ID.fullmatch(value[1:]):
        raise IdError(IdReason.BAD_HASH, f"{value[:60]!r} is not a reference-hash event ID")
    return EventId(value)


def is_event_id(value: object) -> bool:
    """True if `value` is a v4+ event ID."""
    return (
        isinstance(value, str)
        and len(value) == 44
        and value[0] == "$"
        and _HASH_ID.fullmatch(value, 1) is not None
    )


def server_of(user_id: str) -> ServerName:
    """The server part of a (valid) user ID or v1-v11 room ID: everything after the first ':'."""
    return ServerName(user_id.split(":", 1)[1]) if ":" in user_id else ServerName("")


def localpart_of(user_id: str) -> str:
    """The localpart of a (valid) user ID."""
    return user_id[1:].split(":", 1)[0]


def server_user(server: str) -> UserId:
    """The server user of MSC3348: `@:<server>`."""
    return UserId(f"@:{server}")


def is_server_user(user_id: str) -> bool:
    """True for a user ID with an empty localpart (`@:<server>`), the MSC3348 server user."""
    return user_id.startswith("@:")


def room_id_from_create_event_id(event_id: str) -> RoomId:
    """v12: the room ID is the create event's ID with `!` in place of `$`."""
    return RoomId("!" + event_id[1:])


def create_event_id_from_room_id(room_id: str) -> EventId:
    """v12: the create event's ID, from a hash-form room ID."""
    return EventId("$" + room_id[1:])
