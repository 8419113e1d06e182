"""The composition root: `Node` and `open_node(config)`.

Owns: wiring the store, the rooms, the federation client and routes, the HTTP server, the
outbound senders and static-peer learning into one nursery (`async with open_node(config) as
node:`), and the Python API a P2P client embeds: `create_room`, `invite`, `join`, `leave`,
`send_event`, `room_state`, `subscribe`, `add_peer_address`, `wake`, `peers`, `peer_changes`.
Must not: implement any protocol step itself (rooms, net and core do) or print (cli does).

Transport security (`net.tls`) is built from `federation.tls` here and handed to the server, the
client and the peer fetcher; static peers and discovery run in `net.peering`, which feeds
`add_peer_address(identifier, host, port, cbor=)` (records where a peer is and wakes its queue)
and `wake(identifier)` (retries it at once).

Design: DESIGN.md sections 2 (the composition root), 7, 10 (Python embedding API), 11.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from s2s_node.config import Config
from s2s_node.core.auth import S2S_ROOM_TYPES, StateKey
from s2s_node.core.canonical import JsonDict, JsonValue
from s2s_node.core.events import EventFormatError, Pdu, parse_pdu
from s2s_node.core.ids import (
    EventId,
    RoomId,
    ServerName,
    UserId,
    is_server_user,
    server_of,
    server_user,
)
from s2s_node.core.ingest import Outcome
from s2s_node.core.keys import SigningKey
from s2s_node.core.negotiation_vendor import VendorMethod, VendorRegistry
from s2s_node.core.room import RoomGraph
from s2s_node.core.signing import SignatureError, check_event, derived_keys
from s2s_node.datadir import create_signing_key, resolve_data_dir
from s2s_node.modules.host import ModuleHost
from s2s_node.modules.loader import LoadedModule, load_modules
from s2s_node.modules.policy import PolicyDisabledError, PolicyModule, RuleInfo
from s2s_node.net.client import (
    ClientLimits,
    FederationClient,
    build_path,
    open_federation_client,
)
from s2s_node.net.fed_membership import (
    MembershipApi,
    TemplateError,
    build_from_template,
    check_template,
)
from s2s_node.net.federation import V1, V2, FederationApi, build_routes
from s2s_node.net.gapfill import (
    HISTORY_PAGE,
    MAX_HISTORY_EVENTS,
    GapFiller,
    History,
    fetch_history,
)
from s2s_node.net.outbound import BackoffPolicy, OutboundSenders
from s2s_node.net.peer_fetch import PeerFetcher, open_peer_fetcher
from s2s_node.net.peering import PeerChangeStream, Peering, PeeringTiming
from s2s_node.net.peers import PeerAddress, PeerBook
from s2s_node.net.router import Router
from s2s_node.net.server import HttpLimits, bound_port, serve_http
from s2s_node.net.tls import TransportSecurity, build_transport_security
from s2s_node.peerinfo import PeerInfo
from s2s_node.rooms import LocalEvent, NodeRooms, Subscription, compute_servers_in_room
from s2s_node.s2s import NegotiationInfo, S2sRooms, UpgradeOutcome
from s2s_node.store import AsyncStore, Store, open_async_store
from s2s_node.store.federation import PeerRecord
from s2s_node.tokens import ensure_server_token, issue_token, parse_localpart

logger = logging.getLogger(__name__)

ROOM_TYPES = {"unstable": "support.feline.s2s", "stable": "m.s2s"}
SUPPORTED_VERSIONS = ("10", "11", "12")
# Received transaction IDs are kept this long for deduplication, pruned this often.
RECEIVED_TXN_RETENTION_MS = 7 * 24 * 3600 * 1000
PRUNE_INTERVAL_S = 3600.0
# Room history a join fetches per get_missing_events page.
JOIN_HISTORY_PAGE = HISTORY_PAGE


class JoinError(Exception):
    """A join could not be completed (bad template, refused, or the room did not check out)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Invite:
    """An invite this node received for a room it is not in yet."""

    event: Pdu
    invite_room_state: tuple[JsonValue, ...]


