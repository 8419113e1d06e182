"""Federation bookkeeping: known peers, the per-peer outbound queues, received transaction IDs.

Owns: `PeerTable` (what discovery and the back-off logic know about each peer),
`OutboundQueue` (PDUs, by reference to the stored event, and EDUs waiting for each destination,
in order; removed only when the peer acknowledged them, so a restart resends what was pending)
and `ReceivedTxns` (the `(origin, txnId)` pairs already processed, with the answer given, so a
retried `send/{txnId}` gets the same answer and is not processed twice). Must not: decide when
to send or how long to back off (the net shell does; this only remembers).

Design: DESIGN.md sections 7 ("Outbound") and 9; server-server API `PUT /send/{txnId}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from s2s_node.core.canonical import JsonDict, encode_canonical_json, parse_json_object
from s2s_node.core.ids import EventId
from s2s_node.store.database import Database

# A transaction carries at most 50 PDUs and 100 EDUs (server-server API, `send/{txnId}`).
MAX_TXN_PDUS = 50
MAX_TXN_EDUS = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRecord:
    """A peer as this node remembers it."""

    server_name: str
    address: str | None = None
    last_seen_ms: int | None = None
    failures: int = 0
    retry_at_ms: int = 0
    info: JsonDict | None = None


class PeerTable:
    """Peers by server name (the node identifier)."""

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, peer: PeerRecord) -> None:
        """Insert or replace a peer."""
        info = encode_canonical_json(peer.info or {})
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO peers"
                " (server_name, address, last_seen_ms, failures, retry_at_ms, info)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    peer.server_name,
                    peer.address,
                    peer.last_seen_ms,
                    peer.failures,
                    peer.retry_at_ms,
                    info,
                ),
            )

    def get(self, server_name: str) -> PeerRecord | None:
        row = self._db.fetch_one(
            "SELECT server_name, address, last_seen_ms, failures, retry_at_ms, info FROM peers"
            " WHERE server_name = ?",
            (server_name,),
        )
        return None if row is None else _peer(row)

    def all(self) -> list[PeerRecord]:
        rows = self._db.fetch_all(
            "SELECT server_name, address, last_seen_ms, failures, retry_at_ms, info FROM peers"
            " ORDER BY server_name"
        )
        return [_peer(row) for row in rows]

    def record_failure(self, server_name: str, retry_at_ms: int) -> int:
        """Count one more failed delivery; return the failure count (0 if unknown peer)."""
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE peers SET failures = failures + 1, retry_at_ms = ?"
                " WHERE server_name = ? RETURNING failures",
                (retry_at_ms, server_name),
            ).fetchone()
        return 0 if row is None else int(row[0])

    def record_success(self, server_name: str, now_ms: int) -> None:
        """A delivery worked (or discovery saw the peer): reset the back-off."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE peers SET failures = 0, retry_at_ms = 0, last_seen_ms = ?"
                " WHERE server_name = ?",
                (now_ms, server_name),
            )

    def delete(self, server_name: str) -> bool:
        with self._db.transaction() as conn:
            cur = conn.execute("DELETE FROM peers WHERE server_name = ?", (server_name,))
        return cur.rowcount > 0


