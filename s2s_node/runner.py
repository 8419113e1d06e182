"""`s2s-node run`: the node in the foreground until SIGINT or SIGTERM.

Owns: logging to stderr, running `open_node` under trio with the signals caught, and
`<data_dir>/node.json` (`{"pid", "identifier", "client_url", "federation_url"}`, written once the
listeners are bound, through a temporary file renamed into place, removed on a clean exit). Must
not: print to stdout (cli does) or decide anything about the node.

Design: DESIGN.md section 11 (`run`, node.json, exit within 10 s of SIGTERM).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from s2s_node.config import Config
from s2s_node.datadir import resolve_data_dir
from s2s_node.node import Node, open_node

NODE_FILE = "node.json"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Shutting down (cancelling tasks, closing the store) must finish well inside the 10 s promise.
SHUTDOWN_DEADLINE_S = 8.0

logger = logging.getLogger(__name__)


def build_node_info(node: Node) -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "identifier": node.identifier,
        "client_url": node.client_url,
        "federation_url": node.federation_url,
    }


def write_node_file(data_dir: Path, info: dict[str, object]) -> Path:
    path = data_dir / NODE_FILE
    tmp = data_dir / f".{NODE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


async def run_node(config: Config, data_dir: str | Path | None) -> None:
    """Run until SIGINT or SIGTERM; node.json exists while the node serves."""
    path = resolve_data_dir(data_dir if data_dir is not None else config.data_dir)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(config, data_dir=path) as node:
            node_file = write_node_file(path, build_node_info(node))
            try:
                async for signum in signals:
                    logger.info("%s received; stopping", signal.Signals(signum).name)
                    break
            finally:
                node_file.unlink(missing_ok=True)


def run(config: Config, data_dir: str | Path | None) -> None:
    """The `run` command: configure logging and run the node (raises on startup failures)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    try:
        trio.run(run_node, config, data_dir)
    except BaseExceptionGroup as group:
        # A startup failure inside the node's nursery (e.g. the port is taken) arrives wrapped
        # in exception groups; the caller wants the one error.
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if leaf is group:
            raise
        raise leaf from None
