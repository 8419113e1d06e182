"""The federation API of a node: `/version`, the key document, transactions and room reads.

Owns: `FederationApi`, the handlers of `GET /_matrix/federation/v1/version`,
`GET /_matrix/key/v2/server`, `PUT /v1/send/{txnId}`, `GET /v1/event/{eventId}`,
`GET /v1/state/{roomId}`, `GET /v1/state_ids/{roomId}`, `GET /v1/event_auth/{roomId}/{eventId}`,
`POST /v1/get_missing_events/{roomId}` and `GET /v1/backfill/{roomId}`, and the router with the
membership handshakes of `fed_membership`. Every handler but the first two authenticates the
request (X-Matrix) before anything else; the room reads answer only a server that is in the
room (403 otherwise). Bodies are accepted as JSON or CBOR and answered in what the request's
Accept prefers. Must not: run receipt checks itself (the rooms' ingest does) or fetch from
peers other than through gap filling.

Spec: server-server API, digest 8.1-8.4 and 8.7 (`version`); DESIGN.md section 7.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

import trio

from s2s_node import __version__
from s2s_node.core.canonical import (
    JsonDict,
    JsonValue,
    encode_canonical_json_trusted,
    parse_json_object,
)
from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId, RoomId, ServerName
from s2s_node.core.ingest import Outcome, Verdict
from s2s_node.core.keys import SigningKey
from s2s_node.core.peers import build_key_document
from s2s_node.core.room import RoomGraph
from s2s_node.core.wire import JSON_CONTENT_TYPE, choose_response_type
from s2s_node.net.auth import AuthenticatedRequest, authenticate_request
from s2s_node.net.errors import (
    M_BAD_JSON,
    M_FORBIDDEN,
    M_MISSING_PARAM,
    M_NOT_FOUND,
    HttpError,
)
from s2s_node.net.http import Request, Response, build_negotiated_response
from s2s_node.net.peers import ENCODINGS_FIELD
from s2s_node.net.router import Route
from s2s_node.rooms import (
    NodeRooms,
    UnknownRoomError,
    compute_auth_chain,
    compute_servers_in_room,
)
from s2s_node.store import SqliteRoomStore, Store
from s2s_node.store.federation import MAX_TXN_EDUS, MAX_TXN_PDUS

logger = logging.getLogger(__name__)

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"
# How long our served key document says it is valid. The key never changes (the identifier is
# the key), so this is only a caching hint for tools.
KEY_DOCUMENT_VALIDITY_MS = 24 * 60 * 60 * 1000
# Events one get_missing_events or backfill answer may carry (the request's limit is capped).
MAX_EVENTS_PER_ANSWER = 1_000

_OK_OUTCOMES = (Outcome.ACCEPTED, Outcome.SOFT_FAILED)

# (room, origin, deferred PDUs with their verdicts) -> their verdicts after filling the gap.
FillGap = Callable[[RoomId, ServerName, list[tuple[JsonDict, Verdict]]], Awaitable[list[Verdict]]]


def require_in_room(graph: RoomGraph, origin: str) -> None:
    """403 unless `origin` has a joined member in the room (digest 8.4)."""
    if origin not in compute_servers_in_room(graph):
        raise HttpError(403, M_FORBIDDEN, f"{origin[:60]} is not in {graph.room_id}")


def require_event(graph: RoomGraph, event_id: str) -> Pdu:
    pdu = graph.store.get_pdu(EventId(event_id))
    if pdu is None:
        raise HttpError(404, M_NOT_FOUND, f"unknown event {event_id[:100]} in {graph.room_id}")
    return pdu


def state_before_with_auth_chain(
    graph: RoomGraph, event_id: EventId
) -> tuple[list[EventId], list[Pdu]]:
    """The state before `event_id` (404 if unknown) and its auth chain: what `/state` and
    `/state_ids` answer, as events or as IDs."""
    require_event(graph, event_id)
    state_ids = list(graph.state_before(event_id).values())
    return state_ids, compute_auth_chain(graph, state_ids)


def require_object(content: JsonValue) -> JsonDict:
    if not isinstance(content, dict):
        raise HttpError(400, M_BAD_JSON, "the body must be a JSON object")
    return content


def verdict_result(verdict: Verdict) -> JsonDict:
    """A PDU's entry in a transaction answer: {} on success, else {"error": ...}."""
    if verdict.outcome in _OK_OUTCOMES:
        return {}
    reason = "" if verdict.reason is None else f": {verdict.reason.value}"
    rule = "" if verdict.rule is None else f" ({verdict.rule.value})"
    return {"error": f"{verdict.outcome.value}{reason}{rule}: {verdict.detail}"[:500]}


