"""Benchmark: node B catches up a 10,000-event room from node A over loopback, TLS and plain.

Usage: `python scripts/bench_federation.py [--events N] [--mode json|cbor|both]
[--transport plain|tls|both] [--repeats R]`

Two real nodes in one process (on 127.0.0.1, each with its own SQLite store in a temporary
directory), over TLS 1.3 pinned to the identifiers (`federation.tls = true`, the default) and
over plain HTTP (`federation.tls = false`); with `--transport both` the two alternate run by
run, so that a busy moment of the shared machine does not fall on one side only.

A creates an s2s room, invites B's server user and sends N messages (built and stored in A's writer
thread; that part is setup and not timed). Then B joins through A: make_join, send_join, then the
whole history before its join fetched with get_missing_events pages and every event put through B's
receive pipeline (format, signatures, hashes, auth, state, SQLite commit). Timed: `node.join` from
start to return; the figure is events in the room / that time. B learns A's address only after
the fill, so its s2s service (which joins s2s rooms it is invited to by verified peers) does not
join on its own: the timed join is B's first, with nothing of the room known beforehand. With
`--mode cbor` both nodes read and send CBOR bodies (the answers to B's requests are CBOR); with
`json`, JSON. Goal: >= 2,000 events/s, and the cost of TLS under 25% (TLS median >= 0.75 x
plain median).

Prints one JSON object per mode and transport, then, with both transports, one comparison per
mode (`tls_over_plain`, `tls_cost_percent`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import trio

from s2s_node.config import ClientConfig, Config, DiscoveryConfig, FederationConfig, HostPort
from s2s_node.core.ids import RoomId
from s2s_node.node import Node, open_node
from s2s_node.store import Store

TRANSPORTS = ("plain", "tls")
TLS_COST_GOAL_PERCENT = 25


def build_config(transport: str) -> Config:
    return Config(
        federation=FederationConfig(
            listen=HostPort(host="127.0.0.1", port=0), tls=transport == "tls"
        ),
        discovery=DiscoveryConfig(enabled=False),
        client=ClientConfig(listen=HostPort(host="127.0.0.1", port=0)),
    )


def fill_room(node: Node, room: RoomId, count: int) -> None:
    """`count` messages in A's room, one writer call (setup, not timed)."""

    def run(store: Store) -> None:
        graph = node.rooms._graph(store, room)
        for n in range(count):
            pdu = graph.build_event(
                event_type="m.room.message",
                content={"msgtype": "m.text", "body": f"message {n}"},
                sender=node.server_user,
                now_ms=node.now_ms(),
                server_name=node.identifier,
                signing_key=node.key,
            )
            graph.add(pdu)

    trio.from_thread.run(node.astore.write, run)


async def one_run(count: int, cbor: bool, transport: str) -> dict[str, object]:
    config = build_config(transport)
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                open_node(config, data_dir=Path(tmp) / "a", cbor=cbor)
            )
            b = await stack.enter_async_context(
                open_node(config, data_dir=Path(tmp) / "b", cbor=cbor)
            )
            # A knows B from the start (to invite it); B learns A's address only after the
            # room is filled, so that B's s2s service does not accept the invite on its own
            # (it joins invites from verified peers): the timed join is B's first.
            assert a.federation_address is not None and b.federation_address is not None
            await a.add_peer_address(b.identifier, *b.federation_address, cbor=cbor)
            room = await a.create_room(room_type="support.feline.s2s", invite=[b.server_user])
            await trio.to_thread.run_sync(fill_room, a, room, count)
            await b.add_peer_address(a.identifier, *a.federation_address, cbor=cbor)
            assert not await b.rooms.room_rules(room), "B joined before the timed join"
            total = await a.rooms.read(room, lambda g: len(g.store))  # type: ignore[arg-type]
            started = time.perf_counter()
            await b.join(room, via=a.identifier)
            elapsed = time.perf_counter() - started
            on_b = await b.rooms.read(room, lambda g: len(g.store))  # type: ignore[arg-type]
            same = await a.room_state(room) == await b.room_state(room)
            pinned = b.security.channels.is_encrypted_and_pinned(a.identifier)
            assert pinned == (transport == "tls")
            return {
                "events": int(total),
                "events_on_b": int(on_b),
                "seconds": round(elapsed, 3),
                "events_per_s": round(int(total) / elapsed),
                "same_state": same,
            }


async def main_async(count: int, modes: list[str], transports: list[str], repeats: int) -> None:
    for mode in modes:
        runs: dict[str, list[dict[str, object]]] = {t: [] for t in transports}
        for _ in range(repeats):
            for transport in transports:  # alternating, run by run
                runs[transport].append(await one_run(count, mode == "cbor", transport))
        medians: dict[str, float] = {}
        for transport in transports:
            rates = [int(str(r["events_per_s"])) for r in runs[transport]]
            medians[transport] = statistics.median(rates)
            result = {
                "mode": mode,
                "transport": transport,
                "events": runs[transport][0]["events"],
                "events_per_s_median": medians[transport],
                "runs": runs[transport],
                "goal_events_per_s": 2000,
            }
            print(json.dumps(result), flush=True)
        if len(transports) == 2:
            ratio = medians["tls"] / medians["plain"]
            comparison = {
                "mode": mode,
                "tls_over_plain": round(ratio, 3),
                "tls_cost_percent": round((1 - ratio) * 100, 1),
                "goal_tls_cost_percent_below": TLS_COST_GOAL_PERCENT,
            }
            print(json.dumps(comparison), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--mode", choices=("json", "cbor", "both"), default="both")
    parser.add_argument("--transport", choices=("plain", "tls", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    # ERROR: the plain-HTTP runs would print the node's loud `federation.tls = false` warning.
    logging.basicConfig(level=logging.ERROR)
    modes = ["json", "cbor"] if args.mode == "both" else [args.mode]
    transports = list(TRANSPORTS) if args.transport == "both" else [args.transport]
    trio.run(main_async, args.events, modes, transports, args.repeats)


if __name__ == "__main__":
    main()
