"""The m.room.member auth rules (v11 rule 4, v12 rule 5) and the s2s membership rule.

Owns: joins (incl. the creator's first join and restricted joins), invites (incl. third-party
invites, whose `signed` block is verified with ed25519 against the keys of the
m.room.third_party_invite event), leaves, kicks, bans, knocks; and the s2s membership rule
(DESIGN.md section 4). Must not: check the rules every event shares (create, m.federate, the
auth_events list): `auth.check_auth` runs those and then calls `check_member_rules`.

Spec: rooms/v11.md and v12.md "Authorisation rules" (member rules), client-server API
"Restricted rooms" and m.room.third_party_invite; MSC3348 security considerations. Digest 5.3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import nacl.signing

from s2s_node.core.auth_errors import AuthError, AuthRule
from s2s_node.core.canonical import (
    Base64Error,
    CanonicalJsonError,
    decode_base64,
    decode_base64_urlsafe,
    encode_canonical_json,
)
from s2s_node.core.events import Pdu
from s2s_node.core.ids import IdError, parse_user_id, server_of
from s2s_node.core.power import (
    StateKey,
    StateMap,
    compute_creators,
    compute_named_level,
    compute_user_level,
)
from s2s_node.core.signing import KeyLookup, SignatureError, check_json_signature

S2S_ROOM_TYPES: Final[frozenset[str]] = frozenset({"m.s2s", "support.feline.s2s"})
"""Create-event room types of an s2s room (stable and unstable, MSC3348)."""

_MEMBER: Final = "m.room.member"
_THIRD_PARTY_INVITE: Final = "m.room.third_party_invite"
_JOIN_RULES_KEY: Final[StateKey] = ("m.room.join_rules", "")
_AUTHORISER: Final = "join_authorised_via_users_server"
# Memberships the s2s membership rule keeps server users from holding outside s2s rooms.
S2S_GUARDED_MEMBERSHIPS: Final = ("invite", "join", "knock")


def is_s2s_room(create: Pdu) -> bool:
    """True if the create event's `content.type` is `m.s2s` or `support.feline.s2s`."""
    room_type = create.content.get("type")
    return isinstance(room_type, str) and room_type in S2S_ROOM_TYPES


def _membership_of(member: Pdu | None) -> object:
    return None if member is None else member.content.get("membership")


