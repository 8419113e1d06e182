"""The membership handshakes: make_join/send_join, invite, make_leave/send_leave.

Owns: the resident side (`MembershipApi`: templates, accepting a signed join or leave through
the receive pipeline and answering with the state and auth chain, countersigning an invite
after the s2s membership rule) and the joining side's checks (`check_template`,
`build_from_template`). Must not: fetch room history (the node does after a join) or accept an
event without the receipt checks.

Spec: digest 8.5 (make_join / send_join v2), 8.6 (invite v2), 8.7 (make_leave / send_leave v2);
DESIGN.md sections 4 and 11 (the s2s membership rule: a server user is invited only into s2s
rooms; a refusal is 403 M_FORBIDDEN naming the rule).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from s2s_node.core.auth import AuthError, AuthRule, is_s2s_room
from s2s_node.core.canonical import JsonDict, JsonValue
from s2s_node.core.events import EventFormatError, Pdu, build_event, parse_pdu
from s2s_node.core.ids import (
    EventId,
    RoomId,
    ServerName,
    is_server_user,
    server_of,
    server_user,
)
from s2s_node.core.ingest import Outcome
from s2s_node.core.keys import SigningKey
from s2s_node.core.room import RoomGraph
from s2s_node.core.rules import RoomVersionRules, UnsupportedRoomVersionError, rules_for
from s2s_node.core.signing import SignatureError, check_event, derived_keys, sign_json
from s2s_node.net.errors import M_BAD_JSON, M_FORBIDDEN, M_INVALID_PARAM, M_NOT_FOUND, HttpError
from s2s_node.net.federation import FederationApi, require_object
from s2s_node.net.http import Request, Response, build_negotiated_response
from s2s_node.rooms import (
    LocalEvent,
    check_against_current_state,
    compute_auth_chain,
    compute_servers_in_room,
)

M_INCOMPATIBLE_ROOM_VERSION = "M_INCOMPATIBLE_ROOM_VERSION"
M_UNABLE_TO_AUTHORISE_JOIN = "M_UNABLE_TO_AUTHORISE_JOIN"
M_UNABLE_TO_GRANT_JOIN = "M_UNABLE_TO_GRANT_JOIN"
_MEMBER = "m.room.member"
_AUTHORISER = "join_authorised_via_users_server"
_RESTRICTED_RULES = ("restricted", "knock_restricted")
# Template keys a joining server keeps (everything else it computes or replaces).
_TEMPLATE_KEYS = ("type", "room_id", "sender", "state_key", "content", "prev_events",
                  "auth_events", "depth")  # fmt: skip

OnInvite = Callable[[Pdu, list[JsonValue]], Awaitable[None]]


class TemplateError(ValueError):
    """A make_join/make_leave template that does not match what was asked (digest 8.5)."""


def check_template(
    answer: JsonValue, room_id: str, user_id: str, membership: str
) -> tuple[RoomVersionRules, JsonDict]:
    """The room version and template of a make_join/make_leave answer, checked."""
    if not isinstance(answer, dict) or not isinstance(answer.get("event"), dict):
        raise TemplateError("no event template")
    try:
        rules = rules_for(answer.get("room_version", "1"))
    except UnsupportedRoomVersionError as exc:
        raise TemplateError(str(exc)) from None
    template = answer["event"]
    assert isinstance(template, dict)
    content = template.get("content")
    if (
        template.get("room_id") != room_id
        or template.get("sender") != user_id
        or template.get("state_key") != user_id
        or template.get("type") != _MEMBER
        or not isinstance(content, dict)
        or content.get("membership") != membership
    ):
        raise TemplateError(f"the template is not a {membership} of {user_id} in {room_id}")
    return rules, template


def build_from_template(
    rules: RoomVersionRules, template: JsonDict, key: SigningKey, now_ms: int
) -> Pdu:
    """Our signed event from a checked template (hashes, signature and event ID are ours)."""
    kept = {k: template.get(k) for k in _TEMPLATE_KEYS}
    prev_events, auth_events, depth = kept["prev_events"], kept["auth_events"], kept["depth"]
    if not isinstance(prev_events, list) or not isinstance(auth_events, list):
        raise TemplateError("the template has no prev_events or auth_events")
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise TemplateError("the template has no depth")
    return build_event(
        rules=rules,
        room_id=str(kept["room_id"]),
        sender=str(kept["sender"]),
        event_type=_MEMBER,
        state_key=str(kept["state_key"]),
        content=dict(kept["content"] or {}),
        prev_events=[str(e) for e in prev_events],
        auth_events=[str(e) for e in auth_events],
        depth=depth,
        origin_server_ts=now_ms,
        server_name=key.identifier,
        signing_key=key,
    )


def _check_membership_event(
    obj: JsonValue,
    rules: RoomVersionRules,
    room_id: str,
    event_id: str,
    origin: str,
    membership: str,
    *,
    sender_is_target: bool,
    signers: list[ServerName] | None = None,
) -> Pdu:
    """Digest 8.5/8.6: 400 M_INVALID_PARAM unless the event is the expected, signed member
    event of the origin's user (`signers`: whose signatures to check; default all required)."""
    try:
        pdu = parse_pdu(obj, rules, expected_room_id=room_id)
    except EventFormatError as exc:
        raise HttpError(400, M_BAD_JSON, str(exc)) from None
    if pdu.event_id != event_id:
        raise HttpError(400, M_INVALID_PARAM, f"the event's ID is {pdu.event_id}, not {event_id}")
    if pdu.type != _MEMBER or pdu.membership != membership:
        raise HttpError(400, M_INVALID_PARAM, f"not an m.room.member {membership} event")
    if server_of(pdu.sender) != origin:
        raise HttpError(400, M_INVALID_PARAM, f"the sender {pdu.sender} is not of {origin}")
    if sender_is_target and pdu.state_key != pdu.sender:
        raise HttpError(400, M_INVALID_PARAM, "state_key is not the sender")
    try:
        check_event(pdu.json, rules, derived_keys, signers=signers)
    except SignatureError as exc:
        raise HttpError(400, M_INVALID_PARAM, f"bad signature: {exc}") from None
    return pdu


