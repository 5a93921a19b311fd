"""The oracles for the wire tests: scapy's dissection, and Wireshark's own field names
and layout (``tshark -G fields`` and ``tshark -T pdml``) when tshark is installed.

Shared by test_wire, test_wire_props, test_wire_pcaps and test_explain. The scapy
helpers take a packet re-dissected from bytes (so computed fields such as lengths and
checksums are filled). ``crafted()`` makes frames that the captures in pcaps/ lack (IPv6
extension headers and fragments, IPv4 options, ICMP and ICMPv6 messages, SLL/SLL2
address lengths, rarer TCP options), each checked against Wireshark by the tests.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET

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
            out += _other_tcp_option(name, bytes(value))
    return out


# Kinds Wireshark 4.0 decodes into fields of its own (no "unknown" payload for them).
_WS_TCP_KINDS = {2, 3, 4, 5, 8, 19, 20, 21, 22, 23, 27, 28, 29, 30, 76, 78, 172, 174}


def _other_tcp_option(kind: int, data: bytes) -> list[tuple[str, object]]:
    """What Wireshark names the data of a kind scapy leaves as a number (seen in PDML)."""
    if kind in (6, 7, 11, 12, 13):            # echo, echo reply, CC: only at length 6
        name = "tcp.options.echo_value" if kind in (6, 7) else "tcp.options.cc_value"
        return [(name, int.from_bytes(data, "big"))] if len(data) == 4 else []
    if kind in (253, 254):                     # RFC 6994: ExID, then the experiment's data
        out = [("tcp.options.experimental.exid", int.from_bytes(data[:2], "big"))] if len(data) >= 2 else []
        return out + ([("tcp.options.experimental.data", data[2:].hex())] if len(data) > 2 else [])
    if kind == 34:
        return [("tcp.options.tfo.cookie", data.hex())]
    if kind in _WS_TCP_KINDS:
        return []
    return [("tcp.options.unknown.payload", data.hex())]


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


# -- Wireshark as the oracle ----------------------------------------------------------

TSHARK = shutil.which("tshark")
NO_TSHARK = "tshark is not installed: Wireshark's field names and PDML are the oracle here"


@functools.cache
def _registry() -> tuple[frozenset[str], dict[str, int]]:
    out = subprocess.run([TSHARK, "-G", "fields"], capture_output=True, text=True, check=True).stdout
    names, masks = set(), {}
    for cols in (line.split("\t") for line in out.splitlines()):
        # F rows: type, name, abbreviation, ftype, parent, base, bitmask, blurb.
        if cols[0] in ("F", "P") and len(cols) > 2:
            names.add(cols[2])
        if cols[0] == "F" and len(cols) > 6 and cols[6].startswith("0x") and int(cols[6], 16):
            masks[cols[2]] = int(cols[6], 16)
    return frozenset(names), masks


def tshark_fields() -> frozenset[str]:
    """Every name a display filter may use (``tshark -G fields``, column 3): the fields
    (F rows) and the protocols (P rows; some options, such as tcp.options.eol, are those)."""
    return _registry()[0]


_PATTERN = re.compile(r"^([01.]{4}(?: [01.]{1,4})*) = ")


def _bits(name: str, pos: int, size: int, showname: str | None) -> tuple[int, int]:
    """(offset, width) in bits of a PDML field.

    PDML gives whole bytes, sometimes narrowed to those holding a bit field's bits (the
    TCP flags: 12 bits, one byte); the bitmask from ``-G fields``, cut to those bytes by
    dropping its low ones, places the bits in them. A few bit fields have no mask
    (``ip.version``): their showname draws the bits ("0110 .... = Version: 6"),
    right-aligned in those bytes.
    """
    mask = _registry()[1].get(name)
    if mask:
        while mask >> (size * 8):
            mask >>= 8
        high, low = mask.bit_length() - 1, (mask & -mask).bit_length() - 1
        return pos * 8 + size * 8 - 1 - high, high - low + 1
    m = _PATTERN.match(showname or "")
    if not m:
        return pos * 8, size * 8
    drawn = m.group(1).replace(" ", "")
    digits = [i for i, ch in enumerate(drawn) if ch != "."]
    return (pos + size) * 8 - len(drawn) + digits[0], len(digits)


def pdml(path: str) -> list[set[tuple[str, int, int]]]:
    """Per packet, every field ``tshark -T pdml`` shows: (name, offset bits, width bits).

    Reassembly is off: demux explains one frame, so its headers are what to compare
    (with it on, Wireshark shows a lone first fragment's UDP header as data).
    """
    cmd = [TSHARK, "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-r", path, "-T", "pdml"]
    xml = subprocess.run(cmd, capture_output=True, check=True).stdout
    packets = []
    for packet in ET.fromstring(xml).iter("packet"):
        seen = set()
        for fl in packet.iter("field"):
            name, pos, size = fl.get("name"), fl.get("pos"), fl.get("size")
            if name and pos is not None and size and int(size) > 0:
                seen.add((name, *_bits(name, int(pos), int(size), fl.get("showname"))))
        packets.append(seen)
    return packets


# -- crafted frames: what pcaps/ lacks --------------------------------------------------

def _sll(hatype: int, halen: int, proto: int, v2: bool = False) -> bytes:
    addr = bytes(range(0x21, 0x29))                 # 8 non-zero bytes: padding is visible
    if v2:
        return struct.pack("!HHIHBB", proto, 0, 3, hatype, 0, halen) + addr
    return struct.pack("!HHH", 0, hatype, halen) + addr + struct.pack("!H", proto)


def _raw_ipv4(options: bytes, proto: int, body: bytes) -> bytes:
    """An IPv4 header with literal option bytes (scapy would fix up odd ones)."""
    options += b"\0" * (-len(options) % 4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45 + len(options) // 4, 0, 20 + len(options) + len(body),
                      1, 0, 64, proto, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return hdr + options + body


def _raw_icmp(kind: int, code: int, rest: int, body: bytes, v6: bool = False) -> bytes:
    msg = struct.pack("!BBHI", kind, code, 0, rest) + body
    if v6:
        return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=58) / msg)
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=1) / msg)


def _tcp_with(options: bytes) -> bytes:
    options += b"\0" * (-len(options) % 4)
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, (5 + len(options) // 4) << 4, 0x02, 1000, 0, 0) + options
    return _raw_ipv4(b"", 6, tcp)


def crafted() -> list[tuple[str, int, bytes]]:
    """(id, link type, frame) for the headers and options the captures do not hold."""
    from scapy.layers.inet import IPOption_LSRR, IPOption_NOP, IPOption_Router_Alert, IPOption_RR
    from scapy.layers.inet6 import (HAO, HBHOptUnknown, ICMPv6DestUnreach, ICMPv6EchoReply,
                                    ICMPv6EchoRequest, ICMPv6MLQuery, ICMPv6MLQuery2, ICMPv6ND_NA,
                                    ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_Redirect, ICMPv6ND_RS,
                                    ICMPv6PacketTooBig, ICMPv6ParamProblem, ICMPv6TimeExceeded,
                                    IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                    IPv6ExtHdrRouting, IPv6ExtHdrSegmentRouting, Jumbo, PadN,
                                    RouterAlert)
    from scapy.layers.ipsec import AH

    def eth():
        return Ether(src="52:54:00:00:00:02", dst="52:54:00:00:00:01")

    v4 = IP(src="10.0.0.2", dst="10.0.0.1")
    v6 = IPv6(src="2001:db8::2", dst="2001:db8::1")
    quoted4 = bytes(IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=40000, dport=53))
    quoted6 = bytes(IPv6(src="2001:db8::2", dst="2001:db8::1") / UDP(sport=40000, dport=53))
    udp = UDP(sport=5353, dport=53) / b"q"
    frames = [
        # IPv6 fragments, extension headers and their options
        ("v6-frag-first", 1, eth() / v6 / IPv6ExtHdrFragment(id=0xABCD, offset=0, m=1) / UDP(sport=1, dport=2) / (b"x" * 16)),
        ("v6-frag-later", 1, eth() / IPv6(src="::1", dst="::2", nh=44) / IPv6ExtHdrFragment(nh=17, id=0xABCD, offset=3, m=0) / (b"x" * 8)),
        ("v6-frag-atomic", 1, eth() / v6 / IPv6ExtHdrFragment(id=7) / udp),
        ("v6-hbh-dst-rt0", 1, eth() / v6 / IPv6ExtHdrHopByHop(options=[RouterAlert(), PadN(optdata=b"\0\0")])
         / IPv6ExtHdrDestOpt(options=[HAO(hoa="2001:db8::77")]) / IPv6ExtHdrRouting(addresses=["2001:db8::9", "2001:db8::a"]) / udp),
        ("v6-opt-unknown-experimental", 1, eth() / v6 / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1E, optdata=b"abc"),
                                                                                 HBHOptUnknown(otype=0x0B, optdata=b"xyz1")]) / udp),
        ("v6-opt-jumbo", 1, eth() / v6 / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=100000)]) / udp),
        ("v6-srh", 1, eth() / v6 / IPv6ExtHdrSegmentRouting(addresses=["2001:db8::1", "2001:db8::5"]) / udp),
        ("v6-rt-unknown", 1, eth() / v6 / IPv6ExtHdrRouting(type=200, addresses=["2001:db8::9"]) / udp),
        ("v6-ah", 1, eth() / v6 / AH(nh=17, spi=0x1234, seq=9, icv=b"\x11" * 12) / udp),
        # IPv4 options
        ("v4-rr-ra-nop", 1, eth() / IP(src="10.0.0.2", dst="10.0.0.1", options=[IPOption_RR(routers=["1.2.3.4", "0.0.0.0"], pointer=8),
                                                                                IPOption_NOP(), IPOption_Router_Alert()]) / udp),
        ("v4-lsrr", 101, IP(src="10.0.0.2", dst="10.0.0.1", options=[IPOption_LSRR(routers=["1.1.1.1", "2.2.2.2", "3.3.3.3"], pointer=8)]) / udp),
        ("v4-ts-only", 101, _raw_ipv4(bytes.fromhex("440c0d00" "00000001" "00000002"), 17, bytes(udp))),
        ("v4-ts-addr", 101, _raw_ipv4(bytes.fromhex("4414050100000000000000000000000000000000"), 17, bytes(udp))),
        ("v4-traceroute-mtu-sid", 101, _raw_ipv4(bytes.fromhex("520c0001000200030a000001" "0b0405dc" "88040007"), 17, bytes(udp))),
        # ICMP: every type with rows of its own, RFC 4884 lengths, quoted datagrams
        ("icmp-echo", 101, v4 / ICMP(type=8, id=0x1234, seq=7) / b"ping"),
        ("icmp-port-unreach", 101, _raw_icmp(3, 3, 0, quoted4)),
        ("icmp-frag-needed", 101, _raw_icmp(3, 4, 1400, quoted4)),
        ("icmp-unreach-4884", 101, _raw_icmp(3, 1, 0x00070000, quoted4 + bytes(8))),
        ("icmp-frag-needed-4884", 101, _raw_icmp(3, 4, 0x000705DC, quoted4 + bytes(8))),
        ("icmp-time-exceeded", 101, _raw_icmp(11, 0, 0, quoted4)),
        ("icmp-param-problem", 101, _raw_icmp(12, 0, 0x08000000, quoted4)),
        ("icmp-param-problem-4884", 101, _raw_icmp(12, 0, 0x08070000, quoted4 + bytes(8))),
        ("icmp-redirect", 101, _raw_icmp(5, 1, 0x0A0000FE, quoted4)),
        ("icmp-source-quench", 101, _raw_icmp(4, 0, 0, quoted4)),
        ("icmp-router-adv", 101, _raw_icmp(9, 0, 0x01020708, bytes(8))),
        ("icmp-timestamp", 101, _raw_icmp(13, 0, 0x00050006, bytes(12))),
        ("icmp-ext-echo", 101, _raw_icmp(42, 0, 0x00050101, bytes(8))),
        ("icmp-unknown-type", 101, _raw_icmp(200, 0, 0x01020304, bytes(8))),
        # ICMPv6
        ("icmpv6-port-unreach", 101, v6 / ICMPv6DestUnreach(code=4) / IPv6(quoted6)),
        ("icmpv6-unreach-4884", 101, _raw_icmp(1, 4, 0x06000000, quoted6 + bytes(8), v6=True)),
        ("icmpv6-too-big", 101, v6 / ICMPv6PacketTooBig(mtu=1280) / IPv6(quoted6)),
        ("icmpv6-time-exceeded", 101, v6 / ICMPv6TimeExceeded() / IPv6(quoted6)),
        ("icmpv6-param-problem", 101, v6 / ICMPv6ParamProblem(ptr=6) / IPv6(quoted6)),
        ("icmpv6-echo", 101, v6 / ICMPv6EchoRequest(id=3, seq=4, data=b"hi")),
        ("icmpv6-echo-reply", 101, v6 / ICMPv6EchoReply(id=3, seq=4)),
        ("icmpv6-rs", 101, IPv6(src="fe80::1", dst="ff02::2", hlim=255) / ICMPv6ND_RS()),
        ("icmpv6-ra", 101, IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6ND_RA(M=1, prf=1, routerlifetime=1800)),
        ("icmpv6-ns", 101, IPv6(src="fe80::1", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="fe80::2")),
        ("icmpv6-na", 101, IPv6(src="fe80::2", dst="fe80::1", hlim=255) / ICMPv6ND_NA(tgt="fe80::2", R=0, S=1, O=1)),
        ("icmpv6-redirect", 101, IPv6(src="fe80::1", dst="fe80::2", hlim=255) / ICMPv6ND_Redirect(tgt="fe80::3", dst="2001:db8::9")),
        ("icmpv6-mld-query", 101, IPv6(src="fe80::1", dst="ff02::1", hlim=1) / ICMPv6MLQuery()),
        ("icmpv6-mld2-query", 101, IPv6(src="fe80::1", dst="ff02::1", hlim=1) / ICMPv6MLQuery2()),
        # SLL and SLL2: address lengths 6, 4 (GRE), 0 (tun), 3 and 8; a Linux protocol number
        *[(f"sll{'2' if v2 else ''}-{hatype}-{halen}-{proto:x}", 276 if v2 else 113,
           _sll(hatype, halen, proto, v2) + (bytes(v6 / udp) if proto == 0x86DD else bytes(v4 / udp)))
          for v2 in (False, True)
          for hatype, halen, proto in ((1, 6, 0x0800), (778, 4, 0x86DD), (65534, 0, 0x0800),
                                       (1, 3, 0x0800), (800, 8, 0x86DD), (1, 6, 0x0004))],
        # TCP options Wireshark knows beyond the usual ones, and one it does not
        ("tcp-echo-tfo-exp-unknown", 101, _tcp_with(bytes.fromhex("060600000001" "2206aabbccdd" "fd06fffe0102" "6304abcd"))),
        ("tcp-mptcp-sack", 101, _tcp_with(bytes.fromhex("1e040001" "0101" "050a0000000100000002"))),
    ]
    return [(name, lt, bytes(frame)) for name, lt, frame in frames]


def write_by_linktype(frames: list[tuple[str, int, bytes]], directory) -> list[tuple[str, list[str]]]:
    """Write frames into one pcap per link type: [(path, ids of its packets in order)]."""
    from scapy.utils import PcapWriter
    groups: dict[int, list[tuple[str, bytes]]] = {}
    for name, lt, raw in frames:
        groups.setdefault(lt, []).append((name, raw))
    out = []
    for lt, items in sorted(groups.items()):
        path = f"{directory}/crafted-{lt}.pcap"
        writer = PcapWriter(path, linktype=lt, sync=True)
        for _, raw in items:
            writer.write(raw)
        writer.close()
        out.append((path, [name for name, _ in items]))
    return out


__all__ = ["Ether", "ip_fields", "tcp_fields", "tcp_options", "udp_fields", "ip_layer",
           "transport", "norm6", "TSHARK", "NO_TSHARK", "tshark_fields", "pdml", "crafted",
           "write_by_linktype"]
