"""The field table: every header demux reads, described once.

Each header is a ``Header``: a list of ``Field`` rows giving the Wireshark display-filter
name, the offset and width in bits from the start of the header, and a one-line meaning.
Both users of header layouts read this table and nothing else:

- the fast parser (``demux.wire.parse``) builds its precompiled ``struct.Struct`` objects
  and its bit masks from it at import time (``Header.struct``, ``Field.within``), so an
  offset is written down in one place only;
- ``demux.explain`` walks the same rows to teach a packet field by field.

Variable parts (VLAN tag stacks, IPv4 options, IPv6 extension headers, TCP options) are
headers of their own, laid end to end by the walker in ``demux.wire.walk``. Rows that
depend on a value (an option's type, an ICMP type, an SLL address length) sit in tables
keyed by it, or come from small selectors here (``sll_address``, ``icmp_rest``), so
every name is written in this file. Names and layouts are Wireshark's as tshark 4.0
shows them; where Wireshark names no field for some bytes, neither does demux.
"""

from __future__ import annotations

import ipaddress
import struct

# How a field's raw bits become the value shown to users (SPEC §4: numbers as ints,
# addresses as strings in their usual compressed form).
UINT, MAC, IPV4_ADDR, IPV6_ADDR, BYTES, PRESENT = "uint", "mac", "ipv4", "ipv6", "bytes", "present"

_STRUCT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Field:
    """One header field: ``offset``/``width`` in bits from the start of its header.

    ``scale`` turns the raw number into the unit Wireshark shows (``ip.hdr_len`` and
    ``tcp.hdr_len`` count 32-bit words on the wire but are shown in bytes). ``names``
    maps raw values to a word for the meaning (6 -> "TCP").
    """

    __slots__ = ("name", "offset", "width", "meaning", "kind", "scale", "names",
                 "byte", "nbytes", "shift", "mask")

    def __init__(self, name: str, offset: int, width: int, meaning: str,
                 kind: str = UINT, scale: int = 1, names: dict | None = None):
        self.name = name
        self.offset = offset
        self.width = width
        self.meaning = meaning
        self.kind = kind
        self.scale = scale
        self.names = names
        # The smallest whole-byte container holding the field; shift/mask pick the
        # field out of it.
        self.byte = offset // 8
        n = (offset + width + 7) // 8 - self.byte
        self.nbytes = n
        self.shift = self.byte * 8 + n * 8 - offset - width
        self.mask = (1 << width) - 1

    def within(self, container: "Field") -> tuple[int, int]:
        """(shift, mask) that pick this field out of ``container``'s struct unit."""
        lo, hi = container.byte * 8, (container.byte + container.nbytes) * 8
        if not (lo <= self.offset and self.offset + self.width <= hi):
            raise ValueError(f"{self.name} does not lie inside {container.name}")
        return hi - self.offset - self.width, self.mask

    def raw(self, buf, base: int = 0):
        """The field's raw bits (an int) or bytes (addresses, data), read from ``buf``."""
        start = base + self.byte
        chunk = bytes(buf[start:start + self.nbytes])
        if len(chunk) < self.nbytes:
            raise IndexError(f"{self.name} lies beyond the captured bytes")
        if self.kind in (MAC, IPV4_ADDR, IPV6_ADDR, BYTES):
            return chunk
        if self.kind == PRESENT:
            return 1
        return (int.from_bytes(chunk, "big") >> self.shift) & self.mask

    def value(self, buf, base: int = 0):
        """The value as ``explain`` shows it: int, or text for addresses and data."""
        raw = self.raw(buf, base)
        kind = self.kind
        if kind == MAC:
            return ":".join(f"{b:02x}" for b in raw)
        if kind == IPV4_ADDR:
            return str(ipaddress.IPv4Address(raw))
        if kind == IPV6_ADDR:
            return str(ipaddress.IPv6Address(raw))
        if kind == BYTES:
            return raw.hex()
        return raw * self.scale

    def describe(self, value) -> str:
        """The meaning, with the value's name when the table knows one."""
        if self.names is not None and value in self.names:
            return f"{self.meaning}: {self.names[value]}"
        return self.meaning

    def __repr__(self) -> str:
        return f"Field({self.name!r}, offset={self.offset}, width={self.width})"


class Header:
    """A header's fixed layout: named rows in wire order and its length in bytes."""

    __slots__ = ("name", "fields", "length", "_by_name")

    def __init__(self, name: str, length: int, fields: list[Field]):
        self.name = name
        self.length = length
        self.fields = tuple(fields)
        self._by_name = {f.name: f for f in fields}

    def __getitem__(self, name: str) -> Field:
        return self._by_name[name]

    def __iter__(self):
        return iter(self.fields)

    def struct(self, *names: str) -> struct.Struct:
        """A network-order Struct unpacking the containers of ``names`` in order.

        Gaps become pad bytes, so ``unpack_from(buf, header_start)`` yields exactly one
        value per name; the Struct's size ends at the last container.
        """
        fmt, pos = "!", 0
        for name in names:
            f = self._by_name[name]
            if f.byte < pos:
                raise ValueError(f"{self.name}: {name} overlaps the field before it")
            if f.byte > pos:
                fmt += f"{f.byte - pos}x"
            fmt += _STRUCT_CODES.get(f.nbytes, f"{f.nbytes}s") if f.kind == UINT else f"{f.nbytes}s"
            pos = f.byte + f.nbytes
        return struct.Struct(fmt)


