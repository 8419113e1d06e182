"""The client API's requester: bearer tokens, the per-token rate limit, transaction IDs, and
the one wrapper every authenticated endpoint goes through.

Owns: `ClientContext` (what the client-API routes share: the node, the event stream, the
limits), reading the access token (`Authorization: Bearer`, else the deprecated
`access_token` query parameter), answering 401 `M_MISSING_TOKEN` / `M_UNKNOWN_TOKEN`, a token
bucket per token (429 `M_LIMIT_EXCEEDED` with `retry_after_ms`), the send transaction IDs
(idempotency per token and txnId, kept in memory), request-body and query parsing, and
turning the node's errors into Matrix errors (`endpoint`). Must not: implement an endpoint.

Spec: client-server API "Client Authentication" (tokens, M_MISSING_TOKEN, M_UNKNOWN_TOKEN),
"Rate limiting" (M_LIMIT_EXCEEDED, retry_after_ms), "Transaction identifiers".
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from s2s_node.core.auth import AuthRule
from s2s_node.core.canonical import JsonDict
from s2s_node.core.ids import EventId, UserId, is_server_user
from s2s_node.core.policy import RuleError
from s2s_node.modules.api import ModuleVeto
from s2s_node.modules.policy import NoS2SRoomError, PolicyDisabledError, RuleConflictError
from s2s_node.net.client import FederationClientError, PeerUnreachable, RemoteError
from s2s_node.net.errors import (
    M_BAD_JSON,
    M_FORBIDDEN,
    M_INVALID_PARAM,
    M_LIMIT_EXCEEDED,
    M_MISSING_TOKEN,
    M_NOT_FOUND,
    M_UNKNOWN,
    M_UNKNOWN_TOKEN,
    HttpError,
)
from s2s_node.net.http import Handler, Request, Response
from s2s_node.rooms import UnknownRoomError
from s2s_node.s2s.values import UpgradeError
from s2s_node.store import Store
from s2s_node.sync import EventStream, TokenError

if TYPE_CHECKING:
    from s2s_node.node import Node

# Transaction IDs remembered per token (the spec asks for idempotency "for a while": a client
# retries within seconds or minutes); beyond this many, the oldest are forgotten.
TXN_MEMORY = 10_000
TXN_RETENTION_S = 3600.0
MAX_TXN_ID_CHARS = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientApiLimits:
    """Rate limit per token, and the long-poll cap of /sync."""

    # A token bucket per access token: `burst` requests at once, refilled at `rate_per_s`.
    rate_per_s: float = 50.0
    burst: int = 200
    # /sync waits at most this long, whatever `timeout` asks.
    max_sync_wait_s: float = 60.0
    # Tokens that stay rate-limit-tracked (every valid token may have a bucket; this bounds
    # the table should someone make many tokens).
    max_buckets: int = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Requester:
    """Who made a request: the token's user and device."""

    user_id: UserId
    device_id: str

    @property
    def is_server_user(self) -> bool:
        return is_server_user(self.user_id)


class TokenBuckets:
    """One token bucket per key (the device of an access token)."""

    def __init__(self, limits: ClientApiLimits, clock: Callable[[], float] = time.monotonic):
        self._limits = limits
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, key: str) -> float | None:
        """None if a request may go ahead, else the seconds until one may."""
        now = self._clock()
        limits = self._limits
        tokens, last = self._buckets.pop(key, (float(limits.burst), now))
        tokens = min(float(limits.burst), tokens + (now - last) * limits.rate_per_s)
        wait = None
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / limits.rate_per_s
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > limits.max_buckets:
            self._buckets.popitem(last=False)
        return wait