class Node:
    """A running node. Make it with `open_node`."""

    def __init__(
        self,
        *,
        config: Config,
        key: SigningKey,
        data_dir: Path,
        astore: AsyncStore,
        client: FederationClient,
        peers: PeerBook,
        nursery: trio.Nursery,
        backoff: BackoffPolicy,
        cbor: bool,
        security: TransportSecurity,
        fetcher: PeerFetcher,
        peering: PeeringTiming | None = None,
        clock: Callable[[], int] = now_ms,
        modules: Sequence[LoadedModule] | None = None,
    ) -> None:
        self.config = config
        self.key = key
        self.identifier: ServerName = key.identifier
        self.server_user: UserId = server_user(key.identifier)
        self.data_dir = data_dir
        self.astore = astore
        self.client = client
        self.peer_book = peers
        self.security = security
        self.now_ms = clock
        self._nursery = nursery
        self.outbound = OutboundSenders(
            astore,
            client,
            origin=self.identifier,
            now_ms=clock,
            reads_cbor=lambda peer: cbor and peers.reads_cbor(peer),
            policy=backoff,
        )
        self.rooms = NodeRooms(astore, key, now_ms=clock, on_enqueued=self.outbound.notify)
        self.gaps = GapFiller(client, self.rooms, nursery)
        self.federation = FederationApi(
            rooms=self.rooms, key=key, now_ms=clock, fill_gap=self.gaps.fill, cbor=cbor
        )
        self.federation.room_pending = self._room_pending
        self.membership = MembershipApi(self.federation, on_invite=self._on_invite)
        # docs/design.md section 10; `modules` None: those the config names
        self.modules = ModuleHost(self, load_modules(config) if modules is None else modules)
        self.rooms.before_local = self.modules.check_local
        self.rooms.filter_remote = self.modules.filter_remote
        self.membership.check_invite = self.modules.check_invite
        self.router = Router(build_routes(self.federation, self.membership))
        self.invites: dict[RoomId, Invite] = {}
        self.federation_address: tuple[str, int] | None = None
        self.client_address: tuple[str, int] | None = None  # net.client_api's listener
        self.join_state_mismatches = 0
        self._joining: dict[str, trio.Event] = {}
        self.peering = Peering(
            identifier=self.identifier,
            book=peers,
            channels=security.channels,
            fetch=fetcher,
            add_address=self._add_peer_address,
            wake=self.wake,
            tls=security.server is not None,
            cbor=cbor,
            room_versions=SUPPORTED_VERSIONS,
            timing=peering or PeeringTiming(),
        )
        self.s2s = S2sRooms(self)  # s2s rooms, negotiations, upgrades (docs/design.md §9)
        for method in self.modules.vendor_methods():
            self.register_vendor_method(method)

    # -- addresses and peers

    @property
    def federation_url(self) -> str:
        assert self.federation_address is not None
        host, port = self.federation_address
        scheme = "https" if self.security.server is not None else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    @property
    def client_url(self) -> str:
        """The client API's base URL (net.client_api; loopback unless configured)."""
        assert self.client_address is not None
        host, port = self.client_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def create_token(self, localpart: str | None = None) -> tuple[UserId, str]:
        """A new access token of `@localpart:<identifier>` (the user is created by its first
        token; `IdError` unless the localpart follows the grammar for new users), or of the
        server user when `localpart` is None. Returns (user ID, token)."""
        user = self.server_user
        if localpart is not None:
            user = parse_localpart(localpart, self.identifier)
        now = self.now_ms()
        issued = await self.astore.write(lambda store: issue_token(store, user, now))
        return issued.user_id, issued.access_token

    def peers(self) -> list[PeerInfo]:
        """Static and discovered peers (departed ones removed), with their channel's TLS state."""
        return self.peering.peers()

    def peer_changes(self) -> PeerChangeStream:
        """Peer changes from now on (`async for change in node.peer_changes()`)."""
        return self.peering.changes()

    async def add_peer_address(
        self, identifier: str, host: str, port: int, *, cbor: bool = False
    ) -> None:
        """Where `identifier` can be reached (discovery or static config); wakes its queue."""
        address = PeerAddress(host=host, port=port, cbor=cbor)
        self.peer_book.set(identifier, address)
        record = PeerRecord(
            server_name=identifier,
            address=f"{host}:{port}",
            last_seen_ms=self.now_ms(),
            info={"host": host, "port": port, "cbor": cbor},
        )
        await self.astore.write(lambda store: store.peers.put(record))
        self.wake(identifier)
        self.s2s.on_peer_verified(identifier)

    async def _add_peer_address(self, identifier: str, host: str, port: int, cbor: bool) -> None:
        await self.add_peer_address(identifier, host, port, cbor=cbor)

    def wake(self, identifier: str) -> None:
        """Retry deliveries to `identifier` at once (discovery saw it again)."""
        self.outbound.wake(identifier)

    async def _load_peers(self) -> None:
        records = await self.astore.read(lambda store: store.peers.all())
        for record in records:
            info = record.info or {}
            host, port = info.get("host"), info.get("port")
            if isinstance(host, str) and isinstance(port, int):
                cbor = info.get("cbor") is True
                self.peer_book.set(record.server_name, PeerAddress(host=host, port=port, cbor=cbor))

    # -- the Python API

    def subscribe(self, room: str | None = None) -> Subscription:
        """Accepted events (local and remote) of `room` (or all rooms) from now on."""
        return self.rooms.subscribe(room)

    async def create_room(
        self,
        *,
        room_type: str | None = None,
        room_version: str | None = None,
        creator: str | None = None,
        join_rule: str = "invite",
        invite: Sequence[str] = (),
    ) -> RoomId:
        """Create a room (the creator defaults to the server user, who creates only s2s rooms:
        anything else raises `AuthError` S2S_SERVER_USER_OUTSIDE_S2S_ROOM) and invite `invite`.

        In an s2s room the invited server users get power level 100, like the creator: the
        servers of an s2s room are peers.
        """
        s2s = room_type in S2S_ROOM_TYPES
        room_id = await self.rooms.create_room(
            creator=creator or self.server_user,
            room_version=room_version or self.config.rooms.default_version,
            room_type=room_type,
            join_rule=join_rule,
            power_users={u: 100 for u in invite if s2s and is_server_user(u)},
        )
        for user in invite:
            await self.invite(room_id, user)
        return room_id

    async def create_s2s_room(self, peer: str | None = None) -> RoomId:
        """The two-party s2s room with `peer` (DESIGN §4): the live one if it exists, else a
        new one inviting `peer`'s server user. Without a peer, an s2s room of our own."""
        if peer is None:
            return await self.create_room(room_type=ROOM_TYPES[self.config.s2s.room_type])
        return await self.s2s.create_room_with(peer)

    async def s2s_room_with(self, peer: str) -> RoomId | None:
        """The live s2s room shared with `peer` (joined, not tombstoned), if any."""
        return await self.s2s.room_with(peer)

    async def s2s_rooms(self) -> list[RoomId]:
        """Every live s2s room this node is joined to."""
        return await self.s2s.s2s_rooms()

    async def propose_upgrade(
        self,
        room: str,
        versions: Mapping[str, int] | None = None,
        *,
        wait: bool = True,
        room_type: str | None = None,
    ) -> UpgradeOutcome:
        """Open an MSC3348 upgrade negotiation in an s2s room (our `upgrade.versions` unless
        `versions` is given); with `wait`, return once it failed or the upgrade was done.
        Raises `UpgradeError` if nothing could be proposed."""
        return await self.s2s.propose_upgrade(room, versions, room_type=room_type, wait=wait)

    async def propose_vendor_upgrade(
        self, room: str, method: str, fields: Mapping[str, Any], *, wait: bool = True
    ) -> UpgradeOutcome:
        """Open a negotiation with a registered vendor method (`m.s2s.upgrade`)."""
        return await self.s2s.propose_upgrade(room, vendor=(method, fields), wait=wait)

    async def negotiations(self, room: str) -> list[NegotiationInfo]:
        """The upgrade negotiations of an s2s room, oldest first."""
        return await self.s2s.negotiations(room)

    @property
    def vendor_methods(self) -> VendorRegistry:
        return self.s2s.vendor_methods

    def register_vendor_method(self, method: VendorMethod) -> None:
        """Let negotiations use a vendor upgrade method (`m.s2s.upgrade` with its name)."""
        self.s2s.register_vendor_method(method)

    async def send_event(
        self,
        room: str,
        event_type: str,
        content: Mapping[str, Any],
        state_key: str | None = None,
        sender: str | None = None,
    ) -> Pdu:
        """Send an event; returns it once stored (it is then queued for the room's servers)."""
        event = LocalEvent(
            event_type=event_type,
            content=content,
            sender=sender or self.server_user,
            state_key=state_key,
        )
        return await self.rooms.send(room, event)

    async def room_state(self, room: str) -> dict[StateKey, Pdu]:
        """The current state of a room: (type, state_key) -> event."""

        def run(graph: RoomGraph) -> dict[StateKey, Pdu]:
            return {k: graph.get_event(e) for k, e in graph.current_state().items()}

        return await self.rooms.read(room, run)

    async def servers_in_room(self, room: str) -> set[str]:
        return await self.rooms.read(room, compute_servers_in_room)

    async def invite(self, room: str, user: str, *, sender: str | None = None) -> Pdu:
        """Invite `user`; a remote user's server countersigns first (`PUT /v2/invite`)."""
        event = LocalEvent(
            event_type="m.room.member",
            content={"membership": "invite"},
            sender=sender or self.server_user,
            state_key=user,
        )
        pdu = await self.rooms.build(room, event)
        target = server_of(user)
        if target == self.identifier:
            return await self.rooms.add_built(pdu)

        def stripped(graph: RoomGraph) -> list[JsonValue]:
            state = graph.current_state()
            keys = [("m.room.create", ""), ("m.room.join_rules", ""), ("m.room.name", "")]
            return [graph.get_event(state[k]).json for k in keys if k in state]

        invite_room_state = await self.rooms.read(room, stripped)
        _, answer = await self.client.request(
            target,
            "PUT",
            build_path(f"{V2}/invite/{{}}/{{}}", room, pdu.event_id),
            body={
                "room_version": pdu.rules.version,
                "event": pdu.json,
                "invite_room_state": invite_room_state,
            },
            cbor=self.peer_book.reads_cbor(target),
        )
        signed = answer.get("event") if isinstance(answer, dict) else None
        try:
            countersigned = parse_pdu(signed, pdu.rules)
            check_event(
                countersigned.json, pdu.rules, derived_keys, signers=[self.identifier, target]
            )
        except (EventFormatError, SignatureError) as exc:
            raise JoinError(f"{target[:12]} answered the invite with a bad event: {exc}") from None
        if countersigned.event_id != pdu.event_id:
            raise JoinError(f"{target[:12]} changed the invite event")
        return await self.rooms.add_built(countersigned, also_to=[target])

    async def join(self, room: str, via: str, *, user: str | None = None) -> Pdu:
        """Join `room` through the resident server `via` (make_join, send_join v2), then fetch
        the room's history from it and check everything through the receive pipeline."""
        user_id = user or self.server_user
        room_id = RoomId(room)
        await self.modules.check_join(room_id, user_id, via)  # a module's veto raises
        _, answer = await self.client.request(
            via,
            "GET",
            build_path(f"{V1}/make_join/{{}}/{{}}", room_id, user_id),
            query={"ver": list(SUPPORTED_VERSIONS)},
        )
        try:
            rules, template = check_template(answer, room_id, user_id, "join")
            pdu = build_from_template(rules, template, self.key, self.now_ms())
        except (TemplateError, EventFormatError) as exc:
            raise JoinError(f"make_join from {via[:12]}: {exc}") from None
        done = self._joining.setdefault(room_id, trio.Event())
        try:
            _, response = await self.client.request(
                via,
                "PUT",
                build_path(f"{V2}/send_join/{{}}/{{}}", room_id, pdu.event_id),
                body=pdu.json,
                cbor=self.peer_book.reads_cbor(via),
            )
            if not isinstance(response, dict):
                raise JoinError("send_join answered with something that is not an object")
            state = response.get("state")
            auth_chain = response.get("auth_chain")
            if not isinstance(state, list) or not isinstance(auth_chain, list):
                raise JoinError("send_join answered without state or auth_chain")
            history = await fetch_history(
                self.client,
                via,
                room_id,
                rules,
                latest=[pdu.event_id],
                earliest=[],
                cited=[*pdu.prev_events, *pdu.auth_event_ids],
                known=functools.partial(self.rooms.known_events, room_id),
                max_events=MAX_HISTORY_EVENTS,
                page=JOIN_HISTORY_PAGE,
            )
            objs = _merge_history([*auth_chain, *state], history, rules)
            verdicts = await self.rooms.ingest(room_id, objs, rules=rules, values_checked=True)
            refused = [v for v in verdicts if v.outcome is Outcome.DEFERRED]
            if refused:
                raise JoinError(f"{len(refused)} events of the room could not be placed")
            joined = response.get("event") if isinstance(response.get("event"), dict) else None
            (verdict,) = await self.rooms.ingest(room_id, [joined or pdu.json], values_checked=True)
            if verdict.outcome is not Outcome.ACCEPTED or verdict.event_id != pdu.event_id:
                raise JoinError(f"our join was not accepted here: {verdict.detail}")
            await self._check_join_state(room_id, pdu.event_id, state)
        finally:
            done.set()
            self._joining.pop(room_id, None)
        self.invites.pop(room_id, None)
        return await self.rooms.read(room_id, lambda graph: graph.get_event(pdu.event_id))

    async def _check_join_state(self, room_id: RoomId, join_id: EventId, state: list[Any]) -> None:
        """Compare the state before our join, as computed here from the fetched DAG, with the
        state the resident returned. Ours is what the node uses (every event went through the
        receive pipeline); a difference means the resident lied or resolved differently, and
        is logged and counted (`join_state_mismatches`)."""
        rules = await self.rooms.room_rules(room_id)
        assert rules is not None
        told: set[str] = set()
        for obj in state:
            try:
                told.add(parse_pdu(obj, rules).event_id)
            except EventFormatError:
                continue
        ours = await self.rooms.read(room_id, lambda g: set(g.state_before(join_id).values()))
        if ours != told:
            self.join_state_mismatches += 1
            logger.warning(
                "joining %s: the resident's state differs from ours in %d events",
                room_id,
                len(told ^ ours),
            )

    # -- policy rules (s2s_node.modules.policy; `PolicyDisabledError` if the module is off)

    def _policy(self) -> PolicyModule:
        policy = self.modules.find(PolicyModule)
        if policy is None:
            raise PolicyDisabledError("the policy module is off ([policy] enabled = false)")
        return policy

    async def publish_rule(
        self, peer: str, rule_type: str, content: Mapping[str, Any], *, state_key: str | None = None
    ) -> EventId:
        """Ask `peer` to drop what the rule matches: state in the s2s room shared with it."""
        return await self._policy().publish_rule(peer, rule_type, content, state_key=state_key)

    async def remove_rule(self, peer: str, rule_type: str, state_key: str) -> EventId:
        """Remove one of our rules (empty content, as MSC2313 does)."""
        return await self._policy().remove_rule(peer, rule_type, state_key)

    def rules(self, peer: str | None = None) -> list[RuleInfo]:
        """Rules in force with `peer` (or every peer): "ours" and "theirs"."""
        return self._policy().rules(peer)

    async def leave(self, room: str, *, user: str | None = None) -> Pdu:
        """Leave a room; an invite to a room this node is not in is declined through the
        inviting server (make_leave, send_leave v2)."""
        user_id = user or self.server_user
        rules = await self.rooms.room_rules(room)
        if rules is not None:
            return await self.send_event(
                room, "m.room.member", {"membership": "leave"}, state_key=user_id, sender=user_id
            )
        invite = self.invites.get(RoomId(room))
        if invite is None:
            raise JoinError(f"not in {room[:100]} and not invited to it")
        via = server_of(invite.event.sender)
        _, answer = await self.client.request(
            via, "GET", build_path(f"{V1}/make_leave/{{}}/{{}}", room, user_id)
        )
        try:
            leave_rules, template = check_template(answer, room, user_id, "leave")
            pdu = build_from_template(leave_rules, template, self.key, self.now_ms())
        except (TemplateError, EventFormatError) as exc:
            raise JoinError(f"make_leave from {via[:12]}: {exc}") from None
        await self.client.request(
            via,
            "PUT",
            build_path(f"{V2}/send_leave/{{}}/{{}}", room, pdu.event_id),
            body=pdu.json,
        )
        self.invites.pop(RoomId(room), None)
        return pdu

    async def room_ids(self) -> list[RoomId]:
        return await self.rooms.room_ids()

    async def _prune_received_transactions(self) -> None:
        """Forget old transaction IDs (a peer retries within minutes, not weeks)."""
        while True:
            cutoff = self.now_ms() - RECEIVED_TXN_RETENTION_MS
            await self.astore.write(functools.partial(_prune_txns, older_than_ms=cutoff))
            await trio.sleep(PRUNE_INTERVAL_S)

    # -- hooks of the federation routes

    async def _on_invite(self, pdu: Pdu, invite_room_state: list[JsonValue]) -> None:
        if await self.rooms.room_rules(pdu.room_id) is None:
            self.invites[pdu.room_id] = Invite(
                event=pdu, invite_room_state=tuple(invite_room_state)
            )
        self.rooms.publish([pdu])
        self.s2s.on_invite(pdu, invite_room_state)

    async def _room_pending(self, room_id: str) -> None:
        """A transaction for a room being joined waits until the join is done."""
        event = self._joining.get(room_id)
        if event is not None:
            with trio.move_on_after(60):
                await event.wait()


