"""Canonical JSON and unpadded base64: the spec's vectors, strict decoding, and invariants."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2s_node.core.canonical import (
    MAX_JSON_DEPTH,
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    Base64Error,
    CanonicalJsonError,
    CanonicalJsonReason,
    check_canonical_value,
    check_canonical_value_bound,
    compute_encoded_length,
    compute_encoded_size,
    decode_base64,
    decode_base64_urlsafe,
    encode_base64,
    encode_base64_urlsafe,
    encode_canonical_json,
    encode_canonical_json_text,
    encode_canonical_json_trusted,
    encode_canonical_json_trusted_str,
    parse_json,
    parse_json_object,
)

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "spec" / "vectors.json").read_text(encoding="utf-8")
)

# ----------------------------------------------------------------------------------------------
# Strategies

safe_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
safe_ints = st.integers(min_value=MIN_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
json_scalars = st.none() | st.booleans() | safe_ints | safe_text
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(safe_text, children, max_size=4)
    ),
    max_leaves=16,
)
json_objects = st.dictionaries(safe_text, json_values, max_size=6)
out_of_range_ints = st.integers(min_value=MAX_SAFE_INTEGER + 1) | st.integers(
    max_value=MIN_SAFE_INTEGER - 1
)


def _reordered(value: Any, rng: random.Random) -> Any:
    """The same value with every object's keys inserted in a shuffled order."""
    if isinstance(value, dict):
        items = [(k, _reordered(v, rng)) for k, v in value.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [_reordered(v, rng) for v in value]
    return value


def _nested(depth: int) -> Any:
    """`depth` containers inside one another, alternating objects and arrays."""
    value: Any = 1
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def _reason(exc_info: pytest.ExceptionInfo[CanonicalJsonError]) -> CanonicalJsonReason:
    return exc_info.value.reason


# ----------------------------------------------------------------------------------------------
# Official and derived vectors


@pytest.mark.parametrize(
    "case", VECTORS["official_unpadded_base64"], ids=lambda c: repr(c["input_ascii"])
)
def test_official_unpadded_base64(case: dict[str, str]) -> None:
    raw = case["input_ascii"].encode("ascii")
    assert encode_base64(raw) == case["expected"]
    assert decode_base64(case["expected"]) == raw


@pytest.mark.parametrize(
    "case", VECTORS["derived_url_safe_unpadded_base64"]["cases"], ids=lambda c: c["input_hex"]
)
def test_derived_url_safe_base64(case: dict[str, str]) -> None:
    raw = bytes.fromhex(case["input_hex"])
    assert encode_base64(raw) == case["standard_unpadded"]
    assert encode_base64_urlsafe(raw) == case["url_safe_unpadded"]
    assert decode_base64_urlsafe(case["url_safe_unpadded"]) == raw
    assert decode_base64(case["standard_unpadded"]) == raw
    # Each alphabet rejects the other's two extra characters.
    with pytest.raises(Base64Error):
        decode_base64_urlsafe(case["standard_unpadded"])
    with pytest.raises(Base64Error):
        decode_base64(case["url_safe_unpadded"])


@pytest.mark.parametrize(
    "case",
    VECTORS["official_canonical_json"],
    ids=lambda c: c["expected_canonical"][:30],
)
def test_official_canonical_json(case: dict[str, str]) -> None:
    expected = bytes.fromhex(case["expected_canonical_utf8_hex"])
    assert expected == case["expected_canonical"].encode("utf-8")
    assert encode_canonical_json_text(case["input_json_text"]) == expected
    assert encode_canonical_json_text(case["input_json_text"].encode("utf-8")) == expected


def test_official_canonical_json_with_integral_floats_is_not_event_json() -> None:
    # UNCONFIRMED in the spec (digest 1.3): the appendix example spells integers as `1e10`; the
    # strict decoder used for events rejects that spelling, the text canonicaliser accepts it.
    (case,) = [c for c in VECTORS["official_canonical_json"] if "1e10" in c["input_json_text"]]
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json(case["input_json_text"])
    assert _reason(exc_info) is CanonicalJsonReason.FLOAT
    assert encode_canonical_json_text(case["input_json_text"]) == b'{"a":0,"b":10000000000}'


@pytest.mark.parametrize(
    "case",
    [c for c in VECTORS["official_canonical_json"] if "1e10" not in c["input_json_text"]],
    ids=lambda c: c["expected_canonical"][:30],
)
def test_official_canonical_json_through_the_strict_decoder(case: dict[str, str]) -> None:
    value = parse_json(case["input_json_text"])
    assert encode_canonical_json(value) == case["expected_canonical"].encode("utf-8")


@pytest.mark.parametrize(
    "case", VECTORS["derived_canonical_json_edge_cases"]["cases"], ids=lambda c: c["why"][:40]
)
def test_derived_canonical_json_edge_cases(case: dict[str, str]) -> None:
    encoded = encode_canonical_json(parse_json(case["input_json_text"]))
    if "expected_canonical_utf8_hex" in case:
        assert encoded == bytes.fromhex(case["expected_canonical_utf8_hex"])
    if "expected_canonical_text" in case:
        assert encoded == case["expected_canonical_text"].encode("utf-8")


def test_integral_number_spellings_in_the_text_canonicaliser() -> None:
    assert encode_canonical_json_text('{"a":[1.0,-0.0,2E3,1e15]}') == (
        b'{"a":[1,0,2000,1000000000000000]}'
    )
    for text, reason in [
        ("[1.5]", CanonicalJsonReason.FLOAT),
        ("[1e-3]", CanonicalJsonReason.FLOAT),
        ("[1e16]", CanonicalJsonReason.INTEGER_OUT_OF_RANGE),
        ("[1e999999999]", CanonicalJsonReason.INTEGER_OUT_OF_RANGE),
        ("[NaN]", CanonicalJsonReason.NON_FINITE),
    ]:
        with pytest.raises(CanonicalJsonError) as exc_info:
            encode_canonical_json_text(text)
        assert _reason(exc_info) is reason, text


# ----------------------------------------------------------------------------------------------
# Canonical JSON properties


@settings(max_examples=150)
@given(value=json_values, seed=st.integers(0, 2**32))
def test_encoding_is_independent_of_key_order(value: Any, seed: int) -> None:
    assert encode_canonical_json(_reordered(value, random.Random(seed))) == (
        encode_canonical_json(value)
    )


@settings(max_examples=150)
@given(value=json_values)
def test_encoding_is_idempotent(value: Any) -> None:
    encoded = encode_canonical_json(value)
    assert encode_canonical_json(parse_json(encoded)) == encoded
    assert parse_json(encoded) == value
    assert encode_canonical_json_trusted(value) == encoded


@settings(max_examples=150)
@given(value=json_values)
def test_size_bound_is_an_upper_bound(value: Any) -> None:
    assert check_canonical_value_bound(value) >= len(encode_canonical_json(value))


@settings(max_examples=100)
@given(value=json_values, number=st.floats(allow_nan=False, allow_infinity=False))
def test_floats_always_fail(value: Any, number: float) -> None:
    obj = {"ok": value, "nested": [{"f": number}]}
    with pytest.raises(CanonicalJsonError) as exc_info:
        encode_canonical_json(obj)
    assert _reason(exc_info) is CanonicalJsonReason.FLOAT
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json(json.dumps(obj))
    assert _reason(exc_info) is CanonicalJsonReason.FLOAT


@settings(max_examples=100)
@given(value=json_values, number=out_of_range_ints)
def test_out_of_range_integers_always_fail(value: Any, number: int) -> None:
    obj = {"ok": value, "nested": [{"n": number}]}
    with pytest.raises(CanonicalJsonError) as exc_info:
        encode_canonical_json(obj)
    assert _reason(exc_info) is CanonicalJsonReason.INTEGER_OUT_OF_RANGE
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json(json.dumps(obj))
    assert _reason(exc_info) is CanonicalJsonReason.INTEGER_OUT_OF_RANGE


def test_integer_range_edges() -> None:
    edges = [MAX_SAFE_INTEGER, MIN_SAFE_INTEGER]
    assert parse_json(json.dumps(edges)) == edges
    assert encode_canonical_json(edges) == b"[9007199254740991,-9007199254740991]"
    for number in (MAX_SAFE_INTEGER + 1, MIN_SAFE_INTEGER - 1, 10**30):
        with pytest.raises(CanonicalJsonError) as exc_info:
            parse_json(f"[{number}]")
        assert _reason(exc_info) is CanonicalJsonReason.INTEGER_OUT_OF_RANGE


@settings(max_examples=100)
@given(obj=json_objects, key=safe_text, first=json_values, second=json_values)
def test_duplicate_keys_are_rejected(obj: Any, key: str, first: Any, second: Any) -> None:
    inner = json.dumps(key) + ":" + json.dumps(first) + "," + json.dumps(key)
    text = '{"outer":' + json.dumps(obj) + ',"dup":{' + inner + ":" + json.dumps(second) + "}}"
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json(text)
    assert _reason(exc_info) is CanonicalJsonReason.DUPLICATE_KEY


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(constant: str) -> None:
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json('{"a":[1,' + constant + "]}")
    assert _reason(exc_info) is CanonicalJsonReason.NON_FINITE
    with pytest.raises(CanonicalJsonError) as exc_info:
        encode_canonical_json({"a": float(constant.lower().replace("infinity", "inf"))})
    assert _reason(exc_info) is CanonicalJsonReason.FLOAT


@settings(max_examples=60)
@given(depth=st.integers(min_value=1, max_value=3 * MAX_JSON_DEPTH))
def test_nesting_limit_is_the_same_for_encoding_and_parsing(depth: int) -> None:
    value = _nested(depth)
    text = json.dumps(value)
    if depth <= MAX_JSON_DEPTH:
        assert parse_json(text) == value
        check_canonical_value(value)
        return
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json(text)
    assert _reason(exc_info) is CanonicalJsonReason.TOO_DEEP
    with pytest.raises(CanonicalJsonError) as exc_info:
        encode_canonical_json(value)
    assert _reason(exc_info) is CanonicalJsonReason.TOO_DEEP


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"a": "[" * 500 + "{" * 500, "b": '\\"[[['})
    assert parse_json(text) == json.loads(text)