def _peer(row: tuple[object, ...]) -> PeerRecord:
    server_name, address, last_seen_ms, failures, retry_at_ms, info = row
    assert isinstance(info, bytes)
    return PeerRecord(
        server_name=str(server_name),
        address=None if address is None else str(address),
        last_seen_ms=None if last_seen_ms is None else int(str(last_seen_ms)),
        failures=int(str(failures)),
        retry_at_ms=int(str(retry_at_ms)),
        info=parse_json_object(info),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundBatch:
    """What to send to one destination next: PDUs (canonical bytes) and EDUs, in queue order.

    `last_seq` is what to pass to `OutboundQueue.ack` once the peer accepted the transaction.
    """

    destination: str
    pdus: tuple[tuple[EventId, bytes], ...]
    edus: tuple[JsonDict, ...]
    last_seq: int


class OutboundQueue:
    """One FIFO queue per destination, persisted."""

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db = db

    def enqueue_pdus(
        self, destinations: Iterable[str], event_ids: Sequence[EventId], now_ms: int
    ) -> None:
        """Queue stored events for each destination (in the order given).

        `KeyError` if an event is not stored (only stored events are sent).
        """
        with self._db.transaction() as conn:
            nids: list[int] = []
            for event_id in event_ids:
                row = conn.execute(
                    "SELECT event_nid FROM events WHERE event_id = ?", (event_id,)
                ).fetchone()
                if row is None:
                    raise KeyError(event_id)
                nids.append(int(row[0]))
            conn.executemany(
                "INSERT INTO outbound (destination, event_nid, enqueued_ms) VALUES (?, ?, ?)",
                [(d, nid, now_ms) for d in destinations for nid in nids],
            )

    def enqueue_edu(self, destination: str, edu: JsonDict, now_ms: int) -> None:
        data = encode_canonical_json(edu)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO outbound (destination, edu, enqueued_ms) VALUES (?, ?, ?)",
                (destination, data, now_ms),
            )

    def destinations(self) -> list[str]:
        """Destinations with something queued."""
        rows = self._db.fetch_all("SELECT DISTINCT destination FROM outbound ORDER BY 1")
        return [str(d) for (d,) in rows]

    def pending_count(self, destination: str) -> int:
        row = self._db.fetch_one(
            "SELECT count(*) FROM outbound WHERE destination = ?", (destination,)
        )
        return 0 if row is None else int(row[0])

    def next_batch(
        self, destination: str, *, max_pdus: int = MAX_TXN_PDUS, max_edus: int = MAX_TXN_EDUS
    ) -> OutboundBatch | None:
        """The oldest queued items for `destination` that fit one transaction, or None."""
        with self._db.reading() as conn:
            rows = conn.execute(
                "SELECT o.seq, e.event_id, e.json, o.edu FROM outbound AS o"
                " LEFT JOIN events AS e ON e.event_nid = o.event_nid"
                " WHERE o.destination = ? ORDER BY o.seq LIMIT ?",
                (destination, max_pdus + max_edus),
            ).fetchall()
        pdus: list[tuple[EventId, bytes]] = []
        edus: list[JsonDict] = []
        last_seq = 0
        for seq, event_id, json_bytes, edu in rows:
            if edu is None:
                if len(pdus) == max_pdus:
                    break
                if event_id is not None:  # an event can only vanish if purged; skip it then
                    pdus.append((EventId(event_id), bytes(json_bytes)))
            else:
                if len(edus) == max_edus:
                    break
                edus.append(parse_json_object(bytes(edu)))
            last_seq = int(seq)
        if not rows:
            return None
        return OutboundBatch(
            destination=destination, pdus=tuple(pdus), edus=tuple(edus), last_seq=last_seq
        )

    def ack(self, destination: str, last_seq: int) -> int:
        """Drop what was delivered (everything up to `last_seq`); return how many items."""
        with self._db.transaction() as conn:
            cur = conn.execute(
                "DELETE FROM outbound WHERE destination = ? AND seq <= ?", (destination, last_seq)
            )
        return cur.rowcount


class ReceivedTxns:
    """Transaction IDs received from each origin, with the answer that was given."""

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, origin: str, txn_id: str) -> JsonDict | None:
        """The answer given to this transaction, if it was processed already."""
        row = self._db.fetch_one(
            "SELECT response FROM received_txns WHERE origin = ? AND txn_id = ?",
            (origin, txn_id),
        )
        return None if row is None else parse_json_object(bytes(row[0]))

    def record(self, origin: str, txn_id: str, response: JsonDict, now_ms: int) -> None:
        """Remember a processed transaction (call it in the transaction that stored its PDUs,
        via `Store.transaction`, so both commit together)."""
        data = encode_canonical_json(response)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO received_txns (origin, txn_id, received_ms, response)"
                " VALUES (?, ?, ?, ?)",
                (origin, txn_id, now_ms, data),
            )

    def prune(self, older_than_ms: int) -> int:
        """Forget transactions received before `older_than_ms`; return how many."""
        with self._db.transaction() as conn:
            cur = conn.execute("DELETE FROM received_txns WHERE received_ms < ?", (older_than_ms,))
        return cur.rowcount
