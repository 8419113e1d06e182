"""Upgrade-negotiation records: the persisted state of each negotiation's machine.

Owns: `NegotiationTable`, which keeps, per room and negotiation (named by its opening event),
the machine's phase and its state as a JSON object, so a restarted node resumes negotiations
where they were. Must not: interpret the record (the pure machine in `core` does).

Design: DESIGN.md section 5 (upgrade negotiation) and 9.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s_node.core.canonical import JsonDict, encode_canonical_json, parse_json_object
from s2s_node.store.database import Database


@dataclass(frozen=True, slots=True, kw_only=True)
class NegotiationRecord:
    room_id: str
    negotiation_id: str  # the opening event's ID
    phase: str
    record: JsonDict
    updated_ms: int


class NegotiationTable:
    """Negotiation records by `(room_id, negotiation_id)`."""

    __slots__ = ("_db",)

    def __init__(self, db: Database) -> None:
        self._db = db

    def put(self, record: NegotiationRecord) -> None:
        """Insert or replace a record."""
        data = encode_canonical_json(record.record)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO negotiations"
                " (room_id, negotiation_id, phase, record, updated_ms) VALUES (?, ?, ?, ?, ?)",
                (record.room_id, record.negotiation_id, record.phase, data, record.updated_ms),
            )

    def get(self, room_id: str, negotiation_id: str) -> NegotiationRecord | None:
        row = self._db.fetch_one(
            "SELECT room_id, negotiation_id, phase, record, updated_ms FROM negotiations"
            " WHERE room_id = ? AND negotiation_id = ?",
            (room_id, negotiation_id),
        )
        return None if row is None else _record(row)

    def in_room(self, room_id: str) -> list[NegotiationRecord]:
        """A room's negotiations, oldest update first."""
        rows = self._db.fetch_all(
            "SELECT room_id, negotiation_id, phase, record, updated_ms FROM negotiations"
            " WHERE room_id = ? ORDER BY updated_ms, negotiation_id",
            (room_id,),
        )
        return [_record(row) for row in rows]


def _record(row: tuple[object, ...]) -> NegotiationRecord:
    room_id, negotiation_id, phase, data, updated_ms = row
    assert isinstance(data, bytes)
    return NegotiationRecord(
        room_id=str(room_id),
        negotiation_id=str(negotiation_id),
        phase=str(phase),
        record=parse_json_object(data),
        updated_ms=int(str(updated_ms)),
    )