@pytest.mark.parametrize("siblings", [10, 3000])  # decoded first / pre-scanned first
def test_depth_limit_counts_nesting_not_brackets(siblings: int) -> None:
    # Many sibling containers (more brackets than the limit, in total) are not nesting.
    shallow = json.dumps({"pdus": [{"a": [], "b": {}} for _ in range(siblings)]})
    assert parse_json(shallow) == json.loads(shallow)

    # The object and the array hold two levels; below them, empty arrays nested `levels` deep.
    def within(levels: int) -> str:
        inner: Any = []
        for _ in range(levels - 1):
            inner = [inner]
        return json.dumps({"pdus": [{"a": [], "b": {}} for _ in range(siblings)] + [inner]})

    assert parse_json(within(MAX_JSON_DEPTH - 2)) == json.loads(within(MAX_JSON_DEPTH - 2))
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json(within(MAX_JSON_DEPTH - 1))  # an empty container one level too deep
    assert _reason(exc_info) is CanonicalJsonReason.TOO_DEEP


def test_deeply_nested_text_fails_without_recursion_error() -> None:
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json("[" * 100_000 + "]" * 100_000)
    assert _reason(exc_info) is CanonicalJsonReason.TOO_DEEP


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a":"\xff"}', CanonicalJsonReason.NOT_UTF8),
        ('{"a":"\\ud800"}', CanonicalJsonReason.NOT_UTF8),  # escaped lone surrogate
        ('{"\\udfff":1}', CanonicalJsonReason.NOT_UTF8),  # ... in a key
        ('{"a":"\ud800"}', CanonicalJsonReason.NOT_UTF8),  # raw lone surrogate in a str
        ('{"a":1', CanonicalJsonReason.NOT_JSON),
        ("{'a':1}", CanonicalJsonReason.NOT_JSON),
        ('{"a":01}', CanonicalJsonReason.NOT_JSON),
        ("", CanonicalJsonReason.NOT_JSON),
        (b"\xef\xbb\xbf{}", CanonicalJsonReason.NOT_JSON),  # a byte order mark
    ],
)
def test_strict_decoder_rejects(data: bytes | str, reason: CanonicalJsonReason) -> None:
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json(data)
    assert _reason(exc_info) is reason


