"""The atheris harnesses of scripts/fuzz/targets.py, run without atheris.

Each harness must pass on its own seeds (a harness that fails on valid input finds nothing),
the seeds must reach past the decoder (an ingest seed is accepted, a signed X-Matrix seed
verifies), and a bounded run on mutated seeds must find nothing. The long version — many more
mutations, and atheris itself when installed — is marked slow; `scripts/fuzz/run_all.py` is
the campaign (results in docs/reliability.md).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2s_node.core.canonical import parse_json
from s2s_node.core.ingest import Outcome, ingest_pdu
from s2s_node.core.room import RoomGraph
from s2s_node.core.signing import derived_keys

FUZZ_DIR = Path(__file__).resolve().parent.parent / "scripts" / "fuzz"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_targets", FUZZ_DIR / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


targets: Any = _load()
NAMES = sorted(targets.TARGETS)


def test_every_decoder_of_the_issue_has_a_harness() -> None:
    assert set(NAMES) == {
        "json", "cbor", "pdu", "ingest", "xmatrix", "txt", "key_document", "negotiation",
        "policy", "client_body",
    }  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_harness_passes_on_its_seeds(name: str) -> None:
    seeds = targets.seeds(name)
    assert seeds
    for seed in seeds:
        targets.TARGETS[name](seed)


def test_ingest_seeds_reach_acceptance() -> None:
    # The message seed (left out of the harness's graph) is accepted: mutations of it start
    # from an event that passes every check.
    rules, pdus = targets.room("11")
    graph = RoomGraph(rules, pdus[0].room_id)
    for pdu in pdus[:-1]:
        graph.add(pdu)
    verdict = ingest_pdu(parse_json(targets._j(pdus[-1].json)), graph, derived_keys)
    assert verdict.outcome is Outcome.ACCEPTED


def test_fields_split() -> None:
    assert targets._fields(b"a\0b\0c\0d", 3) == [b"a", b"b", b"c\0d"]
    assert targets._fields(b"a", 3) == [b"a", b"", b""]


def mutate(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(seed)
    for op, where, byte in edits:
        at = where % (len(data) + 1)
        if op == 0 and data:
            del data[min(at, len(data) - 1)]
        elif op == 1:
            data.insert(at, byte)
        elif data:
            data[min(at, len(data) - 1)] = byte
    return bytes(data)


edit_lists = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2**16), st.integers(0, 255)))


def _run_mutated(name: str, which: int, edits: list[tuple[int, int, int]]) -> None:
    seeds = targets.seeds(name)
    targets.TARGETS[name](mutate(seeds[which % len(seeds)], edits))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 100), edits=edit_lists)
def test_harness_on_mutated_seeds(name: str, which: int, edits: list[tuple[int, int, int]]) -> None:
    _run_mutated(name, which, edits)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 100), edits=edit_lists)
def test_harness_long_campaign(name: str, which: int, edits: list[tuple[int, int, int]]) -> None:
    _run_mutated(name, which, edits)


@pytest.mark.slow
def test_atheris_runs_every_target_briefly(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install -e '.[fuzz]')")
    assert shutil.which(sys.executable)
    proc = subprocess.run(
        [sys.executable, str(FUZZ_DIR / "run_all.py"), "--seconds", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 crashes" in proc.stdout
