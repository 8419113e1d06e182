"""Reading event files for the `debug` commands: JSON or gzip JSON, strictly decoded.

Owns: the input formats of `s2s-node debug check|resolve|replay` — a bare list of PDUs, or an
object `{"room_version", "events", "signing_keys"?, "state_sets"?}`; benchmark rooms
(`perf-dag/1`, with `servers`) are read as the same object. Must not: print (the CLI does).
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s2s_node.core.canonical import (
    Base64Error,
    CanonicalJsonError,
    JsonDict,
    decode_base64,
    parse_json,
)
from s2s_node.core.rules import (
    RoomVersionRules,
    UnsupportedRoomVersionError,
    rules_for,
)

# Debug files are local and may be whole rooms (benchmark rooms are a few MB unpacked); the
# limit only keeps a wrong file (a disk image, say) from exhausting memory.
MAX_FILE_BYTES = 512 * 1024 * 1024
# Event files nest deeper than events alone (file > events > event > content > ...).
MAX_FILE_DEPTH = 80


class InputError(Exception):
    """The file cannot be used; the message says why in one line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFile:
    """The parts of an event file the debug commands use."""

    rules: RoomVersionRules
    events: list[Any]
    signing_keys: dict[str, dict[str, bytes]]
    state_sets: list[Any] | None
    document: JsonDict | None


def read_json_file(path: str) -> Any:
    """Read a JSON (or gzip-compressed JSON) file strictly."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            head = handle.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(file, "rb") as zipped:
                data = zipped.read(MAX_FILE_BYTES + 1)
        else:
            data = file.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return parse_json(data, max_depth=MAX_FILE_DEPTH)
    except CanonicalJsonError as exc:
        raise InputError(f"{path}: not valid JSON for Matrix ({exc})") from None


def _room_version_from_events(events: Sequence[Any]) -> str | None:
    for event in events:
        if (
            isinstance(event, Mapping)
            and event.get("type") == "m.room.create"
            and isinstance(event.get("content"), Mapping)
        ):
            version = event["content"].get("room_version")
            if isinstance(version, str):
                return version
    return None


def _parse_keys(path: str, raw: object) -> dict[str, dict[str, bytes]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InputError(f"{path}: `signing_keys` must map server names to {{key_id: base64}}")
    keys: dict[str, dict[str, bytes]] = {}
    for server, by_id in raw.items():
        if not isinstance(by_id, Mapping):
            raise InputError(f"{path}: signing_keys[{server!r}] is not an object")
        for key_id, value in by_id.items():
            try:
                key = decode_base64(value) if isinstance(value, str) else b""
            except Base64Error:
                key = b""
            if len(key) != 32:
                raise InputError(
                    f"{path}: signing_keys[{server!r}][{key_id!r}] is not a base64 ed25519 key"
                )
            keys.setdefault(server, {})[key_id] = key
    return keys


def _keys_from_servers(raw: object) -> dict[str, dict[str, str]]:
    """`perf-dag/1` benchmark rooms list their keys under `servers`."""
    if not isinstance(raw, Mapping):
        return {}
    keys: dict[str, dict[str, str]] = {}
    for server, entry in raw.items():
        if isinstance(entry, Mapping):
            key_id, verify_key = entry.get("key_id"), entry.get("verify_key")
            if isinstance(key_id, str) and isinstance(verify_key, str):
                keys[server] = {key_id: verify_key}
    return keys


def read_event_file(path: str, *, room_version: str | None = None) -> EventFile:
    """Read an event file in any of the accepted forms."""
    document = read_json_file(path)
    if isinstance(document, list):
        events: list[Any] = document
        obj: JsonDict | None = None
        raw_keys: object = None
        state_sets = None
        version = room_version or _room_version_from_events(events)
    elif isinstance(document, dict):
        obj = document
        events_raw = obj.get("events")
        if not isinstance(events_raw, list):
            raise InputError(f"{path}: expected a list of events or an object with `events`")
        events = events_raw
        raw_keys = obj.get("signing_keys")
        if raw_keys is None and "servers" in obj:
            raw_keys = _keys_from_servers(obj["servers"])
        sets = obj.get("state_sets")
        if sets is not None and not isinstance(sets, list):
            raise InputError(f"{path}: `state_sets` must be a list")
        state_sets = sets
        declared = obj.get("room_version")
        version = room_version or (
            declared if isinstance(declared, str) else _room_version_from_events(events)
        )
    else:
        raise InputError(f"{path}: expected a list of events or an object with `events`")
    if version is None:
        raise InputError(
            f"{path}: no room version (give `room_version`, include the create event,"
            " or pass --room-version)"
        )
    try:
        rules = rules_for(version)
    except UnsupportedRoomVersionError as exc:
        raise InputError(f"{path}: {exc}") from None
    return EventFile(
        rules=rules,
        events=events,
        signing_keys=_parse_keys(path, raw_keys),
        state_sets=state_sets,
        document=obj,
    )
