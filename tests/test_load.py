"""Load: one node receiving from four peers at full speed keeps answering its client API
within a bounded latency, its memory stays bounded, and the backlog waits in the senders'
persisted queues (back-pressure: one transaction in flight per destination, one transaction
per origin at a time on the receiver). Every process is a child (tests/load_run.py); the test
process only measures. Figures and the bounds' reasons: docs/reliability.md, "Load"."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from load_run import LoadResult, run_load

# Bounds (docs/reliability.md): a client must stay usable while the node ingests; the measured
# p99 on this 2-core machine with five busy node processes is ~0.1 s, and 1 s is where a user
# notices. The receiver starts at ~50 MiB; one 50-PDU transaction per sender in flight and the
# store's bounded caches keep it well under 100 MiB more.
P99_BOUND_S = 1.0
RSS_GROWTH_BOUND_KB = 100 * 1024


def check(result: LoadResult) -> None:
    summary = result.summary()
    assert result.errors == 0 and set(result.statuses) == {200}, summary
    assert len(result.latencies_s) >= 10 * result.seconds, summary  # it was asked throughout
    assert result.p99 < P99_BOUND_S, summary
    assert result.rss_peak_kb - result.rss_baseline_kb < RSS_GROWTH_BOUND_KB, summary
    # back-pressure: more than a transaction's worth waited in some sender's persisted queue
    assert max(result.queued_max) > 50, summary
    # and it all arrives
    assert result.received_total == result.sent, summary


async def test_a_node_under_load_from_four_peers_stays_responsive(tmp_path: Path) -> None:
    with trio.fail_after(90):
        result = await run_load(tmp_path, seconds=5.0, drain_timeout_s=60.0)
    print(result.summary())
    check(result)


@pytest.mark.slow
async def test_a_node_under_a_minute_of_load(tmp_path: Path) -> None:
    with trio.fail_after(400):
        result = await run_load(tmp_path, seconds=60.0, drain_timeout_s=240.0)
    print(result.summary())
    check(result)
