"""s2s rooms and MSC3348 upgrade negotiation on a running node.

`service.S2sRooms` is what the node composes; `values` holds what its API returns. See
docs/design.md section 9.
"""

from s2s_node.s2s.service import ROOM_TYPES, S2sRooms
from s2s_node.s2s.values import (
    NegotiationInfo,
    UpgradeError,
    UpgradeOutcome,
    UpgradeRefusal,
)

__all__ = [
    "ROOM_TYPES",
    "NegotiationInfo",
    "S2sRooms",
    "UpgradeError",
    "UpgradeOutcome",
    "UpgradeRefusal",
]
