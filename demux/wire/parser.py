"""The fast parser: one captured frame in, one ``Packet`` out, never an exception.

Reads the link layer (Ethernet with any depth of 802.1Q/802.1ad tags, Linux SLL and
SLL2, BSD NULL/LOOP, raw IP), IPv4 or IPv6 (walking the extension headers), and the
TCP, UDP or ICMP header, filling every slot of ``Packet``. Offsets and masks come from
``demux.wire.fields`` (the same table ``explain`` walks); what is computed here once at
import time is only their packing into ``struct.Struct`` objects and integer constants.

Hot path: Ethernet + IPv4 without options + TCP/UDP is straight-line code, a handful of
``unpack_from`` calls and slot stores; TCP options are scanned only when the data offset
says there are some. Anything wrong sets ``Packet.error`` to one line and returns what
was parsed so far. A frame cut by the capture's snaplen (``orig_len > len(data)``) is
fine as long as the headers are complete; lengths that point past the original frame
are the packet lying, and are errors.
"""

from __future__ import annotations

import struct

from demux.wire import fields as _f
from demux.wire.packet import FragmentInfo, Packet, Quoted

# -- layouts, from the field table ------------------------------------------------------

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32LE = struct.Struct("<I")

_ETH_TYPE = _f.ETHERNET["eth.type"].byte
_ETH_LEN = _f.ETHERNET.length
_VLAN_TYPE = _f.VLAN["vlan.etype"].byte
_VLAN_LEN = _f.VLAN.length
_SLL_PKTTYPE = _f.SLL["sll.pkttype"].byte
_SLL_TYPE = _f.SLL["sll.etype"].byte
_SLL_LEN = _f.SLL.length
_SLL2_TYPE = _f.SLL2["sll.etype"].byte
_SLL2_PKTTYPE = _f.SLL2["sll.pkttype"].byte
_SLL2_LEN = _f.SLL2.length
_NULL_LEN = _f.NULL.length

_IP4 = _f.IPV4.struct("ip.version", "ip.len", "ip.id", "ip.frag_offset", "ip.ttl", "ip.proto",
                      "ip.src", "ip.dst")
_IP4_MIN = _f.IPV4.length
_IP4_VER_SHIFT, _ = _f.IPV4["ip.version"].within(_f.IPV4["ip.version"])
_, _IHL_MASK = _f.IPV4["ip.hdr_len"].within(_f.IPV4["ip.version"])
_IHL_SCALE = _f.IPV4["ip.hdr_len"].scale
_MF_SHIFT, _ = _f.IPV4["ip.flags.mf"].within(_f.IPV4["ip.frag_offset"])
_MF = 1 << _MF_SHIFT
_FRAG_MASK = _f.IPV4["ip.frag_offset"].mask
_FRAG_UNIT = 8

_IP6 = _f.IPV6.struct("ipv6.plen", "ipv6.nxt", "ipv6.hlim", "ipv6.src", "ipv6.dst")
_IP6_LEN = _f.IPV6.length
_IP6_NXT = _f.IPV6["ipv6.nxt"].byte
_IP6_VER_SHIFT, _ = _f.IPV6["ipv6.version"].within(_f.IPV6["ipv6.version"])
_FRAG6 = _f.IPV6_FRAGMENT.struct("ipv6.fraghdr.nxt", "ipv6.fraghdr.offset", "ipv6.fraghdr.ident")
_FRAG6_LEN = _f.IPV6_FRAGMENT.length
_FRAG6_OFF_SHIFT, _FRAG6_OFF_MASK = _f.IPV6_FRAGMENT["ipv6.fraghdr.offset"].within(
    _f.IPV6_FRAGMENT["ipv6.fraghdr.offset"])
