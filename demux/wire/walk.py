"""The field-by-field walk of one frame, for ``demux explain``.

Lays the headers of ``demux.wire.fields`` end to end over the frame's bytes the way the
parser reads them (link layer, VLAN tags, IPv4 with options or IPv6 with extension
headers, TCP with options, UDP, ICMP with the datagram it quotes) and yields every
field with its absolute offset in bits, its raw value and its meaning; which rows a
header gets (an option's data, ICMP's bytes 4-7, an SLL address) follows what Wireshark
shows for the same bytes, as the field table records it. Slow and thorough where the
parser is fast and selective; never raises: a field whose bytes were not captured is
left out, and the walk stops there.
"""

from __future__ import annotations

from demux.wire import fields as f

_VLAN_NAMES = {0x8100: "802.1Q Virtual LAN", 0x88A8: "802.1ad Virtual LAN",
               0x9100: "802.1Q Virtual LAN (QinQ)"}
_AF_INET6 = (10, 24, 28, 30)


class _Walk:
    def __init__(self, data: bytes):
        self.data = data
        self.layers: list[dict] = []

    def layer(self, name: str) -> list:
        fields: list = []
        self.layers.append({"name": name, "fields": fields})
        return fields

    def emit(self, out: list, header_or_fields, base: int, limit: int | None = None) -> bool:
        """Add the fields of a header at byte ``base``; False if some were not captured."""
        end = len(self.data) if limit is None else min(limit, len(self.data))
        rows = header_or_fields.fields if isinstance(header_or_fields, f.Header) else header_or_fields
        complete = True
        for fld in rows:
            if base + fld.byte + fld.nbytes > end:
                complete = False
                continue
            value = fld.value(self.data, base)
            raw = fld.raw(self.data, base) if fld.names is not None else None
            out.append({"name": fld.name, "offset_bits": base * 8 + fld.offset,
                        "width_bits": fld.width, "value": value,
                        "meaning": fld.describe(raw)})
        return complete

    def u8(self, at: int) -> int | None:
        return self.data[at] if 0 <= at < len(self.data) else None

    def u16(self, at: int) -> int | None:
        return int.from_bytes(self.data[at:at + 2], "big") if at + 2 <= len(self.data) else None


def walk(linktype: int, data: bytes) -> list[dict]:
    """Every layer of the frame: ``[{"name", "fields": [{name, offset_bits, ...}]}]``."""
    w = _Walk(bytes(data))
    try:
        _link(w, linktype)
    except (IndexError, ValueError):    # defensive: a walk never takes explain down
        pass
    return [layer for layer in w.layers if layer["fields"]]


def _link(w: _Walk, linktype: int) -> None:
    data = w.data
    if linktype == 1:
        if not w.emit(w.layer(f.ETHERNET.name), f.ETHERNET, 0):
            return
        _ethertype(w, w.u16(12), f.ETHERNET.length)
    elif linktype == 113:
        if _sll(w, f.SLL, f.SLL_ADDR_BYTE, w.u16(4), w.u16(2), w.u16(14)):
            _ethertype(w, w.u16(14), f.SLL.length)
    elif linktype == 276:
        if _sll(w, f.SLL2, f.SLL2_ADDR_BYTE, w.u8(11), w.u16(8), w.u16(0)):
            _ethertype(w, w.u16(0), f.SLL2.length)
    elif linktype in (0, 108):
        if w.emit(w.layer(f.NULL.name), f.NULL, 0):
            be = int.from_bytes(data[:4], "big")
            le = int.from_bytes(data[:4], "little")
            if 2 in (be, le):
                _ip(w, 4, 4)
            elif be in _AF_INET6 or le in _AF_INET6:
                _ip(w, 6, 4)
    elif linktype in (101, 12, 14):
        if data:
            _ip(w, data[0] >> 4, 0)
    elif linktype == 228:
        _ip(w, 4, 0)
    elif linktype == 229:
        _ip(w, 6, 0)


