"""Two s2s nodes in one trio program exchange events in an s2s room (docs/embedding.md).

    python scripts/embed_example.py [--data-dir DIR] [--count N]

Alice and Bob are full nodes (own key, own SQLite store, own federation listener on
127.0.0.1, a free port each). Discovery is off: each is told where the other is with
`add_peer_address`. Alice opens an s2s room with Bob; Bob's node joins by itself when the
invite of a known peer arrives; then both send events and print what they receive from the
other. Without --data-dir the nodes live in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import aclosing
from pathlib import Path

import trio

from s2s_node import Node, RoomId, Subscription, load_config, open_node

SETTINGS = [
    "federation.listen=127.0.0.1:0",  # port 0: a free port
    "client.listen=127.0.0.1:0",
    "discovery.enabled=false",  # peers are introduced below instead
]
PING = "org.example.ping"
DEADLINE_S = 30.0


async def tell_where(node: Node, other: Node) -> None:
    """What discovery would do: `node` learns where `other` listens."""
    assert other.federation_address is not None
    host, port = other.federation_address
    await node.add_peer_address(other.identifier, host, port)


async def joined(node: Node, events: Subscription, room: RoomId) -> None:
    """Return once `node`'s server user has joined `room` (seen among `events`)."""
    async for event in events:
        if (
            event.room_id == room
            and event.type == "m.room.member"
            and event.state_key == node.server_user
            and event.membership == "join"
        ):
            return
    raise RuntimeError("the subscription ended before the join")


async def print_pings(node: Node, name: str, events: Subscription, count: int) -> None:
    """Print the pings the *other* node sends, until `count` arrived."""
    seen = 0
    async with aclosing(events):
        async for event in events:
            if event.type == PING and event.sender != node.server_user:
                print(f"{name} got {event.type} {event.content} from {event.sender[:14]}...")
                seen += 1
                if seen == count:
                    return


async def main(data_dir: Path, count: int) -> None:
    config = load_config(None, SETTINGS)
    async with (
        open_node(config, data_dir=data_dir / "alice") as alice,
        open_node(config, data_dir=data_dir / "bob") as bob,
    ):
        print(f"alice is {alice.identifier}")
        print(f"bob   is {bob.identifier}")
        await tell_where(alice, bob)
        await tell_where(bob, alice)

        with trio.fail_after(DEADLINE_S):
            # Subscribe first: a subscription sees events from the moment it is made. A node
            # joins an s2s room by itself when a peer it knows invites it.
            async with aclosing(bob.subscribe()) as bob_all:
                room = await alice.create_s2s_room(bob.identifier)
                print(f"alice opened the s2s room {room} and invited bob")
                await joined(bob, bob_all, room)
            print(f"bob joined {room}")

            # Each prints what the other sends; both send `count` pings.
            alice_sees, bob_sees = alice.subscribe(room), bob.subscribe(room)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(print_pings, alice, "alice", alice_sees, count)
                nursery.start_soon(print_pings, bob, "bob", bob_sees, count)
                for n in range(count):
                    await alice.send_event(room, PING, {"from": "alice", "n": n})
                    await bob.send_event(room, PING, {"from": "bob", "n": n})
        state = await bob.room_state(room)
        members = sorted(k for t, k in state if t == "m.room.member")
        print(f"bob sees {len(state)} state events and {len(members)} members; done")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="keep the nodes' data here")
    parser.add_argument("--count", type=int, default=3, help="pings each node sends")
    args = parser.parse_args()
    if args.data_dir is not None:
        trio.run(main, args.data_dir, args.count)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            trio.run(main, Path(tmp), args.count)