_FRAG6_MORE_SHIFT, _ = _f.IPV6_FRAGMENT["ipv6.fraghdr.more"].within(_f.IPV6_FRAGMENT["ipv6.fraghdr.offset"])
_EXT_LEN_BYTE = _f.IPV6_HOPOPTS["ipv6.hopopts.len"].byte
_EXT_NAMES = {nxt: h.name + " header" for nxt, h in _f.IPV6_EXT.items()}
_AH = 51
_HOPOPTS, _ROUTING, _FRAGMENT, _DSTOPTS, _NO_NEXT = 0, 43, 44, 60, 59

_TCP = _f.TCP.struct("tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.hdr_len",
                     "tcp.flags.cwr", "tcp.window_size_value")
_TCP_MIN = _f.TCP.length
_TCP_OFF_SHIFT, _ = _f.TCP["tcp.hdr_len"].within(_f.TCP["tcp.hdr_len"])
_TCP_SCALE = _f.TCP["tcp.hdr_len"].scale
_MSS_KIND, _MSS_LEN = 2, _f.TCP_OPT_MSS.length
_MSS_AT = _f.TCP_OPT_MSS["tcp.options.mss_val"].byte
_TS_KIND, _TS_LEN = 8, _f.TCP_OPT_TIMESTAMP.length
_TS_AT = _f.TCP_OPT_TIMESTAMP["tcp.options.timestamp.tsval"].byte

_UDP = _f.UDP.struct("udp.srcport", "udp.dstport", "udp.length")
_UDP_LEN = _f.UDP.length
_PORTS = _f.TCP.struct("tcp.srcport", "tcp.dstport")    # same place in TCP and UDP
_TCP_FLAGS_END = (_f.TCP["tcp.flags.fin"].offset + 1) // 8      # the header bytes up to the flags
_ICMP_LEN = _f.ICMP.length

_ETHERTYPE_IPV4, _ETHERTYPE_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
_SLL_GROUP = frozenset((1, 2))          # PACKET_BROADCAST, PACKET_MULTICAST
_AF_INET = 2
_AF_INET6 = frozenset((10, 24, 28, 30))  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_P_TCP, _P_UDP, _P_ICMP, _P_ICMP6 = 6, 17, 1, 58

_new = Packet.__new__

# The common frames, Ethernet + IPv4 (no options) or IPv6 (no extension headers) + TCP
# or UDP, are each read in one unpack; the EtherType's first byte and the protocol byte
# pick which layout to try, and the rest is checked after the unpack.
_TCP_FAST = ("tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.hdr_len",
             "tcp.flags.cwr", "tcp.window_size_value")
