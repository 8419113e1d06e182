"""Node identity: the spec's test key, and the identifier <-> verify key bijection."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.canonical import decode_base64, encode_base64
from s2s_node.core.keys import (
    IDENTIFIER_LENGTH,
    KEY_ID,
    IdentityError,
    identifier_from_verify_key,
    is_identifier,
    signing_key_from_seed,
    verify_key_bytes_from_identifier,
    verify_key_from_bytes,
    verify_key_from_identifier,
)

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "spec" / "vectors.json").read_text(encoding="utf-8")
)
OFFICIAL_KEY = VECTORS["official_signing_key"]


def test_official_signing_key() -> None:
    seed = decode_base64(OFFICIAL_KEY["seed_base64_as_written_in_spec"])
    assert seed.hex() == OFFICIAL_KEY["seed_hex"]
    assert decode_base64(OFFICIAL_KEY["seed_base64_canonical_reencoding"]) == seed
    key = signing_key_from_seed(seed, OFFICIAL_KEY["key_id"])
    assert key.key_id == OFFICIAL_KEY["key_id"] == KEY_ID
    assert encode_base64(key.verify_key_bytes) == OFFICIAL_KEY["derived_public_key_unpadded_base64"]
    assert bytes(key.verify_key) == key.verify_key_bytes


def test_signature_verifies_with_the_derived_key() -> None:
    key = signing_key_from_seed(bytes.fromhex(OFFICIAL_KEY["seed_hex"]))
    signature = key.sign(b"message")
    assert len(signature) == 64
    verify_key_from_identifier(key.identifier).verify(b"message", signature)
    verify_key_from_bytes(key.verify_key_bytes).verify(b"message", signature)


def test_repr_does_not_show_the_seed() -> None:
    seed = bytes(range(32))
    key = signing_key_from_seed(seed)
    text = repr(key)
    assert encode_base64(seed) not in text
    assert seed.hex() not in text
    assert encode_base64(key.verify_key_bytes) in text


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "a" * 32])
def test_seed_must_be_32_bytes(seed: object) -> None:
    with pytest.raises(IdentityError):
        signing_key_from_seed(seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(33)])
def test_verify_key_must_be_32_bytes(raw: bytes) -> None:
    with pytest.raises(IdentityError):
        identifier_from_verify_key(raw)
    with pytest.raises(IdentityError):
        verify_key_from_bytes(raw)


@settings(max_examples=200)
@given(raw=st.binary(min_size=32, max_size=32))
def test_identifier_round_trips(raw: bytes) -> None:
    identifier = identifier_from_verify_key(raw)
    assert len(identifier) == IDENTIFIER_LENGTH
    assert set(identifier) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert verify_key_bytes_from_identifier(identifier) == raw
    assert is_identifier(identifier)


@settings(max_examples=50)
@given(seed=st.binary(min_size=32, max_size=32))
def test_identifier_of_a_signing_key(seed: bytes) -> None:
    key = signing_key_from_seed(seed)
    assert key.identifier == identifier_from_verify_key(key.verify_key_bytes)
    assert bytes(verify_key_from_identifier(key.identifier)) == key.verify_key_bytes


def _spare_bits_variants(identifier: str) -> list[str]:
    """The identifier with its last character changed to one that sets a spare bit.

    52 characters carry 260 bits for a 256-bit key: the last character's low 4 bits are spare.
    """
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    last = alphabet.index(identifier[-1])
    return [identifier[:-1] + alphabet[(last & 0b10000) | spare] for spare in range(1, 16)]


@settings(max_examples=100)
@given(raw=st.binary(min_size=32, max_size=32), data=st.data())
def test_non_canonical_identifiers_are_rejected(raw: bytes, data: st.DataObject) -> None:
    identifier = identifier_from_verify_key(raw)
    padded = base64.b32encode(raw).decode("ascii").lower()  # with its "====" padding
    position = data.draw(st.integers(0, IDENTIFIER_LENGTH - 1))
    bad_char = data.draw(st.sampled_from("01890ABZ=-_ .é"))
    candidates = [
        identifier.upper(),
        padded,
        identifier + "=",
        identifier[:-1],
        identifier + "a",
        identifier[:position] + bad_char + identifier[position + 1 :],
        data.draw(st.sampled_from(_spare_bits_variants(identifier))),
        " " + identifier,
        identifier + "\n",
        "",
    ]
    for candidate in candidates:
        with pytest.raises(IdentityError):
            verify_key_bytes_from_identifier(candidate)
        assert not is_identifier(candidate)


def test_upper_case_letter_anywhere_is_rejected() -> None:
    identifier = identifier_from_verify_key(bytes(range(32)))
    for position, char in enumerate(identifier):
        if char.isalpha():
            changed = identifier[:position] + char.upper() + identifier[position + 1 :]
            assert not is_identifier(changed)