class FederationApi:
    """The handlers; built by the node with what they need."""

    def __init__(
        self,
        *,
        rooms: NodeRooms,
        key: SigningKey,
        now_ms: Callable[[], int],
        fill_gap: FillGap,
        cbor: bool = True,
    ) -> None:
        self.rooms = rooms
        self.key = key
        self.identifier = key.identifier
        self.now_ms = now_ms
        self.fill_gap = fill_gap
        self.cbor = cbor
        self._origin_locks: dict[str, trio.Lock] = {}
        # Awaited before giving up on a PDU of an unknown room (the node is joining it).
        self.room_pending: Callable[[str], Awaitable[None]] = _no_wait

    def authenticate(self, request: Request) -> AuthenticatedRequest:
        return authenticate_request(request, self.identifier)

    async def read_room(
        self, room_id: str, fn: Callable[[RoomGraph], Any], *, origin: str | None = None
    ) -> Any:
        """`fn(graph)` on a reader; 404 for an unknown room, 403 if `origin` is not in it."""

        def run(graph: RoomGraph) -> Any:
            if origin is not None:
                require_in_room(graph, origin)
            return fn(graph)

        try:
            return await self.rooms.read(room_id, run)
        except UnknownRoomError:
            raise HttpError(404, M_NOT_FOUND, f"unknown room {room_id[:100]}") from None

    # -- unauthenticated

    async def version(self, request: Request) -> Response:
        encodings = ["json", "cbor"] if self.cbor else ["json"]
        server: JsonDict = {"name": "s2s-node", "version": __version__, ENCODINGS_FIELD: encodings}
        return build_negotiated_response(request, {"server": server})

    async def server_key(self, request: Request) -> Response:
        return build_negotiated_response(
            request,
            build_key_document(self.key, valid_until_ts=self.now_ms() + KEY_DOCUMENT_VALIDITY_MS),
        )

    # -- transactions

    async def send_transaction(self, request: Request) -> Response:
        auth = self.authenticate(request)
        origin = auth.origin
        txn_id = request.path_params["txnId"]
        body = require_object(auth.content)
        pdus = body.get("pdus")
        edus = body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise HttpError(400, M_BAD_JSON, "pdus (and edus) must be lists")
        if body.get("origin", origin) != origin:
            raise HttpError(400, M_BAD_JSON, "the transaction's origin is not the request's")
        if len(pdus) > MAX_TXN_PDUS or len(edus) > MAX_TXN_EDUS:
            raise HttpError(
                400,
                M_BAD_JSON,
                f"{len(pdus)} PDUs and {len(edus)} EDUs; a transaction carries at most"
                f" {MAX_TXN_PDUS} PDUs and {MAX_TXN_EDUS} EDUs",
            )
        lock = self._origin_locks.setdefault(origin, trio.Lock())
        try:
            async with lock:  # one transaction of an origin at a time; a retry waits, repeats
                answer = await self._process_transaction(origin, txn_id, pdus)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._origin_locks.pop(origin, None)  # keep no lock per past origin
        return build_negotiated_response(request, answer)

    async def _process_transaction(
        self, origin: ServerName, txn_id: str, pdus: list[JsonValue]
    ) -> JsonDict:
        """The answer to a transaction: from the record if it was processed before."""
        recorded = await self.rooms.astore.read(
            lambda store: store.received_txns.get(origin, txn_id)
        )
        if recorded is not None:
            return recorded
        results = await self.process_pdus(origin, pdus)
        answer: JsonDict = {"pdus": results}
        now = self.now_ms()

        def record(store: Store) -> None:
            store.received_txns.record(origin, txn_id, answer, now)

        await self.rooms.astore.write(record)
        return answer

    async def process_pdus(self, origin: ServerName, pdus: Sequence[JsonValue]) -> JsonDict:
        """Ingest a transaction's PDUs room by room (gaps filled from `origin`)."""
        by_room: dict[str, list[JsonDict]] = {}
        for obj in pdus:
            room_id = obj.get("room_id") if isinstance(obj, dict) else None
            if isinstance(obj, dict) and isinstance(room_id, str):
                by_room.setdefault(room_id, []).append(obj)
            # A PDU without a room cannot be placed (nor keyed by an event ID): dropped.
        results: JsonDict = {}
        for room_id, objs in by_room.items():
            rules = await self.rooms.room_rules(room_id)
            if rules is None:
                await self.room_pending(room_id)
                rules = await self.rooms.room_rules(room_id)
            if rules is None:
                logger.info("%s sent %d PDUs of unknown room %s", origin[:12], len(objs), room_id)
                continue
            verdicts = await self.rooms.ingest(RoomId(room_id), objs, values_checked=True)
            deferred = [
                (obj, v)
                for obj, v in zip(objs, verdicts, strict=True)
                if v.outcome is Outcome.DEFERRED
            ]
            if deferred:
                filled = await self.fill_gap(RoomId(room_id), origin, deferred)
                by_id = {v.event_id: v for v in filled}
                verdicts = [by_id.get(v.event_id, v) for v in verdicts]
            for verdict in verdicts:
                if verdict.event_id is not None:
                    results[verdict.event_id] = verdict_result(verdict)
        return results

    # -- reads

    async def event(self, request: Request) -> Response:
        origin = self.authenticate(request).origin
        event_id = EventId(request.path_params["eventId"])

        def run(store: Store) -> Pdu | None:
            for room_id, _ in store.rooms():
                room = store.room(room_id)
                pdu = None if room is None else room.get_pdu(event_id)
                if room is not None and pdu is not None:
                    require_in_room(RoomGraph(room.rules, room_id, room), origin)
                    return pdu
            return None

        pdu = await self.rooms.astore.read(run)
        if pdu is None:
            raise HttpError(404, M_NOT_FOUND, f"unknown event {event_id[:100]}")
        return build_negotiated_response(request, self._single_pdu_transaction([pdu]))

    def _single_pdu_transaction(self, pdus: Sequence[Pdu]) -> JsonDict:
        return {
            "origin": self.identifier,
            "origin_server_ts": self.now_ms(),
            "pdus": [p.json for p in pdus],
        }

    def _event_id_param(self, request: Request) -> EventId:
        event_id = request.query_value("event_id")
        if event_id is None:
            raise HttpError(400, M_MISSING_PARAM, "event_id is required")
        return EventId(event_id)

    async def state(self, request: Request) -> Response:
        origin = self.authenticate(request).origin
        event_id = self._event_id_param(request)

        def run(graph: RoomGraph) -> JsonDict:
            state_ids, chain = state_before_with_auth_chain(graph, event_id)
            return {
                "pdus": [graph.get_event(e).json for e in state_ids],
                "auth_chain": [p.json for p in chain],
            }

        answer = await self.read_room(request.path_params["roomId"], run, origin=origin)
        return build_negotiated_response(request, answer)

    async def state_ids(self, request: Request) -> Response:
        origin = self.authenticate(request).origin
        event_id = self._event_id_param(request)

        def run(graph: RoomGraph) -> JsonDict:
            state_ids, chain = state_before_with_auth_chain(graph, event_id)
            return {"pdu_ids": state_ids, "auth_chain_ids": [p.event_id for p in chain]}

        answer = await self.read_room(request.path_params["roomId"], run, origin=origin)
        return build_negotiated_response(request, answer)

    async def event_auth(self, request: Request) -> Response:
        origin = self.authenticate(request).origin
        event_id = EventId(request.path_params["eventId"])

        def run(graph: RoomGraph) -> JsonDict:
            require_event(graph, event_id)
            return {"auth_chain": [p.json for p in compute_auth_chain(graph, [event_id])]}

        answer = await self.read_room(request.path_params["roomId"], run, origin=origin)
        return build_negotiated_response(request, answer)

    async def get_missing_events(self, request: Request) -> Response:
        auth = self.authenticate(request)
        body = require_object(auth.content)
        earliest = body.get("earliest_events")
        latest = body.get("latest_events")
        limit = body.get("limit", 10)
        min_depth = body.get("min_depth", 0)
        if not isinstance(earliest, list) or not isinstance(latest, list):
            raise HttpError(400, M_BAD_JSON, "earliest_events and latest_events must be lists")
        if not _is_str_list(earliest) or not _is_str_list(latest):
            raise HttpError(400, M_BAD_JSON, "earliest_events and latest_events must be lists")
        if not _is_int(limit) or not _is_int(min_depth):
            raise HttpError(400, M_BAD_JSON, "limit and min_depth must be integers")
        limit = max(0, min(int(limit), MAX_EVENTS_PER_ANSWER))

        def run(graph: RoomGraph) -> list[bytes]:
            starts = [p for e in latest for p in _prev_events_of(graph, EventId(e))]
            return walk_prev_events(
                graph,
                starts,
                skip={EventId(e) for e in earliest},
                limit=limit,
                min_depth=int(min_depth),
            )

        found = await self.read_room(request.path_params["roomId"], run, origin=auth.origin)
        return build_events_response(request, {}, "events", found)

    async def backfill(self, request: Request) -> Response:
        origin = self.authenticate(request).origin
        starts = request.query_values("v")
        limit_text = request.query_value("limit")
        if not starts or limit_text is None:
            raise HttpError(400, M_MISSING_PARAM, "v and limit are required")
        if not limit_text.isdigit():
            raise HttpError(400, M_BAD_JSON, "limit must be an integer")
        limit = min(int(limit_text), MAX_EVENTS_PER_ANSWER)

        def run(graph: RoomGraph) -> list[bytes]:
            return walk_prev_events(graph, [EventId(e) for e in starts], skip=set(), limit=limit)

        found = await self.read_room(request.path_params["roomId"], run, origin=origin)
        fields: JsonDict = {"origin": self.identifier, "origin_server_ts": self.now_ms()}
        return build_events_response(request, fields, "pdus", found)