class TxnIds:
    """Send transaction IDs per device: (device, txnId) -> event ID, for a while.

    DEVIATION: kept in memory only, so a client retrying a send across a restart of the node
    sends a second event (Synapse also forgets them after a while; the spec leaves the scope
    and lifetime to the server).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._done: collections.OrderedDict[tuple[str, str], tuple[EventId, float]] = (
            collections.OrderedDict()
        )
        self._by_event: dict[EventId, tuple[str, str]] = {}
        self._running: dict[tuple[str, str], trio.Event] = {}

    def _forget_old(self) -> None:
        cutoff = self._clock() - TXN_RETENTION_S
        while self._done:
            _, (event_id, at) = next(iter(self._done.items()))
            if at >= cutoff and len(self._done) <= TXN_MEMORY:
                break
            self._done.popitem(last=False)
            self._by_event.pop(event_id, None)

    async def run_once(
        self, device: str, txn_id: str, send: Callable[[], Awaitable[EventId]]
    ) -> EventId:
        """The event of (device, txn_id): sent now by `send`, or the one sent before (a
        concurrent retry waits for the first attempt)."""
        key = (device, txn_id)
        while True:
            self._forget_old()
            done = self._done.get(key)
            if done is not None:
                return done[0]
            running = self._running.get(key)
            if running is None:
                break
            await running.wait()
        finished = self._running[key] = trio.Event()
        try:
            event_id = await send()
            self._done[key] = (event_id, self._clock())
            self._by_event[event_id] = key
            return event_id
        finally:
            del self._running[key]
            finished.set()

    def txn_of(self, device: str, event_id: EventId) -> str | None:
        """The txnId `device` sent `event_id` with (for `unsigned.transaction_id`)."""
        key = self._by_event.get(event_id)
        return key[1] if key is not None and key[0] == device else None


class ClientContext:
    """What the client-API routes share."""

    def __init__(self, node: Node, stream: EventStream, limits: ClientApiLimits) -> None:
        self.node = node
        self.stream = stream
        self.limits = limits
        self.buckets = TokenBuckets(limits)
        self.txns = TxnIds()

    async def authenticate(self, request: Request) -> Requester:
        token = parse_access_token(request)
        if token is None:
            raise HttpError(401, M_MISSING_TOKEN, "missing access token")
        owner = await self.node.astore.read(lambda store: _owner(store, token))
        if owner is None:
            raise HttpError(
                401, M_UNKNOWN_TOKEN, "unrecognised access token", extra={"soft_logout": False}
            )
        requester = Requester(user_id=UserId(owner[0]), device_id=owner[1])
        wait = self.buckets.take(requester.device_id)
        if wait is not None:
            raise HttpError(
                429,
                M_LIMIT_EXCEEDED,
                "too many requests",
                extra={"retry_after_ms": max(1, math.ceil(wait * 1000))},
            )
        return requester


def _owner(store: Store, token: str) -> tuple[str, str] | None:
    owner = store.accounts.owner_of(token)
    return None if owner is None else (owner.user_id, owner.device_id)


def parse_access_token(request: Request) -> str | None:
    header = request.header("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return request.query_value("access_token") or None


AuthedHandler = Callable[[Request, Requester], Awaitable[Response]]


def endpoint(ctx: ClientContext, handler: AuthedHandler) -> Handler:
    """An authenticated endpoint: token, rate limit, then the handler, with the node's
    errors turned into Matrix errors (the rest go through net.errors' table)."""

    async def run(request: Request) -> Response:
        requester = await ctx.authenticate(request)
        try:
            return await handler(request, requester)
        except UnknownRoomError as exc:
            raise HttpError(404, M_NOT_FOUND, str(exc)) from None
        except TokenError as exc:
            raise HttpError(400, M_INVALID_PARAM, str(exc)) from None
        except ModuleVeto as exc:  # a policy rule's refusal carries the `rule` object
            raise HttpError(403, M_FORBIDDEN, str(exc), extra=exc.to_json()) from None
        except (NoS2SRoomError, PolicyDisabledError) as exc:
            raise HttpError(404, M_NOT_FOUND, str(exc)) from None
        except (RuleError, RuleConflictError, UpgradeError) as exc:
            raise HttpError(400, M_INVALID_PARAM, str(exc)) from None
        except RemoteError as exc:
            if 400 <= exc.status < 500 and exc.errcode:
                raise HttpError(
                    exc.status, exc.errcode, f"the remote server said: {exc.error}"
                ) from None
            raise HttpError(502, M_UNKNOWN, f"the remote server failed: {exc}") from None
        except PeerUnreachable as exc:
            raise HttpError(502, M_UNKNOWN, f"the remote server is unreachable: {exc}") from None
        except FederationClientError as exc:
            raise HttpError(502, M_UNKNOWN, f"the remote server failed: {exc}") from None

    return run


# ----------------------------------------------------------------------------------------------
# Request parsing


def parse_json_object(request: Request, *, empty_ok: bool = False) -> JsonDict:
    """The request body as a JSON object (M_NOT_JSON / M_BAD_JSON otherwise)."""
    if empty_ok and not request.body.strip():
        return {}
    value = request.decode_body()
    if not isinstance(value, dict):
        raise HttpError(400, M_BAD_JSON, "the body must be a JSON object")
    return value


def parse_txn_id(text: str) -> str:
    if not text or len(text) > MAX_TXN_ID_CHARS:
        raise HttpError(400, M_INVALID_PARAM, f"txnId must be 1-{MAX_TXN_ID_CHARS} characters")
    return text


def parse_int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter, clamped to [lo, hi]."""
    text = request.query_value(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise HttpError(400, M_INVALID_PARAM, f"{name} must be an integer") from None
    return max(lo, min(hi, value))


def optional_str(body: JsonDict, key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HttpError(400, M_BAD_JSON, f"{key} must be a string")
    return value


def require_str(body: JsonDict, key: str) -> str:
    value = optional_str(body, key)
    if value is None:
        raise HttpError(400, M_BAD_JSON, f"{key} is required")
    return value


def forbid_server_user_outside_s2s(what: str) -> HttpError:
    """DESIGN.md 11: the server user creates / is invited only into s2s rooms."""
    rule = AuthRule.S2S_SERVER_USER_OUTSIDE_S2S_ROOM
    return HttpError(
        403,
        M_FORBIDDEN,
        f"the s2s membership rule ({rule.value}): {what}; a server user is a member of s2s"
        " rooms only (creation_content.type m.s2s or support.feline.s2s)",
    )


def as_json(value: Any) -> Any:
    """A value from an embedding API as JSON (objects with `to_json`)."""
    to_json = getattr(value, "to_json", None)
    return to_json() if callable(to_json) else value


__all__ = [
    "AuthedHandler",
    "ClientApiLimits",
    "ClientContext",
    "Requester",
    "TokenBuckets",
    "TxnIds",
    "as_json",
    "endpoint",
    "forbid_server_user_outside_s2s",
    "optional_str",
    "parse_access_token",
    "parse_int_param",
    "parse_json_object",
    "parse_txn_id",
    "require_str",
]
