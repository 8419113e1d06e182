"""The PDU: a frozen, format-checked room event, and building new ones.

Owns: `Pdu` (an immutable view over the event's federation JSON, with its event ID), the format
checks of room versions 10-12 (`parse_pdu`), and `build_event`, which hashes and signs a new
event. Must not: check signatures of received events (see `signing`) or authorise (see `auth`).

Spec: server-server API PDU schemas (pdu_v6 for v10, pdu_v11, pdu_v12), "Size limits" of the
client-server API, room version 12 room IDs (MSC4291).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from s2s_node.core.canonical import (
    MAX_CHAR_BYTES,
    MAX_INT_BYTES,
    MAX_JSON_DEPTH,
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    CanonicalJsonError,
    JsonDict,
    check_canonical_value,
    check_canonical_value_bound,
    encode_canonical_json_trusted,
)
from s2s_node.core.ids import (
    MAX_ID_BYTES,
    EventId,
    IdError,
    RoomId,
    UserId,
    create_event_id_from_room_id,
    is_event_id,
    parse_room_id,
    parse_user_id,
    room_id_from_create_event_id,
)
from s2s_node.core.keys import SigningKey
from s2s_node.core.redaction import redact
from s2s_node.core.rules import RoomVersionRules
from s2s_node.core.signing import build_signed_event, compute_event_id

# Whole event, canonical JSON of the federation form, signatures included.
MAX_PDU_BYTES = 65_536
# Lengths of `type` and `state_key` (as for identifiers).
MAX_FIELD_BYTES = MAX_ID_BYTES
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
# Depth must stay within canonical JSON's integer range.
MAX_DEPTH = 2**53 - 1


# A comma-separated list of room-version-4+ event IDs.
_EVENT_ID_LIST = re.compile(r"\$[A-Za-z0-9_\-]{43}(?:,\$[A-Za-z0-9_\-]{43})*")


# At most what `"hashes":{"sha256":"<43>"}` and the punctuation of a new signature entry with
# its 86-character value add to an event's encoding (names and key IDs counted separately).
_SIGNING_BOUND = 512


class FormatReason(enum.Enum):
    """Why an event does not have the format of its room version (the PDU is dropped)."""

    NOT_OBJECT = "not_object"
    NOT_CANONICAL = "not_canonical"
    TOO_LARGE = "too_large"
    MISSING_FIELD = "missing_field"
    BAD_FIELD_TYPE = "bad_field_type"
    FIELD_TOO_LONG = "field_too_long"
    BAD_ID = "bad_id"
    TOO_MANY_PREV_EVENTS = "too_many_prev_events"
    TOO_MANY_AUTH_EVENTS = "too_many_auth_events"
    CREATE_HAS_ROOM_ID = "create_has_room_id"
    CREATE_IN_AUTH_EVENTS = "create_in_auth_events"
    BAD_DEPTH = "bad_depth"
    BAD_HASHES = "bad_hashes"
    BAD_SIGNATURES = "bad_signatures"
    ROOM_MISMATCH = "room_mismatch"


class EventFormatError(ValueError):
    """An event breaks the format rules of its room version."""

    def __init__(self, reason: FormatReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class Pdu:
    """A room event in federation form, format-checked, with its event ID.

    `json` is the source of truth (the exact object that was signed, without `event_id` for
    these room versions); the other fields are read from it once. Treat `json` and `content` as
    read-only. `auth_event_ids` includes the implied create event in room version 12.
    """

    event_id: EventId
    room_id: RoomId
    rules: RoomVersionRules = field(repr=False)
    type: str
    state_key: str | None
    sender: UserId
    content: JsonDict
    prev_events: tuple[EventId, ...]
    auth_events: tuple[EventId, ...]
    auth_event_ids: tuple[EventId, ...]
    depth: int
    origin_server_ts: int
    json: JsonDict = field(repr=False, compare=False)
    # The auth-event selection keys, kept by `auth.compute_auth_keys` the first time it is asked
    # (it runs several times per received event: steps 4, 5, 6 and state resolution).
    auth_keys_memo: frozenset[tuple[str, str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    # `(type, state_key)` for a state event, else None: derived from those two fields when the
    # value is made (read many times per received event, by the graph, auth and resolution).
    state_tuple: tuple[str, str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        state_key = self.state_key
        object.__setattr__(
            self, "state_tuple", None if state_key is None else (self.type, state_key)
        )

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def membership(self) -> str | None:
        """`content.membership` of a member event, if it is a string."""
        value = self.content.get("membership")
        return value if isinstance(value, str) else None

    @property
    def redacts(self) -> EventId | None:
        """The target of an m.room.redaction (top level in v10, in content from v11)."""
        if self.type != "m.room.redaction":
            return None
        value = (
            self.content.get("redacts")
            if self.rules.redacts_in_content
            else self.json.get("redacts")
        )
        return EventId(value) if isinstance(value, str) else None

    def canonical_bytes(self) -> bytes:
        """Canonical JSON of the federation form (what is stored and sent)."""
        return encode_canonical_json_trusted(self.json)

    def redacted(self) -> Pdu:
        """The redacted copy of this event (same event ID)."""
        return _pdu_from_checked(redact(self.json, self.rules), self.rules, self.event_id)


# `Pdu(...)` sets each of its 14 frozen fields through `object.__setattr__` in the dataclass
# `__init__` (about 1.8 us, a third of the format check of an event). Events checked here are
# made by `_new_pdu` instead, which sets the same slots through their descriptors (about 0.7
# us): the same frozen value. A test pins that it sets every field and equals `Pdu(...)`.
_new_object = object.__new__
(
    _set_event_id,
    _set_room_id,
    _set_rules,
    _set_type,
    _set_state_key,
    _set_sender,
    _set_content,
    _set_prev_events,
    _set_auth_events,
    _set_auth_event_ids,
    _set_depth,
    _set_origin_server_ts,
    _set_json,
    _set_auth_keys_memo,
    _set_state_tuple,
) = (getattr(Pdu, f.name).__set__ for f in fields(Pdu))


def _new_pdu(
    event_id: EventId,
    room_id: RoomId,
    rules: RoomVersionRules,
    event_type: str,
    state_key: str | None,
    sender: UserId,
    content: JsonDict,
    prev_events: tuple[EventId, ...],
    auth_events: tuple[EventId, ...],
    auth_event_ids: tuple[EventId, ...],
    depth: int,
    origin_server_ts: int,
    json: JsonDict,
    /,
) -> Pdu:
    """`Pdu(...)` of values checked by this module (`event_type` is the field `type`)."""
    pdu: Pdu = _new_object(Pdu)
    _set_event_id(pdu, event_id)
    _set_room_id(pdu, room_id)
    _set_rules(pdu, rules)
    _set_type(pdu, event_type)
    _set_state_key(pdu, state_key)
    _set_sender(pdu, sender)
    _set_content(pdu, content)
    _set_prev_events(pdu, prev_events)
    _set_auth_events(pdu, auth_events)
    _set_auth_event_ids(pdu, auth_event_ids)
    _set_depth(pdu, depth)
    _set_origin_server_ts(pdu, origin_server_ts)
    _set_json(pdu, json)
    _set_auth_keys_memo(pdu, None)
    _set_state_tuple(pdu, None if state_key is None else (event_type, state_key))
    return pdu


def _field_str(obj: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required or key in obj:
            raise EventFormatError(
                FormatReason.MISSING_FIELD if key not in obj else FormatReason.BAD_FIELD_TYPE,
                f"`{key}` is missing" if key not in obj else f"`{key}` is null",
            )
        return None
    if not isinstance(value, str):
        raise EventFormatError(FormatReason.BAD_FIELD_TYPE, f"`{key}` is not a string")
    return value


def _field_int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if key not in obj:
        raise EventFormatError(FormatReason.MISSING_FIELD, f"`{key}` is missing")
    if not isinstance(value, int) or isinstance(value, bool):
        raise EventFormatError(FormatReason.BAD_FIELD_TYPE, f"`{key}` is not an integer")
    return value


def _raise_not_a_list(obj: Mapping[str, Any], key: str) -> NoReturn:
    if key not in obj:
        raise EventFormatError(FormatReason.MISSING_FIELD, f"`{key}` is missing")
    raise EventFormatError(FormatReason.BAD_FIELD_TYPE, f"`{key}` is not a list")


def _event_ids(value: list[Any], key: str, limit: int | None) -> tuple[EventId, ...]:
    """The checked event IDs of `prev_events` or `auth_events` (`key`), a list."""
    if limit is not None and len(value) > limit:
        reason = (
            FormatReason.TOO_MANY_PREV_EVENTS
            if key == "prev_events"
            else FormatReason.TOO_MANY_AUTH_EVENTS
        )
        raise EventFormatError(reason, f"`{key}` has {len(value)} entries (at most {limit})")
    # One regex over the joined list: `,` is in no event ID, so this checks every item.
    try:
        valid = not value or _EVENT_ID_LIST.fullmatch(",".join(value)) is not None
    except TypeError:  # an item that is not a string
        valid = False
    if not valid:
        for item in value:
            if not is_event_id(item):
                raise EventFormatError(
                    FormatReason.BAD_ID, f"`{key}` has a bad event ID {item!r:.60}"
                )
    return tuple(value)


# A string of at most this many characters is at most MAX_FIELD_BYTES in UTF-8 (4 bytes each).
_LENGTH_NEVER_TOO_LONG = MAX_FIELD_BYTES // 4


def _check_length(value: str, key: str) -> None:
    encoded_length = len(value.encode("utf-8", "surrogatepass"))
    if len(value) > MAX_FIELD_BYTES or encoded_length > MAX_FIELD_BYTES:
        raise EventFormatError(
            FormatReason.FIELD_TOO_LONG, f"`{key}` is longer than {MAX_FIELD_BYTES} bytes"
        )


def check_event_format(
    obj: object,
    rules: RoomVersionRules,
    *,
    check_counts: bool = True,
    check_values: bool = True,
    encoded_size: int | None = None,
) -> JsonDict:
    """Raise `EventFormatError` unless `obj` has the PDU format of `rules`' room version.

    `check_counts=False` skips the prev/auth event counts (backfill responses must not be held to
    them). `check_values=False` skips the canonical-JSON value walk for objects that came through
    the strict decoder already (`canonical.parse_json`, `wire.decode_body`), which refuses the
    same values. `encoded_size`, when the caller measured the length of the canonical JSON of
    the whole event already (`signing.check_event` does, exactly), saves encoding it again.
    """
    if not isinstance(obj, dict):
        raise EventFormatError(FormatReason.NOT_OBJECT, "event is not a JSON object")
    if check_values:
        try:
            bound = check_canonical_value_bound(obj)
        except CanonicalJsonError as exc:
            raise EventFormatError(FormatReason.NOT_CANONICAL, str(exc)) from None
        if bound <= MAX_PDU_BYTES:
            return obj  # the encoding is at most `bound` bytes: no need to measure it
    if encoded_size is not None:
        size = encoded_size
    else:
        try:
            size = len(encode_canonical_json_trusted(obj))
        except (UnicodeEncodeError, TypeError, ValueError) as exc:
            # Only reachable with check_values=False and a value that is not JSON after all.
            raise EventFormatError(FormatReason.NOT_CANONICAL, str(exc)) from None
    if size > MAX_PDU_BYTES:
        raise EventFormatError(
            FormatReason.TOO_LARGE, f"event is {size} bytes (at most {MAX_PDU_BYTES})"
        )
    return obj


def parse_pdu(
    obj: object,
    rules: RoomVersionRules,
    *,
    event_id: EventId | None = None,
    check_counts: bool = True,
    check_values: bool = True,
    expected_room_id: str | None = None,
    encoded_size: int | None = None,
    content_hash_size: int | None = None,
) -> Pdu:
    """Check the format of an untrusted event and build a `Pdu`.

    `event_id`, when the caller computed it already (e.g. while checking signatures), saves a
    second hash. `expected_room_id`, when given, is the room the event arrived for (e.g. the
    room of a join or backfill request): another room ID raises `ROOM_MISMATCH`. Signatures
    and hashes are not verified here. `check_values` and `encoded_size`: see
    `check_event_format`. `content_hash_size`, the length of
    `signing.encode_content_hash_bytes(obj)` when the caller has it (with `event_id`), lets the
    usual event skip the canonical-JSON walk of every value (`_parse_plain`).
    """
    if (
        check_values
        and content_hash_size is not None
        and event_id is not None
        and type(obj) is dict
    ):
        pdu = _parse_plain(obj, rules, event_id, check_counts, content_hash_size)
        if pdu is None:
            pdu = _parse_checked(obj, rules, event_id, check_counts, encoded_size)
    else:
        pdu = _parse_checked(
            obj, rules, event_id, check_counts, encoded_size, check_values=check_values
        )
    if expected_room_id is not None and pdu.room_id != expected_room_id:
        raise EventFormatError(
            FormatReason.ROOM_MISMATCH, f"event of {pdu.room_id}, expected {expected_room_id}"
        )
    return pdu


def _parse_checked(
    obj: object,
    rules: RoomVersionRules,
    event_id: EventId | None,
    check_counts: bool,
    encoded_size: int | None,
    *,
    check_values: bool = True,
) -> Pdu:
    """`parse_pdu`'s checks one after the other: values and size, then the fields."""
    checked = check_event_format(
        obj,
        rules,
        check_counts=check_counts,
        check_values=check_values,
        encoded_size=encoded_size,
    )
    return _parse_fields(checked, rules, event_id, check_counts=check_counts)


