"""The client API listener: a subset of the Matrix Client-Server API for SDKs and the CLI.

Owns: assembling the client-API routes (versions and whoami here; rooms, sync and the s2s
additions in their modules), serving them on their own listener with their own limits
(`serve_client_api`, started by `open_node`; loopback by default, a warning otherwise), and
the node's event stream that /sync reads. Must not: implement an endpoint's logic beyond
answering who the requester is.

Spec: client-server API "GET /_matrix/client/versions", "GET /account/whoami".
Design: DESIGN.md sections 10 and 11; docs/design.md section 7.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

import trio

from s2s_node.net.client_api_auth import ClientApiLimits, ClientContext, Requester, endpoint
from s2s_node.net.client_api_rooms import RoomEndpoints
from s2s_node.net.client_api_s2s import S2SEndpoints
from s2s_node.net.client_api_sync import SyncEndpoint
from s2s_node.net.http import Request, Response, build_response
from s2s_node.net.router import Route, Router
from s2s_node.net.server import HttpLimits, bound_port, serve_http
from s2s_node.net.status_page import StatusPage
from s2s_node.sync import EventStream

if TYPE_CHECKING:
    from s2s_node.node import Node

logger = logging.getLogger(__name__)

# The spec versions whose endpoints we answer in the subset we implement.
SPEC_VERSIONS = ("v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9")
UNSTABLE_FEATURES = {"support.feline.s2s": True}
# The client listener's HTTP limits: every client is on one address (loopback), and long
# polls hold a connection each, so the per-address cap is the total cap.
CLIENT_HTTP_LIMITS = HttpLimits(
    max_body_bytes=1024 * 1024,
    handler_timeout_s=120.0,
    max_connections=256,
    max_connections_per_address=256,
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def versions(request: Request) -> Response:
    return build_response(
        {"versions": list(SPEC_VERSIONS), "unstable_features": dict(UNSTABLE_FEATURES)}
    )


def build_client_routes(ctx: ClientContext) -> list[Route]:
    async def whoami(request: Request, requester: Requester) -> Response:
        return build_response(
            {"user_id": requester.user_id, "device_id": requester.device_id, "is_guest": False}
        )

    rooms = RoomEndpoints(ctx)
    return [
        Route(method="GET", pattern="/_matrix/client/versions", handler=versions),
        Route(
            method="GET", pattern="/_matrix/client/v3/account/whoami", handler=endpoint(ctx, whoami)
        ),
        *rooms.routes(),
        *SyncEndpoint(ctx).routes(),
        *S2SEndpoints(ctx, rooms).routes(),
        *StatusPage(ctx).routes(),  # GET /status: read-only HTML (net.status_page)
    ]


async def serve_client_api(
    node: Node,
    *,
    limits: ClientApiLimits | None = None,
    http_limits: HttpLimits | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the client API on `config.client.listen` until cancelled; `task_status` gets the
    bound (host, port)."""
    listen = node.config.client.listen
    if not is_loopback(listen.host):
        logger.warning(
            "the client API listens on %s, which is not loopback: anyone who can reach it and"
            " holds a token can act as the node's users",
            listen,
        )
    stream = EventStream()
    ctx = ClientContext(node, stream, limits or ClientApiLimits())
    router = Router(build_client_routes(ctx))
    async with trio.open_nursery() as nursery:
        await nursery.start(stream.run, node.subscribe)
        listeners: Any = await nursery.start(
            functools.partial(
                serve_http,
                router,
                host=listen.host,
                port=listen.port,
                limits=http_limits or CLIENT_HTTP_LIMITS,
            )
        )
        task_status.started((listen.host, bound_port(listeners)))


__all__ = ["CLIENT_HTTP_LIMITS", "build_client_routes", "is_loopback", "serve_client_api"]