async def _no_wait(room_id: str) -> None:
    return None


def _is_str_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_EVENTS_PER_ANSWER
        and all(isinstance(v, str) for v in value)
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prev_events_of(graph: RoomGraph, event_id: EventId) -> Sequence[EventId]:
    pdu = graph.store.get_pdu(event_id)
    return () if pdu is None else pdu.prev_events


def walk_prev_events(
    graph: RoomGraph,
    starts: Sequence[EventId],
    *,
    skip: Collection[EventId],
    limit: int,
    min_depth: int = 0,
) -> list[bytes]:
    """Breadth-first over prev_events from `starts` (included), not entering `skip`, up to
    `limit` events of depth >= `min_depth` (digest 8.4, get_missing_events and backfill): their
    stored canonical JSON, in the order of the walk. `graph` is on the node's store (one
    recursive query there, `SqliteRoomStore.walk_prev_events`)."""
    store = graph.store
    if not isinstance(store, SqliteRoomStore):
        raise TypeError("walk_prev_events needs a room on the node's store")
    found = store.walk_prev_events(starts, skip=skip, limit=limit, min_depth=min_depth)
    return [data for _, data in found]


def build_events_response(
    request: Request, fields: JsonDict, key: str, events: Sequence[bytes]
) -> Response:
    """`fields` and, under `key`, the events given as their stored canonical JSON, in what the
    request's Accept prefers. As JSON the stored bytes are put in as they are (they were
    checked when stored; no decoding and encoding again), which is the canonical encoding of
    the whole answer since `key` sorts after every key of `fields`; as CBOR they are decoded
    first."""
    if choose_response_type(request.header("accept")) == JSON_CONTENT_TYPE and all(
        k < key for k in fields
    ):
        head = encode_canonical_json_trusted({**fields, key: []})
        body = b"".join((head[:-3], b"[", b",".join(events), b"]}"))
        return Response(status=200, headers=(("content-type", JSON_CONTENT_TYPE),), body=body)
    decoded: list[JsonValue] = [parse_json_object(data) for data in events]
    return build_negotiated_response(request, {**fields, key: decoded})


