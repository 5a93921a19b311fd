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
        "payload_len", "l3_off", "l4_off", "payload_off",
        "link_bcast", "frag", "error",
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
        self.payload_off = -1        # offset of the transport payload in data
        self.link_bcast = False      # link-layer broadcast/multicast destination
        self.frag = None             # FragmentInfo for an IP fragment, else None
        self.error = None            # one-line reason when malformed

    def __repr__(self) -> str:
        return (f"Packet(n={self.n}, family={self.family}, proto={self.proto}, "
                f"sport={self.sport}, dport={self.dport}, flags={flag_string(self.flags)}, "
                f"error={self.error!r})")