def test_surrogate_pairs_are_fine() -> None:
    assert parse_json('{"a":"\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    assert parse_json('["\\\\ud800"]') == ["\\ud800"]  # an escaped backslash, not a surrogate


def test_parse_json_object_needs_an_object() -> None:
    assert parse_json_object(b'{"a":[]}') == {"a": []}
    with pytest.raises(CanonicalJsonError) as exc_info:
        parse_json_object("[1]")
    assert _reason(exc_info) is CanonicalJsonReason.NOT_OBJECT


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({1: "a"}, CanonicalJsonReason.BAD_TYPE),
        ({None: "a"}, CanonicalJsonReason.BAD_TYPE),
        ({"a": {1, 2}}, CanonicalJsonReason.BAD_TYPE),
        ({"a": b"bytes"}, CanonicalJsonReason.BAD_TYPE),
        ({"a": "\udc00"}, CanonicalJsonReason.NOT_UTF8),
        ({"\ud800": 1}, CanonicalJsonReason.NOT_UTF8),
        ([1.0], CanonicalJsonReason.FLOAT),
    ],
)
def test_encoder_rejects_non_json_values(value: object, reason: CanonicalJsonReason) -> None:
    with pytest.raises(CanonicalJsonError) as exc_info:
        encode_canonical_json(value)
    assert _reason(exc_info) is reason


