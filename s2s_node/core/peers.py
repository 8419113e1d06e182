"""Peers on the LAN: mDNS advertisements, key documents, and the peer table.

Owns: the DNS-SD names and TXT record of the `_matrix-p2p._tcp` service (building ours, parsing
theirs as untrusted input), the self-signed key document of `GET /_matrix/key/v2/server`
(building ours, checking theirs against the identifier it must certify), and the peer table's
state machine (added -> verified -> unreachable -> departed), driven by events the discovery
shell feeds in with the current time. Must not: do I/O, read clocks, or trust a TXT record for
identity — TXT is a hint; only a key document whose signature verifies with the key the
identifier encodes makes a peer usable.

Design: DESIGN.md sections 3 and 8. DNS-SD TXT format: RFC 6763 section 6. Key documents:
matrix-digest section 2.3 (server-server API "Retrieving server keys").
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from s2s_node.core.canonical import CanonicalJsonError, JsonDict, decode_base64, encode_base64
from s2s_node.core.ids import ServerName
from s2s_node.core.keys import KEY_ID, SigningKey, is_identifier, verify_key_bytes_from_identifier
from s2s_node.core.signing import SignatureError, check_json_signature, derived_keys, sign_json

SERVICE_TYPE = "_matrix-p2p._tcp.local."
TXT_VERSION = "1"
KNOWN_ENCODINGS = frozenset({"json", "cbor"})

# RFC 6763 section 6.2: a TXT record should stay small (<= 400 bytes is "good"); ours is about
# 100 bytes. Anything past this is someone else's record or an attack on our parser.
MAX_TXT_BYTES = 512
# Room versions a peer may list; more is garbage. A version string is short (spec: <= 32).
MAX_ROOM_VERSIONS = 16
MAX_ROOM_VERSION_LENGTH = 32
_ROOM_VERSION = re.compile(r"[0-9a-z.\-]{1,32}")
# Addresses kept from one advertisement (a host has a few; more is a flood).
MAX_ADDRESSES = 8
# Peers in the table; beyond it new identifiers are ignored (a LAN flooded with fake names must
# not grow our memory without bound).
MAX_PEERS = 1024
# A key document larger than this is not ours to parse (a real one is about 400 bytes).
MAX_KEY_DOCUMENT_BYTES = 64 * 1024


# ----------------------------------------------------------------------------------------------
# Advertisements (DNS-SD names and TXT)


class AdvertReason(enum.Enum):
    """Why an advertisement was ignored."""

    WRONG_SERVICE_TYPE = "wrong_service_type"  # the name is not `<label>._matrix-p2p._tcp.local.`
    INSTANCE_NOT_IDENTIFIER = "instance_not_identifier"  # the instance label is not an identifier
    OWN_IDENTIFIER = "own_identifier"  # it names us (our own record, or someone posing as us)
    TXT_TOO_LARGE = "txt_too_large"  # over MAX_TXT_BYTES
    TXT_MALFORMED = "txt_malformed"  # bad length prefixes, empty key, non-UTF-8 values
    UNSUPPORTED_VERSION = "unsupported_version"  # `v` missing or not "1"
    MISSING_SERVER_NAME = "missing_server_name"  # no `sn`
    SERVER_NAME_NOT_IDENTIFIER = "server_name_not_identifier"  # `sn` is not an identifier
    SERVER_NAME_MISMATCH = "server_name_mismatch"  # `sn` differs from the instance label
    BAD_FIELD = "bad_field"  # `enc`, `rv` or `tls` malformed
    BAD_PORT = "bad_port"  # not 1..65535
    NO_ADDRESS = "no_address"  # no usable unicast address
    TABLE_FULL = "table_full"  # MAX_PEERS reached


class AdvertError(ValueError):
    def __init__(self, reason: AdvertReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAdvert:
    """A parsed, well-formed advertisement. Still only a claim: nothing here is verified."""

    identifier: ServerName
    addresses: tuple[str, ...]
    port: int
    encodings: frozenset[str]
    room_versions: tuple[str, ...]
    tls: bool

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        return tuple((address, self.port) for address in self.addresses)


def build_instance_name(identifier: str) -> str:
    """The DNS-SD service instance name of a node: `<identifier>._matrix-p2p._tcp.local.`."""
    return f"{identifier}.{SERVICE_TYPE}"


def build_txt(
    identifier: str,
    *,
    encodings: Iterable[str] = ("json", "cbor"),
    room_versions: Iterable[str] = ("10", "11", "12"),
    tls: bool = True,
) -> dict[str, str]:
    """Our TXT key/value pairs (DESIGN.md section 8), in the order they are sent."""
    return {
        "v": TXT_VERSION,
        "sn": identifier,
        "enc": ",".join(encodings),
        "rv": ",".join(room_versions),
        "tls": "1" if tls else "0",
    }


def parse_txt(data: bytes) -> dict[str, str | None]:
    """Decode raw TXT RDATA (RFC 6763 section 6) into key -> value; None for a bare key.

    Keys are compared case-insensitively (6.4), so they are lower-cased; of a repeated key only
    the first counts (6.4). Zero-length strings are skipped (6.1 allows a lone one). Raises
    `AdvertError` (TXT_TOO_LARGE, TXT_MALFORMED).
    """
    if len(data) > MAX_TXT_BYTES:
        raise AdvertError(AdvertReason.TXT_TOO_LARGE, f"{len(data)} bytes > {MAX_TXT_BYTES}")
    pairs: dict[str, str | None] = {}
    at = 0
    while at < len(data):
        length = data[at]
        entry = data[at + 1 : at + 1 + length]
        if len(entry) != length:
            raise AdvertError(AdvertReason.TXT_MALFORMED, "a string runs past the record's end")
        at += 1 + length
        if not entry:
            continue
        raw_key, equals, raw_value = entry.partition(b"=")
        # 6.4: the key is printable US-ASCII other than '=', at least one character.
        if not raw_key or any(b < 0x20 or b > 0x7E for b in raw_key):
            raise AdvertError(AdvertReason.TXT_MALFORMED, "empty or non-printable key")
        key = raw_key.decode("ascii").lower()
        if key in pairs:
            continue
        if not equals:
            pairs[key] = None
            continue
        try:
            pairs[key] = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise AdvertError(
                AdvertReason.TXT_MALFORMED, f"value of {key!r} is not UTF-8"
            ) from None
    return pairs


def parse_instance_identifier(name: str) -> ServerName:
    """The identifier an instance name claims. Raises `AdvertError`.

    DNS names are case-insensitive, so the label is lower-cased before it is checked.
    """
    suffix = "." + SERVICE_TYPE
    if not name.lower().endswith(suffix.lower()):
        raise AdvertError(AdvertReason.WRONG_SERVICE_TYPE, f"{name[:100]!r}")
    label = name[: -len(suffix)].lower()
    if not is_identifier(label):
        raise AdvertError(AdvertReason.INSTANCE_NOT_IDENTIFIER, f"{label[:70]!r}")
    return ServerName(label)


def _parse_list(value: str | None, field: str, max_items: int) -> tuple[str, ...]:
    if value is None:
        raise AdvertError(AdvertReason.BAD_FIELD, f"{field} has no value")
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if len(items) > max_items:
        raise AdvertError(AdvertReason.BAD_FIELD, f"{field} lists {len(items)} items")
    return items


def _parse_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_unspecified or address.is_multicast:
            continue
        if str(address) not in kept:
            kept.append(str(address))
        if len(kept) == MAX_ADDRESSES:
            break
    return tuple(kept)


def parse_advert(
    name: str,
    txt: bytes,
    port: int | None,
    addresses: Sequence[str],
    *,
    own_identifier: str,
) -> PeerAdvert:
    """Turn one resolved mDNS service (name, TXT RDATA, SRV port, A/AAAA) into a `PeerAdvert`.

    Raises `AdvertError` with the first reason that applies; never anything else.
    """
    identifier = parse_instance_identifier(name)
    if identifier == own_identifier:
        raise AdvertError(AdvertReason.OWN_IDENTIFIER, "the advertisement names us")
    fields = parse_txt(txt)
    if fields.get("v") != TXT_VERSION:
        raise AdvertError(AdvertReason.UNSUPPORTED_VERSION, f"v={fields.get('v')!r}")
    server_name = fields.get("sn")
    if server_name is None:
        raise AdvertError(AdvertReason.MISSING_SERVER_NAME, "no sn")
    if not is_identifier(server_name):
        raise AdvertError(AdvertReason.SERVER_NAME_NOT_IDENTIFIER, f"sn={server_name[:70]!r}")
    if server_name != identifier:
        raise AdvertError(AdvertReason.SERVER_NAME_MISMATCH, "sn differs from the instance name")
    # A missing `enc` means JSON only; unknown encodings are a newer peer's, not an error.
    encodings = frozenset(_parse_list(fields.get("enc", "json"), "enc", 8)) & KNOWN_ENCODINGS
    if not encodings:
        raise AdvertError(AdvertReason.BAD_FIELD, "enc names no encoding we know")
    room_versions = _parse_list(fields.get("rv", ""), "rv", MAX_ROOM_VERSIONS)
    if not all(_ROOM_VERSION.fullmatch(v) for v in room_versions):
        raise AdvertError(AdvertReason.BAD_FIELD, "rv holds a malformed room version")
    tls_value = fields.get("tls", "0")
    if tls_value not in ("0", "1"):
        raise AdvertError(AdvertReason.BAD_FIELD, f"tls={str(tls_value)[:10]!r}")
    if port is None or not 0 < port < 65536:
        raise AdvertError(AdvertReason.BAD_PORT, f"port {port!r}")
    kept = _parse_addresses(addresses)
    if not kept:
        raise AdvertError(AdvertReason.NO_ADDRESS, "no unicast address")
    return PeerAdvert(
        identifier=identifier,
        addresses=kept,
        port=port,
        encodings=encodings,
        room_versions=room_versions,
        tls=tls_value == "1",
    )


# ----------------------------------------------------------------------------------------------
# Key documents


class KeyDocumentReason(enum.Enum):
    """Why a key document does not certify the node it was fetched for."""

    NOT_OBJECT = "not_object"
    SERVER_NAME_NOT_IDENTIFIER = "server_name_not_identifier"  # no key derives from it
    SERVER_NAME_MISMATCH = "server_name_mismatch"  # another node's document
    MISSING_KEY = "missing_key"  # verify_keys has no `ed25519:1` with a `key`
    KEY_MISMATCH = "key_mismatch"  # `ed25519:1` is not the key the identifier encodes
    BAD_SIGNATURE = "bad_signature"  # not self-signed by that key
    BAD_VALID_UNTIL = "bad_valid_until"  # `valid_until_ts` missing or not an integer
    EXPIRED = "expired"  # `valid_until_ts` is in the past (a stale copy)


class KeyDocumentError(ValueError):
    def __init__(self, reason: KeyDocumentReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def build_key_document(key: SigningKey, *, valid_until_ts: int) -> JsonDict:
    """Our self-signed answer to `GET /_matrix/key/v2/server` (matrix-digest 2.3)."""
    document = {
        "server_name": key.identifier,
        "verify_keys": {key.key_id: {"key": encode_base64(key.verify_key_bytes)}},
        "old_verify_keys": {},
        "valid_until_ts": valid_until_ts,
    }
    return sign_json(document, key.identifier, key)


def check_key_document(document: object, *, expected: str | None, now_ms: int) -> ServerName:
    """Check that `document` certifies its `server_name`; return that identifier.

    `expected` is the identifier the document was fetched for (None when any identifier is
    acceptable, e.g. a static `host:port` peer). Raises `KeyDocumentError`.
    """
    if not isinstance(document, dict):
        raise KeyDocumentError(KeyDocumentReason.NOT_OBJECT, "the key document is not an object")
    # 1. The server name is an identifier, and the one we asked for.
    server_name = document.get("server_name")
    if not isinstance(server_name, str) or not is_identifier(server_name):
        raise KeyDocumentError(
            KeyDocumentReason.SERVER_NAME_NOT_IDENTIFIER, f"server_name {str(server_name)[:70]!r}"
        )
    if expected is not None and server_name != expected:
        raise KeyDocumentError(
            KeyDocumentReason.SERVER_NAME_MISMATCH, "the document is another node's"
        )
    # 2. Its `ed25519:1` key is the key the identifier encodes.
    verify_keys = document.get("verify_keys")
    entry: Any = verify_keys.get(KEY_ID) if isinstance(verify_keys, dict) else None
    key_b64 = entry.get("key") if isinstance(entry, dict) else None
    if not isinstance(key_b64, str):
        raise KeyDocumentError(KeyDocumentReason.MISSING_KEY, f"no {KEY_ID} key")
    try:
        published = decode_base64(key_b64)
    except ValueError:
        published = b""
    if published != verify_key_bytes_from_identifier(server_name):
        raise KeyDocumentError(KeyDocumentReason.KEY_MISMATCH, f"{KEY_ID} is another key")
    # 3. Self-signed with that key (the derived-key lookup knows no other).
    try:
        check_json_signature(document, server_name, derived_keys)
    except SignatureError as exc:
        raise KeyDocumentError(KeyDocumentReason.BAD_SIGNATURE, exc.detail) from None
    except CanonicalJsonError as exc:  # e.g. a float, from a fetcher that is not the strict decoder
        raise KeyDocumentError(
            KeyDocumentReason.BAD_SIGNATURE, f"not canonical JSON: {exc.detail}"
        ) from None
    # 4. Still valid: an expired document is a stale copy, whoever serves it.
    valid_until = document.get("valid_until_ts")
    if type(valid_until) is not int:
        raise KeyDocumentError(KeyDocumentReason.BAD_VALID_UNTIL, "valid_until_ts not an integer")
    if valid_until < now_ms:
        raise KeyDocumentError(KeyDocumentReason.EXPIRED, f"expired at {valid_until}")
    return ServerName(server_name)


# ----------------------------------------------------------------------------------------------
# The peer table


class ChangeKind(enum.Enum):
    ADDED = "added"  # first advertisement of an identifier (not yet usable)
    VERIFIED = "verified"  # usable: first verification, a new endpoint, or reachable again
    UPDATED = "updated"  # the advertisement changed (addresses, port, TXT hints)
    UNREACHABLE = "unreachable"  # probes failing; kept, not used
    DEPARTED = "departed"  # removed: mDNS goodbye, or probes failed for too long


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """A snapshot of one table entry. `endpoint` is where it was verified; only that is used."""

    identifier: ServerName
    addresses: tuple[str, ...]
    port: int
    encodings: frozenset[str]
    room_versions: tuple[str, ...]
    tls: bool
    endpoint: tuple[str, int] | None
    first_seen_ms: int
    last_seen_ms: int
    alive: bool
    probe_failures: int

    @property
    def verified(self) -> bool:
        return self.endpoint is not None

    @property
    def usable(self) -> bool:
        return self.endpoint is not None and self.alive

    def needs_verification(self) -> bool:
        """True when the verified endpoint (if any) is not one it advertises."""
        return self.endpoint is None or self.endpoint not in _endpoints(self)


def _endpoints(peer: Peer) -> tuple[tuple[str, int], ...]:
    return tuple((address, peer.port) for address in peer.addresses)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerChange:
    kind: ChangeKind
    peer: Peer

    @property
    def wake(self) -> bool:
        """The peer just became usable: whoever backs off from it should try again now."""
        return self.kind is ChangeKind.VERIFIED


@dataclass(frozen=True, slots=True, kw_only=True)
class Liveness:
    """When probe failures make a peer unreachable, and when they remove it."""

    unreachable_after: int = 2
    depart_after: int = 5


class PeerTable:
    """The peers discovery knows, keyed by identifier; every method returns what changed.

    A state machine in the h11 manner: the shell reports what it saw (an advertisement, a
    goodbye, a verification, a probe result) with the time, and gets the change to announce.
    """

    def __init__(self, *, liveness: Liveness = Liveness(), max_peers: int = MAX_PEERS) -> None:
        self._peers: dict[ServerName, Peer] = {}
        self._liveness = liveness
        self._max_peers = max_peers

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, identifier: str) -> Peer | None:
        return self._peers.get(ServerName(identifier))

    def snapshot(self) -> tuple[Peer, ...]:
        return tuple(sorted(self._peers.values(), key=lambda peer: peer.identifier))

    def endpoint_of(self, identifier: str) -> tuple[str, int] | None:
        """Where a usable peer is reached; None if it is unknown, unverified or unreachable."""
        peer = self._peers.get(ServerName(identifier))
        return peer.endpoint if peer is not None and peer.alive else None

    def observe(self, advert: PeerAdvert, now_ms: int) -> PeerChange | None:
        """An advertisement was seen. Raises `AdvertError(TABLE_FULL)` for a new peer past the cap.

        A changed advertisement does not drop a verified endpoint: anyone can announce anything,
        so the old endpoint stays in use until probes fail or a new one is verified.
        """
        old = self._peers.get(advert.identifier)
        if old is None:
            if len(self._peers) >= self._max_peers:
                raise AdvertError(AdvertReason.TABLE_FULL, f"{self._max_peers} peers")
            peer = Peer(
                identifier=advert.identifier,
                addresses=advert.addresses,
                port=advert.port,
                encodings=advert.encodings,
                room_versions=advert.room_versions,
                tls=advert.tls,
                endpoint=None,
                first_seen_ms=now_ms,
                last_seen_ms=now_ms,
                alive=False,
                probe_failures=0,
            )
            self._peers[advert.identifier] = peer
            return PeerChange(kind=ChangeKind.ADDED, peer=peer)
        new = replace(
            old,
            addresses=advert.addresses,
            port=advert.port,
            encodings=advert.encodings,
            room_versions=advert.room_versions,
            tls=advert.tls,
            last_seen_ms=now_ms,
        )
        self._peers[advert.identifier] = new
        if replace(new, last_seen_ms=old.last_seen_ms) == old:
            return None
        return PeerChange(kind=ChangeKind.UPDATED, peer=new)

    def mark_verified(
        self, identifier: str, endpoint: tuple[str, int], now_ms: int
    ) -> PeerChange | None:
        """Its key document, fetched from `endpoint`, certified it."""
        old = self._peers.get(ServerName(identifier))
        if old is None:
            return None
        new = replace(old, endpoint=endpoint, alive=True, probe_failures=0, last_seen_ms=now_ms)
        self._peers[old.identifier] = new
        if old.usable and old.endpoint == endpoint:
            return None
        return PeerChange(kind=ChangeKind.VERIFIED, peer=new)

    def mark_probe_ok(self, identifier: str, now_ms: int) -> PeerChange | None:
        """A probe of its verified endpoint succeeded (same identity as before)."""
        old = self._peers.get(ServerName(identifier))
        if old is None or old.endpoint is None:
            return None
        return self.mark_verified(identifier, old.endpoint, now_ms)

    def mark_probe_failed(self, identifier: str, now_ms: int) -> PeerChange | None:
        """A probe failed: after `unreachable_after` in a row it is not used, after
        `depart_after` it is removed."""
        old = self._peers.get(ServerName(identifier))
        if old is None or old.endpoint is None:
            return None
        failures = old.probe_failures + 1
        if failures >= self._liveness.depart_after:
            return self.remove(identifier)
        alive = old.alive and failures < self._liveness.unreachable_after
        new = replace(old, probe_failures=failures, alive=alive)
        self._peers[old.identifier] = new
        if old.alive and not alive:
            return PeerChange(kind=ChangeKind.UNREACHABLE, peer=new)
        return None

    def remove(self, identifier: str) -> PeerChange | None:
        """It said goodbye (or probes gave up on it)."""
        old = self._peers.pop(ServerName(identifier), None)
        if old is None:
            return None
        return PeerChange(kind=ChangeKind.DEPARTED, peer=replace(old, alive=False))


def format_peer(peer: Peer) -> Mapping[str, object]:
    """A JSON-ready view of a peer (for `s2s-node peers --json` and the test programs)."""
    return {
        "identifier": peer.identifier,
        "addresses": list(peer.addresses),
        "port": peer.port,
        "encodings": sorted(peer.encodings),
        "room_versions": list(peer.room_versions),
        "tls": peer.tls,
        "endpoint": None if peer.endpoint is None else f"{peer.endpoint[0]}:{peer.endpoint[1]}",
        "verified": peer.verified,
        "alive": peer.alive,
        "first_seen_ms": peer.first_seen_ms,
        "last_seen_ms": peer.last_seen_ms,
    }
