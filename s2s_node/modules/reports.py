"""An example module to copy: federated reports.

A user of one node reports an event (sent by a user of a peer) to that peer: the reports
module of the reporting node sends a `support.feline.s2s.report` event into the s2s room the
two nodes share, as `@reports:<identifier>`. The peer's reports module turns each report about
one of its own users into a log line and a `Report` in `received`; with `mute_reported = true`
in its config table it also refuses, from then on, to send anything from the reported user
towards the reporting node (the report acts as a drop rule that lives in memory until the node
restarts; a lasting one is a policy rule, `node.publish_rule`).

Enable it in the node's config:

    [[modules]]
    path = "s2s_node.modules.reports:ReportsModule"
    [modules.config]
    mute_reported = true

Owns: the report event's content and both sides of it. Must not: publish policy rules or touch
rooms that are not s2s rooms.

Design: docs/design.md section 10.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from s2s_node.core.events import Pdu
from s2s_node.core.ids import EventId, is_server_user, server_of
from s2s_node.modules.api import Module, ModuleContext, ModuleVeto, OutgoingEvent

logger = logging.getLogger(__name__)

REPORT_TYPE = "support.feline.s2s.report"
MAX_REASON = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """A report this node received about one of its users."""

    reporter: str  # the reporting node
    room_id: str
    event_id: str
    user_id: str  # the reported user (ours)
    reason: str


class ReportsModule(Module):
    name: ClassVar[str] = "reports"
    event_types: ClassVar[frozenset[str]] = frozenset({REPORT_TYPE})

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        mute = config.get("mute_reported", False)
        if not isinstance(mute, bool):
            raise ValueError("mute_reported must be true or false")
        self.mute_reported = mute
        self.received: list[Report] = []
        self._muted: set[tuple[str, str]] = set()  # (our user, reporting node)
        self._context: ModuleContext | None = None

    async def start(self, context: ModuleContext) -> None:
        self._context = context

    async def report(
        self, *, room: str, peer: str, event_id: str, user_id: str, reason: str
    ) -> EventId:
        """Report `user_id`'s event `event_id` in `room` to `peer` (its server), in the s2s
        room `room` shared with it."""
        if self._context is None:
            raise RuntimeError("the reports module has not started")
        if server_of(user_id) != peer:
            raise ValueError(f"{user_id} is not a user of {peer[:60]}")
        content = {"event_id": event_id, "user_id": user_id, "reason": reason[:MAX_REASON]}
        pdu = await self._context.send_event(room, REPORT_TYPE, content)
        return pdu.event_id

    async def on_event(self, event: Pdu) -> None:
        if self._context is None or server_of(event.sender) == self._context.identifier:
            return
        content = event.content
        user_id, event_id = content.get("user_id"), content.get("event_id")
        reason = content.get("reason", "")
        if not isinstance(user_id, str) or not isinstance(event_id, str):
            return
        if server_of(user_id) != self._context.identifier or not isinstance(reason, str):
            return  # a report about someone else's user is not for us
        report = Report(
            reporter=server_of(event.sender),
            room_id=event.room_id,
            event_id=event_id,
            user_id=user_id,
            reason=reason[:MAX_REASON],
        )
        self.received.append(report)
        logger.warning(
            "report from %s: %s sent %s: %s", report.reporter, user_id, event_id, report.reason
        )
        if self.mute_reported:
            self._muted.add((user_id, report.reporter))

    async def check_outgoing(self, event: OutgoingEvent) -> None:
        if event.s2s or is_server_user(event.sender):
            return
        for peer in sorted(event.destinations):
            if (event.sender, peer) in self._muted:
                raise ModuleVeto(self.name, f"{event.sender} was reported by {peer[:60]}")


__all__ = ["REPORT_TYPE", "Report", "ReportsModule"]
