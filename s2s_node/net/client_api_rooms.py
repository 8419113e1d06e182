"""Client API: rooms. createRoom, send, state, messages, joined_rooms, membership, upgrade.

Owns: the Matrix client endpoints that read and change rooms, as a user of this node (the
token's user is the sender of every event it makes), on top of the node's Python API. Must
not: build or check events itself (the node and core do) or know about tokens (auth does).

Decisions:
- the server user creates only s2s rooms, and no server user is invited into another room:
  403 M_FORBIDDEN naming the s2s membership rule (DESIGN.md 11), before anything is stored;
- a createRoom of an s2s room by the server user with exactly one invitee, a peer's server
  user, and no room_version goes through `node.create_s2s_room(peer)` (so the node's "one
  live s2s room per pair" holds and the existing room may be answered);
- presets: `public_chat` gives join rule `public`, the others `invite`; every room gets
  history visibility `shared`; `name`, `topic`, `initial_state` and
  `power_level_content_override` are applied after the creation events; `is_direct`,
  `visibility` and `room_alias_name` are accepted and ignored (no directory, no aliases);
- joining a room the node is in is a local member event; otherwise a remote join through the
  `server_name`/`via` servers, then the inviter's server;
- reads (`state`, `messages`) need the requester joined to the room (403 otherwise).

Spec: client-server API "Room creation", "Sending events to a room", "Getting events for a
room", "Room membership", "Room upgrades".
"""

from __future__ import annotations

from typing import Any

from s2s_node.core.auth import S2S_ROOM_TYPES, AuthError, AuthRule
from s2s_node.core.canonical import JsonDict, JsonValue
from s2s_node.core.ids import (
    IdError,
    RoomId,
    is_server_user,
    parse_user_id,
    server_of,
)
from s2s_node.net.client_api_auth import (
    ClientContext,
    Requester,
    endpoint,
    forbid_server_user_outside_s2s,
    optional_str,
    parse_int_param,
    parse_json_object,
    parse_txn_id,
    require_str,
)
from s2s_node.net.errors import (
    M_BAD_JSON,
    M_FORBIDDEN,
    M_INVALID_PARAM,
    M_NOT_FOUND,
    M_UNKNOWN,
    HttpError,
)
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route
from s2s_node.node import ROOM_TYPES, JoinError
from s2s_node.store import Store
from s2s_node.sync import (
    MESSAGES_DEFAULT_LIMIT,
    MESSAGES_MAX_LIMIT,
    build_client_event,
    parse_messages_token,
    read_membership,
    read_messages,
)

V3 = "/_matrix/client/v3"
PRESETS = ("private_chat", "public_chat", "trusted_private_chat")
# Invitees and initial state events one createRoom may carry.
MAX_INVITES = 100
MAX_INITIAL_STATE = 100


def _forbid_server_invite(error: AuthError) -> HttpError:
    if error.rule is AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM:
        return forbid_server_user_outside_s2s("a server user may not be invited here")
    return HttpError(403, M_FORBIDDEN, str(error))