def check_member_rules(event: Pdu, state: StateMap, create: Pdu, power_levels: Pdu | None) -> None:
    """4. [5.] The m.room.member rules, with the s2s membership rule after 4.1."""
    event_id = event.event_id
    content = event.content
    target = event.state_key
    # 4.1
    if target is None:
        raise AuthError(AuthRule.MEMBER_NO_STATE_KEY, "member event without state_key", event_id)
    if "membership" not in content:
        raise AuthError(AuthRule.MEMBER_NO_MEMBERSHIP, "member event without membership", event_id)
    membership = content["membership"]
    # DESIGN.md section 4: server users hold invite/join/knock only in s2s rooms.
    # (`ids.is_server_user`, in line: this runs for every member event checked.)
    if (
        membership in S2S_GUARDED_MEMBERSHIPS
        and target.startswith("@:")
        and not is_s2s_room(create)
    ):
        raise AuthError(
            AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM,
            f"server user {target} may not {membership} a room that is not an s2s room",
            event_id,
        )
    # 4.2.1 the authorising user's server signed the event (verified earlier, see check_auth)
    if _AUTHORISER in content and not _has_signature_of_authoriser(event, content[_AUTHORISER]):
        raise AuthError(
            AuthRule.MEMBER_AUTHORISER_NOT_SIGNED,
            f"not signed by the server of {content[_AUTHORISER]!r:.80}",
            event_id,
        )
    sender = event.sender
    sender_member = state.get((_MEMBER, sender))
    # (`_membership_of`, in line: this runs for every member event state resolution checks.)
    sender_membership = None if sender_member is None else sender_member.content.get("membership")
    is_self = target == sender
    if is_self:
        target_membership = sender_membership
    else:
        target_member = state.get((_MEMBER, target))
        target_membership = (
            None if target_member is None else target_member.content.get("membership")
        )

    if membership == "join":  # 4.3
        # 4.3.1 the creator's first join, right after the create event
        prev_events = event.prev_events
        if (
            len(prev_events) == 1
            and prev_events[0] == create.event_id
            and target == _first_creator(create)
        ):
            return
        # 4.3.2
        if not is_self:
            raise AuthError(
                AuthRule.MEMBER_JOIN_SENDER_NOT_STATE_KEY, f"{sender} joins {target}", event_id
            )
        # 4.3.3
        if sender_membership == "ban":
            raise AuthError(AuthRule.MEMBER_JOIN_BANNED, f"{sender} is banned", event_id)
        # (`_join_rule`, in line.)
        join_rules = state.get(_JOIN_RULES_KEY)
        join_rule = (
            "invite" if join_rules is None else join_rules.content.get("join_rule", "invite")
        )
        if join_rule == "public":
            # 4.3.6
            return
        if join_rule in ("invite", "knock"):
            # 4.3.4 (otherwise fall through to 4.3.7)
            if sender_membership in ("invite", "join"):
                return
        elif join_rule in ("restricted", "knock_restricted"):
            # 4.3.5.1
            if sender_membership in ("join", "invite"):
                return
            # 4.3.5.2 the authorising user is joined and may invite
            authoriser = content.get(_AUTHORISER)
            if not isinstance(authoriser, str):
                raise AuthError(
                    AuthRule.MEMBER_JOIN_NO_AUTHORISER,
                    f"restricted join without {_AUTHORISER}",
                    event_id,
                )
            if _membership_of(state.get((_MEMBER, authoriser))) != "join":
                raise AuthError(
                    AuthRule.MEMBER_JOIN_AUTHORISER_NOT_JOINED,
                    f"{authoriser} is not joined",
                    event_id,
                )
            if compute_user_level(authoriser, create, power_levels) < compute_named_level(
                power_levels, "invite"
            ):
                raise AuthError(
                    AuthRule.MEMBER_JOIN_AUTHORISER_CANNOT_INVITE,
                    f"{authoriser} may not invite",
                    event_id,
                )
            # 4.3.5.3
            return
        # 4.3.7
        raise AuthError(
            AuthRule.MEMBER_JOIN_NOT_ALLOWED,
            f"join rule {join_rule!r:.40} does not admit {sender} ({sender_membership!r:.20})",
            event_id,
        )

    if membership == "invite":  # 4.4
        if "third_party_invite" in content:
            _check_third_party_invite(event, state, target_membership)  # 4.4.1
            return
        # 4.4.2
        if sender_membership != "join":
            raise AuthError(
                AuthRule.MEMBER_INVITE_SENDER_NOT_JOINED, f"{sender} is not joined", event_id
            )
        # 4.4.3
        if target_membership == "join":
            raise AuthError(AuthRule.MEMBER_INVITE_TARGET_JOINED, f"{target} is joined", event_id)
        if target_membership == "ban":
            raise AuthError(AuthRule.MEMBER_INVITE_TARGET_BANNED, f"{target} is banned", event_id)
        # 4.4.4
        if compute_user_level(sender, create, power_levels) >= compute_named_level(
            power_levels, "invite"
        ):
            return
        # 4.4.5
        raise AuthError(
            AuthRule.MEMBER_INVITE_INSUFFICIENT_POWER, f"{sender} may not invite", event_id
        )

    if membership == "leave":  # 4.5
        # 4.5.1 leaving, rejecting an invite, retracting a knock
        if is_self:
            if sender_membership in ("invite", "join", "knock"):
                return
            raise AuthError(
                AuthRule.MEMBER_LEAVE_SELF_NOT_IN_ROOM,
                f"{sender} is {sender_membership!r:.20}",
                event_id,
            )
        # 4.5.2
        if sender_membership != "join":
            raise AuthError(
                AuthRule.MEMBER_LEAVE_SENDER_NOT_JOINED, f"{sender} is not joined", event_id
            )
        sender_level = compute_user_level(sender, create, power_levels)
        # 4.5.3 unbanning needs the ban level
        if target_membership == "ban" and sender_level < compute_named_level(power_levels, "ban"):
            raise AuthError(
                AuthRule.MEMBER_UNBAN_INSUFFICIENT_POWER, f"{sender} may not unban", event_id
            )
        # 4.5.4
        if sender_level >= compute_named_level(
            power_levels, "kick"
        ) and sender_level > compute_user_level(target, create, power_levels):
            return
        # 4.5.5
        raise AuthError(
            AuthRule.MEMBER_KICK_INSUFFICIENT_POWER, f"{sender} may not kick {target}", event_id
        )

    if membership == "ban":  # 4.6
        # 4.6.1
        if sender_membership != "join":
            raise AuthError(
                AuthRule.MEMBER_BAN_SENDER_NOT_JOINED, f"{sender} is not joined", event_id
            )
        # 4.6.2
        sender_level = compute_user_level(sender, create, power_levels)
        if sender_level >= compute_named_level(
            power_levels, "ban"
        ) and sender_level > compute_user_level(target, create, power_levels):
            return
        # 4.6.3
        raise AuthError(
            AuthRule.MEMBER_BAN_INSUFFICIENT_POWER, f"{sender} may not ban {target}", event_id
        )

    if membership == "knock":  # 4.7
        # 4.7.1
        join_rule = _join_rule(state)
        if join_rule not in ("knock", "knock_restricted"):
            raise AuthError(
                AuthRule.MEMBER_KNOCK_JOIN_RULE, f"join rule {join_rule!r:.40}", event_id
            )
        # 4.7.2
        if not is_self:
            raise AuthError(
                AuthRule.MEMBER_KNOCK_SENDER_NOT_STATE_KEY,
                f"{sender} knocks for {target}",
                event_id,
            )
        # 4.7.3
        if sender_membership not in ("ban", "invite", "join"):
            return
        # 4.7.4
        raise AuthError(
            AuthRule.MEMBER_KNOCK_CURRENT_MEMBERSHIP,
            f"{sender} is {sender_membership!r:.20}",
            event_id,
        )

    # 4.8
    raise AuthError(AuthRule.MEMBER_UNKNOWN_MEMBERSHIP, f"membership {membership!r:.40}", event_id)


