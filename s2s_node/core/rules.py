"""Room-version behaviour as named flags.

Owns: `RoomVersionRules` for room versions 10, 11 and 12. Algorithms ask a flag
(`rules.creators_have_infinite_power`), never `if version == "12"`.

Spec: rooms/v10.md, v11.md, v12.md; the differences are summarised in the digest, section 5.6.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StateResAlgorithm(enum.Enum):
    V2 = "v2"
    V2_1 = "v2.1"


class UnsupportedRoomVersionError(ValueError):
    """A room version this node does not implement."""

    def __init__(self, version: object) -> None:
        super().__init__(f"room version {version!r} is not supported (10, 11 and 12 are)")
        self.version = version


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomVersionRules:
    """What differs between the supported room versions, one named flag per difference."""

    version: str
    # Ordering of versions for the upgrade choice and the downgrade guard (newer is larger).
    rank: int
    # -- event format
    # v12 (MSC4291): room ID = "!" + the create event's reference hash; the create event has
    # no room_id and is not listed in auth_events (it is implied by room_id).
    room_id_is_create_event_hash: bool
    # v11 (MSC2174): `redacts` moved from the top level into the content of m.room.redaction.
    redacts_in_content: bool
    # -- redaction
    # v1-v10 keep the top-level keys origin, membership and prev_state; v11 drops them.
    redaction_keeps_origin_membership_prev_state: bool
    # v11: m.room.create keeps its whole content (v10: only `creator`).
    redaction_keeps_all_create_content: bool
    # v11: power levels also keep `invite`.
    redaction_keeps_power_levels_invite: bool
    # v11: m.room.redaction keeps content.redacts.
    redaction_keeps_redacts: bool
    # v11: member events keep third_party_invite.signed.
    redaction_keeps_third_party_invite_signed: bool
    # -- auth
    # v10: m.room.create must carry content.creator; the creator is content.creator.
    # v11+: the creator is the create event's sender.
    creator_in_content: bool
    # v1-v11 create rule: the room_id's domain must equal the sender's domain.
    create_room_id_domain_must_match_sender: bool
    # v12 (MSC4289): creators (sender + additional_creators) have infinite power and may not
    # appear in power_levels.users.
    creators_have_infinite_power: bool
    additional_creators: bool
    # v12: new rooms give m.room.tombstone a level above state_default (only creators upgrade).
    tombstone_above_state_default: bool
    # -- state resolution
    state_res: StateResAlgorithm

    @property
    def create_event_in_auth_events(self) -> bool:
        """v10/v11: auth_events must list the create event; v12: must not (it is implied)."""
        return not self.room_id_is_create_event_hash

    @property
    def state_res_starts_empty(self) -> bool:
        """v2.1: the iterative auth checks of step 2 start from an empty map."""
        return self.state_res is StateResAlgorithm.V2_1

    @property
    def state_res_conflicted_subgraph(self) -> bool:
        """v2.1: the full conflicted set includes the conflicted state subgraph."""
        return self.state_res is StateResAlgorithm.V2_1


ROOM_V10 = RoomVersionRules(
    version="10",
    rank=10,
    room_id_is_create_event_hash=False,
    redacts_in_content=False,
    redaction_keeps_origin_membership_prev_state=True,
    redaction_keeps_all_create_content=False,
    redaction_keeps_power_levels_invite=False,
    redaction_keeps_redacts=False,
    redaction_keeps_third_party_invite_signed=False,
    creator_in_content=True,
    create_room_id_domain_must_match_sender=True,
    creators_have_infinite_power=False,
    additional_creators=False,
    tombstone_above_state_default=False,
    state_res=StateResAlgorithm.V2,
)

ROOM_V11 = RoomVersionRules(
    version="11",
    rank=11,
    room_id_is_create_event_hash=False,
    redacts_in_content=True,
    redaction_keeps_origin_membership_prev_state=False,
    redaction_keeps_all_create_content=True,
    redaction_keeps_power_levels_invite=True,
    redaction_keeps_redacts=True,
    redaction_keeps_third_party_invite_signed=True,
    creator_in_content=False,
    create_room_id_domain_must_match_sender=True,
    creators_have_infinite_power=False,
    additional_creators=False,
    tombstone_above_state_default=False,
    state_res=StateResAlgorithm.V2,
)

ROOM_V12 = RoomVersionRules(
    version="12",
    rank=12,
    room_id_is_create_event_hash=True,
    redacts_in_content=True,
    redaction_keeps_origin_membership_prev_state=False,
    redaction_keeps_all_create_content=True,
    redaction_keeps_power_levels_invite=True,
    redaction_keeps_redacts=True,
    redaction_keeps_third_party_invite_signed=True,
    creator_in_content=False,
    create_room_id_domain_must_match_sender=False,
    creators_have_infinite_power=True,
    additional_creators=True,
    tombstone_above_state_default=True,
    state_res=StateResAlgorithm.V2_1,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersionRules] = {
    rules.version: rules for rules in (ROOM_V10, ROOM_V11, ROOM_V12)
}
DEFAULT_ROOM_VERSION = "12"


def rules_for(version: object) -> RoomVersionRules:
    """The rules of a supported room version; `UnsupportedRoomVersionError` otherwise."""
    if isinstance(version, str):
        rules = KNOWN_ROOM_VERSIONS.get(version)
        if rules is not None:
            return rules
    raise UnsupportedRoomVersionError(version)
