"""Benchmark of the signed-event core: building+signing and verifying events, against a ceiling.

Usage: `python scripts/bench_events.py [--rooms DIR] [--room FILE] [--n N] [--repeats R] [--json]`

Loads the events of one benchmark room (perf-dag/1 format; default: the largest file in
`../shared/bench/rooms` relative to the repository root) with the strict decoder
(`core.canonical.parse_json`, as the node decodes federation bodies) and prints events/s for:

(a) build+sign: `core.events.build_event` of equivalent events (the same type, sender, room,
    state_key, content, prev/auth events, depth and timestamp as the room's events), hashed and
    signed with our own key. Includes the value check of `content` and of every other
    parameter, the size bound, the content hash, redaction, the signature, the event ID and
    the receiver-side field checks (those of `parse_pdu`).
(b) verify: `core.signing.check_event` (event ID, signatures of every required server, content
    hash, and the exact encoded size of the event from the content-hash bytes) then
    `core.events.parse_pdu` (format checks and the size limit) of each event as loaded, with the
    explicit keys of the file. As on the node's receive path (`core.ingest` with
    `values_checked=True`, which the federation layer passes for bodies from `core.wire`),
    `parse_pdu` gets `check_values=False`: the strict decoder already refused floats,
    out-of-range integers, NaN, duplicate keys, lone surrogates and deep nesting, so the
    canonical-JSON value walk would find nothing; the size limit is still checked, on the
    size `check_event` measured.

Beside each, the raw ceiling measured in the same run: the same cryptographic and encoding work
with no logic at all, on inputs prepared beforehand.
- verify ceiling, per event: canonical JSON encoding (the project's encoder settings, UTF-8) of
  the precomputed content-hash form (the event without `hashes`, `signatures`, `unsigned`) and
  of the precomputed redacted form (without `signatures`), two `hashlib.sha256`, one PyNaCl
  `VerifyKey.verify` of the decoded signature.
- build ceiling, per event: the same two encodings and two sha256, one PyNaCl
  `SigningKey.sign`.
The ratios (ours / ceiling) are what to watch; targets: verify >= 0.8, build+sign >= 0.7.
Each measurement is repeated (`--repeats`), operations and ceilings interleaved so that both see
the same machine load; the best and the median of the repeats are printed. Times are process
CPU time (`time.process_time`, so a busy shared machine preempting us does not count) with the
garbage collector paused, as `timeit` does.

What separates ours from the ceiling (2-core shared machine, 2026-11): in verify, redaction and
the content-hash copy (~1.5 us; the ceiling's forms are precomputed), the size of `hashes`,
`signatures` and `unsigned` (~1 us), base64 of signatures, hashes and event IDs, the
signature/hash bookkeeping of `check_event`, and `parse_pdu`'s field checks and `Pdu` (~3.5 us);
in build, the dict copies, the value check of `content` and the parameters (~1 us), redaction,
base64 and the field checks and `Pdu` (~2.5 us).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing

from s2s_node.core.canonical import decode_base64, encode_canonical_json_trusted, parse_json
from s2s_node.core.events import build_event, parse_pdu
from s2s_node.core.ids import server_of
from s2s_node.core.keys import signing_key_from_seed
from s2s_node.core.redaction import redact
from s2s_node.core.rules import RoomVersionRules, rules_for
from s2s_node.core.signing import KeyRing, check_event

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOMS = REPO_ROOT.parent / "shared" / "bench" / "rooms"
# Our key for the build benchmark: a fixed throwaway seed.
BENCH_SEED = hashlib.sha256(b"s2s-node bench_events").digest()


def _largest_room(rooms: Path) -> Path:
    files = sorted(rooms.glob("*.json.gz"), key=lambda p: p.stat().st_size)
    if not files:
        sys.exit(f"no *.json.gz rooms in {rooms}")
    return files[-1]


def _time(run: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()  # as timeit does: no collector pauses inside the timed region
    try:
        start = time.process_time()
        run()
        return time.process_time() - start
    finally:
        gc.enable()


def _verify_ours(events: list[dict[str, Any]], rules: RoomVersionRules, keys: KeyRing) -> None:
    for event in events:
        checked = check_event(event, rules, keys)
        if not checked.hash_ok:
            raise SystemExit("content hash mismatch: the room file is damaged")
        # As the node's receive path (`core.ingest` with `values_checked=True`): the room was
        # decoded by the strict decoder, so the value walk is not repeated.
        parse_pdu(
            event,
            rules,
            event_id=checked.event_id,
            check_values=False,
            encoded_size=checked.size,
        )


def _build_ours(events: list[dict[str, Any]], rules: RoomVersionRules) -> None:
    key = signing_key_from_seed(BENCH_SEED)
    server_name = key.identifier
    for event in events:
        build_event(
            rules=rules,
            room_id=event.get("room_id"),
            sender=event["sender"],
            event_type=event["type"],
            content=event["content"],
            prev_events=event["prev_events"],
            auth_events=event["auth_events"],
            depth=event["depth"],
            origin_server_ts=event["origin_server_ts"],
            server_name=server_name,
            signing_key=key,
            state_key=event.get("state_key"),
        )


def _json_result(
    room: str, version: str, n: int, repeats: int, runs: dict[str, list[float]]
) -> dict[str, Any]:
    """The figures of the human output, machine-readable (`--json`)."""
    result: dict[str, Any] = {"room": room, "room_version": version, "events": n}
    result["repeats"] = repeats
    for name, target in (("build", 0.7), ("verify", 0.8)):
        ours, ceiling = runs[name], runs[f"{name}_ceiling"]
        result[name] = {
            "events_per_s_best": n / min(ours),
            "events_per_s_median": n / statistics.median(ours),
            "ceiling_events_per_s_best": n / min(ceiling),
            "ceiling_events_per_s_median": n / statistics.median(ceiling),
            "ratio_best": min(ceiling) / min(ours),
            "ratio_median": statistics.median(ceiling) / statistics.median(ours),
            "target_ratio": target,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=Path, default=DEFAULT_ROOMS, help="folder of rooms")
    parser.add_argument("--room", type=Path, help="one room file (overrides --rooms)")
    parser.add_argument("--n", type=int, default=0, help="use the first N events (0: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args(argv)

    path = args.room or _largest_room(args.rooms)
    with gzip.open(path, "rb") as f:
        loaded = parse_json(f.read())  # the strict decoder, as the node's federation bodies
    if not isinstance(loaded, dict):
        sys.exit(f"{path} is not a JSON object")
    room: dict[str, Any] = loaded
    rules = rules_for(room["room_version"])
    events: list[dict[str, Any]] = room["events"][: args.n or None]
    explicit = {
        name: {server["key_id"]: decode_base64(server["verify_key"])}
        for name, server in room["servers"].items()
    }
    keys = KeyRing(explicit, derive=False)

    # Inputs of the ceilings, prepared outside the timed region.
    hash_forms = [
        {k: v for k, v in e.items() if k not in ("hashes", "signatures", "unsigned")}
        for e in events
    ]
    redacted_forms = []
    for event in events:
        redacted = redact(event, rules)
        redacted.pop("signatures", None)
        redacted_forms.append(redacted)
    verify_keys: list[nacl.signing.VerifyKey] = []
    signatures: list[bytes] = []
    for event in events:
        server = server_of(event["sender"])
        key_id = room["servers"][server]["key_id"]
        found = keys(server, key_id)
        assert found is not None
        verify_keys.append(found)
        signatures.append(decode_base64(event["signatures"][server][key_id]))
    our_key = nacl.signing.SigningKey(BENCH_SEED)
    encode = encode_canonical_json_trusted
    sha256 = hashlib.sha256
    work = list(zip(hash_forms, redacted_forms, verify_keys, signatures, strict=True))

    def verify_ceiling() -> None:
        for hash_form, redacted, verify_key, signature in work:
            sha256(encode(hash_form)).digest()
            message = encode(redacted)
            sha256(message).digest()
            verify_key.verify(message, signature)

    def build_ceiling() -> None:
        for hash_form, redacted, _, _ in work:
            sha256(encode(hash_form)).digest()
            message = encode(redacted)
            sha256(message).digest()
            our_key.sign(message)

    runs: dict[str, list[float]] = {"verify": [], "verify_ceiling": [], "build": []}
    runs["build_ceiling"] = []
    for _ in range(args.repeats):
        runs["verify"].append(_time(lambda: _verify_ours(events, rules, keys)))
        runs["verify_ceiling"].append(_time(verify_ceiling))
        runs["build"].append(_time(lambda: _build_ours(events, rules)))
        runs["build_ceiling"].append(_time(build_ceiling))

    n = len(events)
    if args.json:
        print(json.dumps(_json_result(path.name, rules.version, n, args.repeats, runs)))
        return 0
    print(f"room {path.name}: room version {rules.version}, {n} events, {args.repeats} repeats")
    for name in ("build", "verify"):
        ours, ceiling = runs[name], runs[f"{name}_ceiling"]
        target = 0.7 if name == "build" else 0.8
        best_ratio = min(ceiling) / min(ours)
        median_ratio = statistics.median(ceiling) / statistics.median(ours)
        print(
            f"{name:7s} ours {n / min(ours):9.0f} ev/s (median {n / statistics.median(ours):9.0f})"
            f" | ceiling {n / min(ceiling):9.0f} ev/s"
            f" (median {n / statistics.median(ceiling):9.0f})"
            f" | ratio best {best_ratio:.2f}, median {median_ratio:.2f} (target >= {target})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