_UDP_FAST = ("udp.srcport", "udp.dstport", "udp.length")
_IP4_FAST = ("ip.version", "ip.len", "ip.frag_offset", "ip.ttl", "ip.src", "ip.dst")
_IP6_FAST = ("ipv6.version", "ipv6.plen", "ipv6.hlim", "ipv6.src", "ipv6.dst")
_ETH_T = (_f.ETHERNET, 0, ("eth.type",))
_FAST_L4 = _ETH_LEN + _IP4_MIN
_FAST6_L4 = _ETH_LEN + _IP6_LEN
_ETH_IP4_TCP = _f.layout(_ETH_T, (_f.IPV4, _ETH_LEN, _IP4_FAST), (_f.TCP, _FAST_L4, _TCP_FAST))
_ETH_IP4_UDP = _f.layout(_ETH_T, (_f.IPV4, _ETH_LEN, _IP4_FAST), (_f.UDP, _FAST_L4, _UDP_FAST))
_ETH_IP6_TCP = _f.layout(_ETH_T, (_f.IPV6, _ETH_LEN, _IP6_FAST), (_f.TCP, _FAST6_L4, _TCP_FAST))
_ETH_IP6_UDP = _f.layout(_ETH_T, (_f.IPV6, _ETH_LEN, _IP6_FAST), (_f.UDP, _FAST6_L4, _UDP_FAST))
_FAST_PROTO = _ETH_LEN + _f.IPV4["ip.proto"].byte
_FAST6_PROTO = _ETH_LEN + _IP6_NXT
_PLAIN_VHL = (4 << _IP4_VER_SHIFT) | (_IP4_MIN // _IHL_SCALE)
_FAST_MIN = _FAST_L4 + _UDP_LEN
_FRAG_BITS = _MF | _FRAG_MASK
_ET4_HI, _ET6_HI = _ETHERTYPE_IPV4 >> 8, _ETHERTYPE_IPV6 >> 8


def parse(n: int, ts: float, linktype: int, data: bytes, ifname: str | None = None,
          orig_len: int | None = None) -> Packet:
    """Parse one captured frame into a ``Packet``; never raises on bad bytes."""
    dlen = len(data)
    # A frame cut by the snapshot length keeps its IP lengths: accept it on the fast path
    # when the headers themselves were captured (``cut`` allows the lengths to run past).
    cut = orig_len is not None and orig_len > dlen
    if linktype == 1 and dlen >= _FAST_MIN:
        # Straight-line path for Ethernet + IPv4 without options or IPv6 without
        # extension headers, not a fragment, lengths consistent, + TCP/UDP. Anything
        # else, or any doubt, takes the general path, which gives the same answer
        # (tests compare the two on every generated frame).
        hi = data[_ETH_TYPE]
        ok = False
        if hi == _ET4_HI:
            proto = data[_FAST_PROTO]
            if proto == _P_TCP:
                if dlen >= _FAST_L4 + _TCP_MIN:
                    (et, vhl, tot, fragw, ttl, src, dst,
                     sport, dport, seq, ack, offb, flags, win) = _ETH_IP4_TCP.unpack_from(data, 0)
                    hl = (offb >> _TCP_OFF_SHIFT) * _TCP_SCALE
                    seg = tot - _IP4_MIN
                    ok = (et == _ETHERTYPE_IPV4 and vhl == _PLAIN_VHL and not fragw & _FRAG_BITS
                          and _TCP_MIN <= hl <= seg
                          and (tot <= dlen - _ETH_LEN or cut and _FAST_L4 + hl <= dlen))
                    pay = seg - hl
            elif proto == _P_UDP:
                et, vhl, tot, fragw, ttl, src, dst, sport, dport, ulen = _ETH_IP4_UDP.unpack_from(data, 0)
                ok = (et == _ETHERTYPE_IPV4 and vhl == _PLAIN_VHL and not fragw & _FRAG_BITS
                      and _UDP_LEN <= ulen <= tot - _IP4_MIN and (tot <= dlen - _ETH_LEN or cut))
                flags = seq = ack = win = 0
                hl = _UDP_LEN
                pay = ulen - _UDP_LEN
            family, l3, l4 = 4, _ETH_LEN, _FAST_L4
        elif hi == _ET6_HI:
            proto = data[_FAST6_PROTO]
            if proto == _P_TCP:
                if dlen >= _FAST6_L4 + _TCP_MIN:
                    (et, vbyte, plen, ttl, src, dst,
                     sport, dport, seq, ack, offb, flags, win) = _ETH_IP6_TCP.unpack_from(data, 0)
                    hl = (offb >> _TCP_OFF_SHIFT) * _TCP_SCALE
                    ok = (et == _ETHERTYPE_IPV6 and vbyte >> _IP6_VER_SHIFT == 6
                          and _TCP_MIN <= hl <= plen
                          and (plen <= dlen - _FAST6_L4 or cut and _FAST6_L4 + hl <= dlen))
                    pay = plen - hl
            elif proto == _P_UDP:
                if dlen >= _FAST6_L4 + _UDP_LEN:
                    et, vbyte, plen, ttl, src, dst, sport, dport, ulen = _ETH_IP6_UDP.unpack_from(data, 0)
                    ok = (et == _ETHERTYPE_IPV6 and vbyte >> _IP6_VER_SHIFT == 6
                          and _UDP_LEN <= ulen <= plen and (plen <= dlen - _FAST6_L4 or cut))
                    flags = seq = ack = win = 0
                    hl = _UDP_LEN
                    pay = ulen - _UDP_LEN
            family, l3, l4 = 6, _ETH_LEN, _FAST6_L4
        if ok:
            p = _new(Packet)
            p.n = n
            p.ts = ts
            p.linktype = 1
            p.ifname = ifname
            p.data = data
            p.orig_len = dlen if orig_len is None else orig_len
            p.family = family
            p.src = src
            p.dst = dst
            p.proto = proto
            p.ttl = ttl
            p.sport = sport
            p.dport = dport
            p.flags = flags
            p.seq = seq
            p.ack = ack
            p.window = win
            p.tsval = p.mss = p.frag = p.error = p.inner = None
            p.payload_len = pay
            p.l3_off = l3
            p.l4_off = l4
            p.l4_len = hl
            p.payload_off = l4 + hl
            p.link_bcast = data[0] & 1 == 1
            p.icmp_type = p.icmp_code = -1
            if hl > _TCP_MIN:
                _tcp_options(p, data, l4 + _TCP_MIN, l4 + hl)
            return p
    return parse_general(n, ts, linktype, data, ifname, orig_len)


def parse_general(n: int, ts: float, linktype: int, data: bytes, ifname: str | None = None,
                  orig_len: int | None = None) -> Packet:
    """The general parser: every link type and header; ``parse`` falls back to it."""
    p = _new(Packet)
    dlen = len(data)
    p.n = n
    p.ts = ts
    p.linktype = linktype
    p.ifname = ifname
    p.data = data
    p.orig_len = dlen if orig_len is None else orig_len
    p.family = 0
    p.src = p.dst = b""
    p.proto = -1
    p.ttl = p.sport = p.dport = p.flags = p.seq = p.ack = p.window = p.payload_len = p.l4_len = 0
    p.tsval = p.mss = p.frag = p.error = p.inner = None
    p.l3_off = p.l4_off = p.payload_off = p.icmp_type = p.icmp_code = -1
    p.link_bcast = False

    if linktype == 1:
        if dlen < _ETH_LEN:
            p.error = f"Ethernet header cut short: {dlen} of {_ETH_LEN} bytes"
            return p
        p.link_bcast = bool(data[0] & 1)
        et = _U16.unpack_from(data, _ETH_TYPE)[0]
        off = _ETH_LEN
        if et == _ETHERTYPE_IPV4:
            return _ipv4(p, data, off)
        if et in _VLAN_TPIDS:
            return _tagged(p, data, off, et)
    elif linktype == 113:
        if dlen < _SLL_LEN:
            p.error = f"Linux cooked (SLL) header cut short: {dlen} of {_SLL_LEN} bytes"
            return p
        p.link_bcast = _U16.unpack_from(data, _SLL_PKTTYPE)[0] in _SLL_GROUP
        et = _U16.unpack_from(data, _SLL_TYPE)[0]
        off = _SLL_LEN
        if et in _VLAN_TPIDS:
            return _tagged(p, data, off, et)
    elif linktype == 276:
        if dlen < _SLL2_LEN:
            p.error = f"Linux cooked (SLL2) header cut short: {dlen} of {_SLL2_LEN} bytes"
            return p
        p.link_bcast = data[_SLL2_PKTTYPE] in _SLL_GROUP
        et = _U16.unpack_from(data, _SLL2_TYPE)[0]
        off = _SLL2_LEN
        if et in _VLAN_TPIDS:
            return _tagged(p, data, off, et)
    elif linktype == 101 or linktype == 12 or linktype == 14:
        if not dlen:
            p.error = "raw IP packet is empty"
            return p
        version = data[0] >> 4
        if version == 4:
            return _ipv4(p, data, 0)
        if version == 6:
            return _ipv6(p, data, 0)
        p.error = f"raw IP packet with IP version {version}"
        return p
    elif linktype == 228:
        return _ipv4(p, data, 0)
    elif linktype == 229:
        return _ipv6(p, data, 0)
    elif linktype == 0 or linktype == 108:
        if dlen < _NULL_LEN:
            p.error = f"loopback (NULL) header cut short: {dlen} of {_NULL_LEN} bytes"
            return p
        # DLT_NULL is in the capturing host's byte order, DLT_LOOP in network order;
        # some writers get LOOP wrong too, so both orders are accepted for both.
        be = _U32.unpack_from(data, 0)[0]
        le = _U32LE.unpack_from(data, 0)[0]
        if be == _AF_INET or le == _AF_INET:
            return _ipv4(p, data, _NULL_LEN)
        if be in _AF_INET6 or le in _AF_INET6:
            return _ipv6(p, data, _NULL_LEN)
        return p
    else:
        p.error = f"unsupported link type {linktype}"
        return p
    return _by_ethertype(p, data, off, et)


def _tagged(p: Packet, data: bytes, off: int, et: int) -> Packet:
    """Skip a stack of 802.1Q / 802.1ad tags of any depth."""
    dlen = len(data)
    while et in _VLAN_TPIDS:
        if dlen - off < _VLAN_LEN:
            p.error = f"802.1Q VLAN tag cut short: {dlen - off} of {_VLAN_LEN} bytes"
            return p
        et = _U16.unpack_from(data, off + _VLAN_TYPE)[0]
        off += _VLAN_LEN
    return _by_ethertype(p, data, off, et)


def _by_ethertype(p: Packet, data: bytes, off: int, et: int) -> Packet:
    if et == _ETHERTYPE_IPV4:
        return _ipv4(p, data, off)
    if et == _ETHERTYPE_IPV6:
        return _ipv6(p, data, off)
    return p        # ARP, LLDP, 802.3 lengths...: not IP, not an error


def _ipv4(p: Packet, data: bytes, off: int) -> Packet:
    p.family = 4
    p.l3_off = off
    avail = len(data) - off
    if avail < _IP4_MIN:
        p.error = f"IPv4 header cut short: {avail} of {_IP4_MIN} bytes"
        return p
    vhl, tot, ident, fragw, ttl, proto, src, dst = _IP4.unpack_from(data, off)
    p.src = src
    p.dst = dst
    p.ttl = ttl
    p.proto = proto
    if vhl >> _IP4_VER_SHIFT != 4:
        p.error = f"IPv4 header with IP version {vhl >> _IP4_VER_SHIFT}"
        return p
    hl = (vhl & _IHL_MASK) * _IHL_SCALE
    if hl < _IP4_MIN:
        p.error = f"bad IPv4 header length: IHL {vhl & _IHL_MASK} ({hl} bytes, minimum {_IP4_MIN})"
        return p
    if hl > avail:
        p.error = f"IPv4 header cut short: {avail} of {hl} bytes"
        return p
    if tot < hl:
        p.error = f"IPv4 total length {tot} is shorter than its {hl}-byte header"
        return p
    if tot > avail and tot > p.orig_len - off:
        p.error = f"IPv4 total length {tot} exceeds the {p.orig_len - off} bytes of the packet"
        return p
    l4 = off + hl
    p.l4_off = l4
    if fragw & (_MF | _FRAG_MASK):
        p.frag = FragmentInfo(ident, (fragw & _FRAG_MASK) * _FRAG_UNIT, bool(fragw & _MF))
        p.payload_off = l4
        p.payload_len = tot - hl
        return p
    return _transport(p, data, l4, off + tot, proto)


def _ipv6(p: Packet, data: bytes, off: int) -> Packet:
    p.family = 6
    p.l3_off = off
    dlen = len(data)
    avail = dlen - off
    if avail < _IP6_LEN:
        p.error = f"IPv6 header cut short: {avail} of {_IP6_LEN} bytes"
        return p
    plen, nxt, hlim, src, dst = _IP6.unpack_from(data, off)
    p.src = src
    p.dst = dst
    p.ttl = hlim
    p.proto = nxt
    version = data[off] >> _IP6_VER_SHIFT
    if version != 6:
        p.error = f"IPv6 header with IP version {version}"
        return p
    end = off + _IP6_LEN + plen
    if end > dlen and end > p.orig_len:
        p.error = (f"IPv6 payload length {plen} exceeds the {p.orig_len - off - _IP6_LEN} bytes "
                   f"after the header")
        return p
    i = off + _IP6_LEN
    if nxt in _EXT_NAMES:
        limit = end if end < dlen else dlen
        nxt_off = off + _IP6_NXT
        while nxt in _EXT_NAMES:
            if nxt == _FRAGMENT:
                if limit - i < _FRAG6_LEN:
                    p.error = f"IPv6 fragment header cut short: {limit - i} of {_FRAG6_LEN} bytes"
                    return p
                fnxt, fw, ident = _FRAG6.unpack_from(data, i)
                foff = (fw >> _FRAG6_OFF_SHIFT) & _FRAG6_OFF_MASK
                more = fw & 1
                p.proto = fnxt
                if foff or more:
                    p.frag = FragmentInfo(ident, foff * _FRAG_UNIT, bool(more), i, nxt_off)
                    p.l4_off = p.payload_off = i + _FRAG6_LEN
                    p.payload_len = end - i - _FRAG6_LEN
                    return p
                # An atomic fragment (offset 0, no MF) is a whole packet: RFC 6946,
                # ipv6_frag_rcv() hands it straight on.
                nxt_off = i
                nxt = fnxt
                i += _FRAG6_LEN
                continue
            if nxt == _HOPOPTS and i != off + _IP6_LEN:
                # ipv6_rcv() parses hop-by-hop only right after the fixed header; later
                # the protocol lookup fails and the kernel sends a parameter problem.
                p.error = "IPv6 hop-by-hop options header not directly after the IPv6 header"
                return p
            if limit - i < 2:
                p.error = f"{_EXT_NAMES[nxt]} cut short: {max(limit - i, 0)} of 8 bytes"
                return p
            hlen = (data[i + 1] + 2) * 4 if nxt == _AH else (data[i + 1] + 1) * 8
            if limit - i < hlen:
                p.error = f"{_EXT_NAMES[nxt]} cut short: {limit - i} of {hlen} bytes"
                return p
            nxt_off = i
            nxt = data[i]
            p.proto = nxt
            i += hlen
    p.l4_off = i
    if nxt == _NO_NEXT:
        p.payload_off = i
        p.payload_len = end - i
        return p
    return _transport(p, data, i, end, nxt)


def _short(p: Packet, data: bytes, l4: int, have: int, flags_end: int) -> None:
    """The fields a transport header cut short still holds: the ports from 4 bytes, and
    from ``flags_end`` bytes (TCP) the flags byte."""
    p.l4_len = max(have, 0)
    if have >= _PORTS.size:
        p.sport, p.dport = _PORTS.unpack_from(data, l4)
    if flags_end and have >= flags_end:
        p.flags = data[l4 + flags_end - 1]


def _transport(p: Packet, data: bytes, l4: int, end: int, proto: int) -> Packet:
    """Parse the TCP/UDP/ICMP header at ``l4``; ``end`` is where the IP lengths end it."""
    dlen = len(data)
    seg = end - l4
    have = (end if end < dlen else dlen) - l4
    if proto == _P_TCP:
        if have < _TCP_MIN:
            # What there is still names the ports and the flags, as tcpdump prints them.
            _short(p, data, l4, have, _TCP_FLAGS_END)
            p.error = f"TCP header cut short: {have} of {_TCP_MIN} bytes"
            return p
        p.l4_len = _TCP_MIN
        p.sport, p.dport, p.seq, p.ack, offb, p.flags, p.window = _TCP.unpack_from(data, l4)
        hl = (offb >> _TCP_OFF_SHIFT) * _TCP_SCALE
        if hl < _TCP_MIN:
            p.error = f"bad TCP data offset {hl // _TCP_SCALE} ({hl} bytes, minimum {_TCP_MIN})"
            return p
        if hl > have:
            p.error = f"TCP header cut short: {have} of {hl} bytes"
            return p
        p.l4_len = hl
        if hl > _TCP_MIN:
            _tcp_options(p, data, l4 + _TCP_MIN, l4 + hl)
        p.payload_off = l4 + hl
        p.payload_len = seg - hl
        return p
    if proto == _P_UDP:
        if have < _UDP_LEN:
            _short(p, data, l4, have, 0)
            p.error = f"UDP header cut short: {have} of {_UDP_LEN} bytes"
            return p
        p.l4_len = _UDP_LEN
        p.sport, p.dport, ulen = _UDP.unpack_from(data, l4)
        # __udp4_lib_rcv() / udpv6_rcv(): a length below 8 or beyond the IP payload
        # is a short packet and is dropped; a shorter one trims the datagram.
        if ulen < _UDP_LEN:
            p.error = f"bad UDP length {ulen} (minimum {_UDP_LEN})"
            return p
        if ulen > seg:
            p.error = f"UDP length {ulen} exceeds the {seg} bytes of IP payload"
            return p
        p.payload_off = l4 + _UDP_LEN
        p.payload_len = ulen - _UDP_LEN
        return p
    if (proto == _P_ICMP and p.family == 4) or (proto == _P_ICMP6 and p.family == 6):
        return _icmp(p, data, l4, end, seg, have)
    p.payload_off = l4
    p.payload_len = seg
    return p


def _tcp_options(p: Packet, data: bytes, i: int, end: int) -> None:
    """Pick MSS and the timestamp value; stop where tcp_parse_options() stops."""
    while i < end:
        kind = data[i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            return
        size = data[i + 1]
        if size < 2 or i + size > end:      # "silly options" / partial option
            return
        if kind == _MSS_KIND and size == _MSS_LEN:
            p.mss = _U16.unpack_from(data, i + _MSS_AT)[0]
        elif kind == _TS_KIND and size == _TS_LEN:
            p.tsval = _U32.unpack_from(data, i + _TS_AT)[0]
        i += size


def _icmp(p: Packet, data: bytes, l4: int, end: int, seg: int, have: int) -> Packet:
    name = "ICMP" if p.family == 4 else "ICMPv6"
    if have < _ICMP_LEN:
        p.error = f"{name} header cut short: {have} of {_ICMP_LEN} bytes"
        return p
    p.icmp_type = kind = data[l4]
    p.icmp_code = data[l4 + 1]
    p.payload_off = l4 + _ICMP_LEN
    p.payload_len = seg - _ICMP_LEN
    errors = _f.ICMP_ERRORS if p.family == 4 else _f.ICMPV6_ERRORS
    if kind in errors:
        p.inner = quoted(data, l4 + _ICMP_LEN, l4 + have)
    return p


def quoted(data: bytes, off: int, end: int) -> Quoted | None:
    """The IP header and ports an ICMP error quotes, or None if too little is quoted."""
    if end - off < 1:
        return None
    version = data[off] >> 4
    if version == 4:
        if end - off < _IP4_MIN:
            return None
        vhl, _tot, _id, _fw, _ttl, proto, src, dst = _IP4.unpack_from(data, off)
        i = off + (vhl & _IHL_MASK) * _IHL_SCALE
        if i < off + _IP4_MIN:
            return None
    elif version == 6:
        if end - off < _IP6_LEN:
            return None
        _plen, proto, _hlim, src, dst = _IP6.unpack_from(data, off)
        i = off + _IP6_LEN
        while proto in _EXT_NAMES:
            if end - i < 8:
                return Quoted(6, proto, src, dst, 0, 0)
            if proto == _FRAGMENT:
                hlen = _FRAG6_LEN
            elif proto == _AH:
                hlen = (data[i + 1] + 2) * 4
            else:
                hlen = (data[i + 1] + 1) * 8
            proto = data[i]
            i += hlen
    else:
        return None
    sport = dport = 0
    if proto in (_P_TCP, _P_UDP) and end - i >= 4:
        sport, dport = _PORTS.unpack_from(data, i)
    return Quoted(version, proto, src, dst, sport, dport)
