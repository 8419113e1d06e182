"""Benchmark of the transport: signed PUTs of a 50-PDU transaction, TLS 1.3 beside plain HTTP.

Usage: `python scripts/bench_tls.py [--requests N] [--rounds R] [--concurrency C] [--json]`

One process, one trio loop: `net.server.serve_http` on 127.0.0.1 (with `tls=` or without)
answering `PUT /_matrix/federation/v1/send/{txnId}` after full X-Matrix authentication (body
decoded strictly, signature verified, and on TLS the origin bound to the client certificate),
and a `net.client.FederationClient` signing each request. The body is a transaction of 50
synthetic PDUs shaped like room events (~1 KiB each), the most `send` carries (DESIGN.md 7),
so requests/s here is an upper bound on catch-up transactions/s over one link. Both ends share
the CPU, so the cost of TLS is counted on both sides.

Measured, plain and TLS alternating round by round (the machine is shared; the best round of
each counts): sequential requests on one kept-alive connection (catch-up sends one transaction
at a time per peer), C concurrent requests on the pool, and new connections (a fresh client per
request: TCP + TLS handshake + one request). Prints requests/s and TLS/plain; the issue's goal
is a TLS cost under 25% (ratio >= 0.75) in catch-up.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from s2s_node.core.keys import SigningKey, signing_key_from_seed
from s2s_node.core.wire import JSON_CONTENT_TYPE, encode_body
from s2s_node.net.auth import authenticate_request
from s2s_node.net.client import FederationClient, build_path
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route, Router
from s2s_node.net.server import bound_port, serve_http
from s2s_node.net.tls import TransportSecurity, build_transport_security, check_origin_is_tls_peer

ALICE = signing_key_from_seed(b"\x0a" * 32)
BOB = signing_key_from_seed(b"\x0b" * 32)
PDUS_PER_TXN = 50


def build_transaction(origin: str) -> dict[str, Any]:
    """50 PDUs shaped like room events (ids, hashes, signatures, a message body)."""
    room = "!" + "r" * 43
    pdus = []
    for i in range(PDUS_PER_TXN):
        pdus.append(
            {
                "auth_events": [f"${'a' * 42}{j}" for j in range(3)],
                "content": {"body": f"message {i} " + "lorem ipsum " * 30, "msgtype": "m.text"},
                "depth": 1000 + i,
                "hashes": {"sha256": "h" * 43},
                "origin_server_ts": 1_700_000_000_000 + i,
                "prev_events": [f"${'p' * 42}{i}"],
                "room_id": room,
                "sender": f"@alice:{origin}",
                "signatures": {origin: {"ed25519:1": "s" * 86}},
                "type": "m.room.message",
            }
        )
    return {"origin": origin, "origin_server_ts": 1_700_000_000_000, "pdus": pdus, "edus": []}


def build_router() -> Router:
    async def send(request: Request) -> Response:
        authenticated = authenticate_request(request, BOB.identifier)
        check_origin_is_tls_peer(authenticated.origin)
        return build_response({"pdus": {}})

    return Router(
        [Route(method="PUT", pattern="/_matrix/federation/v1/send/{txnId}", handler=send)]
    )


async def _rate(count: int, run: Callable[[int], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await run(count)
    return count / (time.perf_counter() - start)


async def measure(
    security: TransportSecurity | None,
    key: SigningKey,
    txn: dict[str, Any],
    requests: int,
    concurrency: int,
) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(serve_http, build_router(), tls=security.server if security else None)
        )
        addresses: dict[str, tuple[str, int]] = {
            BOB.identifier: ("127.0.0.1", bound_port(listeners))
        }
        client_tls = security.client if security else None
        counter = iter(range(10**9))

        async def one(client: FederationClient) -> None:
            path = build_path("/_matrix/federation/v1/send/{}", f"t{next(counter)}")
            status, _ = await client.request(BOB.identifier, "PUT", path, body=txn)
            assert status == 200

        client = FederationClient(key, addresses.get, tls=client_tls)
        await one(client)  # warm: connection open

        async def sequential(count: int) -> None:
            for _ in range(count):
                await one(client)

        async def concurrent(count: int) -> None:
            async def worker(n: int) -> None:
                for _ in range(n):
                    await one(client)

            async with trio.open_nursery() as workers:
                for _ in range(concurrency):
                    workers.start_soon(worker, count // concurrency)

        async def fresh(count: int) -> None:
            for _ in range(count):
                new_client = FederationClient(key, addresses.get, tls=client_tls)
                await one(new_client)
                await new_client.aclose()

        result = {
            "sequential": await _rate(requests, sequential),
            "concurrent": await _rate(requests - requests % concurrency, concurrent),
            "new_connection": await _rate(max(requests // 4, 10), fresh),
        }
        await client.aclose()
        nursery.cancel_scope.cancel()
    return result


async def main_async(args: argparse.Namespace) -> None:
    txn = build_transaction(ALICE.identifier)
    body_bytes = len(encode_body(txn, JSON_CONTENT_TYPE))
    tls = build_transport_security(ALICE, tls=True)
    # One security per node: the server side is Bob's, the client side Alice's.
    bob_tls = build_transport_security(BOB, tls=True)
    mixed = TransportSecurity(
        server=bob_tls.server, client=tls.client, channels=tls.channels, warning=None
    )
    say = (lambda *a, **k: None) if args.json else print
    say(f"body: {PDUS_PER_TXN} PDUs, {body_bytes} bytes of JSON; requests per round: ", end="")
    say(f"{args.requests}; rounds: {args.rounds}; concurrency: {args.concurrency}")
    best: dict[str, dict[str, float]] = {"plain": {}, "tls": {}}
    for round_ in range(args.rounds):
        for name, security in (("plain", None), ("tls", mixed)):
            rates = await measure(security, ALICE, txn, args.requests, args.concurrency)
            say(
                f"  round {round_ + 1} {name:5s} "
                + "  ".join(f"{k}={v:7.1f}/s" for k, v in rates.items())
            )
            for k, v in rates.items():
                best[name][k] = max(best[name].get(k, 0.0), v)
    if args.json:
        ratios = {k: best["tls"][k] / best["plain"][k] for k in best["plain"]}
        result = {
            "body_bytes": body_bytes,
            "pdus_per_txn": PDUS_PER_TXN,
            "requests": args.requests,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "best_requests_per_s": best,
            "tls_over_plain": ratios,
            "tls_cost_percent": (1 - ratios["sequential"]) * 100,
            "goal_tls_cost_percent_below": 25,
        }
        print(json.dumps(result))
        return
    print("best of rounds (requests/s):")
    print(f"  {'mode':16s} {'plain':>9s} {'tls':>9s} {'tls/plain':>10s}")
    for k in best["plain"]:
        plain, secure = best["plain"][k], best["tls"][k]
        print(f"  {k:16s} {plain:9.1f} {secure:9.1f} {secure / plain:10.2f}")
    ratio = best["tls"]["sequential"] / best["plain"]["sequential"]
    verdict = "met" if ratio >= 0.75 else "NOT met"
    print(f"catch-up (sequential, kept-alive): TLS cost {1 - ratio:.0%} (goal < 25%: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
