"""The parsed packet: what the wire layer hands to the emulated kernel.

One ``Packet`` per captured frame. Addresses are packed bytes (4 or 16) so the kernel
can key its tables without string work; renderers turn them into text. Nothing here
does I/O.
"""

from __future__ import annotations

# IP protocol numbers the kernel demultiplexes on.
TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58

# TCP flag bits as in the header's flags byte (RFC 9293, RFC 3168).
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_FLAG_LETTERS = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"), (ECE, "E"), (CWR, "W"))


def flag_string(flags: int) -> str:
    """tcpdump's spelling of TCP flags: ``S``, ``S.``, ``P.``, ``F.``, ``R``..."""
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit) or "none"


class FragmentInfo:
    """What an IP fragment says about its place in the datagram.

    ``offset`` is in bytes (the header's 8-byte units times 8); ``more`` is the MF bit.
    The fragment's data is ``data[l4_off:l4_off + payload_len]`` of its Packet. For IPv6,
    ``hdr_off`` is the offset of the Fragment header and ``nxt_off`` that of the
    next-header byte pointing at it, which reassembly rewrites (``ip6_frag_reasm``).
    """

    __slots__ = ("ident", "offset", "more", "hdr_off", "nxt_off")

    def __init__(self, ident: int, offset: int, more: bool, hdr_off: int = -1, nxt_off: int = -1):
        self.ident = ident
        self.offset = offset
        self.more = more
        self.hdr_off = hdr_off
        self.nxt_off = nxt_off

    def __eq__(self, other) -> bool:
        return (isinstance(other, FragmentInfo) and
                (self.ident, self.offset, self.more) == (other.ident, other.offset, other.more))

    def __repr__(self) -> str:
        return f"FragmentInfo(ident={self.ident}, offset={self.offset}, more={self.more})"


class Quoted(tuple):
    """The datagram an ICMP error quotes: (family, proto, src, dst, sport, dport).

    As the offending packet was sent: ``src`` is the local end that sent it, so a
    port-unreachable answering our UDP datagram quotes our own address and port as src.
    """

    __slots__ = ()

    def __new__(cls, family: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int):
        return tuple.__new__(cls, (family, proto, src, dst, sport, dport))

    family = property(lambda self: self[0])
    proto = property(lambda self: self[1])
    src = property(lambda self: self[2])
    dst = property(lambda self: self[3])
    sport = property(lambda self: self[4])
    dport = property(lambda self: self[5])

    def __repr__(self) -> str:
        return (f"Quoted(family={self[0]}, proto={self[1]}, src={self[2].hex()}, "
                f"dst={self[3].hex()}, sport={self[4]}, dport={self[5]})")


class Packet:
    """A parsed frame. Fields are filled as deep as parsing got.

    ``error`` is None for a good packet, else one line saying what is wrong (the
    verdict is then ``malformed``). ``proto`` is the transport protocol number after
    any IPv6 extension headers (-1 when the frame holds no IP packet).
    """

    __slots__ = (
        "n", "ts", "linktype", "ifname", "data", "orig_len",
        "family", "src", "dst", "proto", "ttl",
        "sport", "dport", "flags", "seq", "ack", "window", "tsval", "mss",
        "payload_len", "l3_off", "l4_off", "l4_len", "payload_off",
        "link_bcast", "frag", "error",
        "icmp_type", "icmp_code", "inner",
    )

    def __init__(self, n: int = 0, ts: float = 0.0, linktype: int = 1, data: bytes = b"",
                 ifname: str | None = None, orig_len: int | None = None):
        self.n = n                   # 1-based position in the capture
        self.ts = ts                 # seconds since the epoch
        self.linktype = linktype     # LINKTYPE_* of the frame's interface
        self.ifname = ifname         # capture interface name when known (pcapng, SLL2)
        self.data = data             # the captured bytes of the frame
        self.orig_len = len(data) if orig_len is None else orig_len
        self.family = 0              # 4, 6, or 0 when not IP
        self.src = b""               # packed source address
        self.dst = b""               # packed destination address
        self.proto = -1              # transport protocol number
        self.ttl = 0                 # IPv4 TTL / IPv6 hop limit
        self.sport = 0
        self.dport = 0
        self.flags = 0               # TCP flags byte
        self.seq = 0
        self.ack = 0
        self.window = 0
        self.tsval = None            # TCP timestamp option value, when present
        self.mss = None              # TCP MSS option value, when present
        self.payload_len = 0         # transport payload bytes, from the IP/UDP lengths
        self.l3_off = -1             # offset of the IP header in data
        self.l4_off = -1             # offset of the transport header in data
        self.l4_len = 0              # transport header bytes read: from 4 the ports, from 14 TCP's flags
        self.payload_off = -1        # offset of the transport payload in data
        self.link_bcast = False      # link-layer broadcast/multicast destination
        self.frag = None             # FragmentInfo for an IP fragment, else None
        self.error = None            # one-line reason when malformed
        self.icmp_type = -1          # ICMP/ICMPv6 type, -1 when not ICMP
        self.icmp_code = -1          # ICMP/ICMPv6 code, -1 when not ICMP
        self.inner = None            # Quoted: the datagram an ICMP error quotes, when parseable

    def __repr__(self) -> str:
        return (f"Packet(n={self.n}, family={self.family}, proto={self.proto}, "
                f"sport={self.sport}, dport={self.dport}, flags={flag_string(self.flags)}, "
                f"error={self.error!r})")
