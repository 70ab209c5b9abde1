"""Answers one DNS query from the live pool state. Pure: bytes in, bytes (or nothing) out.

Rules (authoritative for one zone):
- A / AAAA for a configured name: the *available* backends of its pool (healthy, not draining,
  not ejected) whose address is an IPv4 / IPv6 literal, at most ``max_answers``, the first one
  chosen by smooth weighted round robin on each answer and the others following in config order,
  with the configured short TTL. No available backend: an empty answer (NODATA) with the SOA, so a
  dead server's address is never handed out.
- A name under the zone that is not configured: NXDOMAIN with the SOA. A name outside the zone:
  REFUSED. The zone apex answers SOA and NS (``ns1.<zone>``, whose A/AAAA is the listener address).
- Malformed queries: FORMERR when the header can be read, otherwise no answer at all. Opcodes
  other than QUERY: NOTIMP. Over UDP, an answer larger than 512 bytes (or the client's EDNS size)
  is sent truncated (TC set, no records) so the client retries over TCP.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from lbproxy.balancing.round_robin import RoundRobin
from lbproxy.config.model import DnsConfig
from lbproxy.pool.backend import Backend
from lbproxy.pool.pool import Pool

UDP_DEFAULT_SIZE = 512


def _family(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


class DnsResponder:
    """Builds answers for one dns listener; ``pools`` is the daemon's live pool mapping."""

    def __init__(self, config: DnsConfig, pools: Mapping[str, Pool], listener_host: str) -> None:
        self.config = config
        self.pools = pools
        self.zone = dns.name.from_text(config.zone)
        self.ns_name = dns.name.from_text("ns1." + config.zone)
        self.listener_host = listener_host
        self.records = {dns.name.from_text(name): pool for name, pool in config.records}
        self._rotations: dict[tuple[str, int], tuple[list[Backend], RoundRobin]] = {}
        self.queries = 0
        self.answers_by_rcode: dict[str, int] = {}

    def respond(self, wire: bytes, max_size: int | None) -> bytes | None:
        """The answer to ``wire``; ``max_size`` is None over TCP. None: send nothing."""
        self.queries += 1
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return self._formerr(wire)
        except Exception:  # noqa: BLE001 - any parser surprise is a malformed packet to us
            return self._formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: never answer (reflection)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return self._finish(response, max_size, query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return self._finish(response, max_size, query)
        question = query.question[0]
        qname = question.name.canonicalize()
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return self._finish(response, max_size, query)
        if not qname.is_subdomain(self.zone):
            response.set_rcode(dns.rcode.REFUSED)
            response.flags &= ~dns.flags.AA
            return self._finish(response, max_size, query)
        rdtype = question.rdtype
        if qname == self.zone and rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            response.answer.append(self._soa() if rdtype == dns.rdatatype.SOA else self._ns())
            return self._finish(response, max_size, query)
        if qname == self.ns_name:
            family = 4 if rdtype == dns.rdatatype.A else 6 if rdtype == dns.rdatatype.AAAA else 0
            if family and _family(self.listener_host) == family:
                response.answer.append(
                    dns.rrset.from_text(qname, self.config.ttl, "IN", dns.rdatatype.to_text(rdtype), self.listener_host)
                )
            else:
                response.authority.append(self._soa())
            return self._finish(response, max_size, query)
        pool_name = self.records.get(qname)
        if pool_name is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa())
            return self._finish(response, max_size, query)
        family = 4 if rdtype == dns.rdatatype.A else 6 if rdtype == dns.rdatatype.AAAA else 0
        if rdtype == dns.rdatatype.ANY:
            family = 4
            rdtype = dns.rdatatype.A
        addresses = self._addresses(pool_name, family) if family else []
        if addresses:
            # One RRset per address: an RRset is a set, and the rotation lives in the order.
            type_text = dns.rdatatype.to_text(rdtype)
            for address in addresses:
                response.answer.append(dns.rrset.from_text(qname, self.config.ttl, "IN", type_text, address))
        else:
            response.authority.append(self._soa())
        return self._finish(response, max_size, query)

    def _addresses(self, pool_name: str, family: int) -> list[str]:
        pool = self.pools.get(pool_name)
        if pool is None:
            return []
        key = (pool_name, family)
        cached = self._rotations.get(key)
        if cached is None or cached[0] is not pool.backends:
            members = [b for b in pool.backends if _family(b.host) == family]
            cached = (pool.backends, RoundRobin(members))
            self._rotations[key] = cached
        members_all, rotation = cached
        first = rotation.pick(None)
        if first is None:
            return []
        ordered = [b for b in members_all if _family(b.host) == family and b.available]
        start = ordered.index(first) if first in ordered else 0
        ordered = ordered[start:] + ordered[:start]
        seen: list[str] = []
        for backend in ordered:
            if backend.host not in seen:
                seen.append(backend.host)
            if len(seen) >= self.config.max_answers:
                break
        return seen

    def _soa(self) -> dns.rrset.RRset:
        text = f"{self.ns_name} hostmaster.{self.config.zone}. 1 60 30 3600 {self.config.ttl}"
        return dns.rrset.from_text(self.zone, self.config.ttl, "IN", "SOA", text)

    def _ns(self) -> dns.rrset.RRset:
        return dns.rrset.from_text(self.zone, self.config.ttl, "IN", "NS", str(self.ns_name))

    def _finish(self, response: dns.message.Message, max_size: int | None, query: dns.message.Message) -> bytes:
        rcode = dns.rcode.to_text(response.rcode())
        self.answers_by_rcode[rcode] = self.answers_by_rcode.get(rcode, 0) + 1
        if max_size is None:
            return response.to_wire()
        limit = max(UDP_DEFAULT_SIZE, query.payload if query.edns >= 0 else UDP_DEFAULT_SIZE)
        limit = min(limit, max_size)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer = []
            response.authority = []
            response.additional = []
            response.flags |= dns.flags.TC
            return response.to_wire()

    def _formerr(self, wire: bytes) -> bytes | None:
        if len(wire) < 12:
            return None
        (ident, flags) = struct.unpack("!HH", wire[:4])
        if flags & 0x8000:
            return None  # looks like a response: never answer
        self.answers_by_rcode["FORMERR"] = self.answers_by_rcode.get("FORMERR", 0) + 1
        opcode_bits = flags & 0x7800
        return struct.pack("!HHHHHH", ident, 0x8000 | opcode_bits | dns.rcode.FORMERR, 0, 0, 0, 0)