class MembershipApi:
    """Resident and invitee handlers."""

    def __init__(self, api: FederationApi, *, on_invite: OnInvite) -> None:
        self.api = api
        self.on_invite = on_invite
        # Modules (s2s_node.modules.host): may refuse an invite, raising HttpError 403.
        self.check_invite: Callable[[Pdu], Awaitable[None]] | None = None

    # -- make_join / make_leave

    async def make_join(self, request: Request) -> Response:
        return await self._make(request, "join")

    async def make_leave(self, request: Request) -> Response:
        return await self._make(request, "leave")

    async def _make(self, request: Request, membership: str) -> Response:
        api = self.api
        origin = api.authenticate(request).origin
        room_id = request.path_params["roomId"]
        user_id = request.path_params["userId"]
        if server_of(user_id) != origin:
            raise HttpError(403, M_FORBIDDEN, f"{user_id[:100]} is not a user of {origin[:60]}")
        versions = request.query_values("ver") or ["1"]
        content: JsonDict = {"membership": membership}
        if membership == "join":
            authoriser = await self._restricted_authoriser(room_id, user_id)
            if authoriser is not None:
                content[_AUTHORISER] = authoriser

        def run(graph: RoomGraph) -> JsonDict:
            if membership == "join" and graph.rules.version not in versions:
                raise HttpError(
                    400,
                    M_INCOMPATIBLE_ROOM_VERSION,
                    f"the room is version {graph.rules.version}",
                    extra={"room_version": graph.rules.version},
                )
            pdu = graph.build_event(
                event_type=_MEMBER,
                content=content,
                sender=user_id,
                state_key=user_id,
                now_ms=api.now_ms(),
                server_name=api.identifier,
                signing_key=api.key,
            )
            check_against_current_state(graph, pdu)  # AuthError -> 403 M_FORBIDDEN
            template = {k: v for k, v in pdu.json.items() if k not in ("hashes", "signatures")}
            return {"room_version": graph.rules.version, "event": template}

        answer = await api.read_room(room_id, run)
        return build_negotiated_response(request, answer)

    # -- send_join / send_leave

    async def send_join(self, request: Request) -> Response:
        return await self._send(request, "join")

    async def send_leave(self, request: Request) -> Response:
        return await self._send(request, "leave")

    async def _send(self, request: Request, membership: str) -> Response:
        api = self.api
        auth = api.authenticate(request)
        room_id = request.path_params["roomId"]
        event_id = request.path_params["eventId"]
        rules = await api.rooms.room_rules(room_id)
        if rules is None:
            raise HttpError(404, M_NOT_FOUND, f"unknown room {room_id[:100]}")
        authoriser = _authoriser_of(auth.content) if membership == "join" else None
        ours = authoriser is not None and server_of(authoriser) == api.identifier
        pdu = _check_membership_event(
            auth.content, rules, room_id, event_id, auth.origin, membership,
            sender_is_target=True, signers=[ServerName(auth.origin)] if ours else None,
        )  # fmt: skip
        if ours:
            # Digest 7.2: the resident checks the allow conditions again and adds its own
            # signature before persisting or forwarding the join (raises if none holds; a
            # user invited meanwhile needs no condition, and the signature does no harm).
            await self._restricted_authoriser(room_id, pdu.sender)
            signed = sign_json(pdu.json, api.identifier, api.key)
            pdu = parse_pdu(signed, rules, event_id=pdu.event_id, check_values=False)
        (verdict,) = await api.rooms.ingest(RoomId(room_id), [pdu.json], values_checked=True)
        if verdict.outcome is not Outcome.ACCEPTED:
            raise HttpError(
                403,
                M_FORBIDDEN,
                f"the {membership} was not accepted: {verdict.outcome.value}"
                f" ({verdict.rule.value if verdict.rule else verdict.reason}): {verdict.detail}",
            )
        stored_id = EventId(event_id)

        def run(graph: RoomGraph) -> tuple[JsonDict, set[str]]:
            state_ids = list(graph.state_before(stored_id).values())
            chain = compute_auth_chain(graph, [*state_ids, stored_id])
            servers = compute_servers_in_room(graph)
            answer: JsonDict = {}
            if membership == "join":
                answer = {
                    "state": [graph.get_event(e).json for e in state_ids],
                    "auth_chain": [p.json for p in chain],
                    "event": graph.get_event(stored_id).json,
                    "members_omitted": False,
                    "servers_in_room": sorted(servers),
                }
            return answer, servers

        answer, servers = await api.read_room(room_id, run)
        if not verdict.duplicate:
            # The resident passes the event on to the rest of the room (digest 8.5).
            await api.rooms.enqueue(servers - {auth.origin}, [stored_id])
        return build_negotiated_response(request, answer)

    # -- restricted joins

    async def _restricted_authoriser(self, room_id: str, user_id: str) -> str | None:
        """Digest 7.2: for a join into a `restricted` room by a user who is neither invited nor
        joined, our user who authorises it (the server user, if joined), after checking that
        the user is joined to one of the rooms the join rule allows. None when the room is not
        restricted or the user needs no authorisation. Raises 400
        M_UNABLE_TO_AUTHORISE_JOIN (no allowed room is known here), 400 M_UNABLE_TO_GRANT_JOIN
        (we have no joined user to sign), 403 M_FORBIDDEN (no condition holds)."""
        api = self.api
        ours = server_user(api.identifier)

        def probe(graph: RoomGraph) -> tuple[JsonDict, str | None, str | None]:
            state = graph.current_state()
            rule_id = state.get(("m.room.join_rules", ""))
            rule = dict(graph.get_event(rule_id).content) if rule_id is not None else {}
            user_id_ = state.get((_MEMBER, user_id))
            ours_id = state.get((_MEMBER, ours))
            member = graph.get_event(user_id_).membership if user_id_ is not None else None
            authoriser = graph.get_event(ours_id).membership if ours_id is not None else None
            return rule, member, authoriser

        rule, membership, our_membership = await api.read_room(room_id, probe)
        if rule.get("join_rule") not in _RESTRICTED_RULES or membership in ("invite", "join"):
            return None
        allowed = _allowed_rooms(rule.get("allow"))
        known = False
        for allowed_room in allowed:
            if await api.rooms.room_rules(allowed_room) is None:
                continue
            known = True
            if await api.rooms.read(allowed_room, lambda g: _membership_in(g, user_id)) == "join":
                if our_membership != "join":
                    raise HttpError(400, M_UNABLE_TO_GRANT_JOIN, "no user here can authorise")
                return ours
        if not known:
            raise HttpError(
                400, M_UNABLE_TO_AUTHORISE_JOIN, "none of the allowed rooms is known here"
            )
        raise HttpError(403, M_FORBIDDEN, f"{user_id[:100]} is in none of the allowed rooms")

    # -- invite

    async def invite(self, request: Request) -> Response:
        api = self.api
        auth = api.authenticate(request)
        body = require_object(auth.content)
        room_id = request.path_params["roomId"]
        event_id = request.path_params["eventId"]
        try:
            rules = rules_for(body.get("room_version"))
        except UnsupportedRoomVersionError as exc:
            raise HttpError(
                400, M_INCOMPATIBLE_ROOM_VERSION, str(exc), extra={"room_version": "12"}
            ) from None
        pdu = _check_membership_event(
            body.get("event"), rules, room_id, event_id, auth.origin, "invite",
            sender_is_target=False,
        )  # fmt: skip
        if pdu.state_key is None or server_of(pdu.state_key) != api.identifier:
            raise HttpError(400, M_INVALID_PARAM, "the invited user is not on this server")
        stripped = body.get("invite_room_state", [])
        if not isinstance(stripped, list):
            raise HttpError(400, M_BAD_JSON, "invite_room_state must be a list")
        create = _find_create_event(stripped, rules, room_id)
        # DESIGN.md section 4: a server user is invited only into s2s rooms.
        if is_server_user(pdu.state_key) and not is_s2s_room(create):
            raise AuthError(
                AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM,
                f"server user {pdu.state_key} may not be invited into {room_id}, which is not"
                " an s2s room",
                pdu.event_id,
            )
        if self.check_invite is not None:
            await self.check_invite(pdu)  # DESIGN.md section 6: a rule we published -> 403
        signed = sign_json(pdu.json, api.identifier, api.key)
        invited = parse_pdu(signed, rules, event_id=pdu.event_id, check_values=False)
        await self.on_invite(invited, list(stripped))
        return build_negotiated_response(request, {"event": signed})


