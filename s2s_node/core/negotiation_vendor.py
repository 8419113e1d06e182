"""Vendor upgrade methods: the small protocol a module implements, and the registry.

Owns: `VendorMethod` (a pure reducer over `m.s2s.upgrade` messages), `VendorProgress` (its
immutable state as the machine stores it) and `VendorRegistry` (method name -> method, filled by
modules when the node is composed). Must not: do I/O, or decide anything the machine decides
(fail events, timeouts, supersession, the downgrade guard all stay in `negotiation`).

Spec: DESIGN.md section 5, "Vendor flow"; MSC3348 "Upgrade negotiation" (vendor methods).

The vendor flow: the initiator opens with `m.s2s.upgrade` {method, fields}; both sides then send
`m.s2s.upgrade` continuations {method, fields, m.relates_to}. Every message (the opening too) is
folded into a `VendorProgress` by the method; when the progress is `settled` with a version, the
negotiation is done (the machine then applies the downgrade guard to that version). Either side
may end it with `m.s2s.upgrade.fail`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from s2s_node.core.negotiation_messages import Side, VendorMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorProgress:
    """Where a vendor method stands. `stage` is the method's own; the rest the machine reads."""

    stage: str
    #: True once the method has agreed on `version` (the negotiation is then done)
    settled: bool = False
    version: str | None = None
    #: the successor's room type if the method chose one (an s2s type), else the current one
    room_type: str | None = None


class VendorMethod(Protocol):
    """A vendor upgrade method. Pure: same inputs, same outputs; no I/O, no clock.

    To refuse a message as malformed, raise `NegotiationContentError` with
    `ContentReason.VENDOR_REJECTED`; the other side then fails the negotiation "bad request".
    """

    @property
    def method(self) -> str:
        """The namespaced method name, e.g. `org.example.pin-version`."""
        ...

    def begin(self, opening: VendorMessage) -> VendorProgress:
        """Check the opening's fields; the progress right after the opening."""
        ...

    def advance(
        self,
        opening: VendorMessage,
        progress: VendorProgress,
        message: VendorMessage,
        sender: Side,
    ) -> VendorProgress:
        """Fold one continuation sent by `sender` into the progress."""
        ...

    def actions(
        self, opening: VendorMessage, progress: VendorProgress, us: Side
    ) -> tuple[Mapping[str, Any], ...]:
        """The continuation fields this side owes now (without `method`/`m.relates_to`)."""
        ...


@dataclass(frozen=True, slots=True)
class VendorRegistry:
    """Method name -> `VendorMethod`. Immutable: `with_method` returns a new registry."""

    methods: Mapping[str, VendorMethod] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, methods: Iterable[VendorMethod]) -> VendorRegistry:
        registry = cls()
        for method in methods:
            registry = registry.with_method(method)
        return registry

    def with_method(self, method: VendorMethod) -> VendorRegistry:
        if method.method in self.methods:
            raise ValueError(f"vendor method {method.method!r} is already registered")
        return VendorRegistry(MappingProxyType({**self.methods, method.method: method}))

    def get(self, name: str) -> VendorMethod | None:
        return self.methods.get(name)