def _parse_plain(
    obj: JsonDict,
    rules: RoomVersionRules,
    event_id: EventId,
    check_counts: bool,
    content_hash_size: int,
) -> Pdu | None:
    """`_parse_checked(obj, ...)` for an event that passes every check, with the fields first
    and then only the values they did not cover; None on any failure, of any kind (the caller
    then runs the checks in order, which raise the first failing check's error).

    Fields and values both passing is what `_parse_checked` accepts, whatever the order; the
    size limit then holds when the content-hash form and a bound of the other members fit.
    """
    try:
        pdu = _parse_fields(obj, rules, event_id, check_counts=check_counts)
        rest = _bound_other_values(obj, pdu)
    except Exception:
        return None
    if rest < 0 or content_hash_size + rest > MAX_PDU_BYTES:
        return None  # (near the limit: the exact measure)
    return pdu


# The members whose values `_parse_fields` checks so that the canonical-JSON walk has nothing to
# add: strings it parses as identifiers (no lone surrogate; ASCII servers and hashes), `depth`
# (within 0..2**53-1) and lists of event IDs (ASCII); and the members `_bound_other_values`
# checks.
_PARSED_MEMBERS = frozenset(
    {"sender", "room_id", "depth", "prev_events", "auth_events"}
    | {"type", "state_key", "content", "origin_server_ts", "hashes", "signatures"}
)
# `,"hashes":{"sha256":""}`, `,"signatures":{}`, and per string of `signatures` at most 6: a
# server's quotes, colon, braces and comma; a key ID's or a signature's quotes and colon or comma.
_HASHES_FRAME = 23
_SIGNATURES_FRAME = 16
_SIGNATURE_STRING_FRAME = 6