def layout(*parts: tuple[Header, int, tuple[str, ...]]) -> struct.Struct:
    """One Struct over several headers laid end to end: ``(header, byte_offset, names)``.

    Lets the parser read, say, the EtherType and the IPv4 header in one unpack while the
    offsets still come from the table.
    """
    fmt, pos = "!", 0
    for header, base, names in parts:
        sub = header.struct(*names).format[1:]
        first = header[names[0]].byte
        if base + first < pos:
            raise ValueError(f"{header.name} overlaps the header before it")
        # header.struct pads from the header's start; keep its padding relative to base.
        fmt += f"{base - pos}x" if base > pos else ""
        fmt += sub
        pos = base + struct.calcsize("!" + sub)
    return struct.Struct(fmt)


def F(name, offset, width, meaning, kind=UINT, scale=1, names=None) -> Field:
    return Field(name, offset, width, meaning, kind, scale, names)


# -- names of values, for meanings -------------------------------------------------

ETHERTYPES = {0x0800: "IPv4", 0x86DD: "IPv6", 0x0806: "ARP", 0x8100: "802.1Q VLAN tag",
              0x88A8: "802.1ad service VLAN tag", 0x9100: "QinQ VLAN tag (old)",
              0x8035: "RARP", 0x88CC: "LLDP", 0x8847: "MPLS", 0x888E: "802.1X"}
IP_PROTOS = {0: "IPv6 hop-by-hop options", 1: "ICMP", 2: "IGMP", 4: "IPv4-in-IP",
             6: "TCP", 17: "UDP", 41: "IPv6-in-IP", 43: "IPv6 routing header",
             44: "IPv6 fragment header", 47: "GRE", 50: "ESP", 51: "AH", 58: "ICMPv6",
             59: "no next header", 60: "IPv6 destination options", 89: "OSPF", 132: "SCTP",
             135: "Mobility header", 136: "UDP-Lite"}
SLL_PKTTYPES = {0: "to us (unicast to this host)", 1: "broadcast", 2: "multicast",
                3: "to another host (promiscuous)", 4: "outgoing (sent by this host)"}
ARPHRD = {1: "Ethernet", 772: "loopback", 65534: "none (tun)", 776: "IPv6-in-IPv4 tunnel",
          778: "GRE", 823: "IEEE 802.15.4", 65535: "void"}
NULL_FAMILIES = {2: "AF_INET (IPv4)", 24: "AF_INET6 (IPv6, NetBSD/OpenBSD)",
                 28: "AF_INET6 (IPv6, FreeBSD/DragonFly)", 30: "AF_INET6 (IPv6, macOS)",
                 10: "AF_INET6 (IPv6, Linux)"}
DSCP = {0: "default (CS0)", 8: "CS1", 10: "AF11", 18: "AF21", 26: "AF31", 34: "AF41",
        46: "EF (expedited forwarding)", 48: "CS6", 56: "CS7"}
ECN = {0: "not ECN-capable", 1: "ECT(1)", 2: "ECT(0)", 3: "CE (congestion experienced)"}
TCP_OPTION_KINDS = {0: "end of option list", 1: "no-operation (padding)", 2: "maximum segment size",
                    3: "window scale", 4: "SACK permitted", 5: "SACK", 8: "timestamps",
                    28: "user timeout", 29: "TCP-AO", 30: "Multipath TCP", 34: "TCP Fast Open cookie"}
IPV4_OPTIONS = {0: "end of option list", 1: "no-operation", 7: "record route",
                68: "timestamp", 130: "security", 131: "loose source route",
                137: "strict source route", 148: "router alert"}
ICMP_TYPES = {0: "echo reply", 3: "destination unreachable", 4: "source quench",
              5: "redirect", 8: "echo request", 11: "time exceeded", 12: "parameter problem",
              13: "timestamp", 14: "timestamp reply", 9: "router advertisement",
              10: "router solicitation", 17: "address mask request", 18: "address mask reply",
              42: "extended echo request", 43: "extended echo reply"}
ICMP_UNREACH = {0: "network unreachable", 1: "host unreachable", 2: "protocol unreachable",
                3: "port unreachable", 4: "fragmentation needed and DF set",
                9: "network administratively prohibited", 10: "host administratively prohibited",
                13: "communication administratively prohibited"}
ICMPV6_TYPES = {1: "destination unreachable", 2: "packet too big", 3: "time exceeded",
                4: "parameter problem", 128: "echo request", 129: "echo reply",
                133: "router solicitation", 134: "router advertisement",
                135: "neighbor solicitation", 136: "neighbor advertisement", 137: "redirect",
                130: "multicast listener query", 131: "multicast listener report",
                132: "multicast listener done", 143: "multicast listener report v2",
                160: "extended echo request", 161: "extended echo reply"}
ICMPV6_UNREACH = {0: "no route to destination", 1: "administratively prohibited",
                  3: "address unreachable", 4: "port unreachable"}
_BIT = {0: "not set", 1: "set"}

# -- link layers -------------------------------------------------------------------

ETHERNET = Header("Ethernet II", 14, [
    F("eth.dst", 0, 48, "destination MAC address; low bit of the first byte set = group (broadcast/multicast)", MAC),
    F("eth.src", 48, 48, "source MAC address", MAC),
    F("eth.type", 96, 16, "EtherType of the payload", names=ETHERTYPES),
])

