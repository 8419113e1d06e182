"""A small synchronous client of a running node's client API, for the command line.

Owns: finding the running node of a data directory (`<data_dir>/node.json` naming a live pid
and a client URL, and the server user's token in `<data_dir>/access_token`), the paths of the
client-API endpoints the CLI uses (standard Matrix ones under `/_matrix/client/v3`, the s2s
additions under `/_matrix/client/unstable/support.feline.s2s`), and turning Matrix error
bodies into `ClientApiError`. Must not: start a node or discovery, print, or decide what a
command shows (cli_remote does).

Sync on purpose: a CLI command makes a handful of requests and exits. Proxies from the
environment are ignored (the node is on loopback).

Design: DESIGN.md sections 10 and 11 (node.json, access_token, the client-API paths); Matrix
Client-Server API "Standard error response".
"""

from __future__ import annotations

import enum
import http.client
import json
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_FILE = "node.json"
TOKEN_FILE = "access_token"
V3 = "/_matrix/client/v3"
S2S = "/_matrix/client/unstable/support.feline.s2s"
# Most requests answer at once; a waiting upgrade passes its own, longer timeout.
DEFAULT_TIMEOUT_S = 30.0


class NoNodeReason(enum.Enum):
    """Why no running node was found for a data directory."""

    NO_NODE_FILE = "no_node_file"
    PROCESS_GONE = "process_gone"
    BAD_NODE_FILE = "bad_node_file"
    NO_CLIENT_API = "no_client_api"
    NO_ACCESS_TOKEN = "no_access_token"


class NoRunningNodeError(Exception):
    """There is no node running for the data directory (or it cannot be talked to)."""

    def __init__(self, reason: NoNodeReason, data_dir: Path, detail: str = "") -> None:
        start = "start one with `s2s-node run`"
        if reason in (NoNodeReason.NO_NODE_FILE, NoNodeReason.PROCESS_GONE):
            message = f"no node is running for {data_dir} ({start})"
            if detail:
                message += f": {detail}"
        elif reason is NoNodeReason.NO_CLIENT_API:
            message = f"the node running for {data_dir} has no client API listener"
        elif reason is NoNodeReason.NO_ACCESS_TOKEN:
            message = f"no access token in {data_dir / TOKEN_FILE}: {detail}"
        else:
            message = f"cannot read {data_dir / NODE_FILE}: {detail}"
        super().__init__(message)
        self.reason = reason
        self.data_dir = data_dir


class UnreachableError(Exception):
    """The node's client API did not answer (refused, reset, timed out, or not HTTP)."""