def _authoriser_of(obj: object) -> str | None:
    content = obj.get("content") if isinstance(obj, dict) else None
    value = content.get(_AUTHORISER) if isinstance(content, dict) else None
    return value if isinstance(value, str) else None


def _allowed_rooms(allow: object) -> list[str]:
    """The room IDs of the well-formed `m.room_membership` entries (others are ignored)."""
    if not isinstance(allow, list):
        return []
    return [
        entry["room_id"]
        for entry in allow
        if isinstance(entry, dict)
        and entry.get("type") == "m.room_membership"
        and isinstance(entry.get("room_id"), str)
    ]


def _membership_in(graph: RoomGraph, user_id: str) -> str | None:
    event_id = graph.current_state().get((_MEMBER, user_id))
    return None if event_id is None else graph.get_event(event_id).membership


def _find_create_event(stripped: list[Any], rules: RoomVersionRules, room_id: str) -> Pdu:
    """The room's create event in invite_room_state, format- and signature-checked (digest
    8.6: SHOULD for room version 12); 400 if it is missing or of another room."""
    for obj in stripped:
        if not isinstance(obj, dict) or obj.get("type") != "m.room.create":
            continue
        try:
            create = parse_pdu(obj, rules)
            check_event(create.json, rules, derived_keys)
        except (EventFormatError, SignatureError) as exc:
            raise HttpError(400, M_INVALID_PARAM, f"bad create event: {exc}") from None
        if create.room_id != room_id or create.state_tuple != ("m.room.create", ""):
            raise HttpError(400, M_INVALID_PARAM, "the create event is of another room")
        return create
    raise HttpError(400, M_INVALID_PARAM, "invite_room_state has no m.room.create event")


__all__ = [
    "M_INCOMPATIBLE_ROOM_VERSION",
    "M_UNABLE_TO_AUTHORISE_JOIN",
    "M_UNABLE_TO_GRANT_JOIN",
    "LocalEvent",
    "MembershipApi",
    "TemplateError",
    "build_from_template",
    "check_template",
]
