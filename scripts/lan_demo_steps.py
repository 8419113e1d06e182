"""The steps of the LAN demo (`scripts/lan_demo.py`): what each does to the nodes and checks.

Owns: `Demo`, whose `step_*` methods run steps 1 to 7 of the demo through the nodes' command line
(`lan_demo_lib.Node`) and return what they verified, raising `CheckFailedError` (or a wait's
timeout) when a check does not hold; `STEPS`, their order and titles; the bound of every wait.
Must not: build or tear down the LAN, start the nodes (step 0, in `lan_demo.py`), or talk to a
node other than by its command line.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lan_demo_lib import (  # the sibling module, through lan_demo.py's sys.path
    Lan,
    Narrator,
    Node,
    in_parallel,
    wait_until,
)

# The version of new rooms (each node's rooms.default_version); step 2 reads it back.
ROOM_VERSION = "10"
# Bounds of each wait (the whole demo takes about half a minute on a quiet machine).
DISCOVERY_TIMEOUT_S = 15.0
JOIN_TIMEOUT_S = 15.0
DELIVERY_TIMEOUT_S = 15.0
CONVERGENCE_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 30.0
# How long the cable stays out after both sides changed the room: long enough for each side's
# attempt to deliver to fail and for discovery's probes to mark the other side unreachable.
# From about 10 s on, the peers also depart and must be found again by mDNS after healing
# (`--partition-hold 10` shows that; it adds its length to the demo).
PARTITION_HOLD_S = 2.0


class CheckFailedError(Exception):
    """A check of the current step did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailedError(message)


