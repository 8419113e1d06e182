"""Signing and verifying JSON and events; content hashes and reference hashes.

Owns: the JSON-signing algorithm, the event content hash, the reference hash (the event ID of
room versions >= 4, over the redacted form `core.redaction` makes), and the check of which
servers must have signed an event. Never mutates its inputs: every function that "adds"
something returns a new object. Keys come from an injected `KeyLookup`, so the same code serves
keys derived from node identifiers (the node) and explicit keys (tools, tests).

Spec: appendices "Signing JSON" and "Checking for a signature"; server-server API "Signing
events", "Calculating the content hash", "Calculating the reference hash".
"""

from __future__ import annotations

import binascii
import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing

from s2s_node.core.canonical import (
    MAX_CHAR_BYTES,
    Base64Error,
    JsonDict,
    check_canonical_value,
    check_canonical_value_bound,
    compute_encoded_length,
    compute_encoded_size,
    decode_base64,
    encode_base64,
    encode_base64_urlsafe,
    encode_canonical_json,
    encode_canonical_json_trusted,
    encode_canonical_json_trusted_str,
)
from s2s_node.core.ids import EventId, ServerName, server_of
from s2s_node.core.keys import KEY_ID, IdentityError, SigningKey, verify_key_from_identifier
from s2s_node.core.redaction import TOP_LEVEL_KEPT, TOP_LEVEL_KEPT_LEGACY, redact, redact_content
from s2s_node.core.rules import RoomVersionRules

# (server name, key ID) -> verify key, or None when the key is unknown.
KeyLookup = Callable[[str, str], "nacl.signing.VerifyKey | None"]


class SignatureReason(enum.Enum):
    """Why a signature check failed."""

    NO_SIGNATURES = "no_signatures"  # `signatures` missing or not an object
    MISSING_SIGNATURE = "missing_signature"  # nothing from a server that must sign
    UNKNOWN_KEY = "unknown_key"  # no usable ed25519 key of that server is known
    BAD_ENCODING = "bad_encoding"  # the signature is not base64 of 64 bytes
    BAD_SIGNATURE = "bad_signature"  # the signature does not verify


