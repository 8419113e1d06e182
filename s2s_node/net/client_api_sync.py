"""Client API: `GET /_matrix/client/v3/sync`, a long-poll over the node's event stream.

Owns: the sync endpoint's parameters (`since`, `timeout` in ms, `full_state`; `filter` and
`set_presence` are accepted and ignored), waiting until something concerns the requester or
the timeout passes, and adding the invites to rooms the node is not in yet (kept by the node
with their stripped state). Must not: read rooms itself (s2s_node.sync does).

Spec: client-server API "GET /_matrix/client/v3/sync".
"""

from __future__ import annotations

import trio

from s2s_node.core.canonical import JsonDict, JsonValue
from s2s_node.core.ids import EventId
from s2s_node.net.client_api_auth import ClientContext, Requester, endpoint, parse_int_param
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route
from s2s_node.node import Invite
from s2s_node.sync import (
    SyncBody,
    build_stripped_event,
    compute_incremental_sync,
    compute_initial_sync,
)

V3 = "/_matrix/client/v3"


def build_invite_state(invite: Invite) -> JsonDict:
    events: list[JsonValue] = []
    for obj in [*invite.invite_room_state, invite.event.json]:
        stripped = build_stripped_event(obj) if isinstance(obj, dict) else None
        if stripped is not None:
            events.append(stripped)
    return {"invite_state": {"events": events}}


class SyncEndpoint:
    def __init__(self, ctx: ClientContext) -> None:
        self.ctx = ctx

    def _add_remote_invites(self, body: SyncBody, user: str, only: set[str] | None) -> None:
        for room_id, invite in list(self.ctx.node.invites.items()):
            if invite.event.state_key != user or room_id in body.join:
                continue
            if only is not None and room_id not in only:
                continue
            body.invite[room_id] = build_invite_state(invite)

    async def sync(self, request: Request, requester: Requester) -> Response:
        ctx = self.ctx
        node, stream = ctx.node, ctx.stream
        user, device = requester.user_id, requester.device_id
        max_ms = int(ctx.limits.max_sync_wait_s * 1000)
        timeout_ms = parse_int_param(request, "timeout", 0, 0, max_ms)
        since_token = request.query_value("since")
        full_state = request.query_value("full_state") == "true"

        def txn_of(event_id: EventId) -> str | None:
            return ctx.txns.txn_of(device, event_id)

        since = None if full_state else stream.parse_since(since_token)
        if since is None or since_token is None:
            body = await compute_initial_sync(
                node.astore,
                stream,
                await node.room_ids(),
                user,
                txn_of,
                visible=node.modules.visible_to_local_users,
            )
            self._add_remote_invites(body, user, None)
            return build_response(body.to_json())
        deadline = trio.current_time() + timeout_ms / 1000
        while True:
            body, invites = await compute_incremental_sync(
                node.astore, stream, since, since_token, user, txn_of
            )
            self._add_remote_invites(body, user, {p.room_id for p in invites})
            if not body.is_empty() or trio.current_time() >= deadline:
                return build_response(body.to_json())
            # Nothing for this user yet: wait for the stream to move, then look again.
            since_token = body.next_batch
            next_since = stream.parse_since(since_token)
            if next_since is None:  # the stream restarted meanwhile
                return build_response(body.to_json())
            since = next_since
            with trio.move_on_at(deadline):
                await stream.wait_after(since)

    def routes(self) -> list[Route]:
        return [Route(method="GET", pattern=f"{V3}/sync", handler=endpoint(self.ctx, self.sync))]


__all__ = ["SyncEndpoint", "build_invite_state"]
