"""Helpers for the negotiation tests: room events as plain values, a shared DAG between two
nodes' `RoomNegotiations`, and a small vendor method.

`Dag` plays the room: each node's outgoing events get an event ID and a timestamp and are
delivered to both nodes in one total order (or in a per-node order, for crossing proposals).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from s2s_node.core.negotiation import (
    NegotiationSettings,
    Outgoing,
    Receipt,
)
from s2s_node.core.negotiation_messages import (
    ContentReason,
    NegotiationContentError,
    Side,
    VendorMessage,
)
from s2s_node.core.negotiation_room import RoomNegotiations
from s2s_node.core.negotiation_vendor import VendorProgress, VendorRegistry
from s2s_node.core.upgrade_choice import UpgradeMode

SERVER_A = "a" * 52
SERVER_B = "b" * 52
SERVER_C = "c" * 52
T0 = 1_700_000_000_000


def event_id(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ev:
    """A room event as the machine reads it (what `EventView` asks of a Pdu)."""

    event_id: str
    type: str
    sender: str
    origin_server_ts: int
    content: Mapping[str, Any]


def make_event(
    seed: str, event_type: str, server: str, content: Mapping[str, Any], ts: int = T0
) -> Ev:
    return Ev(
        event_id=event_id(seed),
        type=event_type,
        sender=f"@:{server}",
        origin_server_ts=ts,
        content=content,
    )


def settings(
    server: str,
    ratings: Mapping[str, int],
    *,
    mode: UpgradeMode = UpgradeMode.COMPATIBLE,
    timeout_ms: int = 60_000,
) -> NegotiationSettings:
    return NegotiationSettings(our_server=server, ratings=ratings, mode=mode, timeout_ms=timeout_ms)


class PinVersion:
    """Vendor method `org.example.pin`: the opening names `version`; the responder answers
    {"agree": true} and the method settles on that version; {"note": ...} changes nothing."""

    method = "org.example.pin"

    def begin(self, opening: VendorMessage) -> VendorProgress:
        if set(opening.fields) != {"version"} or not isinstance(opening.fields["version"], str):
            raise NegotiationContentError(ContentReason.VENDOR_REJECTED, "needs version")
        return VendorProgress(stage="asked")

    def advance(
        self,
        opening: VendorMessage,
        progress: VendorProgress,
        message: VendorMessage,
        sender: Side,
    ) -> VendorProgress:
        if "note" in message.fields:
            return progress
        if sender is Side.RESPONDER and message.fields == {"agree": True}:
            return VendorProgress(stage="agreed", settled=True, version=opening.fields["version"])
        raise NegotiationContentError(ContentReason.VENDOR_REJECTED, "unexpected message")

    def actions(
        self, opening: VendorMessage, progress: VendorProgress, us: Side
    ) -> tuple[Mapping[str, Any], ...]:
        if progress.stage == "asked" and us is Side.RESPONDER:
            return ({"agree": True},)
        return ()


PIN_REGISTRY = VendorRegistry.of([PinVersion()])


@dataclass
class Node:
    server: str
    room: RoomNegotiations
    receipts: list[Receipt] = field(default_factory=list)


class Dag:
    """Two nodes in one room; every event goes to both in the same order unless held back."""

    def __init__(self, a: RoomNegotiations, b: RoomNegotiations) -> None:
        self.nodes = {SERVER_A: Node(SERVER_A, a), SERVER_B: Node(SERVER_B, b)}
        self.log: list[Ev] = []
        self.clock = T0
        self._count = 0

    def node(self, server: str) -> Node:
        return self.nodes[server]

    def emit(self, server: str, outgoing: Outgoing, *, deliver: bool = True) -> Ev:
        """`server` sends `outgoing` (validated by its machine), and the DAG delivers it."""
        node = self.nodes[server]
        node.room.send(outgoing)
        self.clock += 10
        self._count += 1
        event = Ev(
            event_id=event_id(f"dag:{self._count}"),
            type=outgoing.type,
            sender=f"@:{server}",
            origin_server_ts=self.clock,
            content=outgoing.content,
        )
        self.log.append(event)
        if deliver:
            self.deliver(event)
        return event

    def deliver(self, event: Ev, to: tuple[str, ...] = (SERVER_A, SERVER_B)) -> None:
        for server in to:
            node = self.nodes[server]
            node.receipts.append(node.room.receive(event))

    def pump(self, *, limit: int = 50, silent: frozenset[str] = frozenset()) -> list[Ev]:
        """Let both nodes send what they owe until neither owes anything (`silent` never do)."""
        sent: list[Ev] = []
        for _ in range(limit):
            progressed = False
            for server, node in self.nodes.items():
                if server in silent:
                    continue
                for outgoing in node.room.next_actions():
                    sent.append(self.emit(server, outgoing))
                    progressed = True
            if not progressed:
                return sent
        raise AssertionError("negotiation did not settle")
