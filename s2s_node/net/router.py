"""Routing: method + path pattern (with `{param}` segments) to a handler.

Owns: matching a request path against route patterns, percent-decoding path parameters into
`Request.path_params`, and the Matrix answers for what no route takes: 404 `M_UNRECOGNIZED` for
an unknown path, 405 `M_UNRECOGNIZED` (with `Allow`) for a known path and another method. Must
not: do I/O or know what the routes do.

Spec: client-server API "API Standards": unknown endpoints get 404 M_UNRECOGNIZED, a known
endpoint with an unsupported method 405 M_UNRECOGNIZED.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from s2s_node.net.errors import M_INVALID_PARAM, M_UNRECOGNIZED, HttpError
from s2s_node.net.http import Handler, Request, Response, build_error_response


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """`pattern` is a path such as `/_matrix/federation/v1/send/{txnId}`."""

    method: str
    pattern: str
    handler: Handler


@dataclass(frozen=True, slots=True)
class _Compiled:
    route: Route
    # Per segment: (is_parameter, literal text or parameter name).
    segments: tuple[tuple[bool, str], ...]

    @property
    def shape(self) -> tuple[str | None, ...]:
        return tuple(None if is_param else text for is_param, text in self.segments)

    @property
    def specificity(self) -> tuple[bool, ...]:
        # Literal segments win over parameters, earliest segment first.
        return tuple(not is_param for is_param, _ in self.segments)


def _compile(route: Route) -> _Compiled:
    if not route.pattern.startswith("/"):
        raise ValueError(f"route pattern {route.pattern!r} must start with '/'")
    segments: list[tuple[bool, str]] = []
    for segment in route.pattern[1:].split("/"):
        if segment.startswith("{") and segment.endswith("}") and len(segment) > 2:
            segments.append((True, segment[1:-1]))
        elif "{" in segment or "}" in segment:
            raise ValueError(f"bad segment {segment!r} in route pattern {route.pattern!r}")
        else:
            segments.append((False, segment))
    return _Compiled(route, tuple(segments))


def _match(compiled: _Compiled, raw_segments: list[str]) -> dict[str, str] | None:
    if len(raw_segments) != len(compiled.segments):
        return None
    params: dict[str, str] = {}
    for (is_param, text), raw in zip(compiled.segments, raw_segments, strict=True):
        if is_param:
            if not raw:
                return None
            params[text] = raw
        elif raw != text:
            return None
    return params


def _decode_param(name: str, raw: str) -> str:
    try:
        return urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(
            400, M_INVALID_PARAM, f"path parameter {name} is not percent-encoded UTF-8"
        ) from None


class Router:
    """A handler that dispatches to routes. Built once; routes cannot be added later."""

    def __init__(self, routes: Iterable[Route]) -> None:
        compiled = [_compile(route) for route in routes]
        # Parameter names do not tell two routes apart: `/a/{b}` and `/a/{c}` are one shape.
        seen = {(c.route.method, c.shape) for c in compiled}
        if len(seen) != len(compiled):
            raise ValueError("two routes with the same method and pattern")
        # Most specific first, so `/state/x` is tried before `/state/{room}`.
        self._routes = tuple(sorted(compiled, key=lambda c: c.specificity, reverse=True))

    async def __call__(self, request: Request) -> Response:
        raw_segments = request.path[1:].split("/") if request.path.startswith("/") else []
        allowed: list[str] = []
        for compiled in self._routes:
            params = _match(compiled, raw_segments)
            if params is None:
                continue
            if compiled.route.method != request.method:
                allowed.append(compiled.route.method)
                continue
            decoded = {name: _decode_param(name, raw) for name, raw in params.items()}
            return await compiled.route.handler(dataclasses.replace(request, path_params=decoded))
        if allowed:
            return build_error_response(
                405,
                M_UNRECOGNIZED,
                f"method {request.method} is not allowed here",
                headers=(("allow", ", ".join(sorted(set(allowed)))),),
            )
        return build_error_response(404, M_UNRECOGNIZED, "unrecognized request")