def _sll(w: _Walk, header: f.Header, addr_at: int, halen: int | None, hatype: int | None,
         proto: int | None) -> bool:
    """An SLL/SLL2 header: its fixed rows, the address slot's rows as the address length
    makes them, and the protocol under the name its link type and value give it."""
    rows = [f.sll_protocol(r, hatype, proto) if r.name == "sll.etype" else r for r in header.fields]
    if halen is not None:
        rows += f.sll_address(halen, addr_at)
    rows.sort(key=lambda r: r.offset)
    return w.emit(w.layer(header.name), rows, 0)


def _ethertype(w: _Walk, et: int | None, off: int) -> None:
    """What an ethertype names at ``off``: 802.1Q/802.1ad tags (any depth, after any
    link header, as the parser takes them), then IPv4 or IPv6."""
    while et in _VLAN_NAMES:
        if not w.emit(w.layer(_VLAN_NAMES[et]), f.VLAN, off):
            return
        et = w.u16(off + 2)
        off += f.VLAN.length
    if et == 0x0800:
        _ip(w, 4, off)
    elif et == 0x86DD:
        _ip(w, 6, off)


def _ip(w: _Walk, version: int, off: int, suffix: str = "", limit: int | None = None) -> None:
    """Walk an IPv4/IPv6 header at ``off`` and what it carries (up to ``limit``)."""
    if version == 4:
        _ipv4(w, off, suffix, limit)
    elif version == 6:
        _ipv6(w, off, suffix, limit)


def _ipv4(w: _Walk, off: int, suffix: str, limit: int | None) -> None:
    out = w.layer(f.IPV4.name + suffix)
    if not w.emit(out, f.IPV4, off, limit):
        return
    data = w.data
    hl = (data[off] & 15) * 4
    tot = w.u16(off + 2)
    if hl < 20:
        return
    # Options: type, and length and data for all but End of List and No-Operation.
    i, opt_end = off + 20, off + hl
    while i < opt_end and i < len(data):
        kind = data[i]
        if kind in (0, 1):
            w.emit(out, f.IPV4_OPT_SHORT, i)
            i += 1
            if kind == 0:
                break
            continue
        size = w.u8(i + 1)
        if size is None or size < 2 or i + size > opt_end:
            w.emit(out, f.IPV4_OPT_SHORT, i)
            break
        w.emit(out, f.IPV4_OPT, i)
        _ipv4_option_data(w, out, kind, i, size)
        i += size
    if any(fl["name"] == "ip.dst" for fl in out[len(f.IPV4.fields):]):
        # A source route still under way names the final destination; the header's
        # address is then only the hop the packet is going to now.
        hop = next(fl for fl in out if fl["name"] == "ip.dst")
        hop.update(name=f.IPV4_CUR_RT.name, meaning=f.IPV4_CUR_RT.meaning)
    end = off + tot
    if limit is not None:
        end = min(end, limit)
    fragw = w.u16(off + 6)
    frag_off = fragw & 0x1FFF
    if frag_off:
        return       # a later fragment: its bytes are the middle of a datagram
    _transport(w, data[off + 9], off + hl, end, 4, suffix)


def _ipv4_option_data(w: _Walk, out: list, kind: int, i: int, size: int) -> None:
    """The rows after an IPv4 option's type and length, as Wireshark names them."""
    w.emit(out, [r for r in f.IPV4_OPT_DATA.get(kind, ()) if r.offset + r.width <= size * 8], i)
    if kind in (7, 131, 137):
        ptr = w.u8(i + 2)
        if ptr is None or ptr < 4 or ptr % 4:
            return                      # a pointer into no slot: Wireshark shows no slots
        slots = range(3, size - 3, 4)
        for o in slots:
            # Slots before the pointer are done; after it, a record route's are empty
            # and a source route's are hops to go, its last one the final destination.
            if o + 1 < ptr:
                state = "rec"
            elif kind == 7:
                state = "empty"
            else:
                state = "dst" if o == slots[-1] else "src"
            w.emit(out, [f.IPV4_ROUTE_SLOT[state]], i + o)
    elif kind == 68 and size >= 4 and w.u8(i + 3) is not None:
        with_addr = (w.u8(i + 3) & 15) in (1, 3)
        step = 8 if with_addr else 4
        for o in range(4, size - step + 1, step):
            if with_addr:
                w.emit(out, [f.IPV4_TS_ADDR], i + o)
            w.emit(out, [f.IPV4_TS_STAMP], i + o + step - 4)