def _prune_txns(store: Store, *, older_than_ms: int) -> int:
    return store.received_txns.prune(older_than_ms)


def _merge_history(objs: Sequence[Any], history: History, rules: Any) -> list[JsonDict]:
    """`objs` (send_join's auth chain and state) and the fetched history as events by ID, once
    each (the first copy), sorted by depth (parents first); unparsable ones of `objs` dropped
    here (the pipeline would drop them too). `objs` came through the strict decoder (values
    checked); the history's events come with their IDs and depths (`History.keys`)."""
    by_id: dict[EventId, tuple[int, JsonDict]] = {}
    for obj in objs:
        try:
            pdu = parse_pdu(obj, rules, check_counts=False, check_values=False)
        except EventFormatError:
            continue
        by_id.setdefault(pdu.event_id, (pdu.depth, obj))
    for (depth, event_id), obj in zip(history.keys, history.events, strict=True):
        by_id.setdefault(event_id, (depth, obj))
    keys = sorted((depth, event_id) for event_id, (depth, _) in by_id.items())
    return [by_id[event_id][1] for _, event_id in keys]


def connectable_host(host: str) -> str:
    """A host one can connect to for a listen address (never the wildcard)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


@asynccontextmanager
async def open_node(
    config: Config,
    *,
    data_dir: str | Path | None = None,
    http_limits: HttpLimits | None = None,
    client_limits: ClientLimits | None = None,
    backoff: BackoffPolicy | None = None,
    cbor: bool = True,
    clock: Callable[[], int] = now_ms,
    peering: PeeringTiming | None = None,
) -> AsyncIterator[Node]:
    """Run a node: key (created on first run), store, HTTP server (TLS unless
    `federation.tls = false`), outbound senders, static peers, discovery (when
    `discovery.enabled`). Everything stops when the block exits.

    `cbor` says whether this node reads and sends application/cbor bodies (it always reads
    JSON). `data_dir` overrides the config's. `peering` sets how fast peers are verified and
    probed.
    """
    loaded = load_modules(config)  # ModuleLoadError before anything is opened
    path = resolve_data_dir(data_dir if data_dir is not None else config.data_dir)
    key, created = await trio.to_thread.run_sync(create_signing_key, path)
    if created:
        logger.info("created the key of %s in %s", key.identifier, path)
    limits = http_limits or HttpLimits(max_body_bytes=config.federation.max_body_bytes)
    peers = PeerBook()
    security = build_transport_security(key, tls=config.federation.tls)
    async with (
        open_async_store(path) as astore,
        open_federation_client(
            key,
            peers.resolve,
            limits=client_limits or ClientLimits(),
            read_cbor=cbor,
            tls=security.client,
        ) as client,
        open_peer_fetcher(tls=security.client) as fetcher,
        trio.open_nursery() as nursery,
    ):
        node = Node(
            config=config,
            key=key,
            data_dir=path,
            astore=astore,
            client=client,
            peers=peers,
            nursery=nursery,
            backoff=backoff or BackoffPolicy(),
            cbor=cbor,
            security=security,
            fetcher=fetcher,
            peering=peering,
            clock=clock,
            modules=loaded,
        )
        await node._load_peers()
        listen = config.federation.listen
        listeners = await nursery.start(
            functools.partial(
                serve_http,
                node.router,
                host=listen.host,
                port=listen.port,
                limits=limits,
                tls=security.server,
            )
        )
        node.federation_address = (connectable_host(listen.host), bound_port(listeners))
        # The client API (docs/design.md section 7); imported here: it imports the node's types.
        from s2s_node.net.client_api import serve_client_api  # noqa: PLC0415

        await astore.write(lambda store: ensure_server_token(store, path, key.identifier, clock()))
        client_host, client_port = await nursery.start(serve_client_api, node)
        node.client_address = (connectable_host(client_host), client_port)
        await nursery.start(node.outbound.run)
        await nursery.start(node.modules.run)
        await nursery.start(node.s2s.run)
        nursery.start_soon(node._prune_received_transactions)
        for peer in config.peers:
            nursery.start_soon(node.peering.run_static, peer.host, peer.port)
        if config.discovery.enabled:
            await nursery.start(
                functools.partial(
                    node.peering.run_discovery,
                    port=node.federation_address[1],
                    interfaces=config.discovery.interfaces,
                )
            )
        logger.info("node %s listening on %s", node.identifier, node.federation_url)
        if security.warning is not None:
            logger.warning(security.warning)
        try:
            yield node
        finally:
            node.rooms.close_subscriptions()
            node.peering.close()
            nursery.cancel_scope.cancel()


__all__ = ["S2S_ROOM_TYPES", "Invite", "JoinError", "Node", "connectable_host", "open_node"]