VLAN = Header("802.1Q Virtual LAN", 4, [
    F("vlan.priority", 0, 3, "priority code point (802.1p class of service)"),
    F("vlan.dei", 3, 1, "drop eligible indicator", names=_BIT),
    F("vlan.id", 4, 12, "VLAN identifier"),
    F("vlan.etype", 16, 16, "EtherType of what follows the tag", names=ETHERTYPES),
])

# The SLL headers hold the source address in an 8-byte slot; the rows for the slot
# depend on the address length (sll_address), and the protocol's name on the link type
# and its value (sll_protocol), both as Wireshark's packet-sll.c shows them.
SLL = Header("Linux cooked capture v1", 16, [
    F("sll.pkttype", 0, 16, "how the packet reached the capture", names=SLL_PKTTYPES),
    F("sll.hatype", 16, 16, "link-layer address type (ARPHRD_*)", names=ARPHRD),
    F("sll.halen", 32, 16, "link-layer address length in bytes"),
    F("sll.etype", 112, 16, "protocol of the payload", names=ETHERTYPES),
])
SLL_ADDR_BYTE = 6

# SLL2's bytes 2-3 are reserved; Wireshark registers no field for them, so neither do we.
SLL2 = Header("Linux cooked capture v2", 20, [
    F("sll.etype", 0, 16, "protocol of the payload", names=ETHERTYPES),
    F("sll.ifindex", 32, 32, "index of the interface the packet was captured on"),
    F("sll.hatype", 64, 16, "link-layer address type (ARPHRD_*)", names=ARPHRD),
    F("sll.pkttype", 80, 8, "how the packet reached the capture", names=SLL_PKTTYPES),
    F("sll.halen", 88, 8, "link-layer address length in bytes"),
])
SLL2_ADDR_BYTE = 12

_SLL_SRC = {6: F("sll.src.eth", 0, 48, "link-layer source address", MAC),
            4: F("sll.src.ipv4", 0, 32, "link-layer source address (an IPv4 address: a tunnel's)", IPV4_ADDR)}
ARPHRD_IPGRE = 778


def sll_address(halen: int, at: int) -> list[Field]:
    """Rows for the 8-byte address slot that starts at byte ``at`` of an SLL/SLL2 header.

    The address length picks the row, not the link type: ``sll.src.eth`` for 6 bytes,
    ``sll.src.ipv4`` for 4, ``sll.src.other`` for any other (at most 8) bytes; whatever
    the address leaves of the slot is ``sll.unused``.
    """
    n = min(max(halen, 0), 8)
    rows = []
    if n in _SLL_SRC:
        src = _SLL_SRC[n]
        rows.append(Field(src.name, at * 8, src.width, src.meaning, src.kind))
    elif n:
        rows.append(Field("sll.src.other", at * 8, n * 8, "link-layer source address", BYTES))
    if n < 8:
        rows.append(Field("sll.unused", (at + n) * 8, (8 - n) * 8,
                          "rest of the 8-byte address slot, unused", BYTES))
    return rows


def sll_protocol(row: Field, hatype: int | None, value: int | None) -> Field:
    """The protocol row under Wireshark's name: ``sll.gretype`` on a GRE tunnel,
    ``sll.ltype`` for a Linux protocol number (up to 1536, as Linux itself decides),
    ``sll.etype`` for an EtherType."""
    if hatype == ARPHRD_IPGRE:
        name, meaning, names = "sll.gretype", "GRE protocol type of the payload", row.names
    elif value is not None and value <= 1536:
        name, meaning, names = "sll.ltype", "Linux protocol number of the payload (not an EtherType)", None
    else:
        return row
    return Field(name, row.offset, row.width, meaning, row.kind, names=names)


NULL = Header("Null/Loopback", 4, [
    F("null.family", 0, 32, "address family of the payload, in the capturing host's byte order (DLT_NULL) or network order (DLT_LOOP)"),
])

# -- IPv4 ---------------------------------------------------------------------------

IPV4 = Header("Internet Protocol Version 4", 20, [
    F("ip.version", 0, 4, "IP version"),
    F("ip.hdr_len", 4, 4, "header length in bytes (IHL counts 32-bit words; 20 = no options)", scale=4),
    F("ip.dsfield", 8, 8, "differentiated services field (formerly type of service): DSCP and ECN"),
    F("ip.dsfield.dscp", 8, 6, "differentiated services code point", names=DSCP),
    F("ip.dsfield.ecn", 14, 2, "explicit congestion notification", names=ECN),
    F("ip.len", 16, 16, "total length of the datagram in bytes, header included"),
    F("ip.id", 32, 16, "identification, shared by the fragments of one datagram"),
    F("ip.flags.rb", 48, 1, "reserved flag, must be zero", names=_BIT),
    F("ip.flags.df", 49, 1, "don't fragment", names=_BIT),
    F("ip.flags.mf", 50, 1, "more fragments follow", names=_BIT),
    F("ip.frag_offset", 51, 13, "fragment offset in 8-byte units"),
    F("ip.ttl", 64, 8, "time to live: hops left"),
    F("ip.proto", 72, 8, "protocol of the payload", names=IP_PROTOS),
    F("ip.checksum", 80, 16, "header checksum"),
    F("ip.src", 96, 32, "source address", IPV4_ADDR),
    F("ip.dst", 128, 32, "destination address", IPV4_ADDR),
])