def _bound_other_values(obj: JsonDict, pdu: Pdu) -> int:
    """-1 unless `check_canonical_value(obj)` passes, for an `obj` that `_parse_fields` made
    `pdu` of; else an upper bound of what `hashes` and `signatures` add to the encoding of the
    content-hash form (-1 also when in doubt: the caller then runs the whole walk).

    Left to check after the fields: the texts of `type` and `state_key`, the range of
    `origin_server_ts`, `content`, `hashes`, `signatures` (an object of objects, checked by
    `_parse_fields`); an event with other members is left to the walk. Objects of strings are
    checked item by item; their text is checked for lone surrogates at once (a string has one
    exactly when a concatenation has one); any other `content` goes to `check_canonical_value`
    one level down, as the walk would.
    """
    if not _PARSED_MEMBERS.issuperset(obj):
        return -1
    "".join(obj)  # (raises TypeError for a key that is not a string but equals one)
    if not MIN_SAFE_INTEGER <= pdu.origin_server_ts <= MAX_SAFE_INTEGER:
        return -1
    texts = [pdu.type, pdu.state_key or ""]
    append = texts.append
    content = obj["content"]
    plain = type(content) is dict
    if plain:
        for key, value in content.items():
            if type(key) is not str or type(value) is not str:
                plain = False
                break
            append(key)
            append(value)
    if not plain:
        try:
            check_canonical_value(content, max_depth=MAX_JSON_DEPTH - 1)
        except CanonicalJsonError:
            return -1
    hashes = obj["hashes"]
    if type(hashes) is not dict or len(hashes) != 1:
        return -1
    claimed = hashes["sha256"]  # a string (`_parse_fields`)
    append(claimed)
    size = _HASHES_FRAME + MAX_CHAR_BYTES * len(claimed) + _SIGNATURES_FRAME
    strings = 0
    signatures = obj["signatures"]
    if type(signatures) is not dict:
        return -1
    for server, by_server in signatures.items():
        if type(server) is not str or type(by_server) is not dict:
            return -1
        append(server)
        strings += 1 + 2 * len(by_server)
        for key_id, signature in by_server.items():
            if type(key_id) is not str or type(signature) is not str:
                return -1
            append(key_id)
            append(signature)
    text = "".join(texts)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return -1
    return size + MAX_CHAR_BYTES * (len(text) - len(claimed)) + _SIGNATURE_STRING_FRAME * strings


