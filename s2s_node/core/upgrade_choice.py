"""The room-version choice of an upgrade negotiation, and the map a node advertises.

Owns: `compute_choice` (the rule both sides run on the two published maps and must agree on),
`build_advertised_versions` (what this node lists: supported versions only, no downgrade,
`strict` mode = the most secure version alone) and `UpgradeMode`. Must not: know about events,
states or who decides (see `negotiation`).

Spec: DESIGN.md section 5, "Choice"; MSC3348 "Upgrade negotiation" (the downgrade risk in its
security considerations).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from s2s_node.core.rules import KNOWN_ROOM_VERSIONS, RoomVersionRules, rules_for

MIN_RATING = 0
MAX_RATING = 100


class UpgradeMode(enum.Enum):
    """How a node lists its versions (config `upgrade.mode`)."""

    #: every supported version the operator rated, at its rating
    COMPATIBLE = "compatible"
    #: only the most secure (highest-ranked) supported version: an older peer gets "no match"
    STRICT = "strict"


def is_acceptable_version(
    version: str,
    *,
    current_version: str,
    supported: Mapping[str, RoomVersionRules] = KNOWN_ROOM_VERSIONS,
) -> bool:
    """True when `version` is supported here and not older than the room's current version."""
    rules = supported.get(version)
    if rules is None:
        return False
    # The downgrade guard: the same version is allowed (e.g. unstable -> stable room type).
    return rules.rank >= _rank_of(current_version, supported)


def _rank_of(version: str, supported: Mapping[str, RoomVersionRules]) -> int:
    rules = supported.get(version)
    return rules.rank if rules is not None else rules_for(version).rank


def compute_choice(
    ours: Mapping[str, int],
    theirs: Mapping[str, int],
    *,
    current_version: str,
    supported: Mapping[str, RoomVersionRules] = KNOWN_ROOM_VERSIONS,
) -> str | None:
    """The version both maps agree on, or None ("no match"). Symmetric in `ours` and `theirs`.

    Raises `UnsupportedRoomVersionError` if `current_version` is unknown here. `supported`
    exists so tests can pose versions of equal rank; nodes use the default.
    """
    best: tuple[int, int, int, str] | None = None
    # 1. Candidates: versions present in both maps that this node supports and that are not
    #    older than the room's current version (never accepted otherwise).
    for version in ours.keys() & theirs.keys():
        if not is_acceptable_version(version, current_version=current_version, supported=supported):
            continue
        a, b = ours[version], theirs[version]
        # 2. Highest min(rating_A, rating_B); 3. ties: higher sum; 4. newer version (rank);
        # 5. then the greater version string (the rule only needs a total, symmetric order).
        key = (min(a, b), a + b, supported[version].rank, version)
        if best is None or key > best:
            best = key
    return None if best is None else best[3]


def build_advertised_versions(
    ratings: Mapping[str, int],
    *,
    mode: UpgradeMode,
    current_version: str,
    supported: Mapping[str, RoomVersionRules] = KNOWN_ROOM_VERSIONS,
) -> dict[str, int]:
    """The `versions` map this node publishes in a proposal or reply.

    Unsupported and downgrade versions are never listed. In `strict` mode only the most secure
    supported version is listed, at the operator's rating or `MAX_RATING` if unrated.
    """
    if mode is UpgradeMode.STRICT:
        floor = _rank_of(current_version, supported)
        newest = max(supported.values(), key=lambda rules: rules.rank)
        if newest.rank < floor:
            return {}
        return {newest.version: ratings.get(newest.version, MAX_RATING)}
    return {
        version: rating
        for version, rating in sorted(ratings.items())
        if is_acceptable_version(version, current_version=current_version, supported=supported)
    }