def test_encoder_output_format() -> None:
    value = {"b": ["\u2028", "/", "\x7f", "é"], "a": True, "": None, "\U0001f600": -5, "\ue000": 0}
    assert encode_canonical_json(value) == (
        '{"":null,"a":true,"b":["\u2028","/","\x7f","é"],"\ue000":0,"\U0001f600":-5}'.encode()
    )
    assert encode_canonical_json(("x", 1)) == b'["x",1]'  # tuples encode as arrays


# ----------------------------------------------------------------------------------------------
# Base64


@settings(max_examples=200)
@given(raw=st.binary(max_size=80))
def test_base64_round_trips(raw: bytes) -> None:
    standard = encode_base64(raw)
    urlsafe = encode_base64_urlsafe(raw)
    assert "=" not in standard
    assert "=" not in urlsafe
    assert decode_base64(standard) == raw
    assert decode_base64_urlsafe(urlsafe) == raw
    padded = standard + "=" * (-len(standard) % 4)
    assert decode_base64(padded) == raw  # decoders accept padding too
    assert not set(urlsafe) & set("+/")


def test_base64_padding_bits_are_accepted() -> None:
    # The spec's own test seed ends in a character with non-zero padding bits.
    key = VECTORS["official_signing_key"]
    assert decode_base64(key["seed_base64_as_written_in_spec"]) == bytes.fromhex(key["seed_hex"])
    assert (
        encode_base64(bytes.fromhex(key["seed_hex"])) == (key["seed_base64_canonical_reencoding"])
    )


@pytest.mark.parametrize(
    "text",
    ["Z", "Zm9vY", "Zg===", "Z=g", "=Zg", "Zm9v!", "Zm 9v", "Zm9v\n", "Zé", "Zm9v===="],
)
def test_base64_rejects(text: str) -> None:
    with pytest.raises(Base64Error):
        decode_base64(text)
    with pytest.raises(Base64Error):
        decode_base64_urlsafe(text)


def test_base64_rejects_non_strings() -> None:
    with pytest.raises(Base64Error):
        decode_base64(b"Zm9v")  # type: ignore[arg-type]
    with pytest.raises(Base64Error):
        decode_base64_urlsafe(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Encoded size without encoding

# Strings that canonical JSON writes as they are, and strings it escapes or widens.
plain_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
any_text = plain_text | safe_text | st.sampled_from(['"', "\\", "\x7f", "\n", "\x00", "é", "😀"])
objects_of_strings = st.dictionaries(
    any_text, any_text | st.dictionaries(any_text, any_text, max_size=3), max_size=3
)


@settings(max_examples=300)
@given(value=objects_of_strings | json_values)
def test_encoded_size_is_the_length_of_the_encoding(value: Any) -> None:
    assert compute_encoded_size(value) == len(encode_canonical_json(value))


def test_encoded_size_of_signatures_and_escapes() -> None:
    signatures = {"example.org": {"ed25519:1": "A" * 86}, "b": {}}
    assert compute_encoded_size(signatures) == len(encode_canonical_json(signatures))
    for odd in ['"', "\\", "\x7f", "\x01", "é"]:  # escaped, or not ASCII: measured by encoding
        value = {"k": {odd: odd}}
        assert compute_encoded_size(value) == len(encode_canonical_json(value))


@settings(max_examples=300)
@given(value=objects_of_strings | json_values)
def test_encoded_length_is_the_length_of_the_text(value: Any) -> None:
    text = encode_canonical_json_trusted_str(value)
    assert compute_encoded_length(value) == len(text)
    assert text.encode("utf-8") == encode_canonical_json(value)


@settings(max_examples=300)
@given(raw=st.binary(max_size=70), cut=st.integers(0, 3), odd=st.sampled_from(["", "*", "A"]))
def test_unpadded_base64_decodes_as_its_padded_spelling(raw: bytes, cut: int, odd: str) -> None:
    # Unpadded text takes a shorter path than padded text: same verdicts.
    text = encode_base64(raw)[: max(0, len(encode_base64(raw)) - cut)] + odd
    outcomes: list[bytes | str] = []
    for spelling in (text, text + "=" * (-len(text) % 4)):
        try:
            outcomes.append(decode_base64(spelling))
        except Base64Error:
            outcomes.append("error")
    assert outcomes[0] == outcomes[1]
    if len(text) % 4 == 1 or odd == "*":
        assert outcomes[0] == "error"
