"""The crash test's child: ingest a benchmark room into a store, one event at a time.

Usage: `python tests/store_crash_child.py DATA_DIR ROOM_FILE`. Prints `ready` once the store is
open, then `ack <event_id>` for each event after the transaction that stored it (and queued it
for the peer `peer`) committed, and `done` at the end. Events already stored (from an earlier,
killed run) are acknowledged again without being stored twice. The parent kills it with SIGKILL
at random moments (tests/test_store_crash.py).
"""

from __future__ import annotations

import gzip
import json
import sys

from s2s_node.core.events import parse_pdu
from s2s_node.core.ingest import Outcome, ingest_pdu
from s2s_node.core.room import RoomGraph
from s2s_node.core.rules import rules_for
from s2s_node.core.signing import derived_keys
from s2s_node.store import Store

PEER = "peer"


def main(data_dir: str, room_file: str) -> None:
    with gzip.open(room_file, "rb") as f:
        dag = json.loads(f.read())
    rules = rules_for(dag["room_version"])
    create = parse_pdu(dag["events"][0], rules)
    out = sys.stdout
    with Store.open(data_dir) as store:
        room = store.create_room(create.room_id, rules)
        graph = RoomGraph(rules, create.room_id, room)
        out.write("ready\n")
        out.flush()
        for obj in dag["events"]:
            with store.transaction():
                verdict = ingest_pdu(obj, graph, derived_keys)
                if verdict.outcome is Outcome.DROPPED or verdict.event_id is None:
                    raise SystemExit(f"unexpected verdict {verdict}")
                if verdict.outcome is Outcome.ACCEPTED and not verdict.duplicate:
                    store.outbound.enqueue_pdus([PEER], [verdict.event_id], now_ms=0)
            # The transaction committed: only now is the event acknowledged.
            out.write(f"ack {verdict.event_id}\n")
            out.flush()
        out.write("done\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