# One IPv4 option with a length byte (types 0 and 1 are a single byte: IPV4_OPT_SHORT).
IPV4_OPT = Header("IPv4 option", 2, [
    F("ip.opt.type", 0, 8, "option type", names=IPV4_OPTIONS),
    F("ip.opt.type.copy", 0, 1, "copied into every fragment", names=_BIT),
    F("ip.opt.type.class", 1, 2, "option class (0 control, 2 debugging and measurement)"),
    F("ip.opt.type.number", 3, 5, "option number"),
    F("ip.opt.len", 8, 8, "option length in bytes, type and length included"),
])
IPV4_OPT_SHORT = Header("IPv4 option", 1, [
    F("ip.opt.type", 0, 8, "option type", names=IPV4_OPTIONS),
])

# What follows an option's type and length, by type, with offsets from the option's
# start. Wireshark names no field for the data of other types (nor decodes security
# options one way only), so the walk shows their type and length and nothing more.
IPV4_OPT_PTR = F("ip.opt.ptr", 16, 8, "pointer: 1-based offset in the option of the next slot to fill")
IPV4_OPT_DATA = {
    148: [F("ip.opt.ra", 16, 16, "router alert value (0: routers shall examine the packet)")],
    11: [F("ip.opt.mtu", 16, 16, "MTU probe: the smallest MTU seen so far")],
    12: [F("ip.opt.mtu", 16, 16, "MTU reply: the smallest MTU the probe saw")],
    136: [F("ip.opt.sid", 16, 16, "SATNET stream identifier")],
    82: [F("ip.opt.id_number", 16, 16, "traceroute: identifier of the probe"),
         F("ip.opt.ohc", 32, 16, "traceroute: outbound hop count"),
         F("ip.opt.rhc", 48, 16, "traceroute: return hop count"),
         F("ip.opt.originator", 64, 32, "traceroute: address of the originator", IPV4_ADDR)],
    68: [IPV4_OPT_PTR,
         F("ip.opt.overflow", 24, 4, "routers that could not add a time stamp for lack of room"),
         F("ip.opt.flag", 28, 4, "what each entry holds",
           names={0: "time stamps only", 1: "an address and its time stamp",
                  3: "time stamps of prespecified addresses"})],
    7: [IPV4_OPT_PTR], 131: [IPV4_OPT_PTR], 137: [IPV4_OPT_PTR],
}
# One 4-byte slot of a route option (record route 7, loose 131 / strict 137 source
# route), named by where it lies from the pointer; emitted at the slot's byte.
IPV4_ROUTE_SLOT = {
    "rec": F("ip.rec_rt", 0, 32, "route: an address already recorded or visited", IPV4_ADDR),
    "empty": F("ip.empty_rt", 0, 32, "empty slot a router will fill with its address", IPV4_ADDR),
    "src": F("ip.src_rt", 0, 32, "source route: a hop still to visit", IPV4_ADDR),
    "dst": F("ip.dst", 0, 32, "source route: the final destination", IPV4_ADDR),
}
# The header's destination, renamed while a source route option still has hops to go.
IPV4_CUR_RT = F("ip.cur_rt", 128, 32, "current hop of a source route (the final destination is in the option)", IPV4_ADDR)
IPV4_TS_STAMP = F("ip.opt.time_stamp", 0, 32, "time stamp: milliseconds since midnight UT")
IPV4_TS_ADDR = F("ip.opt.time_stamp_addr", 0, 32, "address of the router that stamped", IPV4_ADDR)

# -- IPv6 and its extension headers ---------------------------------------------------

IPV6 = Header("Internet Protocol Version 6", 40, [
    F("ipv6.version", 0, 4, "IP version"),
    F("ipv6.tclass", 4, 8, "traffic class (DSCP and ECN)"),
    F("ipv6.flow", 12, 20, "flow label"),
    F("ipv6.plen", 32, 16, "payload length in bytes: extension headers and upper layer, after this 40-byte header"),
    F("ipv6.nxt", 48, 8, "next header", names=IP_PROTOS),
    F("ipv6.hlim", 56, 8, "hop limit: hops left"),
    F("ipv6.src", 64, 128, "source address", IPV6_ADDR),
    F("ipv6.dst", 192, 128, "destination address", IPV6_ADDR),
])

