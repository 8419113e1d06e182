"""A discovery node for the tests: a key server plus `open_discovery`, reporting JSON lines.

Usage: `python tests/netns_node.py --interfaces all|ADDR[,ADDR] [--seed HEX] [--host H]`.
Serves `GET /_matrix/key/v2/server` (self-signed, built with core.peers) on an ephemeral port,
runs discovery, and prints one JSON object per line on stdout: `ready` (identifier, port), then
every peer change (`added`, `verified`, `updated`, `unreachable`, `departed`), each with the
wall-clock time `t`. SIGTERM/SIGINT exit cleanly (mDNS goodbye) after printing `stopped` with
the counters. The namespace test runs one per network namespace with `ip netns exec`; the tests
also import `key_server_router` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

import trio

from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.peers import build_key_document
from s2s_node.discovery import DiscoveryTiming, open_discovery
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route, Router
from s2s_node.net.server import bound_port, serve_http

KEY_DOCUMENT_LIFETIME_MS = 24 * 3600 * 1000


def key_server_router(key: SigningKey) -> Router:
    """A router answering only `GET /_matrix/key/v2/server` with `key`'s document."""

    async def key_document(request: Request) -> Response:
        valid_until = int(time.time() * 1000) + KEY_DOCUMENT_LIFETIME_MS
        return build_response(build_key_document(key, valid_until_ts=valid_until))

    return Router([Route(method="GET", pattern="/_matrix/key/v2/server", handler=key_document)])


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


async def main(args: argparse.Namespace) -> None:
    key = signing_key_from_seed(bytes.fromhex(args.seed) if args.seed else os.urandom(32))
    interfaces: Any = "all" if args.interfaces == "all" else args.interfaces.split(",")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_http(
                key_server_router(key), host=args.host, port=0, task_status=task_status
            )
        )
        port = bound_port(listeners)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_discovery(
                key.identifier,
                port,
                interfaces=interfaces,
                timing=DiscoveryTiming(probe_interval_s=args.probe_interval),
                on_wake=lambda identifier: emit("wake", peer=identifier),
            ) as discovery:

                async def report() -> None:
                    async for change in discovery.changes():
                        emit(
                            change.kind.value,
                            peer=change.peer.identifier,
                            endpoint=change.peer.endpoint,
                        )

                nursery.start_soon(report)
                emit("ready", identifier=key.identifier, port=port, pid=os.getpid())
                async for _ in signals:
                    break
                stats = discovery.stats
                emit(
                    "stopped",
                    ignored={r.value: n for r, n in stats.ignored.items()},
                    verify_failed={r.value: n for r, n in stats.verify_failed.items()},
                    registered=discovery.mdns is not None and discovery.mdns.stats.registered,
                )
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--interfaces", required=True)
    parser.add_argument("--seed", default="")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--probe-interval", type=float, default=1.0)
    trio.run(main, parser.parse_args())
    sys.exit(0)
