"""What the zeroconf-on-loopback tests share: the loopback guard and fast discovery timing.

`loopback_only` replaces `zeroconf.Zeroconf` with a guard that refuses any `interfaces` but
LOOPBACK before a socket is opened, and yields the instances made. A test module makes it
autouse by importing it (`from discovery_fixtures import loopback_only`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zeroconf

from s2s_node.core.peers import Liveness
from s2s_node.discovery import DiscoveryTiming

LOOPBACK = ["127.0.0.1"]
# Discovery that verifies, probes and gives up in well under a second per step.
FAST_DISCOVERY = DiscoveryTiming(
    probe_interval_s=0.2,
    probe_timeout_s=0.5,
    verify_retry_s=0.2,
    verify_retry_max_s=0.5,
    dormant_probe_interval_s=0.3,
    liveness=Liveness(unreachable_after=2, depart_after=4),
)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    real = zeroconf.Zeroconf
    made: list[Any] = []

    def guarded(*args: Any, **kwargs: Any) -> Any:
        interfaces = kwargs.get("interfaces", args[0] if args else zeroconf.InterfaceChoice.All)
        if interfaces != LOOPBACK:
            raise AssertionError(f"a test asked zeroconf for interfaces={interfaces!r}")
        zc = real(*args, **kwargs)
        made.append(zc)
        return zc

    monkeypatch.setattr(zeroconf, "Zeroconf", guarded)
    yield made
