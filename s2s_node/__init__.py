"""s2s-node: a minimal peer-to-peer Matrix node for server-to-server rooms (MSC3348)."""

__version__ = "0.1.0"