def _ipv6(w: _Walk, off: int, suffix: str, limit: int | None) -> None:
    if not w.emit(w.layer(f.IPV6.name + suffix), f.IPV6, off, limit):
        return
    data = w.data
    end = off + 40 + w.u16(off + 4)
    if limit is not None:
        end = min(end, limit)
    nxt, i = data[off + 6], off + 40
    while nxt in f.IPV6_EXT:
        header = f.IPV6_EXT[nxt]
        out = w.layer(header.name + suffix)
        if not w.emit(out, header, i, end):
            return
        if nxt == 44:
            fragw = w.u16(i + 2)
            nxt = data[i]
            i += 8
            if fragw & 0xFFF8:
                return
            continue
        hlen = (data[i + 1] + 2) * 4 if nxt == 51 else (data[i + 1] + 1) * 8
        if nxt in (0, 60):
            _ipv6_options(w, out, i + 2, min(i + hlen, end))
        elif nxt == 43 and hlen > 4:
            _routing_data(w, out, i, hlen, end)
        elif nxt == 51 and hlen > f.IPV6_AH.length:
            w.emit(out, [f.Field(f.AH_ICV_NAME, f.IPV6_AH.length * 8, (hlen - f.IPV6_AH.length) * 8,
                                 "integrity check value", f.BYTES)], i, end)
        nxt = data[i]
        i += hlen
    _transport(w, nxt, i, end, 6, suffix)


def _routing_data(w: _Walk, out: list, i: int, hlen: int, end: int) -> None:
    """The rows of a routing header after its first 4 bytes, by routing type."""
    rtype = w.u8(i + 2)
    if rtype is None or rtype in f.IPV6_ROUTING_OTHER_DECODED:
        return
    if rtype not in f.IPV6_ROUTING_ADDR:
        w.emit(out, [f.Field(f.IPV6_ROUTING_UNKNOWN, 32, (hlen - 4) * 8, "data of a routing type "
                             "Wireshark does not know, raw", f.BYTES)], i, end)
        return
    w.emit(out, [r for r in f.IPV6_ROUTING_DATA[rtype] if r.offset + r.width <= hlen * 8], i, end)
    count = (hlen - 8) // 16
    if rtype == 2:
        count = min(count, 1)
    elif rtype == 4:
        last = w.u8(i + 4)
        count = 0 if last is None else min(count, last + 1)
    for k in range(count):
        w.emit(out, [f.IPV6_ROUTING_ADDR[rtype]], i + 8 + 16 * k, end)


def _ipv6_options(w: _Walk, out: list, i: int, end: int) -> None:
    data = w.data
    while i < end and i < len(data):
        if data[i] == 0:
            w.emit(out, f.IPV6_OPT_PAD1, i)
            i += 1
            continue
        size = w.u8(i + 1)
        if size is None or i + 2 + size > end:
            w.emit(out, [f.IPV6_OPT["ipv6.opt.type"]], i)
            return
        w.emit(out, f.IPV6_OPT, i)
        row = _ipv6_option_data(data[i], size)
        if row is not None:
            w.emit(out, [row], i)
        i += 2 + size


