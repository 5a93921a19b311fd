"""Packets the emulated host sends: IPv4/IPv6 + TCP/UDP, the kernel's RST, ICMP errors.

Pure: bytes out, no I/O. Built with ``struct`` because this is the hot path of
``demux live`` (tests check every builder against scapy as the oracle). Addresses are
packed bytes (4 or 16), as in ``demux.wire.Packet``; the address length picks the
family. Header values follow what Linux puts on the wire, each beside the kernel
function it comes from.
"""

from __future__ import annotations

import struct
import zlib

from demux.wire.packet import ACK, FIN, RST, SYN, TCP, UDP

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHI")
_FRAG6 = struct.Struct("!BBHI")
_MSS = struct.Struct("!BBH")

IP_DF = 0x4000
IP_MF = 0x2000
ICMPV4 = 1
ICMPV6 = 58
FRAGMENT6 = 44
DEFAULT_TTL = 64          # net.ipv4.ip_default_ttl, and the IPv6 default hop limit
IPTOS_TOS_MASK = 0x1E
IPTOS_PREC_INTERNETCONTROL = 0xC0
# icmp_send: the error, its IP header and the quote fit in 576 bytes (RFC 1812 4.3.2.3).
ICMP4_ROOM = 576 - 20 - 8
# icmp6_send: they fit in the IPv6 minimum MTU, 1280 bytes (RFC 4443 2.4 (c)).
ICMP6_ROOM = 1280 - 40 - 8


def checksum(data: bytes, start: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data`` with ``start`` already summed in.

    Summing 16-bit words in one's complement is the big number modulo 0xFFFF (2**16 is
    1 modulo 0xFFFF), so one C-level ``int.from_bytes`` does the work of the loop.
    """
    if len(data) & 1:
        data += b"\0"
    v = int.from_bytes(data, "big") + start
    s = v % 0xFFFF
    if s == 0 and v:
        s = 0xFFFF        # a non-zero sum is 0xFFFF ("negative zero"), never 0
    return ~s & 0xFFFF


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The pseudo-header's sum (RFC 9293 3.1, RFC 8200 8.1) as a number."""
    if len(src) == 4:
        return int.from_bytes(src + dst + struct.pack("!BBH", 0, proto, length), "big")
    return int.from_bytes(src + dst + struct.pack("!IxxxB", length, proto), "big")


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = DEFAULT_TTL,
                ident: int = 0, df: bool = True, tos: int = 0, frag: int = 0) -> bytes:
    """A 20-byte IPv4 header with its checksum. ``frag`` carries MF and the offset/8."""
    fw = (IP_DF if df else 0) | frag
    hdr = _IP4.pack(0x45, tos, 20 + payload_len, ident & 0xFFFF, fw, ttl, proto, 0, src, dst)
    return hdr[:10] + checksum(hdr).to_bytes(2, "big") + hdr[12:]


def flow_label(src: bytes, dst: bytes, sport: int = 0, dport: int = 0) -> int:
    """The IPv6 flow label Linux gives a flow: ``ip6_make_flowlabel`` with
    net.ipv6.auto_flowlabels=1 takes 20 bits of the flow's hash (never 0). The kernel's
    hash is seeded at boot, so only the property "one flow, one non-zero label" holds."""
    h = zlib.crc32(src + dst + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")) & 0xFFFFF
    return h or 1


def ipv6_header(src: bytes, dst: bytes, nxt: int, payload_len: int, hlim: int = DEFAULT_TTL,
                tclass: int = 0, flow: int = 0) -> bytes:
    return _IP6.pack((6 << 28) | (tclass << 20) | flow, payload_len, nxt, hlim, src, dst)


def tcp_packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
               window: int = 65535, options: bytes = b"", payload: bytes = b"",
               ttl: int = DEFAULT_TTL, ident: int = 0) -> bytes:
    """An IP packet holding one TCP segment, checksums filled in. ``options`` must be
    padded to a multiple of 4 bytes. IPv4 segments carry DF: TCP sockets do path MTU
    discovery (``ip_dont_fragment``)."""
    hl = 20 + len(options)
    seg = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (hl // 4) << 4, flags,
                    window, 0, 0) + options + payload
    csum = checksum(seg, _pseudo(src, dst, TCP, len(seg)))
    seg = seg[:16] + csum.to_bytes(2, "big") + seg[18:]
    if len(src) == 4:
        return ipv4_header(src, dst, TCP, len(seg), ttl, ident) + seg
    return ipv6_header(src, dst, TCP, len(seg), ttl, flow=flow_label(src, dst, sport, dport)) + seg


def mss_option(mss: int) -> bytes:
    """The MSS option (kind 2, length 4), RFC 9293 3.7.1."""
    return _MSS.pack(2, 4, mss)


