"""python-zeroconf in its own threads: our registration, the browser, and what it reports.

Owns: the `Zeroconf` instance (its asyncio loop runs in a zeroconf thread), registering our
service with short TTLs and unregistering it (the goodbye) on exit, the `ServiceBrowser` for
`_matrix-p2p._tcp.local.` whose handler resolves each name and puts an `MdnsObservation` into the
`MdnsInbox`. Must not: judge advertisements (core.peers does) or run zeroconf on interfaces the
caller did not name.

Recipe: p2p-prior-art section 3 (sync API called through `trio.to_thread`; browser handlers run
on the browser's thread and take keyword arguments named exactly `zeroconf`, `service_type`,
`name`, `state_change`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import trio
import zeroconf
from zeroconf import ServiceStateChange

from s2s_node.core.peers import SERVICE_TYPE, build_instance_name
from s2s_node.discovery.bridge import MdnsInbox, MdnsObservation

logger = logging.getLogger(__name__)

Interfaces = Literal["all"] | Sequence[str]

# TTL of our records. Receivers raise a PTR's TTL to at least 1125 s (python-zeroconf's guard),
# so a crashed node is found by the HTTP probe, not by expiry; short SRV/TXT/A TTLs make a
# restarted node's new port and addresses replace the old ones quickly.
RECORD_TTL_S = 20
# How long the browser thread waits to resolve one name (SRV, TXT, A) before giving up on it.
RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """Our service: instance `<identifier>._matrix-p2p._tcp.local.` at `port` with `txt`."""

    identifier: str
    port: int
    txt: Mapping[str, str]


@dataclass(slots=True)
class MdnsStats:
    registered: bool = False
    name_conflicts: int = 0  # someone else already answers for our instance name
    handler_errors: int = 0  # a browser callback failed (logged; the browser keeps running)
    unresolved: int = 0  # a name that could not be resolved in time


def check_interfaces(interfaces: Interfaces) -> None:
    """`"all"` or a non-empty list of IP addresses; raise ValueError otherwise."""
    if interfaces == "all":
        return
    if isinstance(interfaces, str) or not interfaces:
        raise ValueError('interfaces is "all" or a non-empty list of addresses')
    for address in interfaces:
        ipaddress.ip_address(address)


def advertised_addresses(interfaces: Interfaces) -> tuple[str, ...]:
    """The addresses our A/AAAA records carry: the named ones, or (for "all") every IPv4
    address but loopback (a peer in another host cannot reach our 127.0.0.1)."""
    if interfaces != "all":
        return tuple(interfaces)
    every: list[str] = zeroconf.get_all_addresses()  # type: ignore[attr-defined]  # not in __all__
    found = [a for a in every if not ipaddress.ip_address(a).is_loopback]
    return tuple(found) if found else ("127.0.0.1",)


def _zeroconf_interfaces(interfaces: Interfaces) -> Any:
    return zeroconf.InterfaceChoice.All if interfaces == "all" else list(interfaces)


def _ip_version(interfaces: Interfaces) -> zeroconf.IPVersion:
    if interfaces == "all":
        return zeroconf.IPVersion.V4Only
    versions = {ipaddress.ip_address(a).version for a in interfaces}
    if versions == {4}:
        return zeroconf.IPVersion.V4Only
    return zeroconf.IPVersion.V6Only if versions == {6} else zeroconf.IPVersion.All


def _packed(address: str) -> bytes:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    return socket.inet_pton(family, address)


def build_service_info(
    registration: Registration, addresses: Sequence[str]
) -> zeroconf.ServiceInfo:
    return zeroconf.ServiceInfo(
        SERVICE_TYPE,
        build_instance_name(registration.identifier),
        port=registration.port,
        properties=dict(registration.txt),
        server=f"{registration.identifier}.local.",
        addresses=[_packed(a) for a in addresses],
        host_ttl=RECORD_TTL_S,
        other_ttl=RECORD_TTL_S,
    )


class MdnsService:
    """A running zeroconf: browsing always, registered once `stats.registered` is true."""

    def __init__(self, zc: zeroconf.Zeroconf, inbox: MdnsInbox, ip_version: Any) -> None:
        self.zc = zc
        self.inbox = inbox
        self.stats = MdnsStats()
        self._ip_version = ip_version
        self.info: zeroconf.ServiceInfo | None = None

    def on_state_change(
        self,
        zeroconf: Any,  # the keyword names are zeroconf's, fixed
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser-thread callback. Never raises (an exception would kill the browser)."""
        try:
            if state_change is ServiceStateChange.Removed:
                self.inbox.put(MdnsObservation(name=name, present=False))
                return
            info = zeroconf.get_service_info(service_type, name, timeout=RESOLVE_TIMEOUT_MS)
            if info is None:
                self.stats.unresolved += 1
                return
            self.inbox.put(
                MdnsObservation(
                    name=name,
                    present=True,
                    port=info.port,
                    addresses=tuple(info.parsed_addresses(self._ip_version)),
                    txt=bytes(info.text or b""),
                )
            )
        except Exception:
            self.stats.handler_errors += 1
            logger.exception("mDNS browser callback failed for %r", name[:120])

    def register(self, registration: Registration, addresses: Sequence[str]) -> None:
        """Blocking (probing takes about a second): run it in a thread."""
        info = build_service_info(registration, addresses)
        try:
            self.zc.register_service(info)
        except zeroconf.NonUniqueNameException:
            self.stats.name_conflicts += 1
            logger.warning("another host answers for %s; not advertising", info.name)
            return
        self.info = info
        self.stats.registered = True


@asynccontextmanager
async def open_mdns(
    *,
    interfaces: Interfaces,
    inbox: MdnsInbox,
    registration: Registration | None,
) -> AsyncIterator[MdnsService]:
    """Start zeroconf on `interfaces`, browse, and register (in the background).

    On exit: the browser stops, our service is unregistered (goodbye packets), zeroconf closes.
    """
    check_interfaces(interfaces)
    ip_version = _ip_version(interfaces)
    zc = await trio.to_thread.run_sync(
        lambda: zeroconf.Zeroconf(
            interfaces=_zeroconf_interfaces(interfaces), ip_version=ip_version
        )
    )
    service = MdnsService(zc, inbox, ip_version)
    browser: zeroconf.ServiceBrowser | None = None
    try:
        browser = await trio.to_thread.run_sync(
            lambda: zeroconf.ServiceBrowser(zc, SERVICE_TYPE, handlers=[service.on_state_change])
        )
        async with trio.open_nursery() as nursery:
            if registration is not None:
                addresses = advertised_addresses(interfaces)
                nursery.start_soon(
                    trio.to_thread.run_sync, service.register, registration, addresses
                )
            yield service
    finally:
        inbox.close()
        with trio.CancelScope(shield=True):
            if browser is not None:
                await trio.to_thread.run_sync(browser.cancel)
            if service.info is not None:
                await trio.to_thread.run_sync(zc.unregister_service, service.info)
            await trio.to_thread.run_sync(zc.close)