IPV6_HOPOPTS = Header("IPv6 Hop-by-Hop Options", 2, [
    F("ipv6.hopopts.nxt", 0, 8, "next header", names=IP_PROTOS),
    F("ipv6.hopopts.len", 8, 8, "length in 8-byte units, not counting the first 8 bytes"),
])
IPV6_DSTOPTS = Header("IPv6 Destination Options", 2, [
    F("ipv6.dstopts.nxt", 0, 8, "next header", names=IP_PROTOS),
    F("ipv6.dstopts.len", 8, 8, "length in 8-byte units, not counting the first 8 bytes"),
])
IPV6_ROUTING = Header("IPv6 Routing", 4, [
    F("ipv6.routing.nxt", 0, 8, "next header", names=IP_PROTOS),
    F("ipv6.routing.len", 8, 8, "length in 8-byte units, not counting the first 8 bytes"),
    F("ipv6.routing.type", 16, 8, "routing type (0 deprecated, 2 mobile IPv6, 4 segment routing)"),
    F("ipv6.routing.segleft", 24, 8, "segments left to visit"),
])
IPV6_FRAGMENT = Header("IPv6 Fragment", 8, [
    F("ipv6.fraghdr.nxt", 0, 8, "next header of the fragmented payload", names=IP_PROTOS),
    F("ipv6.fraghdr.reserved_octet", 8, 8, "reserved, zero"),
    F("ipv6.fraghdr.offset", 16, 13, "fragment offset in 8-byte units"),
    F("ipv6.fraghdr.reserved_bits", 29, 2, "reserved, zero"),
    F("ipv6.fraghdr.more", 31, 1, "more fragments follow", names=_BIT),
    F("ipv6.fraghdr.ident", 32, 32, "identification, shared by the fragments of one datagram"),
])
IPV6_AH = Header("Authentication Header", 12, [
    F("ah.next_header", 0, 8, "next header", names=IP_PROTOS),
    F("ah.length", 8, 8, "length in 4-byte units, minus 2"),
    F("ah.reserved", 16, 16, "reserved"),
    F("ah.spi", 32, 32, "security parameters index"),
    F("ah.sequence", 64, 32, "sequence number"),
])
# The integrity check value after the fixed part (width set per header).
AH_ICV_NAME = "ah.icv"

# One TLV option inside hop-by-hop or destination options (type 0 is Pad1, one byte).
IPV6_OPT = Header("IPv6 option", 2, [
    F("ipv6.opt.type", 0, 8, "option type"),
    F("ipv6.opt.type.action", 0, 2, "what a node that does not know the type does (0 skip, 1 discard, 2-3 discard and send ICMP)"),
    F("ipv6.opt.type.change", 2, 1, "the option data may change en route", names=_BIT),
    F("ipv6.opt.type.rest", 3, 5, "rest of the option type"),
    F("ipv6.opt.length", 8, 8, "option data length in bytes"),
])
IPV6_OPT_PAD1 = Header("IPv6 option", 1, [
    F("ipv6.opt.type", 0, 8, "option type"),
    F("ipv6.opt.pad1", 0, 8, "Pad1: one byte of padding", PRESENT),
])
# Option data, by type, from the option's start. A fixed-width row is shown when the
# length matches it; a width of 0 means "all the data". Types Wireshark decodes into
# fields of its own (IPV6_OPT_OTHER_DECODED) get no data row here rather than a wrong
# name; the rest are experimental (low five bits 0x1E, RFC 4727) or unknown.
IPV6_OPT_DATA = {
    1: F("ipv6.opt.padn", 16, 0, "PadN: padding", BYTES),
    4: F("ipv6.opt.tel", 16, 8, "tunnel encapsulation limit"),
    5: F("ipv6.opt.router_alert", 16, 16, "router alert value (0: MLD, 1: RSVP, 2: active networks)"),
    0x41: F("ipv6.opt.tpf_information", 16, 32, "tunnel payload forwarding information"),
    0x8B: F("ipv6.opt.ilnp_nonce", 16, 0, "ILNP nonce", BYTES),
    0xC2: F("ipv6.opt.jumbo", 16, 32, "jumbo payload length in bytes"),
    0xC9: F("ipv6.opt.mipv6.home_address", 16, 128, "mobile node's home address", IPV6_ADDR),
}
IPV6_OPT_OTHER_DECODED = frozenset((0x07, 0x08, 0x0F, 0x26, 0x30, 0x31, 0x63, 0x6D, 0x8C, 0xEE))
IPV6_OPT_EXPERIMENTAL = F("ipv6.opt.experimental", 16, 0, "experimental option data", BYTES)
IPV6_OPT_UNKNOWN = F("ipv6.opt.unknown", 16, 0, "data of an option type Wireshark does not know", BYTES)

# Routing header data after its first 4 bytes, by routing type: fixed rows from the
# header's start, then 16-byte addresses from byte 8 (IPV6_ROUTING_ADDR). Types 3 (RPL)
# and 5-6 (CRH) Wireshark decodes its own way: no rows; others are unknown data.
IPV6_ROUTING_DATA = {
    0: [F("ipv6.routing.src.reserved", 32, 32, "reserved", BYTES)],
    2: [F("ipv6.routing.mipv6.reserved", 32, 32, "reserved", BYTES)],
    4: [F("ipv6.routing.srh.last_entry", 32, 8, "index of the last segment in the list"),
        F("ipv6.routing.srh.flags", 40, 8, "flags"),
        F("ipv6.routing.srh.tag", 48, 16, "tag: packets of a class or group", BYTES)],
}
IPV6_ROUTING_ADDR = {
    0: F("ipv6.routing.src.addr", 0, 128, "an address to route through", IPV6_ADDR),
    2: F("ipv6.routing.mipv6.home_address", 0, 128, "mobile node's home address", IPV6_ADDR),
    4: F("ipv6.routing.srh.addr", 0, 128, "a segment, the last one first", IPV6_ADDR),
}
IPV6_ROUTING_OTHER_DECODED = frozenset((3, 5, 6))
IPV6_ROUTING_UNKNOWN = "ipv6.routing.unknown_data"

# Extension headers by protocol number, and how to get their length from their first bytes.
IPV6_EXT = {0: IPV6_HOPOPTS, 43: IPV6_ROUTING, 44: IPV6_FRAGMENT, 60: IPV6_DSTOPTS, 51: IPV6_AH}

# -- transport ---------------------------------------------------------------------