def udp_datagram(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """The UDP header and payload, checksum filled in (0 goes out as 0xFFFF, RFC 768)."""
    seg = _UDP.pack(sport, dport, 8 + len(payload), 0) + payload
    csum = checksum(seg, _pseudo(src, dst, UDP, len(seg))) or 0xFFFF
    return seg[:6] + csum.to_bytes(2, "big") + seg[8:]


def udp_packets(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes,
                mtu: int = 1500, ident: int = 0) -> list[bytes]:
    """The IP packet(s) of one UDP datagram: one when it fits the MTU, else fragments.

    An unconnected UDP socket sends with DF and IP ID 0 (``ip_select_ident_segs``: DF
    and no connected peer); a datagram too big for the MTU is fragmented locally, DF
    clear, as ``ip_fragment`` / ``ip6_fragment`` do with IP_PMTUDISC_WANT.
    """
    seg = udp_datagram(src, dst, sport, dport, payload)
    if len(src) == 4:
        if 20 + len(seg) <= mtu:
            return [ipv4_header(src, dst, UDP, len(seg)) + seg]
        return fragment4(src, dst, UDP, seg, mtu, ident)
    if 40 + len(seg) <= mtu:
        return [ipv6_header(src, dst, UDP, len(seg), flow=flow_label(src, dst, sport, dport)) + seg]
    return fragment6(src, dst, UDP, seg, mtu, ident)


def fragment4(src: bytes, dst: bytes, proto: int, body: bytes, mtu: int, ident: int) -> list[bytes]:
    """``ip_fragment``: pieces of (mtu - 20) rounded down to 8 bytes, MF on all but the last."""
    step = (mtu - 20) & ~7
    out = []
    for off in range(0, len(body), step):
        piece = body[off:off + step]
        more = IP_MF if off + step < len(body) else 0
        out.append(ipv4_header(src, dst, proto, len(piece), ident=ident, df=False,
                               frag=more | (off >> 3)) + piece)
    return out


def fragment6(src: bytes, dst: bytes, nxt: int, body: bytes, mtu: int, ident: int) -> list[bytes]:
    """``ip6_fragment``: a Fragment header (RFC 8200 4.5) in every piece."""
    step = (mtu - 40 - 8) & ~7
    out = []
    for off in range(0, len(body), step):
        piece = body[off:off + step]
        more = 1 if off + step < len(body) else 0
        fh = _FRAG6.pack(nxt, 0, off | more, ident & 0xFFFFFFFF)
        out.append(ipv6_header(src, dst, FRAGMENT6, 8 + len(piece), flow=flow_label(src, dst)) + fh + piece)
    return out


def tcp_reset(p) -> bytes | None:
    """The RST the kernel sends for a segment no socket takes (``p`` a parsed Packet).

    ``tcp_v4_send_reset`` / ``tcp_v6_send_response`` after RFC 9293 3.10.7.1: never
    answer a RST; if the segment has ACK, the reset takes its sequence number from the
    ACK field and carries no ACK; else it has sequence 0 and acknowledges everything the
    segment occupied (SYN and FIN count one each). Window 0, no options. IPv4: DF and IP
    ID 0 (the per-netns control socket has IP_PMTUDISC_DO and no peer); TTL 64.
    IPv6: hop limit 64, traffic class 0, the automatic flow label (``flow_label``).
    Checked byte for byte against the kernel's own RST (IPv6: but the label's seed).
    """
    if p.flags & RST:
        return None
    if p.flags & ACK:
        seq, ack, flags = p.ack, 0, RST
    else:
        seq = 0
        ack = p.seq + p.payload_len + (1 if p.flags & SYN else 0) + (1 if p.flags & FIN else 0)
        flags = RST | ACK
    return tcp_packet(p.dst, p.src, p.dport, p.sport, seq, ack, flags, window=0)


def icmp_port_unreachable(p, ident: int = 0) -> bytes:
    """The ICMP (or ICMPv6) port unreachable the kernel sends for a UDP datagram no
    socket takes: ``__udp4_lib_rcv`` -> ``icmp_send(ICMP_DEST_UNREACH,
    ICMP_PORT_UNREACH)``, ``__udp6_lib_rcv`` -> ``icmpv6_send(ICMPV6_DEST_UNREACH,
    ICMPV6_PORT_UNREACH)``.

    It comes from the address the datagram was sent to and quotes the datagram from its
    IP header on, cut to 576 bytes in all for IPv4 and to 1280 for IPv6. IPv4: type 3
    code 3, TOS = the datagram's TOS bits | IPTOS_PREC_INTERNETCONTROL, no DF (the ICMP
    socket has IP_PMTUDISC_DONT), TTL 64. IPv6: type 1 code 4, hop limit 64, the
    automatic flow label. Checked against the kernel's own (IPv4: but the IP ID, which
    ``__ip_select_ident`` hashes; IPv6: but the label's seed).
    """
    data = p.data[p.l3_off:]
    if p.family == 4:
        tot = int.from_bytes(data[2:4], "big")
        quote = bytes(data[:min(tot, len(data), ICMP4_ROOM)])
        body = _ICMP.pack(3, 3, 0, 0) + quote
        body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
        tos = (data[1] & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL
        return ipv4_header(p.dst, p.src, ICMPV4, len(body), ident=ident, df=False, tos=tos) + body
    plen = int.from_bytes(data[4:6], "big")
    quote = bytes(data[:min(40 + plen, len(data), ICMP6_ROOM)])
    body = _ICMP.pack(1, 4, 0, 0) + quote
    csum = checksum(body, _pseudo(p.dst, p.src, ICMPV6, len(body)))
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    return ipv6_header(p.dst, p.src, ICMPV6, len(body), flow=flow_label(p.dst, p.src)) + body