def _first_creator(create: Pdu) -> str | None:
    """The user whose first join rule 4.3.1 allows: content.creator (v10), else the sender."""
    if create.rules.creator_in_content:
        creators = compute_creators(create)
        return creators[0] if creators else None
    return create.sender


def _join_rule(state: StateMap) -> object:
    """The current join rule.

    UNCONFIRMED (digest 5.3 rule 4.3.7, open point 6): the spec gives no join rule when the
    room has no m.room.join_rules event (or its content has no `join_rule`). As Synapse, this
    reads it as `invite`: only invited (or joined) users can join, and everyone else is
    rejected, which is also what the literal rule 4.3.7 gives them.
    """
    join_rules = state.get(_JOIN_RULES_KEY)
    if join_rules is None:
        return "invite"
    return join_rules.content.get("join_rule", "invite")


def _has_signature_of_authoriser(event: Pdu, authoriser: object) -> bool:
    """4.2.1: `signatures` has an entry for the server of the authorising user."""
    try:
        server = server_of(parse_user_id(authoriser))
    except IdError:
        return False
    signatures = event.json.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    entry = signatures.get(server)
    return isinstance(entry, Mapping) and bool(entry)


def _check_third_party_invite(event: Pdu, state: StateMap, target_membership: object) -> None:
    """4.4.1 An invite that redeems an m.room.third_party_invite."""
    event_id = event.event_id
    # 4.4.1.1
    if target_membership == "ban":
        raise AuthError(
            AuthRule.MEMBER_THIRD_PARTY_INVITE_TARGET_BANNED,
            f"{event.state_key} is banned",
            event_id,
        )
    # 4.4.1.2
    invite = event.content["third_party_invite"]
    signed = invite.get("signed") if isinstance(invite, Mapping) else None
    if not isinstance(signed, Mapping):
        raise AuthError(
            AuthRule.MEMBER_THIRD_PARTY_INVITE_NO_SIGNED,
            "third_party_invite has no signed",
            event_id,
        )
    # 4.4.1.3
    mxid = signed.get("mxid")
    token = signed.get("token")
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError(
            AuthRule.MEMBER_THIRD_PARTY_INVITE_NO_MXID_OR_TOKEN,
            "signed lacks mxid or token",
            event_id,
        )
    # 4.4.1.4
    if mxid != event.state_key:
        raise AuthError(
            AuthRule.MEMBER_THIRD_PARTY_INVITE_MXID_MISMATCH,
            f"mxid {mxid} is not {event.state_key}",
            event_id,
        )
    # 4.4.1.5
    third_party_invite = state.get((_THIRD_PARTY_INVITE, token))
    if third_party_invite is None:
        raise AuthError(
            AuthRule.MEMBER_THIRD_PARTY_INVITE_NO_INVITE_EVENT,
            f"no m.room.third_party_invite for token {token!r:.60}",
            event_id,
        )
    # 4.4.1.6
    if third_party_invite.sender != event.sender:
        raise AuthError(
            AuthRule.MEMBER_THIRD_PARTY_INVITE_SENDER_MISMATCH,
            f"the third-party invite was sent by {third_party_invite.sender}",
            event_id,
        )
    # 4.4.1.7
    if _is_signed_by_any_public_key(signed, third_party_invite.content):
        return
    # 4.4.1.8
    raise AuthError(
        AuthRule.MEMBER_THIRD_PARTY_INVITE_BAD_SIGNATURE,
        "no signature in signed matches a public key of the third-party invite",
        event_id,
    )