def _parse_fields(
    obj: JsonDict, rules: RoomVersionRules, event_id: EventId | None, *, check_counts: bool
) -> Pdu:
    get = obj.get
    # Plain types first (the common case, one test each); anything else takes the detailed
    # checks below, which raise with the precise reason.
    event_type = get("type")
    if type(event_type) is not str:
        event_type = _field_str(obj, "type")
        assert event_type is not None
    if len(event_type) > _LENGTH_NEVER_TOO_LONG:
        _check_length(event_type, "type")
    sender_raw = get("sender")
    try:
        sender = parse_user_id(sender_raw)
    except IdError as exc:
        _field_str(obj, "sender")  # missing or not a string: that reason first
        raise EventFormatError(FormatReason.BAD_ID, f"`sender`: {exc}") from None
    state_key = get("state_key")
    if type(state_key) is not str:
        state_key = _field_str(obj, "state_key", required=False)
    if state_key is not None and len(state_key) > _LENGTH_NEVER_TOO_LONG:
        _check_length(state_key, "state_key")
    content = get("content")
    if type(content) is not dict and not isinstance(content, dict):
        raise EventFormatError(
            FormatReason.MISSING_FIELD if "content" not in obj else FormatReason.BAD_FIELD_TYPE,
            "`content` is not an object",
        )
    origin_server_ts = get("origin_server_ts")
    if type(origin_server_ts) is not int:
        origin_server_ts = _field_int(obj, "origin_server_ts")
    depth = get("depth")
    if type(depth) is not int:
        depth = _field_int(obj, "depth")
    if not 0 <= depth <= MAX_DEPTH:
        raise EventFormatError(FormatReason.BAD_DEPTH, f"depth {depth} is out of range")
    hashes = get("hashes")
    if not isinstance(hashes, dict) or not isinstance(hashes.get("sha256"), str):
        raise EventFormatError(FormatReason.BAD_HASHES, "`hashes.sha256` is missing")
    signatures = get("signatures")
    if not isinstance(signatures, dict):
        raise EventFormatError(FormatReason.BAD_SIGNATURES, "`signatures` is not an object")
    for by_server in signatures.values():
        if not isinstance(by_server, dict):
            raise EventFormatError(FormatReason.BAD_SIGNATURES, "`signatures` is not an object")
    if "unsigned" in obj and not isinstance(obj["unsigned"], dict):
        raise EventFormatError(FormatReason.BAD_FIELD_TYPE, "`unsigned` is not an object")
    prev_list = get("prev_events")
    if not isinstance(prev_list, list):
        _raise_not_a_list(obj, "prev_events")
    prev_events = _event_ids(prev_list, "prev_events", MAX_PREV_EVENTS if check_counts else None)
    auth_list = get("auth_events")
    if not isinstance(auth_list, list):
        _raise_not_a_list(obj, "auth_events")
    auth_events = _event_ids(auth_list, "auth_events", MAX_AUTH_EVENTS if check_counts else None)

    if event_id is None:
        event_id = compute_event_id(obj, rules)
    room_id, auth_event_ids = _room_and_auth_event_ids(
        obj, rules, event_id, event_type == "m.room.create" and state_key == "", auth_events
    )
    # (Positional arguments: a call with 13 keywords costs about a microsecond more.)
    return _new_pdu(
        event_id,
        room_id,
        rules,
        event_type,
        state_key,
        sender,
        content,
        prev_events,
        auth_events,
        auth_event_ids,
        depth,
        origin_server_ts,
        obj,
    )


