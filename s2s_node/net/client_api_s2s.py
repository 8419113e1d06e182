"""Client API: the s2s additions under `/_matrix/client/unstable/support.feline.s2s/`.

Owns: the unstable endpoints for peers, s2s rooms, negotiations and upgrades, policy rules,
access tokens and a room's DAG, plus `POST /v3/rooms/{roomId}/upgrade` (which, for an s2s
room, is the MSC3348 negotiation). Must not: implement any of those features (the node, its
negotiation driver and the policy module do); it maps bodies to node calls and back.

Endpoints (bodies are JSON objects):
- `GET peers` -> `{"peers": [PeerInfo...]}`
- `GET s2s_rooms` -> `{"rooms": [{"room_id", "room_version", "room_type", "servers",
  "peers"}]}`; `POST s2s_rooms {"peer"}` -> `{"room_id"}` (server user only)
- `GET rooms/{roomId}/negotiations` -> `{"negotiations": [...]}`;
  `POST rooms/{roomId}/negotiations` and `POST rooms/{roomId}/upgrade`
  `{"versions": {"12": 100, ...}?, "wait": bool}` -> the outcome (server user only)
- `GET rules[?peer=ID]` -> `{"rules": [...]}`; `POST rules {"peer", "type", "content",
  "state_key"?}` -> `{"event_id"}`; `DELETE rules` or `POST rules/remove`
  `{"peer", "type", "state_key"}` -> `{"event_id"}` (server user only)
- `POST tokens {"user": LOCALPART}` (also `"localpart"`; absent or empty: the server user)
  -> `{"user_id", "access_token", "device_id"}` (server user only)
- `GET rooms/{roomId}/dag` -> `{"room_id", "room_version", "events": [PDU + "event_id",
  "status" ("accepted"|"soft_failed"|"rejected"), "extremity"], "statuses": {event_id:
  status}, "forward_extremities"}` (joined members and the server user)

Spec: MSC3348 (the negotiation), client-server API "Room upgrades" (`replacement_room`).
"""

from __future__ import annotations

from typing import Any

from s2s_node.core.auth import S2S_ROOM_TYPES
from s2s_node.core.canonical import JsonDict
from s2s_node.core.ids import IdError, RoomId, parse_server_name
from s2s_node.core.room import RoomGraph
from s2s_node.net.client_api_auth import (
    ClientContext,
    Requester,
    as_json,
    endpoint,
    optional_str,
    parse_json_object,
    require_str,
)
from s2s_node.net.client_api_rooms import RoomEndpoints
from s2s_node.net.errors import (
    M_BAD_JSON,
    M_FORBIDDEN,
    M_INVALID_PARAM,
    M_NOT_FOUND,
    M_UNKNOWN,
    M_UNRECOGNIZED,
    HttpError,
)
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route
from s2s_node.rooms import compute_servers_in_room
from s2s_node.store import Store

S2S = "/_matrix/client/unstable/support.feline.s2s"
V3 = "/_matrix/client/v3"


def _require_server_user(requester: Requester, what: str) -> None:
    if not requester.is_server_user:
        raise HttpError(403, M_FORBIDDEN, f"only the server user may {what}")


def _parse_peer(value: object) -> str:
    try:
        return parse_server_name(value)
    except IdError as exc:
        raise HttpError(400, M_INVALID_PARAM, f"peer: {exc}") from None


def _parse_versions(value: object) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise HttpError(400, M_BAD_JSON, 'versions must be an object like {"12": 100}')
    versions: dict[str, int] = {}
    for version, rating in value.items():
        if isinstance(rating, bool) or not isinstance(rating, int) or not 0 <= rating <= 100:
            raise HttpError(400, M_BAD_JSON, f"versions.{version} must be an integer 0..100")
        versions[version] = rating
    return versions


