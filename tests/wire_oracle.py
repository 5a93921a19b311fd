"""Scapy as the oracle for the wire tests: what scapy's dissection says each field is.

Shared by test_wire, test_wire_props and test_explain. Each helper takes a scapy packet
re-dissected from bytes (so computed fields such as lengths and checksums are filled).
"""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether


def norm6(addr: str) -> str:
    return str(ipaddress.IPv6Address(addr))


def ip_fields(ip) -> dict:
    """Wireshark name -> value, for scapy's IPv4 or IPv6 layer."""
    if isinstance(ip, IP):
        return {"ip.version": ip.version, "ip.hdr_len": ip.ihl * 4, "ip.dsfield": ip.tos, "ip.dsfield.dscp": ip.tos >> 2,
                "ip.dsfield.ecn": ip.tos & 3, "ip.len": ip.len, "ip.id": ip.id,
                "ip.flags.rb": int(ip.flags.evil), "ip.flags.df": int(ip.flags.DF),
                "ip.flags.mf": int(ip.flags.MF), "ip.frag_offset": ip.frag, "ip.ttl": ip.ttl,
                "ip.proto": ip.proto, "ip.checksum": ip.chksum, "ip.src": ip.src, "ip.dst": ip.dst}
    return {"ipv6.version": ip.version, "ipv6.tclass": ip.tc, "ipv6.flow": ip.fl,
            "ipv6.plen": ip.plen, "ipv6.nxt": ip.nh, "ipv6.hlim": ip.hlim,
            "ipv6.src": norm6(ip.src), "ipv6.dst": norm6(ip.dst)}


def tcp_fields(t) -> dict:
    f = int(t.flags)
    out = {"tcp.srcport": t.sport, "tcp.dstport": t.dport, "tcp.seq_raw": t.seq,
           "tcp.ack_raw": t.ack, "tcp.hdr_len": t.dataofs * 4, "tcp.window_size_value": t.window,
           "tcp.checksum": t.chksum, "tcp.urgent_pointer": t.urgptr,
           "tcp.flags.fin": f & 1, "tcp.flags.syn": f >> 1 & 1, "tcp.flags.reset": f >> 2 & 1,
           "tcp.flags.push": f >> 3 & 1, "tcp.flags.ack": f >> 4 & 1, "tcp.flags.urg": f >> 5 & 1,
           "tcp.flags.ece": f >> 6 & 1, "tcp.flags.cwr": f >> 7 & 1}
    return out


def tcp_options(t) -> list[tuple[str, object]]:
    """Scapy's option list as (Wireshark name, value) pairs, in order."""
    out = []
    for name, value in t.options:
        if name == "MSS":
            out.append(("tcp.options.mss_val", value))
        elif name == "WScale":
            out.append(("tcp.options.wscale.shift", value))
        elif name == "SAckOK":
            out.append(("tcp.options.sack_perm", 1))
        elif name == "Timestamp":
            out += [("tcp.options.timestamp.tsval", value[0]), ("tcp.options.timestamp.tsecr", value[1])]
        elif name == "SAck":
            for i in range(0, len(value) - 1, 2):
                out += [("tcp.options.sack_le", value[i]), ("tcp.options.sack_re", value[i + 1])]
        elif name == "NOP":
            out.append(("tcp.options.nop", 1))
        elif name == "EOL":
            out.append(("tcp.options.eol", 1))
        elif isinstance(name, int) and value:
            out.append(("tcp.options.unknown.payload", bytes(value).hex()))
    return out


def udp_fields(u) -> dict:
    return {"udp.srcport": u.sport, "udp.dstport": u.dport, "udp.length": u.len,
            "udp.checksum": u.chksum}


def ip_layer(pkt):
    """Scapy's outermost IPv4/IPv6 layer, or None."""
    for cls in (IP, IPv6):
        if cls in pkt:
            layer = pkt[cls]
            # the outer one: the first found walking down from the top
            cur = pkt
            while cur is not None and not isinstance(cur, (IP, IPv6)):
                cur = cur.payload if cur.payload else None
            return cur if cur is not None else layer
    return None


def transport(ip):
    """The TCP/UDP/ICMP layer carried by the outer IP layer (not one quoted in ICMP)."""
    cur = ip.payload
    while cur is not None and cur.name not in ("TCP", "UDP", "ICMP") and cur.payload:
        if isinstance(cur, (IP, IPv6)):
            return None
        cur = cur.payload
    if isinstance(cur, (TCP, UDP, ICMP)):
        return cur
    return None


__all__ = ["Ether", "ip_fields", "tcp_fields", "tcp_options", "udp_fields", "ip_layer",
           "transport", "norm6"]
