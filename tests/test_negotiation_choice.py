"""The upgrade choice rule (DESIGN §5 "Choice"): a table of cases, ties, the downgrade guard,
unsupported versions, strict mode, and symmetry as a property."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2s_node.core.rules import KNOWN_ROOM_VERSIONS, ROOM_V12, UnsupportedRoomVersionError
from s2s_node.core.upgrade_choice import (
    UpgradeMode,
    build_advertised_versions,
    compute_choice,
)

# (ours, theirs, current version, expected choice, what it shows)
CASES = [
    ({"12": 100}, {"12": 100}, "10", "12", "identical single version"),
    ({"12": 100, "11": 50}, {"12": 10, "11": 60}, "10", "11", "highest min wins (50 > 10)"),
    ({"12": 40, "11": 90}, {"12": 90, "11": 40}, "10", "12", "min tie 40/40, sum tie, newer"),
    ({"12": 50, "11": 50}, {"12": 50, "11": 90}, "10", "11", "min tie 50, higher sum wins"),
    ({"11": 70, "10": 70}, {"11": 70, "10": 70}, "10", "11", "min and sum tie: newer wins"),
    ({"12": 100}, {"11": 100}, "10", None, "disjoint maps: no match"),
    ({}, {"12": 100}, "10", None, "empty map: no match"),
    ({"12": 0, "11": 0}, {"12": 0, "11": 0}, "10", "12", "zero ratings still choose"),
    ({"12": 10, "10": 100}, {"12": 10, "10": 100}, "11", "12", "downgrade guard drops 10"),
    ({"10": 100}, {"10": 100}, "11", None, "only a downgrade in common: no match"),
    ({"11": 100}, {"11": 100}, "11", "11", "same version as current is allowed"),
    ({"13": 100, "12": 1}, {"13": 100, "12": 1}, "10", "12", "unsupported 13 never chosen"),
    ({"12": 1, "x": 100}, {"12": 1, "x": 100}, "12", "12", "unknown version string ignored"),
]


@pytest.mark.parametrize(
    ("ours", "theirs", "current", "expected"),
    [case[:4] for case in CASES],
    ids=[case[4] for case in CASES],
)
def test_choice_table(
    ours: dict[str, int], theirs: dict[str, int], current: str, expected: str | None
) -> None:
    assert compute_choice(ours, theirs, current_version=current) == expected
    assert compute_choice(theirs, ours, current_version=current) == expected


def test_version_string_breaks_the_last_tie() -> None:
    # Two versions of equal rank (not among today's, so the table is injected): the greater
    # version string wins, whichever map lists it first.
    twin = dataclasses.replace(ROOM_V12, version="12a")
    supported = {**KNOWN_ROOM_VERSIONS, "12a": twin}
    ours = {"12": 80, "12a": 80}
    assert compute_choice(ours, dict(ours), current_version="10", supported=supported) == "12a"
    # Without the tie, the rating still decides before the string.
    assert (
        compute_choice(
            {"12": 81, "12a": 80}, {"12": 81, "12a": 80}, current_version="10", supported=supported
        )
        == "12"
    )


def test_unknown_current_version_is_an_error() -> None:
    with pytest.raises(UnsupportedRoomVersionError):
        compute_choice({"12": 1}, {"12": 1}, current_version="99")


def test_advertised_versions_drop_unsupported_and_downgrades() -> None:
    ratings = {"13": 100, "12": 90, "11": 50, "10": 10}
    assert build_advertised_versions(
        ratings, mode=UpgradeMode.COMPATIBLE, current_version="11"
    ) == {"12": 90, "11": 50}


def test_strict_lists_only_the_most_secure_version() -> None:
    assert build_advertised_versions(
        {"11": 100, "10": 50}, mode=UpgradeMode.STRICT, current_version="10"
    ) == {"12": 100}
    assert build_advertised_versions(
        {"12": 70, "11": 100}, mode=UpgradeMode.STRICT, current_version="10"
    ) == {"12": 70}


def test_strict_node_against_an_older_peer_has_no_match() -> None:
    strict = build_advertised_versions(
        {"12": 100, "11": 90}, mode=UpgradeMode.STRICT, current_version="10"
    )
    older_peer = {"11": 100, "10": 80}
    assert compute_choice(strict, older_peer, current_version="10") is None
    # The same node in compatible mode would have agreed on 11.
    compatible = build_advertised_versions(
        {"12": 100, "11": 90}, mode=UpgradeMode.COMPATIBLE, current_version="10"
    )
    assert compute_choice(compatible, older_peer, current_version="10") == "11"


VERSIONS = st.sampled_from(["10", "11", "12", "13", "9", "12a"])
MAPS = st.dictionaries(VERSIONS, st.integers(min_value=0, max_value=100), max_size=6)


@given(ours=MAPS, theirs=MAPS, current=st.sampled_from(["10", "11", "12"]))
def test_choice_is_symmetric_and_safe(
    ours: dict[str, int], theirs: dict[str, int], current: str
) -> None:
    choice = compute_choice(ours, theirs, current_version=current)
    assert choice == compute_choice(theirs, ours, current_version=current)
    if choice is not None:
        # Listed by both, supported, never a downgrade, and no candidate has a better min.
        assert choice in ours and choice in theirs
        assert choice in KNOWN_ROOM_VERSIONS
        assert KNOWN_ROOM_VERSIONS[choice].rank >= KNOWN_ROOM_VERSIONS[current].rank
        best_min = min(ours[choice], theirs[choice])
        for version in ours.keys() & theirs.keys() & KNOWN_ROOM_VERSIONS.keys():
            if KNOWN_ROOM_VERSIONS[version].rank >= KNOWN_ROOM_VERSIONS[current].rank:
                assert min(ours[version], theirs[version]) <= best_min
    else:
        assert not any(
            KNOWN_ROOM_VERSIONS[v].rank >= KNOWN_ROOM_VERSIONS[current].rank
            for v in ours.keys() & theirs.keys() & KNOWN_ROOM_VERSIONS.keys()
        )
