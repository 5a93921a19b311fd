"""The field-by-field walk of one frame, for ``demux explain``.

Lays the headers of ``demux.wire.fields`` end to end over the frame's bytes the way the
parser reads them (link layer, VLAN tags, IPv4 with options or IPv6 with extension
headers, TCP with options, UDP, ICMP with the datagram it quotes) and yields every
field with its absolute offset in bits, its raw value and its meaning. Slow and
thorough where the parser is fast and selective; never raises: a field whose bytes were
not captured is left out, and the walk stops there.
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
        if w.emit(w.layer(f.SLL.name), f.SLL, 0):
            _ethertype(w, w.u16(14), f.SLL.length)
    elif linktype == 276:
        if w.emit(w.layer(f.SLL2.name), f.SLL2, 0):
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
        if size > 2:
            w.emit(out, [f.Field("ip.opt.data", 16, (size - 2) * 8, "option data, raw", f.BYTES)], i)
        i += size
    end = off + tot
    if limit is not None:
        end = min(end, limit)
    fragw = w.u16(off + 6)
    frag_off = fragw & 0x1FFF
    if frag_off:
        return       # a later fragment: its bytes are the middle of a datagram
    _transport(w, data[off + 9], off + hl, end, 4, suffix)


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
            w.emit(out, [f.Field("ipv6.routing.data", 32, (hlen - 4) * 8, "type-specific data, raw", f.BYTES)], i, end)
        nxt = data[i]
        i += hlen
    _transport(w, nxt, i, end, 6, suffix)


def _ipv6_options(w: _Walk, out: list, i: int, end: int) -> None:
    data = w.data
    while i < end and i < len(data):
        if data[i] == 0:
            w.emit(out, f.IPV6_OPT_PAD1, i)
            i += 1
            continue
        size = w.u8(i + 1)
        if size is None or i + 2 + size > end:
            w.emit(out, f.IPV6_OPT_PAD1, i)
            return
        w.emit(out, f.IPV6_OPT, i)
        if size:
            w.emit(out, [f.Field("ipv6.opt.data", 16, size * 8, "option data, raw", f.BYTES)], i)
        i += 2 + size


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
        rows = header.fields
        if kind not in ((3,) if family == 4 else (1,)):
            # The code's names are those of destination unreachable only.
            code = rows[1]
            rows = (rows[0], f.Field(code.name, code.offset, code.width, "message code"), *rows[2:])
        if not w.emit(out, list(rows), off, end):
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
            w.emit(out, [f.Field(f.TCP_OPT_DATA_NAME, 16, (size - 2) * 8, "option data, raw", f.BYTES)], i)
        i += size