def _room_and_auth_event_ids(
    obj: JsonDict,
    rules: RoomVersionRules,
    event_id: EventId,
    is_create: bool,
    auth_events: tuple[EventId, ...],
) -> tuple[RoomId, tuple[EventId, ...]]:
    """The room ID (read from `obj` or, for a v12 create event, derived) and `auth_event_ids`."""
    if rules.room_id_is_create_event_hash:
        if is_create:
            if "room_id" in obj:
                raise EventFormatError(
                    FormatReason.CREATE_HAS_ROOM_ID, "a v12 create event has no room_id"
                )
            return room_id_from_create_event_id(event_id), auth_events
        room_id = _parse_room(obj)
        create_id = create_event_id_from_room_id(room_id)
        if room_id[1:].find(":") >= 0:
            raise EventFormatError(FormatReason.BAD_ID, "a v12 room ID has no server part")
        if create_id in auth_events:
            raise EventFormatError(
                FormatReason.CREATE_IN_AUTH_EVENTS,
                "v12 auth_events must not list the create event",
            )
        return room_id, (create_id, *auth_events)
    room_id = _parse_room(obj)
    if ":" not in room_id:
        raise EventFormatError(FormatReason.BAD_ID, "a v10/v11 room ID needs a server part")
    return room_id, auth_events