@dataclass
class Demo:
    narrator: Narrator
    lan: Lan
    nodes: list[Node]
    rooms: dict[tuple[int, int], str] = field(default_factory=dict)
    partition_hold_s: float = PARTITION_HOLD_S

    # -- small readers over the command line

    def name(self, i: int) -> str:
        return self.nodes[i].name

    def has_events(
        self, i: int, room_id: str, key: str, content: dict[str, Any], message: str
    ) -> bool:
        """Node i holds org.example.hello/`key` with `content` and the message `message`."""
        return self.nodes[i].state_content(
            room_id, "org.example.hello", key
        ) == content and message in self.nodes[i].dag_ids(room_id)

    # -- the steps

    def step_discovery(self) -> str:
        count = len(self.nodes)

        def all_verified(i: int) -> Callable[[], dict[str, dict[str, Any]] | None]:
            def probe() -> dict[str, dict[str, Any]] | None:
                peers = self.nodes[i].peers()
                others = [n for n in self.nodes if n.index != i]
                ok = all(
                    n.identifier in peers
                    and peers[n.identifier]["verified"]
                    and peers[n.identifier]["encrypted"]
                    for n in others
                )
                return peers if ok else None

            return probe

        found = in_parallel(
            [
                functools.partial(
                    wait_until,
                    all_verified(i),
                    timeout=DISCOVERY_TIMEOUT_S,
                    what=f"{self.name(i)} to verify all {count - 1} peers",
                )
                for i in range(count)
            ]
        )
        slowest = max(waited for _, waited in found)
        for i, (peers, _) in enumerate(found):
            seen = []
            for j, node in enumerate(self.nodes):
                if j == i:
                    continue
                peer = peers[node.identifier]
                check(
                    self.lan.address(j) in peer["addresses"],
                    f"{self.name(i)} sees {node.name} at {peer['addresses']}, "
                    f"not {self.lan.address(j)}",
                )
                seen.append(f"{node.name}@{self.lan.address(j)}:{peer['port']}")
            self.narrator.say(f"{self.name(i)} verified (TLS, pinned): {', '.join(seen)}")
        return (
            f"each of {count} nodes verified the other {count - 1} over encrypted channels "
            f"at their namespace addresses (all within {slowest:.1f} s of polling)"
        )

    def ring(self) -> list[tuple[int, int]]:
        count = len(self.nodes)
        return [(i, (i + 1) % count) for i in range(count)]

    def step_rooms(self) -> str:
        def open_room(pair: tuple[int, int]) -> str:
            i, j = pair
            room_id = str(
                self.nodes[i].cli_json(
                    "room", "create", "--s2s", "--peer", self.nodes[j].identifier
                )["room_id"]
            )
            self.narrator.say(f"{self.name(i)} opened {room_id} with {self.name(j)}")
            room, waited = wait_until(
                lambda: self.nodes[j].joined_room(room_id),
                timeout=JOIN_TIMEOUT_S,
                what=f"{self.name(j)} to join {room_id}",
            )
            check(
                room["room_version"] == ROOM_VERSION,
                f"{room_id} has version {room['room_version']}",
            )
            check(
                room["room_type"] in ("support.feline.s2s", "m.s2s"),
                f"{room_id} has room type {room['room_type']}",
            )
            self.narrator.say(
                f"{self.name(j)} joined {room_id} by itself after {waited:.1f} s "
                f"(type {room['room_type']}, version {room['room_version']})"
            )
            return room_id

        pairs = self.ring()
        for pair, room_id in zip(
            pairs, in_parallel([functools.partial(open_room, p) for p in pairs]), strict=True
        ):
            self.rooms[pair] = room_id
        return (
            f"{len(pairs)} s2s rooms opened around the ring, each with both server users "
            f"joined (room type and version {ROOM_VERSION} read back on the invited side)"
        )

    def step_events(self) -> str:
        def exchange(pair: tuple[int, int]) -> None:
            room_id = self.rooms[pair]
            sent: list[tuple[int, int, str, dict[str, Any], str]] = []
            for sender, receiver in (pair, pair[::-1]):
                content = {"text": f"hello from {self.name(sender)} to {self.name(receiver)}"}
                key = self.name(sender)
                self.nodes[sender].send(room_id, "org.example.hello", content, key)
                ping = self.nodes[sender].send(
                    room_id, "org.example.ping", {"from": self.name(sender)}, None
                )
                sent.append((sender, receiver, key, content, ping))
            for sender, receiver, key, content, ping in sent:
                _, waited = wait_until(
                    functools.partial(self.has_events, receiver, room_id, key, content, ping),
                    timeout=DELIVERY_TIMEOUT_S,
                    what=f"{self.name(receiver)} to receive {self.name(sender)}'s events",
                )
                self.narrator.say(
                    f"{self.name(receiver)} has {self.name(sender)}'s state event "
                    f"org.example.hello/{key} and message {ping[:12]}... ({waited:.1f} s)"
                )

        in_parallel([functools.partial(exchange, p) for p in self.ring()])
        return (
            f"in each of {len(self.rooms)} rooms a state event and a message went each way; "
            "the receiver's `state` shows the sender's content and its `dag` the message as "
            "accepted"
        )

    def step_policy(self) -> str:
        asker, asked = self.nodes[0], self.nodes[1]
        room_id = self.rooms[(0, 1)]
        added = asker.cli_json(
            "rules", "add", asked.identifier,
            "--match", "type=m.room.member", "--match", "content.membership=invite",
            "--reason", "no invites, please",
        )  # fmt: skip
        (ours,) = [r for r in asker.cli_json("rules", "list", asked.identifier)]
        self.narrator.say(
            f"{asker.name} published {ours['type']}/{ours['state_key']} asking {asked.name} "
            f"to drop invites ({added['event_id'][:12]}...)"
        )

        def theirs_at_asked() -> list[dict[str, Any]]:
            rules = asked.cli_json("rules", "list", asker.identifier)
            return [r for r in rules if r["direction"] == "theirs"]

        (theirs,), waited = wait_until(
            theirs_at_asked, timeout=DELIVERY_TIMEOUT_S, what=f"the rule to reach {asked.name}"
        )
        check(theirs["state_key"] == ours["state_key"], f"{asked.name} holds {theirs}")
        self.narrator.say(f"{asked.name} holds the rule as 'theirs' after {waited:.1f} s")

        # A local user of the asked node opens an ordinary room and invites a user of the asker.
        invitee = f"@dave:{asker.identifier}"
        asker.cli_json("token", "create", "--user", "dave")
        carol = asked.cli_json("token", "create", "--user", "carol")
        as_carol = ("--access-token", carol["access_token"])
        lobby = asked.cli_json("room", "create", "--name", "lobby", *as_carol)["room_id"]

        def invite() -> Any:
            return asked.cli(
                "send", lobby, "m.room.member", '{"membership": "invite"}',
                "--state-key", invitee, "--json", *as_carol,
            )  # fmt: skip

        refused = invite()
        check(refused.returncode == 1, f"the invite exited {refused.returncode}: {refused.stderr}")
        body = json.loads(refused.stdout)
        expected_rule = {"type": "m.s2s.drop", "state_key": ours["state_key"], "room_id": room_id}
        check(body.get("errcode") == "M_FORBIDDEN", f"refusal body {body}")
        check(body.get("rule") == expected_rule, f"refusal names {body.get('rule')}")
        self.narrator.say(
            f"{asked.name}: carol's invite of {invitee[:14]}... refused locally: "
            f"{refused.stderr.strip()}"
        )

        asker.cli_json("rules", "remove", asked.identifier, "m.s2s.drop", ours["state_key"])
        _, waited = wait_until(
            lambda: not theirs_at_asked(),
            timeout=DELIVERY_TIMEOUT_S,
            what=f"the removal to reach {asked.name}",
        )
        self.narrator.say(
            f"{asker.name} removed the rule; {asked.name} saw it after {waited:.1f} s"
        )
        allowed = invite()
        check(
            allowed.returncode == 0,
            f"the invite after removal exited {allowed.returncode}: {allowed.stderr.strip()}",
        )
        invite_id = json.loads(allowed.stdout)["event_id"]
        members = {
            e["state_key"]: e["content"].get("membership")
            for e in asked.cli_json("state", lobby, "m.room.member", *as_carol)
        }
        check(members.get(invitee) == "invite", f"lobby members {members}")
        self.narrator.say(f"the same invite now goes through ({invite_id[:12]}...)")
        return (
            f"{asked.name} refused the invite to a user of {asker.name} with 403 naming "
            f"m.s2s.drop/{ours['state_key']} in {room_id[:12]}...; after the rule's removal "
            "the invite was countersigned and is in the room's state"
        )

    def step_upgrades(self) -> str:
        count = len(self.nodes)
        older_only = count - 1
        compatible = count - 2
        room_id = self.rooms[(compatible, older_only)]
        proposer, follower = self.nodes[compatible], self.nodes[older_only]
        result = proposer.cli("upgrade", room_id, "--versions", "12:100,11:50", "--json")
        check(result.returncode == 0, f"upgrade exited {result.returncode}: {result.stderr}")
        outcome = json.loads(result.stdout)
        check(outcome["status"] == "upgraded", f"outcome {outcome}")
        check(outcome["version"] == "11", f"agreed on {outcome['version']}, expected 11")
        new_room = str(outcome["new_room_id"])
        self.narrator.say(
            f"{proposer.name} proposed 12:100,11:50 in {room_id[:12]}...; {follower.name} "
            f"(older-only: 11,10) agreed on {outcome['version']}: upgraded to {new_room}"
        )
        room, waited = wait_until(
            lambda: self.nodes[older_only].joined_room(new_room),
            timeout=JOIN_TIMEOUT_S,
            what=f"{follower.name} to follow the upgrade",
        )
        check(room["room_version"] == "11", f"successor version {room['room_version']}")
        tombstone = self.nodes[older_only].state_content(room_id, "m.room.tombstone", "")
        check(
            isinstance(tombstone, dict) and tombstone.get("replacement_room") == new_room,
            f"tombstone at {follower.name}: {tombstone}",
        )
        self.narrator.say(
            f"{follower.name} saw the tombstone and joined {new_room[:12]}... (version 11) "
            f"after {waited:.1f} s"
        )
        self.rooms[(compatible, older_only)] = new_room

        strict = self.nodes[0]
        strict_room = self.rooms[(older_only, 0)]
        failed = strict.cli("upgrade", strict_room, "--versions", "12:100,11:60,10:20", "--json")
        check(failed.returncode == 1, f"strict upgrade exited {failed.returncode}: {failed.stderr}")
        outcome = json.loads(failed.stdout)
        check(outcome["status"] == "failed", f"strict outcome {outcome}")
        check(outcome["error"] == "no match", f"strict outcome error {outcome['error']!r}")
        negotiation_id = outcome["negotiation_id"]
        (mine,) = [
            n for n in strict.cli_json("negotiations", strict_room)
            if n["negotiation_id"] == negotiation_id
        ]  # fmt: skip
        check(mine["proposed"] == {"12": 100}, f"the strict node proposed {mine['proposed']}")

        def seen_failed_at_peer() -> dict[str, Any] | None:
            for n in follower.cli_json("negotiations", strict_room):
                if n["negotiation_id"] == negotiation_id and n["state"] == mine["state"]:
                    return dict(n)
            return None

        theirs, _ = wait_until(
            seen_failed_at_peer,
            timeout=DELIVERY_TIMEOUT_S,
            what=f"{follower.name} to see the failed negotiation",
        )
        self.narrator.say(
            f"{strict.name} (strict) asked for 12:100,11:60,10:20 but proposed only "
            f"{mine['proposed']}; {follower.name} replied {theirs['replied'] or mine['replied']}: "
            f"failed, {outcome['error']!r} (state {mine['state']} on both)"
        )
        return (
            f"{proposer.name}/{follower.name} upgraded to version 11 (the best common version) "
            f"and {follower.name} followed into the successor; {strict.name} in strict mode "
            f"offered only version 12 and the negotiation with older-only {follower.name} "
            "failed with 'no match', seen the same on both"
        )

    def step_partition(self) -> str:
        room_id = self.rooms[(0, 1)]
        cut, other = self.nodes[0], self.nodes[1]
        self.lan.set_port(0, up=False)
        self.narrator.say(
            f"unplugged {cut.name}'s cable at the bridge (ip -n {self.lan.switch} link set "
            f"{self.lan.port(0)} down)"
        )
        topics = {}
        for i in (0, 1):
            topic = f"topic set by {self.name(i)} during the partition"
            self.nodes[i].send(room_id, "m.room.topic", {"topic": topic}, "")
            self.nodes[i].send(room_id, "org.example.side", {"by": self.name(i)}, self.name(i))
            topics[i] = topic
        seen = {i: self.nodes[i].state_content(room_id, "m.room.topic", "") for i in (0, 1)}
        for i in (0, 1):
            check(seen[i] == {"topic": topics[i]}, f"{self.name(i)}'s topic is {seen[i]}")
        time.sleep(self.partition_hold_s)
        before = [self.nodes[i].state_ids(room_id) for i in (0, 1)]
        check(before[0] != before[1], "the two sides did not diverge")
        check(
            ("org.example.side", other.name) not in before[0]
            and ("org.example.side", cut.name) not in before[1],
            "a state event crossed the partition",
        )
        self.narrator.say(
            f"diverged: {cut.name} sees topic {seen[0]['topic']!r}, {other.name} sees "
            f"{seen[1]['topic']!r}; neither has the other's org.example.side "
            f"(cut held {self.partition_hold_s:g} s)"
        )
        self.lan.set_port(0, up=True)
        self.narrator.say(f"plugged {cut.name}'s cable back in")

        def converged() -> dict[tuple[str, str], str] | None:
            a, b = in_parallel(
                [lambda: self.nodes[0].state_ids(room_id), lambda: self.nodes[1].state_ids(room_id)]
            )
            sides = {("org.example.side", cut.name), ("org.example.side", other.name)}
            return a if a == b and sides <= a.keys() else None

        state, waited = wait_until(
            converged,
            timeout=CONVERGENCE_TIMEOUT_S,
            what=f"{cut.name} and {other.name} to converge",
            interval=0.3,
        )
        dags, _ = wait_until(
            lambda: self.same_dag(0, 1, room_id),
            timeout=DELIVERY_TIMEOUT_S,
            what=f"{cut.name} and {other.name} to hold the same events",
        )
        winner = self.nodes[0].state_content(room_id, "m.room.topic", "")
        check(winner == self.nodes[1].state_content(room_id, "m.room.topic", ""), "topics differ")
        check(winner in ({"topic": t} for t in topics.values()), f"resolved topic {winner}")
        self.narrator.say(
            f"converged after {waited:.1f} s: {len(state)} state entries identical on both, "
            f"both org.example.side events present, topic resolved to {winner['topic']!r}; "
            f"both hold the same {dags} accepted events"
        )
        _, healed = wait_until(
            lambda: (
                not self.nodes[0].is_peer_down(other.identifier)
                and not self.nodes[1].is_peer_down(cut.identifier)
            ),
            timeout=DISCOVERY_TIMEOUT_S,
            what=f"{cut.name} and {other.name} to list each other alive again",
        )
        self.narrator.say(
            f"{cut.name} and {other.name} list each other alive again ({healed:.1f} s more)"
        )
        return (
            f"with the link down both sides changed the topic and their states differed; after "
            f"healing, `state --json` of {cut.name} and {other.name} is identical "
            f"({len(state)} entries, same event IDs) within {waited:.1f} s, and so are their "
            f"DAGs ({dags} accepted events)"
        )

    def same_dag(self, i: int, j: int, room_id: str) -> int | None:
        """The number of accepted events if nodes i and j hold the same ones, else None."""
        a, b = in_parallel(
            [
                functools.partial(self.nodes[i].dag_ids, room_id),
                functools.partial(self.nodes[j].dag_ids, room_id),
            ]
        )
        return len(a) if a == b else None

    def step_crash(self) -> str:
        victim = self.nodes[1]
        count = len(self.nodes)
        old_pid, old_identifier = victim.info["pid"], victim.identifier
        victim.kill()
        self.narrator.say(f"SIGKILLed {victim.name} (pid {old_pid})")
        _, waited = wait_until(
            functools.partial(self.nodes[0].is_peer_down, victim.identifier),
            timeout=DELIVERY_TIMEOUT_S,
            what=f"{self.name(0)} to notice {victim.name} is gone",
        )
        self.narrator.say(f"{self.name(0)} lists {victim.name} as not alive after {waited:.1f} s")
        # While it is down, its two ring neighbours each send a state event and a message in the
        # room they share with it (with three nodes, n2's is the room upgraded in step 5).
        key = f"while-{victim.name}-was-down"
        sent: list[tuple[int, str, str]] = []  # sender, room, message id
        for pair, sender in (((0, 1), 0), ((1, 2 % count), 2 % count)):
            room_id = self.rooms[pair]
            self.nodes[sender].send(room_id, "org.example.note", {"by": self.name(sender)}, key)
            message = self.nodes[sender].send(room_id, "org.example.ping", {"n": 2}, None)
            sent.append((sender, room_id, message))
            self.narrator.say(
                f"{self.name(sender)} sent org.example.note/{key} and message {message[:12]}... "
                f"to {room_id[:12]}... while {victim.name} is down"
            )
        victim.start()
        check(victim.identifier == old_identifier, "the restarted node has another identifier")
        self.narrator.say(
            f"restarted {victim.name} on the same data directory (pid {victim.info['pid']}, "
            "same identifier)"
        )

        def caught_up() -> bool:
            return all(
                self.nodes[1].state_content(room_id, "org.example.note", key)
                == {"by": self.name(s)}
                and message in self.nodes[1].dag_ids(room_id)
                for s, room_id, message in sent
            )

        _, waited = wait_until(
            caught_up, timeout=CATCH_UP_TIMEOUT_S, what=f"{victim.name} to catch up", interval=0.3
        )
        for sender, room_id, _ in sent:
            check(
                self.nodes[1].state_ids(room_id) == self.nodes[sender].state_ids(room_id),
                f"{victim.name} and {self.name(sender)} differ on {room_id}",
            )
        self.narrator.say(
            f"{victim.name} caught up after {waited:.1f} s: both notes and messages, and the "
            "same current state as each sender"
        )
        return (
            f"{victim.name}, restarted after SIGKILL, holds the {2 * len(sent)} events sent to "
            f"it while down in {len(sent)} rooms, with the same state as its peers "
            f"(within {waited:.1f} s of the restart)"
        )


STEPS: list[tuple[str, Callable[[Demo], str]]] = [
    ("1 discovery", Demo.step_discovery),
    ("2 s2s rooms", Demo.step_rooms),
    ("3 events both ways", Demo.step_events),
    ("4 policy rule", Demo.step_policy),
    ("5 negotiated upgrade, strict 'no match'", Demo.step_upgrades),
    ("6 partition and convergence", Demo.step_partition),
    ("7 kill and catch-up", Demo.step_crash),
]
