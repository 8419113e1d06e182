"""net.tls without sockets: certificates, the pin check, the X-Matrix binding, the channel log."""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from s2s_node.core.keys import signing_key_from_seed
from s2s_node.net.errors import build_error_body_for
from s2s_node.net.tls import (
    MAX_CERTIFICATE_BYTES,
    WARNING_PLAIN_HTTP,
    BindingReason,
    ChannelBindingError,
    ConnectionSecurity,
    PinError,
    PinReason,
    bind_connection_security,
    build_anchor_certificate,
    build_certificate,
    build_transport_security,
    check_origin_is_tls_peer,
    check_pinned,
    current_tls_peer,
    parse_certificate_identifier,
)
from s2s_node.net.tls_channels import MAX_CHANNELS, ChannelLog, Direction

ALICE = signing_key_from_seed(b"\x0a" * 32)
BOB = signing_key_from_seed(b"\x0b" * 32)


def der_of(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


def ec_certificate() -> bytes:
    """A valid certificate whose key is not ed25519 (so it encodes no identifier)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ALICE.identifier)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(build_anchor_certificate().not_valid_before_utc)
        .not_valid_after(build_anchor_certificate().not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    return der_of(certificate)


# ----------------------------------------------------------------------------------------------
# Certificates


def test_certificate_carries_the_identity_key_and_names_the_identifier() -> None:
    certificate = build_certificate(ALICE)
    public_key = certificate.public_key()
    assert isinstance(public_key, Ed25519PublicKey)
    assert public_key.public_bytes_raw() == ALICE.verify_key_bytes
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [ALICE.identifier]
    cn = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == [ALICE.identifier]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_certificate_is_deterministic_and_issued_by_the_anchor() -> None:
    assert der_of(build_certificate(ALICE)) == der_of(build_certificate(ALICE))
    assert der_of(build_certificate(ALICE)) != der_of(build_certificate(BOB))
    anchor = build_anchor_certificate()
    assert der_of(anchor) == der_of(build_anchor_certificate())
    build_certificate(ALICE).verify_directly_issued_by(anchor)  # raises if not


# ----------------------------------------------------------------------------------------------
# Pinning


def test_parse_certificate_identifier_is_the_key_not_the_names() -> None:
    assert parse_certificate_identifier(der_of(build_certificate(BOB))) == BOB.identifier


@pytest.mark.parametrize(
    ("der", "reason"),
    [
        (None, PinReason.NO_CERTIFICATE),
        (b"", PinReason.NO_CERTIFICATE),
        (b"\x30\x03\x02\x01\x01", PinReason.MALFORMED_CERTIFICATE),
        (b"\x30" * (MAX_CERTIFICATE_BYTES + 1), PinReason.MALFORMED_CERTIFICATE),
    ],
)
def test_parse_certificate_identifier_refuses(der: bytes | None, reason: PinReason) -> None:
    with pytest.raises(PinError) as info:
        parse_certificate_identifier(der)
    assert info.value.reason is reason


def test_a_non_ed25519_certificate_encodes_no_identifier() -> None:
    with pytest.raises(PinError) as info:
        parse_certificate_identifier(ec_certificate())
    assert info.value.reason is PinReason.NOT_ED25519


def test_check_pinned() -> None:
    bob_der = der_of(build_certificate(BOB))
    assert check_pinned(bob_der, BOB.identifier) == BOB.identifier
    for expected in (ALICE.identifier, "127.0.0.1", BOB.identifier.upper()):
        with pytest.raises(PinError) as info:
            check_pinned(bob_der, expected)
        assert info.value.reason is PinReason.KEY_MISMATCH
    with pytest.raises(PinError) as info:
        check_pinned(None, BOB.identifier)
    assert info.value.reason is PinReason.NO_CERTIFICATE


# ----------------------------------------------------------------------------------------------
# Options from the flag


def test_transport_security_from_the_flag() -> None:
    on = build_transport_security(ALICE, tls=True)
    assert on.server is not None and on.client is not None and on.warning is None
    assert on.server.channels is on.channels is on.client.channels
    for context in (on.server.context, on.client.context):
        assert context.minimum_version is ssl.TLSVersion.TLSv1_3
        assert context.maximum_version is ssl.TLSVersion.TLSv1_3
    assert on.server.context.verify_mode is ssl.CERT_OPTIONAL
    assert on.client.context.verify_mode is ssl.CERT_NONE
    assert not on.client.context.check_hostname
    assert on.server.identifier == on.client.identifier == ALICE.identifier

    off = build_transport_security(ALICE, tls=False)
    assert (off.server, off.client, off.warning) == (None, None, WARNING_PLAIN_HTTP)
    assert not off.channels.tls_enabled


# ----------------------------------------------------------------------------------------------
# Binding the X-Matrix origin to the TLS peer


def test_origin_binding() -> None:
    plain = ConnectionSecurity(tls=False, peer=None)
    check_origin_is_tls_peer(ALICE.identifier, plain)  # nothing to bind on plain HTTP
    check_origin_is_tls_peer(ALICE.identifier, ConnectionSecurity(tls=True, peer=ALICE.identifier))
    cases = [
        (ConnectionSecurity(tls=True, peer=None), BindingReason.NO_CLIENT_CERTIFICATE),
        (ConnectionSecurity(tls=True, peer=BOB.identifier), BindingReason.ORIGIN_NOT_TLS_PEER),
    ]
    for security, reason in cases:
        with pytest.raises(ChannelBindingError) as info:
            check_origin_is_tls_peer(ALICE.identifier, security)
        assert info.value.reason is reason
        mapped = build_error_body_for(info.value)
        assert mapped is not None
        assert (mapped[0], mapped[1]["errcode"]) == (401, "M_UNAUTHORIZED")


def test_origin_binding_reads_the_connection_being_served() -> None:
    assert current_tls_peer() is None
    check_origin_is_tls_peer(ALICE.identifier)  # outside a connection: nothing bound
    with bind_connection_security(ConnectionSecurity(tls=True, peer=BOB.identifier)):
        assert current_tls_peer() == BOB.identifier
        with pytest.raises(ChannelBindingError):
            check_origin_is_tls_peer(ALICE.identifier)
        check_origin_is_tls_peer(BOB.identifier)
    assert current_tls_peer() is None


# ----------------------------------------------------------------------------------------------
# Channel log


def test_channel_log_keeps_the_last_outcome_per_peer_and_direction() -> None:
    now = [100.0]
    log = ChannelLog(tls_enabled=True, clock=lambda: now[0])
    assert log.status(BOB.identifier) is None
    assert not log.is_encrypted_and_pinned(BOB.identifier)
    log.record_success(
        BOB.identifier, identifier=BOB.identifier, direction=Direction.OUTBOUND, pinned=True
    )
    assert log.is_encrypted_and_pinned(BOB.identifier)
    now[0] = 200.0
    log.record_failure(BOB.identifier, direction=Direction.OUTBOUND, reason="key_mismatch")
    status = log.status(BOB.identifier)
    assert status is not None
    assert (status.encrypted, status.pinned, status.at, status.failure) == (
        True,
        True,
        200.0,
        "key_mismatch",
    )
    assert not log.is_encrypted_and_pinned(BOB.identifier)
    # The other direction is separate.
    log.record_success(
        BOB.identifier, identifier=BOB.identifier, direction=Direction.INBOUND, pinned=True
    )
    assert log.is_encrypted_and_pinned(BOB.identifier)
    assert log.status(BOB.identifier, Direction.INBOUND) is not None
    # A first failure: nothing established.
    log.record_failure("10.0.0.1:8448", direction=Direction.OUTBOUND, reason="handshake")
    first = log.status("10.0.0.1:8448")
    assert first is not None
    assert (first.encrypted, first.pinned, first.identifier) == (False, False, None)


def test_channel_log_is_bounded_and_silent_when_tls_is_off() -> None:
    log = ChannelLog(tls_enabled=True)
    for i in range(MAX_CHANNELS + 10):
        log.record_failure(f"peer{i}", direction=Direction.INBOUND, reason="handshake")
    everything = log.all()
    assert len(everything) == MAX_CHANNELS
    assert everything[-1].peer == f"peer{MAX_CHANNELS + 9}"
    assert log.status("peer0", Direction.INBOUND) is None  # the oldest was forgotten

    off = ChannelLog(tls_enabled=False)
    off.record_success("x", identifier="x", direction=Direction.OUTBOUND, pinned=True)
    assert off.status("x") is None and off.all() == []
    assert not off.is_encrypted_and_pinned("x")