def _parse_room(obj: JsonDict) -> RoomId:
    raw = obj.get("room_id")
    if type(raw) is not str:
        raw = _field_str(obj, "room_id")
    try:
        return parse_room_id(raw)
    except IdError as exc:
        raise EventFormatError(FormatReason.BAD_ID, f"`room_id`: {exc}") from None


def _pdu_from_checked(obj: JsonDict, rules: RoomVersionRules, event_id: EventId) -> Pdu:
    return _parse_fields(obj, rules, event_id, check_counts=False)


def build_event(
    *,
    rules: RoomVersionRules,
    room_id: str | None,
    sender: str,
    event_type: str,
    content: Mapping[str, Any],
    prev_events: Sequence[str],
    auth_events: Sequence[str],
    depth: int,
    origin_server_ts: int,
    server_name: str,
    signing_key: SigningKey,
    state_key: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Pdu:
    """Build, hash and sign a new event, and check its format as a receiver would.

    Raises `EventFormatError` (e.g. `NOT_CANONICAL` for a float in `content`), with the reason
    `parse_pdu` would give the signed event: first `NOT_CANONICAL`, then `TOO_LARGE`, then the
    field checks in `parse_pdu`'s order.

    `room_id` is None only for a v12 create event. `auth_events` are the IDs as they go on the
    wire (in v12 without the create event). `extra` adds top-level keys (e.g. v10 `redacts`).
    """
    obj: JsonDict = {
        "type": event_type,
        "sender": sender,
        "content": dict(content),
        "prev_events": list(prev_events),
        "auth_events": list(auth_events),
        "depth": depth,
        "origin_server_ts": origin_server_ts,
    }
    if room_id is not None:
        obj["room_id"] = room_id
    if state_key is not None:
        obj["state_key"] = state_key
    # Parameters of their plain types are checked one by one and only `content` is walked;
    # anything else (and `extra`, which may replace any member) takes the receiver's checks.
    bound = None if extra else _check_plain_values(obj)
    plain = bound is not None
    if bound is None:
        if extra:
            obj.update(extra)
        try:
            bound = check_canonical_value_bound(obj)
        except CanonicalJsonError as exc:
            raise EventFormatError(FormatReason.NOT_CANONICAL, str(exc)) from None
    signed = build_signed_event(obj, rules, server_name, signing_key, values_checked=True)
    # Signing added `hashes` and one signature (`signatures` of `extra` are in `bound`).
    bound += _SIGNING_BOUND + 6 * (len(server_name) + len(signing_key.key_id))
    if bound > MAX_PDU_BYTES:
        return parse_pdu(signed.json, rules, event_id=signed.event_id, check_values=False)
    if not plain:
        return _parse_fields(signed.json, rules, signed.event_id, check_counts=True)
    return _check_built_fields(signed.json, rules, signed.event_id)


# What the members of a new event other than `content` take in canonical JSON beyond their
# strings (6 bytes a character, counted by `_check_plain_values`): braces, each key with its
# quotes, colon and comma, the two integers, the quotes of four strings, and two brackets.
_BUILT_KEYS = (
    "type",
    "sender",
    "content",
    "prev_events",
    "auth_events",
    "depth",
    "origin_server_ts",
    "room_id",
    "state_key",
)
_BUILT_FRAME_BOUND = (
    2 + sum(len(key) + 4 for key in _BUILT_KEYS) + 2 * MAX_INT_BYTES + 4 * 2 + 2 * 2
)


def _check_plain_values(obj: JsonDict) -> int | None:
    """Check the values of a new event (`build_event`'s `obj`) whose members other than
    `content` have their plain types (str, int, lists of str); return an upper bound of its
    canonical JSON. None when a member is of another type: the caller then walks all of it.

    Raises `EventFormatError(NOT_CANONICAL)` as `check_canonical_value` of `obj` would.
    """
    event_type = obj["type"]
    sender = obj["sender"]
    room_id = obj.get("room_id", "")
    state_key = obj.get("state_key", "")
    depth = obj["depth"]
    origin_server_ts = obj["origin_server_ts"]
    prev_events = obj["prev_events"]
    auth_events = obj["auth_events"]
    if (
        type(event_type) is not str
        or type(sender) is not str
        or type(room_id) is not str
        or type(state_key) is not str
        or type(depth) is not int
        or type(origin_server_ts) is not int
    ):
        return None
    try:
        ids = ",".join(prev_events) + ",".join(auth_events)
    except TypeError:  # an item that is not a string
        return None
    try:
        text = event_type + sender + room_id + state_key + ids
        if not text.isascii():
            check_canonical_value(text)  # no lone surrogates
        if not (
            MIN_SAFE_INTEGER <= depth <= MAX_SAFE_INTEGER
            and MIN_SAFE_INTEGER <= origin_server_ts <= MAX_SAFE_INTEGER
        ):
            check_canonical_value([depth, origin_server_ts])
        # `content` is one level inside the event.
        content_bound = check_canonical_value_bound(obj["content"], max_depth=MAX_JSON_DEPTH - 1)
    except CanonicalJsonError as exc:
        raise EventFormatError(FormatReason.NOT_CANONICAL, str(exc)) from None
    # Each event ID: quotes and a comma (3), and its characters, counted in `text`.
    id_count = len(prev_events) + len(auth_events)
    return _BUILT_FRAME_BOUND + MAX_CHAR_BYTES * len(text) + 3 * id_count + content_bound


def _check_built_fields(obj: JsonDict, rules: RoomVersionRules, event_id: EventId) -> Pdu:
    """`_parse_fields` of a signed new event whose members were checked by
    `_check_plain_values`: their types are known, so only the field rules remain, in the same
    order."""
    event_type: str = obj["type"]
    if len(event_type) > _LENGTH_NEVER_TOO_LONG:
        _check_length(event_type, "type")
    try:
        sender = parse_user_id(obj["sender"])
    except IdError as exc:
        raise EventFormatError(FormatReason.BAD_ID, f"`sender`: {exc}") from None
    state_key: str | None = obj.get("state_key")
    if state_key is not None and len(state_key) > _LENGTH_NEVER_TOO_LONG:
        _check_length(state_key, "state_key")
    depth: int = obj["depth"]
    if not 0 <= depth <= MAX_DEPTH:
        raise EventFormatError(FormatReason.BAD_DEPTH, f"depth {depth} is out of range")
    prev_events = _event_ids(obj["prev_events"], "prev_events", MAX_PREV_EVENTS)
    auth_events = _event_ids(obj["auth_events"], "auth_events", MAX_AUTH_EVENTS)
    room_id, auth_event_ids = _room_and_auth_event_ids(
        obj, rules, event_id, event_type == "m.room.create" and state_key == "", auth_events
    )
    return _new_pdu(
        event_id,
        room_id,
        rules,
        event_type,
        state_key,
        sender,
        obj["content"],
        prev_events,
        auth_events,
        auth_event_ids,
        depth,
        obj["origin_server_ts"],
        obj,
    )
