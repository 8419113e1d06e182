"""s2s-node: a minimal peer-to-peer Matrix node for server-to-server rooms (MSC3348).

The embedding API (docs/embedding.md):

    from s2s_node import load_config, open_node

    async with open_node(load_config(None)) as node:
        room = await node.create_s2s_room(peer_identifier)
        await node.send_event(room, "org.example.ping", {"n": 1})
        async for event in node.subscribe(room):
            ...

Everything named in `__all__` is imported on first use, so `import s2s_node` (and the
`s2s-node` command's quick paths) do not load trio and the network stack.

Design: DESIGN.md section 10 (Python embedding API).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from s2s_node.config import Config, ConfigError, load_config
    from s2s_node.core.auth_errors import AuthError
    from s2s_node.core.events import Pdu
    from s2s_node.core.ids import EventId, RoomId, ServerName, UserId
    from s2s_node.core.room import EventStatus
    from s2s_node.datadir import DataDirError
    from s2s_node.modules.api import ModuleVeto
    from s2s_node.modules.policy import PolicyRefusal, RuleInfo
    from s2s_node.node import Invite, JoinError, Node, open_node
    from s2s_node.peerinfo import PeerInfo, PeerInfoChange
    from s2s_node.rooms import Subscription, SubscriptionLagError, UnknownRoomError
    from s2s_node.s2s.values import NegotiationInfo, UpgradeError, UpgradeOutcome

# Public name -> the module that defines it.
_EXPORTS = {
    "Config": "s2s_node.config",
    "ConfigError": "s2s_node.config",
    "load_config": "s2s_node.config",
    "AuthError": "s2s_node.core.auth_errors",
    "Pdu": "s2s_node.core.events",
    "EventId": "s2s_node.core.ids",
    "RoomId": "s2s_node.core.ids",
    "ServerName": "s2s_node.core.ids",
    "UserId": "s2s_node.core.ids",
    "EventStatus": "s2s_node.core.room",
    "DataDirError": "s2s_node.datadir",
    "ModuleVeto": "s2s_node.modules.api",
    "PolicyRefusal": "s2s_node.modules.policy",
    "RuleInfo": "s2s_node.modules.policy",
    "Invite": "s2s_node.node",
    "JoinError": "s2s_node.node",
    "Node": "s2s_node.node",
    "open_node": "s2s_node.node",
    "PeerInfo": "s2s_node.peerinfo",
    "PeerInfoChange": "s2s_node.peerinfo",
    "Subscription": "s2s_node.rooms",
    "SubscriptionLagError": "s2s_node.rooms",
    "UnknownRoomError": "s2s_node.rooms",
    "NegotiationInfo": "s2s_node.s2s.values",
    "UpgradeError": "s2s_node.s2s.values",
    "UpgradeOutcome": "s2s_node.s2s.values",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 's2s_node' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "AuthError",
    "Config",
    "ConfigError",
    "DataDirError",
    "EventId",
    "EventStatus",
    "Invite",
    "JoinError",
    "ModuleVeto",
    "NegotiationInfo",
    "Node",
    "Pdu",
    "PeerInfo",
    "PeerInfoChange",
    "PolicyRefusal",
    "RoomId",
    "RuleInfo",
    "ServerName",
    "Subscription",
    "SubscriptionLagError",
    "UnknownRoomError",
    "UpgradeError",
    "UpgradeOutcome",
    "UserId",
    "__version__",
    "load_config",
    "open_node",
]
