"""Node configuration: TOML, validated once into a frozen dataclass.

Owns: the config keys and their defaults (documented one by one in `node.example.toml`), reading
a TOML file, applying `--set section.key=value` overrides, and validating everything with one
clear error naming the key. Must not: open sockets or create files.

Design: DESIGN.md section 11.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s2s_node.core.rules import KNOWN_ROOM_VERSIONS


class ConfigError(Exception):
    """A configuration value is invalid; the message names the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationConfig:
    listen: HostPort = HostPort(host="0.0.0.0", port=8448)
    tls: bool = True
    max_body_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    listen: HostPort = HostPort(host="127.0.0.1", port=8008)


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryConfig:
    enabled: bool = True
    interfaces: str | tuple[str, ...] = "all"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomsConfig:
    default_version: str = "12"


@dataclass(frozen=True, slots=True, kw_only=True)
class S2SConfig:
    room_type: str = "unstable"
    auto_open: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeConfig:
    versions: Mapping[str, int] = field(default_factory=lambda: {"12": 100, "11": 60, "10": 20})
    mode: str = "compatible"
    timeout_s: int = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleConfig:
    """One `[[modules]]` entry: `path` is `package.module:Class`; `config` its own table."""

    path: str
    config: Mapping[str, Any] = field(default_factory=dict)
    deadline_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    data_dir: str | None = None
    peers: tuple[HostPort, ...] = ()
    federation: FederationConfig = FederationConfig()
    client: ClientConfig = ClientConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    rooms: RoomsConfig = RoomsConfig()
    s2s: S2SConfig = S2SConfig()
    upgrade: UpgradeConfig = UpgradeConfig()
    policy: PolicyConfig = PolicyConfig()
    modules: tuple[ModuleConfig, ...] = ()


SECTIONS = ("federation", "client", "discovery", "rooms", "s2s", "upgrade", "policy")
TOP_LEVEL = ("data_dir", "peers", "modules")


def parse_host_port(value: object, key: str) -> HostPort:
    """`HOST:PORT` or `[IPv6]:PORT`; port 0 means 'pick a free one'."""
    if not isinstance(value, str):
        raise ConfigError(f'{key}: expected "HOST:PORT", got {value!r}')
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = value.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f'{key}: expected "HOST:PORT" with a port 0-65535, got {value!r}')
    return HostPort(host=host, port=int(port_text))


def _expect(value: object, kind: type, key: str, what: str) -> Any:
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    return value


def _section(raw: Mapping[str, Any], name: str, known: Sequence[str]) -> Mapping[str, Any]:
    section = raw.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"{name}: expected a table, got {section!r}")
    for key in section:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(known)})")
    return section


