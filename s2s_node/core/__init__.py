"""The sans-IO core: pure, synchronous, deterministic Matrix logic.

Nothing here imports trio, h11, zeroconf, sqlite3, socket, asyncio, httpcore, os, time or
random; clocks, seeds and lookups are parameters. `tests/test_architecture.py` enforces it.
"""