TCP = Header("Transmission Control Protocol", 20, [
    F("tcp.srcport", 0, 16, "source port"),
    F("tcp.dstport", 16, 16, "destination port"),
    F("tcp.seq_raw", 32, 32, "sequence number of the first payload byte (of the SYN on a SYN)"),
    F("tcp.ack_raw", 64, 32, "acknowledgment number: next byte expected from the peer (valid with ACK)"),
    F("tcp.hdr_len", 96, 4, "header length in bytes (data offset counts 32-bit words; 20 = no options)", scale=4),
    F("tcp.flags.res", 100, 3, "reserved, zero"),
    F("tcp.flags.ae", 103, 1, "accurate ECN (formerly ECN nonce)", names=_BIT),
    F("tcp.flags.cwr", 104, 1, "CWR: congestion window reduced", names=_BIT),
    F("tcp.flags.ece", 105, 1, "ECE: ECN echo", names=_BIT),
    F("tcp.flags.urg", 106, 1, "URG: the urgent pointer is valid", names=_BIT),
    F("tcp.flags.ack", 107, 1, "ACK: the acknowledgment number is valid", names=_BIT),
    F("tcp.flags.push", 108, 1, "PSH: push the data to the application", names=_BIT),
    F("tcp.flags.reset", 109, 1, "RST: reset the connection", names=_BIT),
    F("tcp.flags.syn", 110, 1, "SYN: synchronize sequence numbers (opens a connection)", names=_BIT),
    F("tcp.flags.fin", 111, 1, "FIN: the sender has no more data", names=_BIT),
    F("tcp.window_size_value", 112, 16, "receive window, before window scaling"),
    F("tcp.checksum", 128, 16, "checksum over a pseudo-header, the header and the payload"),
    F("tcp.urgent_pointer", 144, 16, "offset of the end of urgent data (with URG)"),
])

# TCP options, one header per kind; all begin with kind (and length, except EOL/NOP).
_KIND = F("tcp.option_kind", 0, 8, "option kind", names=TCP_OPTION_KINDS)
_LEN = F("tcp.option_len", 8, 8, "option length in bytes, kind and length included")
TCP_OPT_EOL = Header("TCP option: end of option list", 1, [
    F("tcp.options.eol", 0, 8, "end of option list: the rest of the header is padding", PRESENT), _KIND])
TCP_OPT_NOP = Header("TCP option: no-operation", 1, [
    F("tcp.options.nop", 0, 8, "no-operation: padding that aligns the next option", PRESENT), _KIND])
TCP_OPT_MSS = Header("TCP option: maximum segment size", 4, [
    _KIND, _LEN, F("tcp.options.mss_val", 16, 16, "largest segment the sender will accept, in bytes")])
TCP_OPT_WSCALE = Header("TCP option: window scale", 3, [
    _KIND, _LEN, F("tcp.options.wscale.shift", 16, 8, "the sender's windows are shifted left by this many bits")])
TCP_OPT_SACK_PERM = Header("TCP option: SACK permitted", 2, [
    F("tcp.options.sack_perm", 0, 16, "the sender can take selective acknowledgments", PRESENT), _KIND, _LEN])
TCP_OPT_SACK = Header("TCP option: SACK", 2, [_KIND, _LEN])
TCP_SACK_BLOCK = Header("SACK block", 8, [
    F("tcp.options.sack_le", 0, 32, "left edge of a block received out of order"),
    F("tcp.options.sack_re", 32, 32, "right edge (exclusive) of that block"),
])
TCP_OPT_TIMESTAMP = Header("TCP option: timestamps", 10, [
    _KIND, _LEN,
    F("tcp.options.timestamp.tsval", 16, 32, "the sender's timestamp clock"),
    F("tcp.options.timestamp.tsecr", 48, 32, "echo of the peer's latest tsval (valid with ACK)"),
])
TCP_OPT_OTHER = Header("TCP option", 2, [_KIND, _LEN])
TCP_OPTIONS = {0: TCP_OPT_EOL, 1: TCP_OPT_NOP, 2: TCP_OPT_MSS, 3: TCP_OPT_WSCALE,
               4: TCP_OPT_SACK_PERM, 5: TCP_OPT_SACK, 8: TCP_OPT_TIMESTAMP}
# Data of the other kinds, from the option's start, shown as far as the option's length
# holds it; width 0 means "the rest of the option". Kinds Wireshark decodes into fields
# of its own (TCP_OPT_OTHER_DECODED, and 2-8 with a wrong length) get no data row rather
# than a wrong name; only kinds it does not know are "unknown".
TCP_OPT_DATA = {
    6: [F("tcp.options.echo_value", 16, 32, "TCP echo (RFC 1072) value")],
    7: [F("tcp.options.echo_value", 16, 32, "TCP echo reply (RFC 1072) value")],
    11: [F("tcp.options.cc_value", 16, 32, "T/TCP connection count")],
    12: [F("tcp.options.cc_value", 16, 32, "T/TCP connection count (CC.NEW)")],
    13: [F("tcp.options.cc_value", 16, 32, "T/TCP connection count (CC.ECHO)")],
    34: [F("tcp.options.tfo.cookie", 16, 0, "TCP Fast Open cookie", BYTES)],
    253: [F("tcp.options.experimental.exid", 16, 16, "experiment identifier (RFC 6994)"),
          F("tcp.options.experimental.data", 32, 0, "experiment data", BYTES)],
    254: [F("tcp.options.experimental.exid", 16, 16, "experiment identifier (RFC 6994)"),
          F("tcp.options.experimental.data", 32, 0, "experiment data", BYTES)],
}
# Kinds whose data Wireshark shows only at exactly this option length.
TCP_OPT_EXACT_LENGTH = {6: 6, 7: 6, 11: 6, 12: 6, 13: 6}
TCP_OPT_OTHER_DECODED = frozenset((2, 3, 4, 5, 8, 19, 20, 21, 22, 23, 27, 28, 29, 30, 76, 78, 172, 174))
# The data of a kind Wireshark does not know, kept raw (width set per option).
TCP_OPT_DATA_NAME = "tcp.options.unknown.payload"

