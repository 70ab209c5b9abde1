"""PROXY protocol v1/v2 headers: building and strict parsing (pure, no sockets).

Byte-exact expectations come from the examples in haproxy's proxy-protocol.txt.
"""

from __future__ import annotations

import struct

import pytest

from lbproxy.net import proxy_protocol as pp
from lbproxy.net.proxy_protocol import ProxyInfo, ProxyProtocolError, build_v1, build_v2, parse

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def test_build_v1_ipv4_matches_the_spec_example() -> None:
    assert build_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )


def test_build_v1_ipv6() -> None:
    assert build_v1(("2001:db8::1", 1), ("::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"


def test_build_v1_mixed_families_are_sent_as_tcp6() -> None:
    header = build_v1(("10.0.0.1", 5), ("::1", 6))
    assert header.startswith(b"PROXY TCP6 ::ffff:") and header.endswith(b" ::1 5 6\r\n")
    assert parse(header) == (ProxyInfo(("10.0.0.1", 5), ("::1", 6)), len(header))


def test_build_v1_ipv4_mapped_peer_is_sent_as_tcp4() -> None:
    assert build_v1(("::ffff:10.0.0.1", 5), ("::ffff:10.0.0.2", 6)) == b"PROXY TCP4 10.0.0.1 10.0.0.2 5 6\r\n"


def test_build_v2_ipv4_is_byte_exact() -> None:
    header = build_v2(("192.168.0.1", 56324), ("192.168.0.11", 443))
    expected = (
        SIG
        + b"\x21\x11\x00\x0c"
        + bytes([192, 168, 0, 1, 192, 168, 0, 11])
        + struct.pack("!HH", 56324, 443)
    )
    assert header == expected


def test_build_v2_ipv6_is_byte_exact() -> None:
    header = build_v2(("::1", 1000), ("::2", 80))
    assert header[:16] == SIG + b"\x21\x21\x00\x24"
    assert header[16:32] == b"\x00" * 15 + b"\x01"
    assert header[32:48] == b"\x00" * 15 + b"\x02"
    assert header[48:] == struct.pack("!HH", 1000, 80)


def test_build_without_ip_addresses_says_unknown_or_local() -> None:
    """A peer that is not an IP (a unix socket) cannot be described: v1 UNKNOWN, v2 LOCAL."""
    assert build_v1(("", 0), ("127.0.0.1", 80)) == b"PROXY UNKNOWN\r\n"
    assert build_v2(("", 0), ("127.0.0.1", 80)) == SIG + b"\x20\x00\x00\x00"
    assert parse(build_v1(("", 0), ("127.0.0.1", 80))) == (ProxyInfo(None, None), 15)
    assert parse(build_v2(("", 0), ("127.0.0.1", 80))) == (ProxyInfo(None, None), 16)


@pytest.mark.parametrize("build", [build_v1, build_v2])
@pytest.mark.parametrize(
    ("source", "destination"),
    [
        (("203.0.113.7", 40000), ("198.51.100.1", 8443)),
        (("2001:db8::7", 65535), ("2001:db8::1", 1)),
        (("127.0.0.1", 0), ("127.0.0.1", 0)),
    ],
)
def test_round_trip(build, source, destination) -> None:
    header = build(source, destination)
    assert parse(header + b"GET / HTTP/1.1\r\n") == (ProxyInfo(source, destination), len(header))


@pytest.mark.parametrize("build", [build_v1, build_v2])
def test_every_prefix_asks_for_more(build) -> None:
    """A header split anywhere is incomplete, never an error, until its last byte arrives."""
    header = build(("203.0.113.7", 40000), ("198.51.100.1", 8443))
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, cut
    assert parse(header) is not None


def test_v1_unknown_and_trailing_payload() -> None:
    assert parse(b"PROXY UNKNOWN\r\nhello") == (ProxyInfo(None, None), 15)
    line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
    assert parse(line) == (ProxyInfo(None, None), len(line))


def test_v1_tcp6_ipv4_mapped_is_unmapped_like_v2() -> None:
    """Both versions give the same key for the same client (ip_hash must not depend on version)."""
    v1 = parse(b"PROXY TCP6 ::ffff:10.1.2.3 ::1 5 6\r\n")
    assert v1 is not None and v1[0].source == ("10.1.2.3", 5)


def test_v1_longest_header_is_accepted() -> None:
    src = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {src} {src} 65535 65535\r\n".encode()
    assert len(line) == 104
    assert parse(line) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",  # not a header at all
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # case matters
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF only
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # missing field
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # extra field
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # double space
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",  # protocol
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",  # bad address
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero in address
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  # port range
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero in port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # non-ASCII digit
        b"PROXY " + b"A" * 120,  # no CRLF within 107 bytes
    ],
)
def test_malformed_v1_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


def _v2(ver_cmd: int, family: int, payload: bytes) -> bytes:
    return SIG + bytes((ver_cmd, family)) + struct.pack("!H", len(payload)) + payload


def test_v2_local_and_unspec_keep_the_socket_addresses() -> None:
    assert parse(_v2(0x20, 0x00, b"")) == (ProxyInfo(None, None), 16)
    assert parse(_v2(0x21, 0x00, b"")) == (ProxyInfo(None, None), 16)
    # LOCAL ignores whatever address block follows (health checks from the sender itself).
    assert parse(_v2(0x20, 0x11, b"\x00" * 12)) == (ProxyInfo(None, None), 28)


def test_v2_unix_family_keeps_the_socket_addresses() -> None:
    assert parse(_v2(0x21, 0x31, b"\x00" * 216)) == (ProxyInfo(None, None), 16 + 216)


def test_v2_tlvs_are_skipped() -> None:
    payload = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1, 2) + b"\x04\x00\x02hi"
    header = _v2(0x21, 0x11, payload)
    assert parse(header + b"rest") == (ProxyInfo(("10.0.0.1", 1), ("10.0.0.2", 2)), len(header))


def test_v2_ipv4_mapped_ipv6_is_unmapped() -> None:
    mapped = b"\x00" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1])
    header = _v2(0x21, 0x21, mapped + mapped + struct.pack("!HH", 3, 4))
    assert parse(header) == (ProxyInfo(("10.0.0.1", 3), ("10.0.0.1", 4)), len(header))


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x00",  # signature
        _v2(0x11, 0x11, b"\x00" * 12),  # version 1 in a v2 header
        _v2(0x22, 0x11, b"\x00" * 12),  # unknown command
        _v2(0x21, 0x11, b"\x00" * 11),  # short TCP4 block
        _v2(0x21, 0x21, b"\x00" * 35),  # short TCP6 block
        _v2(0x21, 0x41, b""),  # unknown family
        _v2(0x21, 0x12, b"\x00" * 12),  # UDP on a stream listener
        SIG + b"\x21\x11" + struct.pack("!H", pp.V2_MAX_PAYLOAD + 1),  # oversized
        b"\r\nGET",  # starts like v2, isn't
    ],
)
def test_malformed_v2_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


def test_empty_input_asks_for_more() -> None:
    assert parse(b"") is None