class ClientApiError(Exception):
    """The node answered with an error status; `errcode`/`error` from the Matrix error body."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self.body = dict(body)
        self.errcode = str(body.get("errcode", "M_UNKNOWN"))
        self.error = str(body.get("error", f"HTTP {status}"))
        super().__init__(f"{self.errcode}: {self.error}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningNode:
    """What `<data_dir>/node.json` says about the node running there, and its token."""

    data_dir: Path
    pid: int
    identifier: str
    client_url: str
    federation_url: str
    access_token: str


def is_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def find_running_node(data_dir: Path) -> RunningNode:
    """The node running for `data_dir`; raises `NoRunningNodeError` saying why there is none."""
    path = data_dir / NODE_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NoRunningNodeError(NoNodeReason.NO_NODE_FILE, data_dir) from None
    except (OSError, ValueError) as exc:
        raise NoRunningNodeError(NoNodeReason.BAD_NODE_FILE, data_dir, str(exc)) from None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        raise NoRunningNodeError(NoNodeReason.BAD_NODE_FILE, data_dir, "no pid")
    pid = info["pid"]
    if not is_process_alive(pid):
        detail = f"{path} is left over from process {pid}, which is gone"
        raise NoRunningNodeError(NoNodeReason.PROCESS_GONE, data_dir, detail)
    client_url = info.get("client_url")
    if not isinstance(client_url, str) or not client_url:
        raise NoRunningNodeError(NoNodeReason.NO_CLIENT_API, data_dir)
    try:
        token = (data_dir / TOKEN_FILE).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise NoRunningNodeError(
            NoNodeReason.NO_ACCESS_TOKEN, data_dir, exc.strerror or str(exc)
        ) from None
    if not token:
        raise NoRunningNodeError(NoNodeReason.NO_ACCESS_TOKEN, data_dir, "the file is empty")
    return RunningNode(
        data_dir=data_dir,
        pid=pid,
        identifier=str(info.get("identifier", "")),
        client_url=client_url.rstrip("/"),
        federation_url=str(info.get("federation_url", "")),
        access_token=token,
    )


def build_path(template: str, *parts: str) -> str:
    """`template` with each `{}` replaced by a percent-encoded path segment."""
    return template.format(*(urllib.parse.quote(part, safe="") for part in parts))


def build_txn_id() -> str:
    """A transaction ID unique to this call (the node deduplicates per token and txnId)."""
    return f"cli{time.time_ns()}{secrets.token_hex(4)}"


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClientApi:
    """The client API of one node, as one user (the bearer token)."""

    def __init__(self, base_url: str, access_token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.access_token = access_token

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str | int] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Any:
        """Send one request; the decoded JSON answer, or `ClientApiError`/`UnreachableError`."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        if self.access_token is not None:
            headers["Authorization"] = f"Bearer {self.access_token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            raise ClientApiError(exc.code, _error_body(raw, exc.code)) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            reason = getattr(exc, "reason", exc)
            raise UnreachableError(f"{self.base_url} did not answer: {reason}") from None
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise UnreachableError(f"{url} answered with something that is not JSON") from None

    # -- standard Matrix endpoints

    def whoami(self) -> dict[str, Any]:
        return _object(self.request("GET", f"{V3}/account/whoami"))

    def joined_rooms(self) -> list[str]:
        answer = _object(self.request("GET", f"{V3}/joined_rooms"))
        return [str(room) for room in answer.get("joined_rooms", [])]

    def create_room(self, body: Mapping[str, Any]) -> str:
        return str(_object(self.request("POST", f"{V3}/createRoom", body=body))["room_id"])

    def send(self, room: str, event_type: str, content: Mapping[str, Any]) -> str:
        path = build_path(f"{V3}/rooms/{{}}/send/{{}}/{{}}", room, event_type, build_txn_id())
        return str(_object(self.request("PUT", path, body=content))["event_id"])

    def put_state(
        self, room: str, event_type: str, state_key: str, content: Mapping[str, Any]
    ) -> str:
        path = build_path(f"{V3}/rooms/{{}}/state/{{}}/{{}}", room, event_type, state_key)
        return str(_object(self.request("PUT", path, body=content))["event_id"])

    def state(self, room: str) -> list[dict[str, Any]]:
        answer = self.request("GET", build_path(f"{V3}/rooms/{{}}/state", room))
        return [_object(event) for event in _list(answer)]

    def state_event(self, room: str, event_type: str, state_key: str) -> dict[str, Any]:
        """The content of one state event (Matrix answers the content, not the event)."""
        path = build_path(f"{V3}/rooms/{{}}/state/{{}}/{{}}", room, event_type, state_key)
        return _object(self.request("GET", path))

    def messages(self, room: str, *, since: str | None = None, limit: int = 1000) -> dict[str, Any]:
        """One page of the room's events, newest first (`dir=b`)."""
        query: dict[str, str | int] = {"dir": "b", "limit": limit}
        if since is not None:
            query["from"] = since
        path = build_path(f"{V3}/rooms/{{}}/messages", room)
        return _object(self.request("GET", path, query=query))

    # -- s2s additions

    def peers(self) -> list[dict[str, Any]]:
        answer = self.request("GET", f"{S2S}/peers")
        if isinstance(answer, dict):
            answer = answer.get("peers", [])
        return [_object(peer) for peer in _list(answer)]

    def s2s_rooms(self) -> list[dict[str, Any]]:
        answer = self.request("GET", f"{S2S}/s2s_rooms")
        if isinstance(answer, dict):
            answer = answer.get("rooms", [])
        return [r if isinstance(r, dict) else {"room_id": r} for r in _list(answer)]

    def create_s2s_room(self, peer: str | None) -> str:
        """The node's s2s room with `peer` (the existing live one, or a new one)."""
        body = {"peer": peer} if peer else {}
        return str(_object(self.request("POST", f"{S2S}/s2s_rooms", body=body))["room_id"])

    def negotiations(self, room: str) -> list[dict[str, Any]]:
        answer = self.request("GET", build_path(f"{S2S}/rooms/{{}}/negotiations", room))
        if isinstance(answer, dict):
            answer = answer.get("negotiations", [])
        return [_object(item) for item in _list(answer)]

    def propose_upgrade(
        self, room: str, versions: Mapping[str, int] | None, *, wait: bool, timeout: float
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"wait": wait}
        if versions is not None:
            body["versions"] = dict(versions)
        path = build_path(f"{S2S}/rooms/{{}}/upgrade", room)
        return _object(self.request("POST", path, body=body, timeout=timeout))

    def rules(self, peer: str | None) -> list[dict[str, Any]]:
        query = {"peer": peer} if peer else None
        answer = self.request("GET", f"{S2S}/rules", query=query)
        if isinstance(answer, dict):
            answer = answer.get("rules", [])
        return [_object(rule) for rule in _list(answer)]

    def add_rule(
        self, peer: str, rule_type: str, content: Mapping[str, Any], state_key: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"peer": peer, "type": rule_type, "content": dict(content)}
        if state_key is not None:
            body["state_key"] = state_key
        return _object(self.request("POST", f"{S2S}/rules", body=body))

    def remove_rule(self, peer: str, rule_type: str, state_key: str) -> dict[str, Any]:
        body = {"peer": peer, "type": rule_type, "state_key": state_key}
        return _object(self.request("POST", f"{S2S}/rules/remove", body=body))

    def create_token(self, localpart: str | None) -> dict[str, Any]:
        body = {"user": localpart} if localpart else {}
        return _object(self.request("POST", f"{S2S}/tokens", body=body))

    def dag(self, room: str) -> dict[str, Any]:
        """`{"room_id", "room_version", "events": [federation PDUs], "statuses": {event_id:
        status}, "forward_extremities"}`."""
        return _object(self.request("GET", build_path(f"{S2S}/rooms/{{}}/dag", room)))


def _error_body(raw: bytes, status: int) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"errcode": "M_UNKNOWN", "error": f"HTTP {status}"}


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnreachableError("the node answered with something that is not a JSON object")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise UnreachableError("the node answered with something that is not a JSON list")
    return value