UDP = Header("User Datagram Protocol", 8, [
    F("udp.srcport", 0, 16, "source port"),
    F("udp.dstport", 16, 16, "destination port"),
    F("udp.length", 32, 16, "length of header and payload in bytes"),
    F("udp.checksum", 48, 16, "checksum over a pseudo-header, header and payload (0 = none, IPv4 only)"),
])

# ICMP and ICMPv6: type, code and checksum, then 4 bytes whose rows depend on the type
# (icmp_rest, icmpv6_rest). Wireshark names nothing there for some types (source
# quench, router solicitation, unknown ones): neither do we.
ICMP = Header("Internet Control Message Protocol", 8, [
    F("icmp.type", 0, 8, "message type", names=ICMP_TYPES),
    F("icmp.code", 8, 8, "message code (for destination unreachable: why)", names=ICMP_UNREACH),
    F("icmp.checksum", 16, 16, "checksum over the ICMP message"),
])
ICMPV6 = Header("Internet Control Message Protocol v6", 8, [
    F("icmpv6.type", 0, 8, "message type", names=ICMPV6_TYPES),
    F("icmpv6.code", 8, 8, "message code (for destination unreachable: why)", names=ICMPV6_UNREACH),
    F("icmpv6.checksum", 16, 16, "checksum over a pseudo-header and the message"),
])

_ICMP_ECHO = [F("icmp.ident", 32, 16, "identifier, matching replies to requests"),
              F("icmp.seq", 48, 16, "sequence number")]
_ICMP_UNUSED = F("icmp.unused", 32, 32, "unused, zero", BYTES)
_ICMP_LENGTH = F("icmp.length", 40, 8, "length of the quoted datagram in 32-bit words (RFC 4884)")
_ICMP_EXT_ECHO = [F("icmp.ident", 32, 16, "identifier, matching replies to requests"),
                  F("icmp.ext.echo.seq", 48, 8, "sequence number")]
ICMP_REST = {
    **{t: _ICMP_ECHO for t in (0, 8, 13, 14, 15, 16, 17, 18)},
    3: [_ICMP_UNUSED], 11: [_ICMP_UNUSED],
    5: [F("icmp.redir_gw", 32, 32, "gateway to send this destination's traffic to", IPV4_ADDR)],
    9: [F("icmp.num_addrs", 32, 8, "number of router addresses advertised"),
        F("icmp.addr_entry_size", 40, 8, "32-bit words per address entry"),
        F("icmp.lifetime", 48, 16, "seconds the addresses stay valid")],
    12: [F("icmp.pointer", 32, 8, "byte of the quoted datagram where the problem lies"),
         F("icmp.unused", 40, 24, "unused, zero", BYTES)],
    42: [*_ICMP_EXT_ECHO,
         F("icmp.ext.echo.req.res", 56, 7, "reserved"),
         F("icmp.ext.echo.req.local", 63, 1, "L: the probed interface is named on the proxy node", names=_BIT)],
    43: [*_ICMP_EXT_ECHO,
         F("icmp.ext.echo.rsp.state", 56, 3, "state of the probed interface's neighbor entry"),
         F("icmp.ext.echo.rsp.res", 59, 2, "reserved"),
         F("icmp.ext.echo.rsp.active", 61, 1, "A: the probed interface is active", names=_BIT),
         F("icmp.ext.echo.rsp.ipv4", 62, 1, "4: it runs IPv4", names=_BIT),
         F("icmp.ext.echo.rsp.ipv6", 63, 1, "6: it runs IPv6", names=_BIT)],
}
_ICMP_FRAG_NEEDED = [F("icmp.unused", 32, 16, "unused, zero", BYTES),
                     F("icmp.mtu", 48, 16, "MTU of the next hop")]


def icmp_rest(kind: int, code: int | None, length: int | None) -> list[Field]:
    """Rows of bytes 4-7 of an ICMP message of type ``kind``; ``length`` is byte 5, the
    RFC 4884 length of the quoted datagram, which gets a row of its own when not zero."""
    if kind in (3, 11, 12) and length:
        head = ICMP_REST[12][0] if kind == 12 else F("icmp.unused", 32, 8, "unused, zero", BYTES)
        tail = _ICMP_FRAG_NEEDED[1] if kind == 3 and code == 4 else F("icmp.unused", 48, 16, "unused, zero", BYTES)
        return [head, _ICMP_LENGTH, tail]
    if kind == 3 and code == 4:
        return _ICMP_FRAG_NEEDED
    return ICMP_REST.get(kind, [])