def _ipv6_option_data(kind: int, size: int) -> f.Field | None:
    """The row for an IPv6 option's data, or None where Wireshark has no such row."""
    row = f.IPV6_OPT_DATA.get(kind)
    if row is None:
        if kind in f.IPV6_OPT_OTHER_DECODED:
            return None
        row = f.IPV6_OPT_EXPERIMENTAL if kind & 0x1F == 0x1E else f.IPV6_OPT_UNKNOWN
    if row.width == 0:           # variable: all of the data, if there is any
        return f.Field(row.name, row.offset, size * 8, row.meaning, row.kind) if size else None
    return row if row.width == size * 8 else None


def _transport(w: _Walk, proto: int, off: int, end: int, family: int, suffix: str) -> None:
    data = w.data
    if proto == 6:
        out = w.layer(f.TCP.name + suffix)
        if not w.emit(out, f.TCP, off, end):
            return
        hl = (data[off + 12] >> 4) * 4
        _tcp_options(w, out, off + 20, min(off + hl, end))
    elif proto == 17:
        w.emit(w.layer(f.UDP.name + suffix), f.UDP, off, end)
    elif (proto == 1 and family == 4) or (proto == 58 and family == 6):
        header = f.ICMP if family == 4 else f.ICMPV6
        out = w.layer(header.name + suffix)
        kind = w.u8(off)
        rows = list(header.fields)
        if kind not in ((3,) if family == 4 else (1,)):
            # The code's names are those of destination unreachable only.
            code = rows[1]
            rows[1] = f.Field(code.name, code.offset, code.width, "message code")
        if kind is not None:
            rows += (f.icmp_rest(kind, w.u8(off + 1), w.u8(off + 5)) if family == 4
                     else f.icmpv6_rest(kind, w.u8(off + 4), end - off))
        if not w.emit(out, rows, off, end):
            return
        errors = f.ICMP_ERRORS if family == 4 else f.ICMPV6_ERRORS
        if kind in errors and not suffix and off + 8 < min(end, len(data)):
            _ip(w, data[off + 8] >> 4, off + 8, " (quoted)", end)


def _tcp_options(w: _Walk, out: list, i: int, end: int) -> None:
    data = w.data
    end = min(end, len(data))
    while i < end:
        kind = data[i]
        header = f.TCP_OPTIONS.get(kind, f.TCP_OPT_OTHER)
        if kind in (0, 1):
            w.emit(out, header, i)
            i += 1
            if kind == 0:
                return
            continue
        size = w.u8(i + 1)
        if size is None or size < 2 or i + size > end:
            w.emit(out, [f.TCP_OPT_OTHER["tcp.option_kind"]], i)
            return
        if header.length != size and kind not in (5,) and header is not f.TCP_OPT_OTHER:
            header = f.TCP_OPT_OTHER         # wrong length for its kind: show it raw
        w.emit(out, header, i, i + size)
        if kind == 5 and header is f.TCP_OPT_SACK:
            for block in range(i + 2, i + size - 7, 8):
                w.emit(out, f.TCP_SACK_BLOCK, block)
        elif header is f.TCP_OPT_OTHER and size > 2:
            w.emit(out, _tcp_option_data(kind, size), i)
        i += size


def _tcp_option_data(kind: int, size: int) -> list:
    """The rows for the data of an option kind shown without a header of its own."""
    if kind in f.TCP_OPT_DATA:
        if f.TCP_OPT_EXACT_LENGTH.get(kind, size) != size:
            return []
        rows = []
        for r in f.TCP_OPT_DATA[kind]:
            if r.width == 0 and size * 8 > r.offset:       # variable: the rest of the option
                rows.append(f.Field(r.name, r.offset, size * 8 - r.offset, r.meaning, r.kind))
            elif r.width and r.offset + r.width <= size * 8:
                rows.append(r)
        return rows
    if kind in f.TCP_OPT_OTHER_DECODED:
        return []
    return [f.Field(f.TCP_OPT_DATA_NAME, 16, (size - 2) * 8, "data of an option kind Wireshark "
                    "does not know, raw", f.BYTES)]
