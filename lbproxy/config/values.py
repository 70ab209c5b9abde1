"""Pure parsers for the scalar values a configuration holds.

Each parser takes the Python value YAML produced (or a string) and returns the validated value, or
raises ``ValueError`` whose message is fit to show to a user after ``FILE:LINE: key.path:``. They
do no I/O and know nothing of where the value came from.
"""

from __future__ import annotations

import ipaddress
import math
import re

from lbproxy.config.model import Address

_PORT_RE = re.compile(r"[0-9]{1,5}")
_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(ms|s|m|h)?")
_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_STATUS_MIN = 100
_STATUS_MAX = 599


def describe(value: object) -> str:
    """Name ``value``'s YAML type (and the value, when short) for "expected X, got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"string {shown!r}"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def is_dns_name(text: str) -> bool:
    """True when ``text`` is a syntactically valid DNS name."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    return all(_DNS_LABEL_RE.fullmatch(label) for label in name.split("."))


def _parse_port(text: str, address: str, allow_port_zero: bool) -> int:
    if not _PORT_RE.fullmatch(text):
        raise ValueError(f"malformed address {address!r}: port {text!r} is not a number")
    port = int(text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port {port} out of range {low}-65535")
    return port


def _check_host(host: str, address: str) -> None:
    if not host:
        raise ValueError(f"malformed address {address!r}: missing host")
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        raise ValueError(f"malformed address {address!r}: {host!r} is not a valid IPv4 address")
    if not is_dns_name(host):
        raise ValueError(
            f"malformed address {address!r}: "
            f"{host!r} is neither an IP address nor a valid host name"
        )


def _split_bracketed(text: str) -> tuple[str, str]:
    end = text.find("]")
    if end < 0 or text[end + 1 : end + 2] != ":":
        raise ValueError(f"malformed address {text!r}: expected host:port or [ipv6]:port")
    host = text[1:end]
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        message = f"malformed address {text!r}: {host!r} is not a valid IPv6 address"
        raise ValueError(message) from None
    return host, text[end + 2 :]


def parse_address(text: str, *, allow_port_zero: bool) -> Address:
    """Parse ``host:port`` or ``[ipv6]:port`` into an ``Address`` (IPv6 host stored unbracketed).

    The host is an IPv4 literal, a bracketed IPv6 literal or a DNS name; the port is 1..65535, or
    0..65535 when ``allow_port_zero`` (a listener asking the OS for any free port).
    Raises ``ValueError`` with a user-facing message otherwise.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected an address string like 'host:port', got {describe(text)}")
    if text.startswith("["):
        host, port_text = _split_bracketed(text)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"malformed address {text!r}: expected host:port or [ipv6]:port")
        if ":" in host:
            raise ValueError(
                f"malformed address {text!r}: IPv6 addresses must be bracketed, as in '[::1]:80'"
            )
        _check_host(host, text)
    return Address(host=host.lower(), port=_parse_port(port_text, text, allow_port_zero))


def parse_duration(value: object) -> float:
    """Parse a duration into float seconds (>= 0).

    Accepts an int or float (seconds) or a string: a number optionally followed by ``ms``, ``s``,
    ``m`` or ``h`` (``250ms``, ``2s``, ``1.5s``, ``5m``, ``1h``). Booleans are not numbers.
    Raises ``ValueError`` for anything else, negative or non-finite values.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(
            "expected a duration (seconds, or a string like '250ms', '2s', '5m'), "
            f"got {describe(value)}"
        )
    if isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"duration must be finite, got {describe(value)}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {describe(value)}")
    return seconds


def _parse_duration_text(text: str) -> float:
    stripped = text.strip()
    negative = stripped.startswith("-")
    match = _DURATION_RE.fullmatch(stripped[1:] if negative else stripped)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a number with an optional unit ms, s, m or h "
            "(e.g. '250ms', '2s', '5m')"
        )
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    return -seconds if negative else seconds


def _parse_status(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a status code, got {describe(value)}")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[0-9]{1,3}\s*", value):
            raise ValueError(f"invalid status code {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"expected a status code, got {describe(value)}")
    if not _STATUS_MIN <= value <= _STATUS_MAX:
        raise ValueError(f"status {value} out of range {_STATUS_MIN}-{_STATUS_MAX}")
    return value


def _parse_status_range(value: object) -> tuple[int, int]:
    if isinstance(value, str) and "-" in value:
        low_text, _, high_text = value.partition("-")
        low, high = _parse_status(low_text), _parse_status(high_text)
        if low > high:
            raise ValueError(f"invalid status range {value!r}: {low} is greater than {high}")
        return low, high
    if isinstance(value, (int, str)):
        status = _parse_status(value)
        return status, status
    raise ValueError(
        f"expected a status code or range like 200 or '200-399', got {describe(value)}"
    )


def parse_status_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """Parse ``200``, ``"200-399"`` or a non-empty list of those into inclusive ranges.

    Every status is within 100..599. Raises ``ValueError`` otherwise.
    """
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("expected at least one status code or range, got an empty list")
        return tuple(_parse_status_range(item) for item in value)
    return (_parse_status_range(value),)


def parse_cidr(text: object) -> str:
    """Parse an IPv4/IPv6 network (``10.0.0.0/8``, ``::1/128``, a bare address) to normal form.

    Host bits are ignored (``10.1.2.3/8`` becomes ``10.0.0.0/8``). Raises ``ValueError`` otherwise.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a CIDR network like '10.0.0.0/8', got {describe(text)}")
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ValueError(f"invalid CIDR network {text!r}") from None