_V6_RESERVED = F("icmpv6.reserved", 32, 32, "reserved, zero", BYTES)
_V6_ECHO_ID = F("icmpv6.echo.identifier", 32, 16, "identifier, matching replies to requests")
_V6_MLD_RESERVED = F("icmpv6.reserved", 48, 16, "reserved, zero", BYTES)
ICMPV6_REST = {
    1: [_V6_RESERVED], 3: [_V6_RESERVED],
    2: [F("icmpv6.mtu", 32, 32, "MTU of the next-hop link")],
    4: [F("icmpv6.pointer", 32, 32, "byte of the quoted packet where the problem lies")],
    128: [_V6_ECHO_ID, F("icmpv6.echo.sequence_number", 48, 16, "sequence number")],
    129: [_V6_ECHO_ID, F("icmpv6.echo.sequence_number", 48, 16, "sequence number")],
    130: [F("icmpv6.mld.maximum_response_delay", 32, 16, "longest a report may be delayed, in ms (MLDv1)"), _V6_MLD_RESERVED],
    131: [F("icmpv6.mld.maximum_response_delay", 32, 16, "zero in a report"), _V6_MLD_RESERVED],
    132: [F("icmpv6.mld.maximum_response_delay", 32, 16, "zero in a done message"), _V6_MLD_RESERVED],
    143: [F("icmpv6.reserved", 32, 16, "reserved, zero", BYTES),
          F("icmpv6.mldr.nb_mcast_records", 48, 16, "number of multicast address records")],
    133: [_V6_RESERVED], 135: [_V6_RESERVED], 137: [_V6_RESERVED], 141: [_V6_RESERVED], 142: [_V6_RESERVED],
    134: [F("icmpv6.nd.ra.cur_hop_limit", 32, 8, "hop limit hosts should use (0: unspecified)"),
          F("icmpv6.nd.ra.flag", 40, 8, "flags"),
          F("icmpv6.nd.ra.flag.m", 40, 1, "M: addresses come from DHCPv6", names=_BIT),
          F("icmpv6.nd.ra.flag.o", 41, 1, "O: other configuration comes from DHCPv6", names=_BIT),
          F("icmpv6.nd.ra.flag.h", 42, 1, "H: the router is a mobile IPv6 home agent", names=_BIT),
          F("icmpv6.nd.ra.flag.prf", 43, 2, "default router preference (0 medium, 1 high, 3 low)"),
          F("icmpv6.nd.ra.flag.p", 45, 1, "P: neighbor discovery proxy", names=_BIT),
          F("icmpv6.nd.ra.flag.rsv", 46, 2, "reserved, zero"),
          F("icmpv6.nd.ra.router_lifetime", 48, 16, "seconds to use this router as a default (0: not one)")],
    136: [F("icmpv6.nd.na.flag", 32, 32, "flags and reserved bits"),
          F("icmpv6.nd.na.flag.r", 32, 1, "R: the sender is a router", names=_BIT),
          F("icmpv6.nd.na.flag.s", 33, 1, "S: sent in answer to a solicitation", names=_BIT),
          F("icmpv6.nd.na.flag.o", 34, 1, "O: override the cached link-layer address", names=_BIT),
          F("icmpv6.nd.na.flag.rsv", 35, 29, "reserved, zero")],
    160: [_V6_ECHO_ID, F("icmpv6.ext.echo.seq", 48, 8, "sequence number"),
          F("icmpv6.ext.echo.req.res", 56, 7, "reserved"),
          F("icmpv6.ext.echo.req.local", 63, 1, "L: the probed interface is named on the proxy node", names=_BIT)],
    161: [_V6_ECHO_ID, F("icmpv6.ext.echo.seq", 48, 8, "sequence number"),
          F("icmpv6.ext.echo.rsp.state", 56, 3, "state of the probed interface's neighbor entry"),
          F("icmpv6.ext.echo.rsp.res", 59, 2, "reserved"),
          F("icmpv6.ext.echo.rsp.active", 61, 1, "A: the probed interface is active", names=_BIT),
          F("icmpv6.ext.echo.rsp.ipv4", 62, 1, "4: it runs IPv4", names=_BIT),
          F("icmpv6.ext.echo.rsp.ipv6", 63, 1, "6: it runs IPv6", names=_BIT)],
}
_MLDV2_QUERY = [F("icmpv6.mld.maximum_response_code", 32, 16, "longest a report may be delayed (coded, MLDv2)"),
                _V6_MLD_RESERVED]


def icmpv6_rest(kind: int, length: int | None, size: int) -> list[Field]:
    """Rows of bytes 4-7 of an ICMPv6 message of type ``kind`` and ``size`` bytes;
    ``length`` is byte 4, the RFC 4884 length of the quoted packet (types 1 and 3),
    which gets a row of its own when not zero."""
    if kind in (1, 3) and length:
        return [F("icmpv6.length", 32, 8, "length of the quoted packet in 64-bit words (RFC 4884)"),
                F("icmpv6.reserved", 40, 24, "reserved, zero", BYTES)]
    if kind == 130 and size > 24:           # an MLDv2 query is longer than MLDv1's 24 bytes
        return _MLDV2_QUERY
    return ICMPV6_REST.get(kind, [])


# ICMP error types whose body quotes the offending datagram's IP header and 8+ bytes.
ICMP_ERRORS = frozenset((3, 4, 5, 11, 12))
ICMPV6_ERRORS = frozenset((1, 2, 3, 4))
