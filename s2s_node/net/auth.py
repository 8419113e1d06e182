"""X-Matrix authentication of incoming federation requests (the HTTP side of core.xmatrix).

Owns: taking a `Request`, decoding its body (the signed `content`) and checking its
Authorization headers against the origin's key, and, over TLS, that the origin is the TLS
client of the connection. Must not: know routes or answer requests;
failures are typed errors (`XMatrixError` -> 401, `WireError` -> 400/413 through net.errors).

Spec: server-server API "Request Authentication" (matrix-digest 8.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s_node.core.canonical import JsonValue
from s2s_node.core.ids import ServerName
from s2s_node.core.signing import KeyLookup, derived_keys
from s2s_node.core.wire import decode_body
from s2s_node.core.xmatrix import XMatrixError, XMatrixReason, check_request_auth
from s2s_node.net.http import Request
from s2s_node.net.tls import check_origin_is_tls_peer


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticatedRequest:
    """A request whose X-Matrix signature verified: who sent it, and its decoded body."""

    origin: ServerName
    content: JsonValue  # None when the request had no body
    request: Request


def authenticate_request(
    request: Request, our_server_name: str, keys: KeyLookup = derived_keys
) -> AuthenticatedRequest:
    """Decode the body and verify X-Matrix; raises `WireError` or `XMatrixError`.

    The body is decoded first because its decoded value is part of what was signed; a body
    that fails strict decoding is refused before any signature work.
    """
    authorization = request.header_values("authorization")
    if not authorization:  # refuse before spending anything on the body
        raise XMatrixError(XMatrixReason.MISSING, "no Authorization header")
    content: JsonValue = None
    if request.body:
        content = decode_body(request.header("content-type"), request.body)
    origin = check_request_auth(
        authorization,
        request.method,
        request.target,
        content,
        our_server_name,
        keys,
    )
    # On a TLS listener the signer must also be the TLS client (DESIGN section 7); on a plain
    # one this passes. Done here so that no route can forget it.
    check_origin_is_tls_peer(origin)
    return AuthenticatedRequest(origin=origin, content=content, request=request)