class RoomEndpoints:
    """The room endpoints of one node's client API."""

    def __init__(self, ctx: ClientContext) -> None:
        self.ctx = ctx
        self.node = ctx.node

    # -- helpers

    async def require_joined(self, room_id: str, user: str) -> None:
        known, membership = await self.node.astore.read(
            lambda store: read_membership(store, room_id, user)
        )
        if not known:
            raise HttpError(404, M_NOT_FOUND, f"unknown room {room_id[:100]}")
        if membership != "join":
            raise HttpError(403, M_FORBIDDEN, f"{user} is not joined to {room_id[:100]}")

    async def joined_room_ids(self, user: str) -> list[str]:
        room_ids = await self.node.room_ids()

        def run(store: Store) -> list[str]:
            return [r for r in room_ids if read_membership(store, r, user)[1] == "join"]

        return await self.node.astore.read(run)

    # -- rooms

    async def joined_rooms(self, request: Request, requester: Requester) -> Response:
        return build_response({"joined_rooms": list(await self.joined_room_ids(requester.user_id))})

    async def create_room(self, request: Request, requester: Requester) -> Response:
        body = parse_json_object(request)
        creation = body.get("creation_content", {})
        if not isinstance(creation, dict):
            raise HttpError(400, M_BAD_JSON, "creation_content must be an object")
        room_type = creation.get("type")
        if room_type is not None and not isinstance(room_type, str):
            raise HttpError(400, M_BAD_JSON, "creation_content.type must be a string")
        room_version = optional_str(body, "room_version")
        preset = optional_str(body, "preset")
        if preset is not None and preset not in PRESETS:
            raise HttpError(400, M_INVALID_PARAM, f"preset must be one of {', '.join(PRESETS)}")
        if preset is None:
            preset = "public_chat" if body.get("visibility") == "public" else "private_chat"
        invite = _parse_invites(body.get("invite", []))
        initial_state = _parse_initial_state(body.get("initial_state", []))
        name, topic = optional_str(body, "name"), optional_str(body, "topic")
        override = body.get("power_level_content_override")
        if override is not None and not isinstance(override, dict):
            raise HttpError(400, M_BAD_JSON, "power_level_content_override must be an object")
        s2s = room_type in S2S_ROOM_TYPES
        if requester.is_server_user and not s2s:
            raise forbid_server_user_outside_s2s("the server user creates only s2s rooms")
        if not s2s and any(is_server_user(u) for u in invite):
            raise forbid_server_user_outside_s2s("a server user may not be invited into it")
        node = self.node
        plain = not (name or topic or initial_state or override) and preset != "public_chat"
        if (
            requester.is_server_user
            and room_type == ROOM_TYPES[node.config.s2s.room_type]
            and room_version is None
            and plain
            and len(invite) == 1
            and is_server_user(invite[0])
            and server_of(invite[0]) != node.identifier
        ):
            room_id = await node.create_s2s_room(server_of(invite[0]))
            return build_response({"room_id": room_id})
        by_creator = requester.is_server_user
        room_id = await node.create_room(
            room_type=room_type,
            room_version=room_version,
            creator=requester.user_id,
            join_rule="public" if preset == "public_chat" else "invite",
            invite=invite if by_creator else (),
        )
        sender = requester.user_id
        await node.send_event(
            room_id, "m.room.history_visibility", {"history_visibility": "shared"}, "", sender
        )
        if override:
            state = await node.room_state(room_id)
            levels = dict(state[("m.room.power_levels", "")].content)
            levels.update(override)
            await node.send_event(room_id, "m.room.power_levels", levels, "", sender)
        for event_type, state_key, content in initial_state:
            await node.send_event(room_id, event_type, content, state_key, sender)
        if name:
            await node.send_event(room_id, "m.room.name", {"name": name}, "", sender)
        if topic:
            await node.send_event(room_id, "m.room.topic", {"topic": topic}, "", sender)
        if not by_creator:
            for user in invite:
                await node.invite(room_id, user, sender=sender)
        return build_response({"room_id": room_id})

    # -- events

    async def send(self, request: Request, requester: Requester) -> Response:
        params = request.path_params
        room_id, event_type = params["roomId"], params["eventType"]
        txn_id = parse_txn_id(params["txnId"])
        content = parse_json_object(request)

        async def send_once() -> Any:
            pdu = await self.node.send_event(room_id, event_type, content, sender=requester.user_id)
            return pdu.event_id

        event_id = await self.ctx.txns.run_once(requester.device_id, txn_id, send_once)
        return build_response({"event_id": event_id})

    async def put_state(self, request: Request, requester: Requester) -> Response:
        params = request.path_params
        room_id, event_type = params["roomId"], params["eventType"]
        state_key = params.get("stateKey", "")
        content = parse_json_object(request)
        if event_type == "m.room.member" and is_server_user(state_key):
            membership = content.get("membership")
            if membership in ("invite", "join", "knock") and not await self._is_s2s(room_id):
                raise forbid_server_user_outside_s2s("a server user may not be a member here")
        try:
            pdu = await self.node.send_event(
                room_id, event_type, content, state_key, requester.user_id
            )
        except AuthError as exc:
            raise _forbid_server_invite(exc) from None
        return build_response({"event_id": pdu.event_id})

    async def get_state_event(self, request: Request, requester: Requester) -> Response:
        params = request.path_params
        room_id = params["roomId"]
        await self.require_joined(room_id, requester.user_id)
        state = await self.node.room_state(room_id)
        pdu = state.get((params["eventType"], params.get("stateKey", "")))
        if pdu is None:
            raise HttpError(404, M_NOT_FOUND, "no such state event")
        return build_response(pdu.content)

    async def get_state(self, request: Request, requester: Requester) -> Response:
        room_id = request.path_params["roomId"]
        await self.require_joined(room_id, requester.user_id)
        state = await self.node.room_state(room_id)
        events: list[JsonValue] = [build_client_event(state[k]) for k in sorted(state)]
        return build_response(events)

    async def messages(self, request: Request, requester: Requester) -> Response:
        room_id = request.path_params["roomId"]
        direction = request.query_value("dir") or "b"
        if direction not in ("b", "f"):
            raise HttpError(400, M_INVALID_PARAM, "dir must be b or f")
        start_text, stop_text = request.query_value("from"), request.query_value("to")
        start = parse_messages_token(start_text) if start_text else None
        stop = parse_messages_token(stop_text) if stop_text else None
        limit = parse_int_param(request, "limit", MESSAGES_DEFAULT_LIMIT, 1, MESSAGES_MAX_LIMIT)
        await self.require_joined(room_id, requester.user_id)
        page = await self.node.astore.read(
            lambda store: read_messages(
                store, room_id, start=start, backwards=direction == "b", limit=limit, stop=stop
            )
        )
        if page is None:
            raise HttpError(404, M_NOT_FOUND, f"unknown room {room_id[:100]}")
        device = requester.device_id
        # Events a module withholds from local users stay out of history too (design section 10).
        chunk = await self.node.modules.visible_to_local_users(page.chunk)
        answer: JsonDict = {
            "start": page.start,
            "chunk": [
                build_client_event(p, self.ctx.txns.txn_of(device, p.event_id)) for p in chunk
            ],
            "state": [],
        }
        if page.end is not None:
            answer["end"] = page.end
        return build_response(answer)

    # -- membership

    async def invite(self, request: Request, requester: Requester) -> Response:
        room_id = request.path_params["roomId"]
        body = parse_json_object(request)
        user = _parse_user(require_str(body, "user_id"), "user_id")
        if is_server_user(user) and not await self._is_s2s(room_id):
            raise forbid_server_user_outside_s2s("a server user may not be invited here")
        try:
            await self.node.invite(room_id, user, sender=requester.user_id)
        except AuthError as exc:
            raise _forbid_server_invite(exc) from None
        except JoinError as exc:
            raise HttpError(502, M_UNKNOWN, str(exc)) from None
        return build_response({})

    async def join_room(self, request: Request, requester: Requester) -> Response:
        room_id = request.path_params["roomId"]
        if room_id.startswith("#"):
            raise HttpError(404, M_NOT_FOUND, "room aliases are not supported by this node")
        parse_json_object(request, empty_ok=True)
        via = [*request.query_values("server_name"), *request.query_values("via")]
        await self.join(room_id, requester, via)
        return build_response({"room_id": room_id})

    async def join(self, room_id: str, requester: Requester, via: list[str]) -> None:
        node = self.node
        user = requester.user_id
        known, membership = await node.astore.read(
            lambda store: read_membership(store, room_id, user)
        )
        if membership == "join":
            return
        if known and node.identifier in await node.servers_in_room(room_id):
            try:
                await node.send_event(room_id, "m.room.member", {"membership": "join"}, user, user)
            except AuthError as exc:
                raise _forbid_server_invite(exc) from None
            return
        invite = node.invites.get(RoomId(room_id))
        candidates = list(via)
        if invite is not None:
            candidates.append(server_of(invite.event.sender))
        candidates = [c for i, c in enumerate(candidates) if c not in candidates[:i]]
        candidates = [c for c in candidates if c != node.identifier]
        if not candidates:
            raise HttpError(
                404, M_NOT_FOUND, "no server to join through: give server_name or be invited"
            )
        failure = ""
        for server in candidates:
            try:
                await node.join(room_id, server, user=user)
            except JoinError as exc:
                failure = f"{server[:12]}: {exc}"
                continue
            return
        raise HttpError(403, M_FORBIDDEN, f"could not join: {failure}")

    async def leave(self, request: Request, requester: Requester) -> Response:
        room_id = request.path_params["roomId"]
        parse_json_object(request, empty_ok=True)
        try:
            await self.node.leave(room_id, user=requester.user_id)
        except JoinError as exc:
            raise HttpError(404, M_NOT_FOUND, str(exc)) from None
        return build_response({})

    async def _is_s2s(self, room_id: str) -> bool:
        state = await self.node.room_state(room_id)
        create = state.get(("m.room.create", ""))
        return create is not None and create.content.get("type") in S2S_ROOM_TYPES

    def routes(self) -> list[Route]:
        ctx = self.ctx
        room = f"{V3}/rooms/{{roomId}}"
        table: list[tuple[str, str, Any]] = [
            ("GET", f"{V3}/joined_rooms", self.joined_rooms),
            ("POST", f"{V3}/createRoom", self.create_room),
            ("PUT", f"{room}/send/{{eventType}}/{{txnId}}", self.send),
            ("PUT", f"{room}/state/{{eventType}}/{{stateKey}}", self.put_state),
            ("PUT", f"{room}/state/{{eventType}}", self.put_state),
            ("PUT", f"{room}/state/{{eventType}}/", self.put_state),
            ("GET", f"{room}/state/{{eventType}}/{{stateKey}}", self.get_state_event),
            ("GET", f"{room}/state/{{eventType}}", self.get_state_event),
            ("GET", f"{room}/state/{{eventType}}/", self.get_state_event),
            ("GET", f"{room}/state", self.get_state),
            ("GET", f"{room}/messages", self.messages),
            ("POST", f"{room}/invite", self.invite),
            ("POST", f"{room}/join", self.join_room),
            ("POST", f"{V3}/join/{{roomId}}", self.join_room),
            ("POST", f"{room}/leave", self.leave),
        ]
        return [Route(method=m, pattern=p, handler=endpoint(ctx, h)) for m, p, h in table]