def build_config(raw: Mapping[str, Any]) -> Config:
    """Validate a TOML-shaped mapping into a `Config`."""
    for key in raw:
        if key not in SECTIONS and key not in TOP_LEVEL:
            raise ConfigError(f"{key}: unknown key")
    data_dir = raw.get("data_dir")
    if data_dir is not None:
        _expect(data_dir, str, "data_dir", "a path")
    peers_raw = _expect(raw.get("peers", []), list, "peers", 'a list of "HOST:PORT"')
    peers = tuple(parse_host_port(p, f"peers[{i}]") for i, p in enumerate(peers_raw))

    fed = _section(raw, "federation", ("listen", "tls", "max_body_bytes"))
    federation = FederationConfig(
        listen=parse_host_port(fed.get("listen", "0.0.0.0:8448"), "federation.listen"),
        tls=_expect(fed.get("tls", True), bool, "federation.tls", "true or false"),
        max_body_bytes=_positive(
            fed.get("max_body_bytes", 4 * 1024 * 1024), "federation.max_body_bytes"
        ),
    )
    cli = _section(raw, "client", ("listen",))
    client = ClientConfig(
        listen=parse_host_port(cli.get("listen", "127.0.0.1:8008"), "client.listen")
    )
    disc = _section(raw, "discovery", ("enabled", "interfaces"))
    interfaces_raw = disc.get("interfaces", "all")
    if interfaces_raw == "all":
        interfaces: str | tuple[str, ...] = "all"
    elif isinstance(interfaces_raw, list) and all(isinstance(i, str) for i in interfaces_raw):
        interfaces = tuple(interfaces_raw)
    else:
        raise ConfigError(
            f'discovery.interfaces: expected "all" or a list of addresses, got {interfaces_raw!r}'
        )
    discovery = DiscoveryConfig(
        enabled=_expect(disc.get("enabled", True), bool, "discovery.enabled", "true or false"),
        interfaces=interfaces,
    )
    rooms_raw = _section(raw, "rooms", ("default_version",))
    default_version = _expect(
        rooms_raw.get("default_version", "12"), str, "rooms.default_version", "a room version"
    )
    if default_version not in KNOWN_ROOM_VERSIONS:
        raise ConfigError(
            f"rooms.default_version: {default_version!r} is not supported (10, 11, 12)"
        )
    s2s_raw = _section(raw, "s2s", ("room_type", "auto_open"))
    room_type = s2s_raw.get("room_type", "unstable")
    if room_type not in ("unstable", "stable"):
        raise ConfigError(f's2s.room_type: expected "unstable" or "stable", got {room_type!r}')
    s2s = S2SConfig(
        room_type=room_type,
        auto_open=_expect(s2s_raw.get("auto_open", False), bool, "s2s.auto_open", "true or false"),
    )
    up = _section(raw, "upgrade", ("versions", "mode", "timeout_s"))
    versions_raw = up.get("versions", {"12": 100, "11": 60, "10": 20})
    if not isinstance(versions_raw, Mapping) or not versions_raw:
        raise ConfigError('upgrade.versions: expected a table like { "12" = 100 }')
    versions: dict[str, int] = {}
    for version, rating in versions_raw.items():
        if version not in KNOWN_ROOM_VERSIONS:
            raise ConfigError(f"upgrade.versions: room version {version!r} is not supported")
        if isinstance(rating, bool) or not isinstance(rating, int) or not 0 <= rating <= 100:
            raise ConfigError(f"upgrade.versions.{version}: expected an integer 0..100")
        versions[version] = rating
    mode = up.get("mode", "compatible")
    if mode not in ("compatible", "strict"):
        raise ConfigError(f'upgrade.mode: expected "compatible" or "strict", got {mode!r}')
    upgrade = UpgradeConfig(
        versions=versions,
        mode=mode,
        timeout_s=_positive(up.get("timeout_s", 300), "upgrade.timeout_s"),
    )
    policy_raw = _section(raw, "policy", ("enabled",))
    policy = PolicyConfig(
        enabled=_expect(policy_raw.get("enabled", True), bool, "policy.enabled", "true or false")
    )
    return Config(
        data_dir=data_dir,
        peers=peers,
        federation=federation,
        client=client,
        discovery=discovery,
        rooms=RoomsConfig(default_version=default_version),
        s2s=s2s,
        upgrade=upgrade,
        policy=policy,
        modules=_parse_modules(raw.get("modules", [])),
    )


def _parse_modules(value: object) -> tuple[ModuleConfig, ...]:
    """`[[modules]]`: path = "package.module:Class", optional deadline_s, optional config table."""
    entries = _expect(value, list, "modules", "an array of tables ([[modules]])")
    modules = []
    for i, entry in enumerate(entries):
        key = f"modules[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}: expected a table, got {entry!r}")
        for name in entry:
            if name not in ("path", "config", "deadline_s"):
                raise ConfigError(f"{key}.{name}: unknown key (known: path, config, deadline_s)")
        path = _expect(entry.get("path"), str, f"{key}.path", '"package.module:Class"')
        module, sep, cls = path.partition(":")
        if not sep or not module or not cls:
            raise ConfigError(f'{key}.path: expected "package.module:Class", got {path!r}')
        config = _expect(entry.get("config", {}), Mapping, f"{key}.config", "a table")
        deadline = entry.get("deadline_s", 5.0)
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0:
            raise ConfigError(f"{key}.deadline_s: expected a positive number, got {deadline!r}")
        modules.append(ModuleConfig(path=path, config=dict(config), deadline_s=float(deadline)))
    return tuple(modules)


def _positive(value: object, key: str) -> int:
    number = _expect(value, int, key, "a positive integer")
    if number <= 0:
        raise ConfigError(f"{key}: expected a positive integer, got {number}")
    return int(number)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value`: the value is TOML if it parses as a TOML value, else a string."""
    path, sep, value_text = text.partition("=")
    if not sep or not path.strip():
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    keys = [part.strip() for part in path.split(".")]
    if any(not k for k in keys):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return keys, value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `raw` with every `--set` override applied."""
    result: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for text in overrides:
        keys, value = parse_override(text)
        target = result
        for key in keys[:-1]:
            nested = target.setdefault(key, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"--set {text!r}: {key} is not a table")
            target = nested
        target[keys[-1]] = value
    return result


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a TOML file (or nothing: all defaults) and apply `--set` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as handle:
                raw = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return build_config(apply_overrides(raw, overrides))