def _public_keys(content: Mapping[str, Any]) -> list[nacl.signing.VerifyKey]:
    """The ed25519 keys of an m.room.third_party_invite: `public_key` and
    `public_keys[].public_key` (unpadded base64; the URL-safe alphabet is accepted too)."""
    encoded: list[object] = [content.get("public_key")]
    listed = content.get("public_keys")
    if isinstance(listed, list):
        encoded.extend(item.get("public_key") for item in listed if isinstance(item, Mapping))
    keys: list[nacl.signing.VerifyKey] = []
    for value in encoded:
        if not isinstance(value, str):
            continue
        try:
            raw = decode_base64(value)
        except Base64Error:
            try:
                raw = decode_base64_urlsafe(value)
            except Base64Error:
                continue
        if len(raw) == 32:
            keys.append(nacl.signing.VerifyKey(raw))
    return keys


def _is_signed_by_any_public_key(signed: Mapping[str, Any], content: Mapping[str, Any]) -> bool:
    """4.4.1.7: any ed25519 signature in `signed` verifies with any of the invite's keys."""
    signatures = signed.get("signatures")
    keys = _public_keys(content)
    if not isinstance(signatures, Mapping) or not keys:
        return False
    try:
        message = encode_canonical_json(
            {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
        )
    except CanonicalJsonError:
        return False
    for server, by_key_id in signatures.items():
        if not isinstance(by_key_id, Mapping):
            continue
        for key_id in by_key_id:
            if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                continue
            for key in keys:
                lookup = _single_key_lookup(server, key_id, key)
                try:
                    check_json_signature(signed, server, lookup, message=message)
                except SignatureError:
                    continue
                return True
    return False


def _single_key_lookup(server: str, key_id: str, key: nacl.signing.VerifyKey) -> KeyLookup:
    """A `KeyLookup` that knows one key, so exactly one signature is checked."""

    def lookup(asked_server: str, asked_key_id: str) -> nacl.signing.VerifyKey | None:
        return key if (asked_server, asked_key_id) == (server, key_id) else None

    return lookup