class SignatureError(ValueError):
    """A JSON object or an event is not (validly) signed by a server that must sign it."""

    def __init__(self, reason: SignatureReason, server: str, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.server = server
        self.detail = detail


# ----------------------------------------------------------------------------------------------
# Key lookups


class KeyRing:
    """A `KeyLookup`: explicit keys first, then (optionally) keys derived from identifiers.

    Derived keys follow DESIGN.md section 3: the key `ed25519:1` of a node identifier is the key
    the identifier encodes. Results are memoised, since verification is a hot path.
    """

    def __init__(
        self,
        explicit: Mapping[str, Mapping[str, bytes]] | None = None,
        *,
        derive: bool = True,
    ) -> None:
        self._cache: dict[tuple[str, str], nacl.signing.VerifyKey | None] = {}
        # The 32 bytes of each key found, which `check_json_signature` reads without calling
        # the ring or `bytes(verify_key)` (two Python calls per signature).
        self._raw: dict[tuple[str, str], bytes] = {}
        self._derive = derive
        for server, keys in (explicit or {}).items():
            for key_id, raw in keys.items():
                verify_key = nacl.signing.VerifyKey(raw)
                self._cache[(server, key_id)] = verify_key
                self._raw[(server, key_id)] = bytes(verify_key)

    def __call__(self, server: str, key_id: str) -> nacl.signing.VerifyKey | None:
        cache_key = (server, key_id)
        try:
            return self._cache[cache_key]
        except KeyError:
            pass
        found: nacl.signing.VerifyKey | None = None
        if self._derive and key_id == KEY_ID:
            try:
                found = verify_key_from_identifier(server)
            except IdentityError:
                found = None
        self._cache[cache_key] = found
        if found is not None:
            self._raw[cache_key] = bytes(found)
        return found


derived_keys: KeyLookup = KeyRing()
"""The node's lookup: the key of every node identifier, derived from the identifier."""


# libsodium's `crypto_sign_open` through PyNaCl's own cffi module, the binding behind
# `VerifyKey.verify`, given no output buffer (NULL message and length: libsodium then verifies
# and copies nothing). `nacl.bindings.crypto_sign_open` allocates and zeroes a buffer of the
# message's size and copies the message out of it on every call: about 7,700 instructions a
# signature more, measured. A test pins that both accept and refuse the same signatures.
# `nacl._sodium` is PyNaCl's private name for that module: a PyNaCl without it falls back to
# the public binding, same answers.
try:
    from nacl._sodium import ffi as _sodium_ffi  # type: ignore[import-not-found]
    from nacl._sodium import lib as _sodium_lib
except ImportError:  # pragma: no cover (PyNaCl 1.5 and 1.6 have it)

    def _crypto_sign_open(_m: object, _mlen: object, signed: bytes, _n: int, pk: bytes) -> int:
        try:
            nacl.bindings.crypto_sign_open(signed, pk)
        except nacl.exceptions.BadSignatureError:
            return -1
        return 0

    _NULL: object = None
else:
    _crypto_sign_open = _sodium_lib.crypto_sign_open
    _NULL = _sodium_ffi.NULL
_a2b_base64 = binascii.a2b_base64


# ----------------------------------------------------------------------------------------------
# Signing JSON


def _without(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    copy = dict(obj)
    for key in keys:
        copy.pop(key, None)
    return copy


def sign_json(obj: Mapping[str, Any], server_name: str, key: SigningKey) -> JsonDict:
    """Return a copy of `obj` with a signature by `server_name`'s `key` added.

    Existing signatures (by anyone) and `unsigned` are kept unchanged.
    """
    message = encode_canonical_json(_without(obj, "signatures", "unsigned"))
    signature = encode_base64(key.sign(message))
    signed = dict(obj)
    old = obj.get("signatures")
    signatures: dict[str, Any] = {
        k: dict(v) if isinstance(v, Mapping) else v
        for k, v in (old.items() if isinstance(old, Mapping) else ())
    }
    signatures.setdefault(server_name, {})[key.key_id] = signature
    signed["signatures"] = signatures
    return signed


def check_json_signature(
    obj: Mapping[str, Any], server_name: str, keys: KeyLookup, *, message: bytes | None = None
) -> None:
    """Raise `SignatureError` unless `obj` carries a valid signature by `server_name`.

    Key IDs of unknown algorithms and keys the lookup does not know are skipped; at least one
    known ed25519 key must remain, and every remaining signature must verify. `message`, when
    given, is the canonical JSON of `obj` without `signatures` and `unsigned` (saves re-encoding).
    """
    signatures = obj.get("signatures")
    if type(signatures) is not dict and not isinstance(signatures, Mapping):
        raise SignatureError(SignatureReason.NO_SIGNATURES, server_name, "no signatures object")
    by_server = signatures.get(server_name)
    if (type(by_server) is not dict and not isinstance(by_server, Mapping)) or not by_server:
        raise SignatureError(
            SignatureReason.MISSING_SIGNATURE, server_name, f"not signed by {server_name}"
        )
    checked = 0
    raw_keys = keys._raw if type(keys) is KeyRing else None
    for key_id, signature_b64 in by_server.items():
        if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
            continue
        raw_key = None if raw_keys is None else raw_keys.get((server_name, key_id))
        if raw_key is None:
            verify_key = keys(server_name, key_id)
            if verify_key is None:
                continue
            raw_key = bytes(verify_key)
        try:
            if type(signature_b64) is str and len(signature_b64) == 86 and signature_b64[-1] != "=":
                # The usual spelling of 64 bytes (unpadded): `decode_base64`'s first case.
                try:
                    signature = _a2b_base64(signature_b64 + "==", strict_mode=True)
                except (binascii.Error, ValueError):
                    signature = decode_base64(signature_b64)  # (raises the same way)
            else:
                signature = decode_base64(signature_b64)
        except Base64Error:
            raise SignatureError(
                SignatureReason.BAD_ENCODING,
                server_name,
                f"signature {key_id} of {server_name} is not base64",
            ) from None
        if len(signature) != 64:
            raise SignatureError(
                SignatureReason.BAD_ENCODING,
                server_name,
                f"signature {key_id} of {server_name} is not 64 bytes",
            )
        if message is None:
            message = encode_canonical_json(_without(obj, "signatures", "unsigned"))
        # `VerifyKey.verify(message, signature)` without its wrappers (`raw_key` is the 32 bytes
        # of a `VerifyKey`): 0 when the signature verifies.
        signed = signature + message
        if _crypto_sign_open(_NULL, _NULL, signed, len(signed), raw_key) != 0:
            raise SignatureError(
                SignatureReason.BAD_SIGNATURE,
                server_name,
                f"signature {key_id} of {server_name} does not verify",
            )
        checked += 1
    if checked == 0:
        raise SignatureError(
            SignatureReason.UNKNOWN_KEY, server_name, f"no known ed25519 key of {server_name}"
        )


# ----------------------------------------------------------------------------------------------
# Hashes and event IDs


# The top-level keys the content hash does not cover.
_NOT_HASHED = ("unsigned", "signatures", "hashes")


def encode_content_hash_bytes(event: Mapping[str, Any]) -> bytes:
    """Canonical JSON of the event without `unsigned`, `signatures`, `hashes` (what is hashed)."""
    if type(event) is dict and not (
        "hashes" in event or "signatures" in event or "unsigned" in event
    ):
        return encode_canonical_json_trusted(event)  # a new event: nothing to leave out
    return encode_canonical_json_trusted(_without(event, *_NOT_HASHED))


def compute_content_hash(event: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of the event without `unsigned`, `signatures`, `hashes`."""
    return hashlib.sha256(encode_content_hash_bytes(event)).digest()


def compute_event_size(event: Mapping[str, Any], content_hash_bytes: bytes) -> int:
    """Length in bytes of the canonical JSON of the whole `event`, as `len(encode(event))`.

    `content_hash_bytes` is `encode_content_hash_bytes(event)`; only the top-level members it
    leaves out are measured here (small next to the content). Exact, not a bound: see
    `_event_size`. Values are not checked.
    """
    return _event_size(len(content_hash_bytes), {k: event[k] for k in _NOT_HASHED if k in event})


def compute_event_size_bound(event: Mapping[str, Any], content_hash_size: int) -> int:
    """An upper bound of `compute_event_size(event, ...)` from the length of the content-hash
    bytes, for the receive path's size limit: when it fits, the exact size does too. The
    members the content-hash form leaves out (`hashes`, `signatures`, `unsigned`: a few short
    strings on the usual event) are bounded by `check_canonical_value_bound`, which raises
    `CanonicalJsonError` for a value that is not canonical JSON.
    """
    size = content_hash_size
    for key in _NOT_HASHED:
        if key in event:
            value = event[key]
            bound = _bound_of_string_objects(value)
            if bound < 0:
                bound = check_canonical_value_bound(value)
            size += len(key) + 4 + bound  # `,"key":value`
    return size


def _bound_of_string_objects(value: object) -> int:
    """For an object whose values are ASCII strings or objects of ASCII strings (the usual
    `hashes` and `signatures`): an upper bound of its encoded length, as
    `check_canonical_value_bound` gives, in one loop instead of a call per value; such a value
    is always canonical JSON. -1 for any other value.

    A string of n ASCII characters takes at most `MAX_CHAR_BYTES * n` bytes and its quotes; a
    member adds a colon and a comma (one comma too many: still a bound).
    """
    if type(value) is not dict:
        return -1
    size = 2  # `{}`
    for key, item in value.items():
        if type(key) is not str or not key.isascii():
            return -1
        if type(item) is str:
            if not item.isascii():
                return -1
            item_size = MAX_CHAR_BYTES * len(item) + 2
        elif type(item) is dict:
            item_size = 2
            for inner_key, text in item.items():
                if (
                    type(inner_key) is not str
                    or type(text) is not str
                    or not inner_key.isascii()
                    or not text.isascii()
                ):
                    return -1
                item_size += MAX_CHAR_BYTES * (len(inner_key) + len(text)) + 6
        else:
            return -1
        size += MAX_CHAR_BYTES * len(key) + 4 + item_size
    return size


def _event_size(hashed_size: int, left_out: Mapping[str, Any]) -> int:
    """The encoded length of an event whose content-hash form is `hashed_size` bytes and whose
    other members are `left_out`.

    Canonical JSON writes an object as `{`, its members (`"key":value`, each encoded on its own
    terms whatever its neighbours) joined by `,`, and `}`: the whole event is the hashed
    form's members plus each left-out member and its comma.
    """
    if not left_out:
        return hashed_size
    size = hashed_size
    for key, value in left_out.items():
        size += len(key) + 4 + compute_encoded_size(value)  # `,"key":value`
    if hashed_size == 2:  # `{}`: no hashed member, so one comma fewer
        size -= 1
    return size


def _split_content_hash_form(event: Mapping[str, Any]) -> tuple[JsonDict, JsonDict]:
    """The event without `unsigned`, `signatures`, `hashes`, and those members."""
    hashed = dict(event)
    left_out: JsonDict = {}
    for key in _NOT_HASHED:
        if key in hashed:
            left_out[key] = hashed.pop(key)
    return hashed, left_out


def encode_signing_bytes(event: Mapping[str, Any], rules: RoomVersionRules) -> bytes:
    """Canonical JSON of the redacted event without `signatures` and `unsigned`.

    These bytes are both what the servers sign and what the reference hash is taken of.
    """
    redacted = redact(event, rules)
    redacted.pop("signatures", None)
    redacted.pop("unsigned", None)
    return encode_canonical_json_trusted(redacted)


# The top-level keys of an event whose two encodings `encode_signing_and_content_hash_bytes` can
# take from one: keys redaction keeps (so both forms have the same members but two), without
# `event_id` (a member of any value between `content` and `hashes`).
_ONE_ENCODING_KEYS = TOP_LEVEL_KEPT - {"event_id"} | {"unsigned"}
_ONE_ENCODING_KEYS_LEGACY = TOP_LEVEL_KEPT_LEGACY - {"event_id"} | {"unsigned"}


def encode_signing_and_content_hash_bytes(
    event: Mapping[str, Any], rules: RoomVersionRules
) -> tuple[bytes, bytes]:
    """`(encode_signing_bytes(event, rules), encode_content_hash_bytes(event))`, mostly from one
    encoding (the receive path needs both; the second costs a few small encodings).

    Canonical JSON writes an object as its members in key order, each one encoded on its own
    terms whatever its neighbours. When redaction keeps every top-level key, the two forms have
    the same members except that the content-hash form has the whole `content` where the signed
    form has the redacted one, and no `hashes`. In the signed form the only members before
    `hashes` are `auth_events` (a list of strings: no `"content":` in its encoding, since a
    string's quotes are escaped), `content` and `depth` (an integer): so the content-hash form
    is the signed form with the content swapped and the `hashes` member cut, at offsets known
    from the lengths of those members. Any other event is encoded twice.
    """
    if type(event) is dict and "content" in event:
        cut = _cut_content_hash_form(event, rules)
        if cut is not None:
            return cut
    return encode_signing_bytes(event, rules), encode_content_hash_bytes(event)


def _cut_content_hash_form(event: JsonDict, rules: RoomVersionRules) -> tuple[bytes, bytes] | None:
    """The two forms of `encode_signing_and_content_hash_bytes`; None when not derivable."""
    keys = (
        _ONE_ENCODING_KEYS_LEGACY
        if rules.redaction_keeps_origin_membership_prev_state
        else _ONE_ENCODING_KEYS
    )
    if not keys.issuperset(event) or "depth" not in event or "hashes" not in event:
        return None
    content = event["content"]
    depth = event["depth"]
    hashes = event["hashes"]
    if type(content) is not dict or type(depth) is not int or type(hashes) is not dict:
        return None
    claimed = hashes.get("sha256")
    if len(hashes) != 1 or type(claimed) is not str or not _is_plain(claimed):
        return None
    auth_events = event.get("auth_events")
    if auth_events is not None or "auth_events" in event:
        if type(auth_events) is not list:
            return None
        try:
            "".join(auth_events)
        except TypeError:  # an item that is not a string
            return None
    # The content-hash form is encoded; the signed form is cut from it. (The other way round,
    # the whole content would be encoded a second time whenever redaction drops some of it:
    # most events. Here the redacted content, usually empty or one string, is.)
    hash_form = dict(event)
    del hash_form["hashes"]
    hash_form.pop("signatures", None)
    hash_form.pop("unsigned", None)
    hashed = encode_canonical_json_trusted_str(hash_form)
    # After `{"auth_events":[...],"content":` (the first `"content":`) come the content, then
    # `,"depth":N`, then `,` and the next member or the closing `}`; in the signed form the
    # redacted content and `,"hashes":{"sha256":"..."}` right after the depth.
    start = hashed.find('"content":') + 10
    depth_member = f',"depth":{depth}'
    for value in content.values():
        if type(value) is not str:  # (an object in it could hold the same text)
            end = start + compute_encoded_length(content)
            break
    else:  # text outside the strings of a flat object of strings: only its own keys
        end = hashed.find(depth_member, start)
    cut = end + len(depth_member)
    if start < 10 or not hashed.startswith(depth_member, end) or hashed[cut] not in ",}":
        return None  # (never: a guard for the offsets above)
    redacted_content = redact_content(content, event.get("type"), rules)
    if len(redacted_content) == len(content) and "third_party_invite" not in content:
        content_text = hashed[start:end]  # redaction kept every key, values unchanged
    elif not redacted_content:
        content_text = "{}"
    else:
        content_text = _encode_small_object(redacted_content)
    signed = "".join(
        (
            hashed[:start],
            content_text,
            hashed[end:cut],
            ',"hashes":{"sha256":"',
            claimed,
            '"}',
            hashed[cut:],
        )
    )
    return signed.encode("utf-8"), hashed.encode("utf-8")


def _encode_small_object(obj: JsonDict) -> str:
    """Canonical JSON of an object, written directly when it is one member of plain strings
    (a redacted member event's content)."""
    if len(obj) == 1:
        for key, value in obj.items():
            if type(value) is str and _is_plain(value) and _is_plain(key):
                return f'{{"{key}":"{value}"}}'
    return encode_canonical_json_trusted_str(obj)


def _is_plain(text: str) -> bool:
    """True if canonical JSON writes `text` as it is, between quotes."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def compute_reference_hash(event: Mapping[str, Any], rules: RoomVersionRules) -> bytes:
    """SHA-256 of the redacted event without signatures and unsigned."""
    return hashlib.sha256(encode_signing_bytes(event, rules)).digest()


def compute_event_id(event: Mapping[str, Any], rules: RoomVersionRules) -> EventId:
    """`$` + URL-safe unpadded base64 of the reference hash (room versions >= 4)."""
    return EventId("$" + encode_base64_urlsafe(compute_reference_hash(event, rules)))


def is_content_hash_valid(
    event: Mapping[str, Any], *, content_hash_bytes: bytes | None = None
) -> bool:
    """True if `hashes.sha256` matches the event's content hash.

    `content_hash_bytes`, when given, is `encode_content_hash_bytes(event)` (saves re-encoding).
    """
    hashes = event.get("hashes")
    if type(hashes) is not dict and not isinstance(hashes, Mapping):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    if content_hash_bytes is None:
        content_hash_bytes = encode_content_hash_bytes(event)
    return _is_base64_of(claimed, hashlib.sha256(content_hash_bytes).digest())


def _is_base64_of(claimed: str, digest: bytes) -> bool:
    if claimed == encode_base64(digest):  # the usual spelling: no decoding needed
        return True
    try:  # padded, or other bits in the last character's padding
        return decode_base64(claimed) == digest
    except Base64Error:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedEvent:
    """A newly hashed and signed event and its event ID (from the bytes that were signed)."""

    json: JsonDict
    event_id: EventId


def build_signed_event(
    event: Mapping[str, Any],
    rules: RoomVersionRules,
    server_name: str,
    key: SigningKey,
    *,
    values_checked: bool = False,
) -> SignedEvent:
    """Set the content hash of `event`, sign it as `server_name`, and compute its event ID.

    Raises `CanonicalJsonError` if a value is not canonical JSON (`values_checked=True`: the
    caller ran `check_canonical_value` on `event` already). Existing signatures of other
    servers are kept; `unsigned` is kept and covered by neither hash nor signature.
    Spec: server-server API "Signing events" and "Calculating the reference hash".
    """
    if not values_checked:
        check_canonical_value(event)
    # 1. The content hash, over the full event without unsigned, signatures and hashes.
    content_hash = compute_content_hash(event)
    hashed: JsonDict = dict(event)
    hashed["hashes"] = {"sha256": encode_base64(content_hash)}
    # 2. Redact a copy and drop signatures and unsigned: the bytes to sign and to hash for the
    #    reference hash (the event ID) are the same.
    message = encode_signing_bytes(hashed, rules)
    # 3. Sign those bytes and put the signature on the full event.
    old = hashed.get("signatures")
    signatures: dict[str, Any] = (
        {}
        if old is None
        else {k: dict(v) for k, v in _as_mapping(old).items() if isinstance(v, Mapping)}
    )
    signatures.setdefault(server_name, {})[key.key_id] = encode_base64(key.sign(message))
    hashed["signatures"] = signatures
    event_id = EventId("$" + encode_base64_urlsafe(hashlib.sha256(message).digest()))
    return SignedEvent(json=hashed, event_id=event_id)


def add_hashes_and_signature(
    event: Mapping[str, Any], rules: RoomVersionRules, server_name: str, key: SigningKey
) -> JsonDict:
    """Return the event with its content hash set and signed by `server_name` (outgoing path).

    See `build_signed_event`, which also returns the event ID.
    """
    return build_signed_event(event, rules, server_name, key).json


def _as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def check_event_signatures(
    event: Mapping[str, Any], keys: KeyLookup, *, message: bytes | None = None
) -> None:
    """`check_json_signature` of `event` for each server of `required_signers(event)`, in that
    order (raises the first `SignatureError`). `message`: as for `check_json_signature`.

    The usual event needs only its sender's server: that case builds no list of signers.
    """
    sender = event.get("sender")
    if type(sender) is str:
        # (`server_of(sender)` in line: everything after the first ':', else "".)
        if event.get("type") != "m.room.member":
            check_json_signature(event, ServerName(sender.partition(":")[2]), keys, message=message)
            return
        content = event.get("content")
        if type(content) is dict and _AUTHORISER not in content:
            check_json_signature(event, ServerName(sender.partition(":")[2]), keys, message=message)
            return
    for server in required_signers(event):
        check_json_signature(event, server, keys, message=message)


_AUTHORISER = "join_authorised_via_users_server"


def required_signers(event: Mapping[str, Any]) -> list[ServerName]:
    """Servers whose signature an event needs (room versions >= 3).

    The sender's server, and for a member event naming `join_authorised_via_users_server`, that
    user's server too (auth rule "member 2": the authorising server of a restricted join).
    """
    sender = event.get("sender")
    servers = [server_of(sender)] if isinstance(sender, str) else []
    if event.get("type") == "m.room.member":
        content = event.get("content")
        if type(content) is dict or isinstance(content, Mapping):
            via = content.get(_AUTHORISER)
            if isinstance(via, str) and ":" in via and server_of(via) not in servers:
                servers.append(server_of(via))
    return servers


@dataclass(frozen=True, slots=True)
class EventCheck:
    """What `check_event` found: the event ID and whether the content hash matched.

    `size` is the length of the canonical JSON of the whole event as received (signatures and
    `unsigned` included), for `events.parse_pdu(encoded_size=...)`; None only when the members
    outside the content hash could not be encoded. A measurement, not part of the verdict: two
    checks are equal when their event ID and hash verdict are.
    """

    event_id: EventId
    hash_ok: bool
    size: int | None = field(default=None, compare=False)


def check_event(
    event: Mapping[str, Any],
    rules: RoomVersionRules,
    keys: KeyLookup,
    *,
    signers: list[ServerName] | None = None,
) -> EventCheck:
    """Verify an incoming event: signatures of every required server, then the content hash.

    Raises `SignatureError` when a required signature is missing or invalid (the event must be
    dropped). A hash mismatch is reported, not raised: the receiver then keeps the redacted
    copy. The event ID comes from the same bytes the signatures cover. The bytes of the content
    hash also give the event's encoded size (`EventCheck.size`) at little extra cost.
    """
    message = encode_signing_bytes(event, rules)
    event_id = EventId("$" + encode_base64_urlsafe(hashlib.sha256(message).digest()))
    if signers is None:
        check_event_signatures(event, keys, message=message)
    for server in signers or ():
        check_json_signature(event, server, keys, message=message)
    # (As `is_content_hash_valid`, keeping the encoded bytes for the size.)
    hash_form, left_out = _split_content_hash_form(event)
    hashed = encode_canonical_json_trusted(hash_form)
    hashes = event.get("hashes")
    claimed = hashes.get("sha256") if type(hashes) is dict or isinstance(hashes, Mapping) else None
    hash_ok = isinstance(claimed, str) and _is_base64_of(claimed, hashlib.sha256(hashed).digest())
    try:
        size: int | None = _event_size(len(hashed), left_out)
    except (TypeError, ValueError, RecursionError):  # `unsigned` or `signatures` not JSON
        size = None
    return EventCheck(event_id, hash_ok, size)
