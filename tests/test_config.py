"""Configuration: defaults, node.example.toml, --set overrides, one clear error per bad key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from s2s_node.config import (
    Config,
    ConfigError,
    HostPort,
    apply_overrides,
    build_config,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "node.example.toml"


def test_example_file_equals_the_defaults() -> None:
    assert load_config(EXAMPLE) == load_config(None) == build_config({})


def test_example_file_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    raw = tomllib.loads(text)
    config = Config()
    for section in ("federation", "client", "discovery", "rooms", "s2s", "upgrade"):
        fields = getattr(config, section).__dataclass_fields__
        assert set(raw[section]) == set(fields), section
    assert "data_dir" in text
    assert "peers" in raw


def test_set_overrides_are_toml_values_or_strings() -> None:
    raw = apply_overrides(
        {},
        [
            'peers=["127.0.0.1:9000"]',
            'upgrade.versions={"12"=100}',
            "client.listen=127.0.0.1:0",
            "federation.tls=false",
        ],
    )
    config = build_config(raw)
    assert config.peers == (HostPort(host="127.0.0.1", port=9000),)
    assert dict(config.upgrade.versions) == {"12": 100}
    assert config.client.listen == HostPort(host="127.0.0.1", port=0)
    assert config.federation.tls is False


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"federation": {"listen": "nope"}}, "federation.listen"),
        ({"federation": {"tls": "yes"}}, "federation.tls"),
        ({"rooms": {"default_version": "9"}}, "rooms.default_version"),
        ({"upgrade": {"versions": {"12": 101}}}, "upgrade.versions.12"),
        ({"upgrade": {"mode": "lax"}}, "upgrade.mode"),
        ({"s2s": {"room_type": "x"}}, "s2s.room_type"),
        ({"s2s": {"colour": "x"}}, "s2s.colour"),
        ({"peers": ["host"]}, "peers[0]"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_values_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    assert str(info.value).startswith(key)


def test_unreadable_config_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
