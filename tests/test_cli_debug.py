"""`s2s-node debug check|resolve|replay` on real event files, run as subprocesses."""

from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOMS = Path(__file__).resolve().parent / "vectors" / "rooms"
ROOM_FILES = sorted(ROOMS.glob("*.json.gz"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s2s_node.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
    )


def load(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rb") as handle:
        room: dict[str, Any] = json.loads(handle.read())
    return room


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.mark.parametrize("path", ROOM_FILES[:2] + ROOM_FILES[2:3], ids=lambda p: p.name)
def test_check_accepts_every_event_of_a_benchmark_room(path: Path) -> None:
    room = load(path)
    result = run("debug", "check", str(path))
    assert result.returncode == 0, result.stderr
    rows = lines(result.stdout)
    assert [row["event_id"] for row in rows] == room["event_ids"]
    assert all(row["hash_ok"] and row["signature_ok"] and row["auth"] == "allow" for row in rows)


def test_check_reports_tampering_and_rejection_in_file_order(tmp_path: Path) -> None:
    room = load(ROOMS / "v12-s100-c10-k2.json.gz")
    events = copy.deepcopy(room["events"][:12])
    # 1. a content change: the hash no longer matches; the signature (over the redacted form,
    #    which keeps only `name`-less content for m.room.name) still verifies.
    name_index = next(i for i, e in enumerate(events) if e["type"] == "m.room.name")
    events[name_index]["content"]["name"] = "tampered"
    # 2. an event whose signature is broken
    sig_index = len(events) - 1
    server = next(iter(events[sig_index]["signatures"]))
    events[sig_index]["signatures"][server] = {"ed25519:1": "A" * 86}
    file = tmp_path / "room.json"
    file.write_text(json.dumps({"room_version": "12", "events": events}))
    result = run("debug", "check", str(file))
    assert result.returncode == 1
    rows = lines(result.stdout)
    assert rows[name_index]["hash_ok"] is False
    assert rows[name_index]["signature_ok"] is True
    assert "hash" in rows[name_index]["reason"]
    assert rows[sig_index]["signature_ok"] is False
    assert "bad_signature" in rows[sig_index]["reason"]
    assert all(row["auth"] == "allow" for row in rows)


def test_check_marks_events_citing_a_rejected_event(tmp_path: Path) -> None:
    room = load(ROOMS / "v11-s100-c10-k2.json.gz")
    events = room["events"][:10]
    # Drop the creator's join: every later event that cites it as an auth event is rejected.
    join_id = room["event_ids"][1]
    assert events[1]["type"] == "m.room.member"
    rows_file = tmp_path / "room.json"
    rows_file.write_text(json.dumps([events[0], *events[2:]]))
    result = run("debug", "check", str(rows_file))
    assert result.returncode == 1
    rows = lines(result.stdout)
    assert rows[0]["auth"] == "allow"
    citing = [i for i, e in enumerate([events[0], *events[2:]]) if join_id in e["auth_events"]]
    assert citing
    for index in citing:
        assert rows[index]["auth"] == "reject"
        assert join_id in rows[index]["reason"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"events": 3}', "expected a list of events"),
        ('{"room_version": "9", "events": []}', "not supported"),
        ('[{"a": 1.5}]', "not valid JSON"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    file = tmp_path / "bad.json"
    file.write_text(content)
    result = run("debug", "check", str(file))
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run("debug", "resolve", str(tmp_path / "none.json"))
    assert result.returncode == 2
    assert "no such file" in result.stderr


@pytest.mark.parametrize("path", ROOM_FILES, ids=lambda p: p.name)
def test_resolve_gives_the_expected_state_of_each_room(path: Path) -> None:
    result = run("debug", "resolve", str(path), "--repeat", "2")
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["resolved_state"] == load(path)["expected"]["resolved_state"]
    assert output["resolve_median_s"] > 0
    assert output["repeat"] == 2


def test_resolve_accepts_state_sets_of_event_ids(tmp_path: Path) -> None:
    room = load(ROOMS / "v11-s100-c10-k2.json.gz")
    doc = {
        "room_version": room["room_version"],
        "events": room["events"],
        "state_sets": [[entry[2] for entry in state_set] for state_set in room["state_sets"]],
    }
    file = tmp_path / "ids.json"
    file.write_text(json.dumps(doc))
    result = run("debug", "resolve", str(file))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resolved_state"] == room["expected"]["resolved_state"]


def test_replay_reaches_the_expected_state_and_the_state_after_an_event() -> None:
    path = ROOMS / "v12-s100-c10-k2.json.gz"
    room = load(path)
    result = run("debug", "replay", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resolved_state"] == room["expected"]["resolved_state"]
    tip = room["tips"][0]
    at = run("debug", "replay", str(path), "--at", tip)
    assert at.returncode == 0, at.stderr
    assert json.loads(at.stdout)["resolved_state"] == room["state_sets"][0]
    unknown = run("debug", "replay", str(path), "--at", "$" + "A" * 43)
    assert unknown.returncode == 2