def _describe_room(graph: RoomGraph, identifier: str) -> JsonDict | None:
    state = graph.current_state()
    create_id = state.get(("m.room.create", ""))
    if create_id is None:
        return None
    room_type = graph.get_event(create_id).content.get("type")
    if room_type not in S2S_ROOM_TYPES:
        return None
    servers = sorted(compute_servers_in_room(graph))
    if identifier not in servers:
        return None  # left, or upgraded away from
    return {
        "room_id": graph.room_id,
        "room_version": graph.rules.version,
        "room_type": room_type,
        "servers": servers,
        "peers": [s for s in servers if s != identifier],
        "tombstoned": ("m.room.tombstone", "") in state,
    }


class S2SEndpoints:
    """The s2s additions of one node's client API."""

    def __init__(self, ctx: ClientContext, rooms: RoomEndpoints) -> None:
        self.ctx = ctx
        self.node = ctx.node
        self.rooms = rooms

    async def peers(self, request: Request, requester: Requester) -> Response:
        peers: list[Any] = [info.to_json() for info in self.node.peers()]
        return build_response({"peers": peers})

    async def s2s_rooms(self, request: Request, requester: Requester) -> Response:
        room_ids = await self.node.room_ids()
        identifier = self.node.identifier

        def run(store: Store) -> list[JsonDict]:
            found = []
            for room_id in room_ids:
                room = store.room(room_id)
                if room is None:
                    continue
                described = _describe_room(RoomGraph(room.rules, room_id, room), identifier)
                if described is not None and not described["tombstoned"]:
                    found.append(described)
            return found

        rooms: list[Any] = await self.node.astore.read(run)
        return build_response({"rooms": rooms})

    async def create_s2s_room(self, request: Request, requester: Requester) -> Response:
        _require_server_user(requester, "create s2s rooms")
        body = parse_json_object(request, empty_ok=True)
        peer = body.get("peer")
        room_id = await self.node.create_s2s_room(None if peer is None else _parse_peer(peer))
        return build_response({"room_id": room_id})

    # -- negotiations and upgrades

    async def negotiations(self, request: Request, requester: Requester) -> Response:
        room_id = request.path_params["roomId"]
        await self.rooms.require_joined(room_id, requester.user_id)
        infos = await self.node.negotiations(room_id)
        return build_response({"negotiations": [as_json(i) for i in infos]})

    async def propose(self, request: Request, requester: Requester) -> Response:
        _require_server_user(requester, "propose upgrades")
        room_id = request.path_params["roomId"]
        body = parse_json_object(request, empty_ok=True)
        versions = _parse_versions(body.get("versions"))
        wait = body.get("wait", True)
        if not isinstance(wait, bool):
            raise HttpError(400, M_BAD_JSON, "wait must be true or false")
        outcome = await self.node.propose_upgrade(room_id, versions, wait=wait)
        return build_response(as_json(outcome))

    async def upgrade(self, request: Request, requester: Requester) -> Response:
        """`POST /v3/rooms/{roomId}/upgrade {"new_version"}`: for an s2s room, a negotiation
        proposing that version only (the peer must accept it), waited for."""
        room_id = request.path_params["roomId"]
        body = parse_json_object(request)
        new_version = require_str(body, "new_version")
        if not await self.rooms._is_s2s(room_id):
            raise HttpError(
                400,
                M_UNRECOGNIZED,
                "this node upgrades s2s rooms only (by MSC3348 negotiation)",
            )
        _require_server_user(requester, "upgrade an s2s room")
        outcome = await self.node.propose_upgrade(room_id, {new_version: 100}, wait=True)
        answer = as_json(outcome)
        if answer.get("status") != "upgraded" or not answer.get("new_room_id"):
            raise HttpError(
                400,
                M_UNKNOWN,
                f"the upgrade negotiation did not succeed: {answer.get('error') or 'pending'}",
                extra={"outcome": answer},
            )
        return build_response({"replacement_room": answer["new_room_id"]})

    # -- rules

    async def rules(self, request: Request, requester: Requester) -> Response:
        peer = request.query_value("peer")
        infos = self.node.rules(_parse_peer(peer) if peer else None)
        return build_response({"rules": [info.to_json() for info in infos]})

    async def add_rule(self, request: Request, requester: Requester) -> Response:
        _require_server_user(requester, "publish rules")
        body = parse_json_object(request)
        peer = _parse_peer(body.get("peer"))
        rule_type = require_str(body, "type")
        content = body.get("content")
        if not isinstance(content, dict):
            raise HttpError(400, M_BAD_JSON, "content must be an object")
        state_key = optional_str(body, "state_key")
        event_id = await self.node.publish_rule(peer, rule_type, content, state_key=state_key)
        return build_response({"event_id": event_id})

    async def remove_rule(self, request: Request, requester: Requester) -> Response:
        _require_server_user(requester, "remove rules")
        body = parse_json_object(request, empty_ok=True)
        if not body:  # DELETE with the fields in the query
            body = {k: v for k, v in request.query}
        peer = _parse_peer(body.get("peer"))
        event_id = await self.node.remove_rule(
            peer, require_str(body, "type"), require_str(body, "state_key")
        )
        return build_response({"event_id": event_id})

    # -- tokens

    async def create_token(self, request: Request, requester: Requester) -> Response:
        _require_server_user(requester, "create access tokens")
        body = parse_json_object(request, empty_ok=True)
        localpart = body.get("user", body.get("localpart"))
        user_id, token = await self.node.create_token(localpart or None)
        return build_response({"user_id": user_id, "access_token": token})

    # -- the DAG

    async def dag(self, request: Request, requester: Requester) -> Response:
        room_id = request.path_params["roomId"]
        if not requester.is_server_user:
            await self.rooms.require_joined(room_id, requester.user_id)

        def run(store: Store) -> JsonDict | None:
            room = store.room(RoomId(room_id))
            if room is None:
                return None
            graph = RoomGraph(room.rules, room.room_id, room)
            events, statuses = [], {}
            extremities = graph.forward_extremities
            for event_id in room.event_ids():
                status = graph.status(event_id)
                statuses[event_id] = None if status is None else status.value
                events.append(
                    {
                        **graph.get_event(event_id).json,
                        "event_id": event_id,
                        "status": statuses[event_id],
                        "extremity": event_id in extremities,
                    }
                )
            return {
                "room_id": room_id,
                "room_version": room.rules.version,
                "events": events,
                "statuses": statuses,
                "forward_extremities": sorted(extremities),
            }

        answer = await self.node.astore.read(run)
        if answer is None:
            raise HttpError(404, M_NOT_FOUND, f"unknown room {room_id[:100]}")
        return build_response(answer)

    def routes(self) -> list[Route]:
        room = f"{S2S}/rooms/{{roomId}}"
        table: list[tuple[str, str, Any]] = [
            ("GET", f"{S2S}/peers", self.peers),
            ("GET", f"{S2S}/s2s_rooms", self.s2s_rooms),
            ("POST", f"{S2S}/s2s_rooms", self.create_s2s_room),
            ("GET", f"{room}/negotiations", self.negotiations),
            ("POST", f"{room}/negotiations", self.propose),
            ("POST", f"{room}/upgrade", self.propose),
            ("GET", f"{room}/dag", self.dag),
            ("GET", f"{S2S}/rules", self.rules),
            ("POST", f"{S2S}/rules", self.add_rule),
            ("DELETE", f"{S2S}/rules", self.remove_rule),
            ("POST", f"{S2S}/rules/remove", self.remove_rule),
            ("POST", f"{S2S}/tokens", self.create_token),
            ("POST", f"{V3}/rooms/{{roomId}}/upgrade", self.upgrade),
        ]
        return [Route(method=m, pattern=p, handler=endpoint(self.ctx, h)) for m, p, h in table]


__all__ = ["S2S", "S2SEndpoints"]