def _parse_user(value: object, what: str) -> str:
    try:
        return parse_user_id(value)
    except IdError as exc:
        raise HttpError(400, M_INVALID_PARAM, f"{what}: {exc}") from None


def _parse_invites(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_INVITES:
        raise HttpError(400, M_BAD_JSON, f"invite must be a list of at most {MAX_INVITES} IDs")
    return [_parse_user(u, "invite") for u in value]


def _parse_initial_state(value: object) -> list[tuple[str, str, JsonDict]]:
    if not isinstance(value, list) or len(value) > MAX_INITIAL_STATE:
        raise HttpError(400, M_BAD_JSON, "initial_state must be a list of state events")
    events = []
    for item in value:
        if not isinstance(item, dict):
            raise HttpError(400, M_BAD_JSON, "initial_state items must be objects")
        event_type, state_key = item.get("type"), item.get("state_key", "")
        content = item.get("content")
        if not isinstance(event_type, str) or not isinstance(state_key, str):
            raise HttpError(400, M_BAD_JSON, "initial_state items need type and state_key")
        if not isinstance(content, dict):
            raise HttpError(400, M_BAD_JSON, "initial_state items need a content object")
        if event_type == "m.room.member":
            raise HttpError(400, M_INVALID_PARAM, "initial_state may not hold member events")
        events.append((event_type, state_key, content))
    return events


__all__ = ["V3", "RoomEndpoints"]