def build_routes(api: FederationApi, membership: Any) -> list[Route]:
    """Every federation route (`membership` is the `fed_membership.MembershipApi`)."""
    return [
        Route(method="GET", pattern=f"{V1}/version", handler=api.version),
        Route(method="GET", pattern="/_matrix/key/v2/server", handler=api.server_key),
        Route(method="PUT", pattern=f"{V1}/send/{{txnId}}", handler=api.send_transaction),
        Route(method="GET", pattern=f"{V1}/event/{{eventId}}", handler=api.event),
        Route(method="GET", pattern=f"{V1}/state/{{roomId}}", handler=api.state),
        Route(method="GET", pattern=f"{V1}/state_ids/{{roomId}}", handler=api.state_ids),
        Route(
            method="GET", pattern=f"{V1}/event_auth/{{roomId}}/{{eventId}}", handler=api.event_auth
        ),
        Route(
            method="POST",
            pattern=f"{V1}/get_missing_events/{{roomId}}",
            handler=api.get_missing_events,
        ),
        Route(method="GET", pattern=f"{V1}/backfill/{{roomId}}", handler=api.backfill),
        Route(
            method="GET",
            pattern=f"{V1}/make_join/{{roomId}}/{{userId}}",
            handler=membership.make_join,
        ),
        Route(
            method="PUT",
            pattern=f"{V2}/send_join/{{roomId}}/{{eventId}}",
            handler=membership.send_join,
        ),
        Route(
            method="PUT", pattern=f"{V2}/invite/{{roomId}}/{{eventId}}", handler=membership.invite
        ),
        Route(
            method="GET",
            pattern=f"{V1}/make_leave/{{roomId}}/{{userId}}",
            handler=membership.make_leave,
        ),
        Route(
            method="PUT",
            pattern=f"{V2}/send_leave/{{roomId}}/{{eventId}}",
            handler=membership.send_leave,
        ),
    ]
