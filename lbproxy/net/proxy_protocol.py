"""PROXY protocol v1 (text) and v2 (binary): building headers for backends, parsing them from peers.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt. Parsing is pure and strict: a
header that is malformed in any way raises ``ProxyProtocolError``; the caller closes the connection.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH = 107
V2_MAX_PAYLOAD = 4096  # TLVs beyond this are refused: an honest sender never needs more
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a PROXY header carried. ``source`` is None for LOCAL / UNKNOWN (use the socket's peer)."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None


def build_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header for a TCP connection from ``source`` to ``destination``.

    IPv4-mapped IPv6 addresses are sent as IPv4; mixed families as TCP6. When either host is not
    an IP literal (a unix-socket peer) the header is ``PROXY UNKNOWN``. Never raises.
    """
    try:
        src_ip = _ip(source[0])
        dst_ip = _ip(destination[0])
    except ValueError:
        return V1_UNKNOWN
    if src_ip.version != dst_ip.version:
        src_ip, dst_ip = _ipv6(src_ip), _ipv6(dst_ip)
    proto = "TCP4" if src_ip.version == 4 else "TCP6"
    return f"PROXY {proto} {src_ip} {dst_ip} {source[1]} {destination[1]}\r\n".encode("ascii")


def build_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v2 PROXY-command header (no TLVs) for a TCP connection from ``source`` to ``destination``.

    Families as in ``build_v1``; when a host is not an IP literal the header is a LOCAL command
    (the receiver keeps the socket's addresses). Never raises.
    """
    try:
        src_ip = _ip(source[0])
        dst_ip = _ip(destination[0])
    except ValueError:
        return V2_LOCAL
    if src_ip.version != dst_ip.version:
        src_ip, dst_ip = _ipv6(src_ip), _ipv6(dst_ip)
    family = 0x11 if src_ip.version == 4 else 0x21
    payload = src_ip.packed + dst_ip.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(payload)) + payload


def parse(data: bytes) -> tuple[ProxyInfo, int] | None:
    """Parse a header at the start of ``data``.

    Returns ``(info, consumed)``, or None when more bytes are needed. Raises ProxyProtocolError
    when the bytes cannot be the start of a valid header.
    """
    if not data:
        return None
    if data[0] == 0x0D:  # v2 starts with \r\n\r\n\0; v1 with "PROXY "
        return _parse_v2(data)
    return _parse_v1(data)


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | None:
    prefix = b"PROXY "
    if not (data.startswith(prefix) or prefix.startswith(data[: len(prefix)])):
        raise ProxyProtocolError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH or b"\n" in data:
            raise ProxyProtocolError("PROXY v1 line too long or not CRLF-terminated")
        return None
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from exc
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyInfo(None, None), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 header")
    _, proto, src, dst, sport, dport = parts
    src_ip = _parse_ip(src)
    dst_ip = _parse_ip(dst)
    want = 4 if proto == "TCP4" else 6
    if src_ip.version != want or dst_ip.version != want:
        raise ProxyProtocolError("PROXY v1 address family mismatch")
    source = (_unmap(src_ip), _parse_port(sport))
    return ProxyInfo(source, (_unmap(dst_ip), _parse_port(dport))), end + 2


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | None:
    head = data[:16]
    if not V2_SIGNATURE.startswith(head[:12]):
        raise ProxyProtocolError("not a PROXY v2 signature")
    if len(data) < 16:
        return None
    ver_cmd, family, length = head[12], head[13], struct.unpack("!H", head[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("unsupported PROXY v2 version")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError("unknown PROXY v2 command")
    if length > V2_MAX_PAYLOAD:
        raise ProxyProtocolError("PROXY v2 payload too long")
    total = 16 + length
    if len(data) < total:
        return None
    payload = data[16:total]
    if command == 0:  # LOCAL: health checks from the proxy itself; keep the socket's addresses
        return ProxyInfo(None, None), total
    transport = family & 0x0F
    af = family >> 4
    if af == 0x1 and transport == 0x1:
        if length < 12:
            raise ProxyProtocolError("PROXY v2 TCP4 payload too short")
        src = ipaddress.IPv4Address(payload[0:4])
        dst = ipaddress.IPv4Address(payload[4:8])
        sport, dport = struct.unpack("!HH", payload[8:12])
    elif af == 0x2 and transport == 0x1:
        if length < 36:
            raise ProxyProtocolError("PROXY v2 TCP6 payload too short")
        src6 = ipaddress.IPv6Address(payload[0:16])
        dst6 = ipaddress.IPv6Address(payload[16:32])
        sport, dport = struct.unpack("!HH", payload[32:36])
        return ProxyInfo((_unmap(src6), sport), (_unmap(dst6), dport)), total
    elif af == 0x0 or (af == 0x3 and transport in (0x1, 0x2)):
        return ProxyInfo(None, None), total  # UNSPEC, or AF_UNIX: keep the socket's addresses
    else:
        raise ProxyProtocolError("unsupported PROXY v2 address family")
    return ProxyInfo((str(src), sport), (str(dst), dport)), total


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ipv6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address("::ffff:" + str(ip))


def _unmap(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The text of ``ip``, with IPv4-mapped IPv6 written as IPv4 (one key per client)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise ProxyProtocolError(f"invalid address in PROXY header: {text!r}") from exc


def _parse_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"invalid port in PROXY header: {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"invalid port in PROXY header: {text!r}")
    return port
