"""The node's durable store (SQLite): events and state of rooms, federation bookkeeping,
accounts. See `store.Store` (synchronous) and `asyncstore.AsyncStore` (trio).

Design: DESIGN.md section 9.
"""

from s2s_node.store.asyncstore import AsyncStore, open_async_store
from s2s_node.store.database import Durability
from s2s_node.store.errors import (
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreErrorReason,
    StoreForeignError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
    StoreNotWritableError,
)
from s2s_node.store.rooms import SqliteRoomStore
from s2s_node.store.store import DB_FILE, Store

__all__ = [
    "DB_FILE",
    "AsyncStore",
    "Durability",
    "SqliteRoomStore",
    "Store",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreErrorReason",
    "StoreForeignError",
    "StoreFullError",
    "StoreIOError",
    "StoreLockedError",
    "StoreNotWritableError",
    "open_async_store",
]
