"""Capture readers: classic pcap and pcapng, from a file or standard input, as Frames.

The first edge of the pipeline (capture source -> wire -> kernel -> verdict -> sink).
``open_capture(path)`` sniffs the format from the first four bytes, so it works on a
pipe: the file is read front to back in large chunks, never seeked. Each record
becomes a ``Frame`` holding the captured bytes and a nanosecond timestamp; nothing
here looks inside the packet.

Trouble is sorted in two kinds:

- the capture cannot be read at all (missing, empty, not a capture, unsupported link
  type): ``CaptureError`` with one line naming the file and the problem;
- the capture is damaged part-way (cut short, or a record or block that lies about its
  length): iteration stops at the damage, every frame before it has been yielded, and
  ``truncated_at`` (the byte offset of the damaged record) and ``warning`` say so.

Memory stays bounded by one read chunk plus the largest record allowed.
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
from typing import BinaryIO, Iterator

from demux.errors import CaptureError

__all__ = [
    "Frame", "CaptureReader", "open_capture", "SUPPORTED_LINKTYPES", "LINKTYPE_NAMES",
    "MAX_RECORD",
]

# Link types the wire layer can parse (numbers as stored in the file header / IDB).
LINKTYPE_NAMES = {
    0: "NULL",          # BSD loopback: 4-byte address family in host byte order
    1: "EN10MB",        # Ethernet
    12: "RAW",          # DLT_RAW as written on some BSDs
    14: "RAW",          # DLT_RAW as written on OpenBSD
    101: "RAW",         # raw IPv4/IPv6, no link header
    108: "LOOP",        # OpenBSD loopback: 4-byte address family in network byte order
    113: "LINUX_SLL",   # Linux "any" cooked capture v1
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",  # Linux cooked capture v2 (carries the interface index)
}
SUPPORTED_LINKTYPES = frozenset(LINKTYPE_NAMES)

# Other link types worth naming in the refusal message.
_OTHER_LINKTYPE_NAMES = {
    9: "PPP", 105: "IEEE802_11", 127: "IEEE802_11_RADIOTAP", 147: "USER0",
    189: "USB_LINUX", 192: "PPI", 195: "IEEE802_15_4", 201: "BLUETOOTH_HCI_H4_WITH_PHDR",
    220: "USB_LINUX_MMAPPED", 231: "DBUS", 249: "NETLINK", 253: "NETLINK",
}

# libpcap refuses records longer than this (MAXIMUM_SNAPLEN); a longer one is damage.
MAX_RECORD = 262144
# Non-packet pcapng blocks (name resolution, secrets, custom) may be bigger, but not this.
_MAX_BLOCK = 16 * 1024 * 1024
_CHUNK = 1 << 20

_PCAP_MAGICS = {
    # first four bytes -> (byte order, nanoseconds)
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_SHB_TYPE = 0x0A0D0D0A
_BOM_LE = b"\x4d\x3c\x2b\x1a"
_BOM_BE = b"\x1a\x2b\x3c\x4d"

# pcapng block types
_IDB, _OPB, _SPB, _EPB = 1, 2, 3, 6
_BLOCK_NAMES = {
    _IDB: "interface description", _OPB: "packet", _SPB: "simple packet",
    _EPB: "enhanced packet", 4: "name resolution", 5: "interface statistics",
    9: "systemd journal", 10: "decryption secrets", _SHB_TYPE: "section header",
}

# Struct objects per byte order, compiled once.
_S = {
    bo: {
        "pcap_hdr": struct.Struct(bo + "HHiIII"),  # version, thiszone, sigfigs, snaplen, network
        "pcap_rec": struct.Struct(bo + "IIII"),
        "blk": struct.Struct(bo + "II"),
        "u32": struct.Struct(bo + "I"),
        # block type, length; then as in an EPB: ifid, ts high, ts low, caplen, orig len
        "head": struct.Struct(bo + "IIIIIII"),
        "opb": struct.Struct(bo + "HHIIII"),      # ifid, drops, ts high, ts low, caplen, orig len
        "shb": struct.Struct(bo + "HHq"),         # major, minor, section length
        "idb": struct.Struct(bo + "HHI"),         # linktype, reserved, snaplen
        "opt": struct.Struct(bo + "HH"),
        "i64": struct.Struct(bo + "q"),
    }
    for bo in ("<", ">")
}


def linktype_name(linktype: int) -> str:
    """``EN10MB (1)``-style name for messages."""
    name = LINKTYPE_NAMES.get(linktype) or _OTHER_LINKTYPE_NAMES.get(linktype)
    return f"{linktype} ({name})" if name else str(linktype)


class Frame:
    """One captured frame, as the file holds it.

    ``ts_ns`` is exact (integer nanoseconds since the epoch); ``ts`` is the same instant
    as float seconds, correctly rounded, so pcap and pcapng copies of a frame agree.
    ``offset`` is the file offset of the record (pcap record header or pcapng block).
    """

    __slots__ = ("n", "ts", "ts_ns", "linktype", "data", "orig_len", "ifname", "offset")

    def __init__(self, n, ts, ts_ns, linktype, data, orig_len, ifname, offset):
        self.n = n
        self.ts = ts
        self.ts_ns = ts_ns
        self.linktype = linktype
        self.data = data
        self.orig_len = orig_len
        self.ifname = ifname
        self.offset = offset

    def __repr__(self) -> str:
        return (f"Frame(n={self.n}, ts_ns={self.ts_ns}, linktype={self.linktype}, "
                f"caplen={len(self.data)}, orig_len={self.orig_len}, "
                f"ifname={self.ifname!r}, offset={self.offset})")


class _Damage(Exception):
    """Internal: the file is damaged at ``offset``; iteration stops there."""

    def __init__(self, offset: int, what: str, kind: str = "damaged"):
        super().__init__(what)
        self.offset = offset
        self.what = what
        self.kind = kind        # "truncated" (the file ends) or "damaged" (a length lies)


class CaptureReader:
    """An open capture: iterate it (once) for Frames; use as a context manager.

    ``linktypes`` grows as interfaces are declared; ``truncated_at`` and ``warning`` are
    set when iteration stopped at damage instead of at the end of the file.
    """

    def __init__(self, path: str, stream: BinaryIO, close_stream: bool):
        self.path = path
        self.name = "<stdin>" if path == "-" else path
        self.format = ""
        self.linktypes: set[int] = set()
        self.snaplen = 0
        self.nanos = False
        self.truncated_at: int | None = None
        self.warning: str | None = None
        self.count = 0        # frames yielded; exact once iteration has ended
        self._stream = stream
        self._close_stream = close_stream
        read1 = getattr(stream, "read1", None)
        # read1 returns what a pipe has at hand instead of waiting for a full chunk.
        self._read = read1 if read1 is not None else stream.read
        self._iter: Iterator[Frame] = iter(())

    # --- plumbing -------------------------------------------------------------------

    def _fill(self, buf: bytes, need: int) -> bytes:
        """Read until ``buf`` holds ``need`` bytes or the stream ends."""
        parts = [buf]
        have = len(buf)
        while have < need:
            try:
                chunk = self._read(max(_CHUNK, need - have))
            except OSError as e:
                raise CaptureError(f"{self.name}: read error: {e.strerror or e}") from None
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts) if len(parts) > 1 else buf

    def _more(self, buf: bytes, pos: int, need: int) -> bytes:
        """Drop the consumed ``buf[:pos]`` and read until ``need`` more bytes are held."""
        rest = buf[pos:]
        try:
            chunk = self._read(max(_CHUNK, need - len(rest)))
        except OSError as e:
            raise CaptureError(f"{self.name}: read error: {e.strerror or e}") from None
        if not chunk:
            return rest
        return self._fill(rest + chunk, need)

    def _stop(self, n: int, damage: _Damage) -> None:
        self.count = n
        self.truncated_at = damage.offset
        self.warning = (f"{self.name}: {damage.kind} at byte {damage.offset} ({damage.what}); "
                        f"{n} packet{'s' if n != 1 else ''} read")

    def _refuse_linktype(self, linktype: int, where: str = "") -> CaptureError:
        return CaptureError(
            f"{self.name}: unsupported link type {linktype_name(linktype)}{where}; "
            f"supported: " + ", ".join(f"{n} {LINKTYPE_NAMES[n]}" for n in sorted(LINKTYPE_NAMES)))

    # --- classic pcap ---------------------------------------------------------------

    def _start_pcap(self, buf: bytes) -> Iterator[Frame]:
        buf = self._fill(buf, 24)
        if len(buf) < 24:
            raise CaptureError(f"{self.name}: pcap file header cut short ({len(buf)} of 24 bytes)")
        bo, nanos = _PCAP_MAGICS[buf[:4]]
        s = _S[bo]
        _vmaj, _vmin, _zone, _sigfigs, snaplen, network = s["pcap_hdr"].unpack_from(buf, 4)
        # The upper bits of the link type field carry FCS information, not the type.
        linktype = network & 0xFFFF
        self.format = "pcap"
        self.snaplen = snaplen
        self.nanos = nanos
        self.linktypes.add(linktype)
        if linktype not in SUPPORTED_LINKTYPES:
            raise self._refuse_linktype(linktype)
        limit = snaplen if 0 < snaplen < MAX_RECORD else MAX_RECORD
        return self._pcap_frames(buf, 24, s["pcap_rec"], 1 if nanos else 1000, linktype, limit)

    def _pcap_frames(self, buf, pos, rec, mult, linktype, limit):
        unpack = rec.unpack_from
        frame = Frame
        new = object.__new__
        base = 0          # file offset of buf[0]
        n = 0
        try:
            while True:
                end = len(buf)
                need = 16
                while pos + 16 <= end:
                    sec, frac, caplen, orig_len = unpack(buf, pos)
                    start = pos + 16
                    stop = start + caplen
                    if stop > end:
                        if caplen > limit:
                            raise _Damage(base + pos, f"record {n + 1} claims {caplen} captured "
                                          f"bytes (snapshot length {limit})")
                        need = 16 + caplen
                        break
                    if caplen > limit:
                        raise _Damage(base + pos, f"record {n + 1} claims {caplen} captured "
                                      f"bytes (snapshot length {limit})")
                    n += 1
                    ns = sec * 1000000000 + frac * mult
                    # Attribute stores inline: a Python-level __init__ call per packet
                    # costs more than everything else in this loop.
                    f = new(frame)
                    f.n = n
                    f.ts = ns / 1000000000
                    f.ts_ns = ns
                    f.linktype = linktype
                    f.data = buf[start:stop]
                    f.orig_len = orig_len
                    f.ifname = None
                    f.offset = base + pos
                    yield f
                    pos = stop
                held = end - pos
                buf = self._more(buf, pos, need)
                base += pos
                pos = 0
                if len(buf) == held:      # nothing more to read
                    if held:
                        raise _Damage(base, f"record {n + 1} cut short", "truncated")
                    break
        except _Damage as d:
            self._stop(n, d)
            return
        self.count = n

    # --- pcapng ---------------------------------------------------------------------

    def _start_pcapng(self, buf: bytes) -> Iterator[Frame]:
        buf = self._fill(buf, 28)
        if len(buf) < 12:
            raise CaptureError(f"{self.name}: pcapng section header cut short")
        bom = buf[8:12]
        if bom not in (_BOM_LE, _BOM_BE):
            raise CaptureError(f"{self.name}: not a capture (pcapng section header with a bad "
                               f"byte-order magic {bom.hex()})")
        bo = "<" if bom == _BOM_LE else ">"
        blen = _S[bo]["u32"].unpack_from(buf, 4)[0]
        if blen < 28 or blen % 4 or blen > _MAX_BLOCK:
            raise CaptureError(f"{self.name}: pcapng section header with a bad length {blen}")
        if len(buf) >= 24:
            major = _S[bo]["shb"].unpack_from(buf, 12)[0]
            if major != 1:
                raise CaptureError(f"{self.name}: unsupported pcapng version {major}")
        self.format = "pcapng"
        gen = self._pcapng_frames(buf)
        # Read on to the first packet so an unsupported link type or a broken first
        # interface is refused by open_capture, not half-way through the output.
        first = next(gen, None)
        if first is None:
            return gen
        return itertools.chain((first,), gen)

    def _parse_idb(self, buf, pos, nxt, s, ifaces, at):
        linktype, _res, snaplen = s["idb"].unpack_from(buf, pos + 8)
        ifname = None
        per_sec = 1000000
        off_ns = 0
        opt = s["opt"].unpack_from
        p = pos + 16
        stop = nxt - 4
        while p + 4 <= stop:
            code, olen = opt(buf, p)
            if code == 0:
                break
            v = p + 4
            if v + olen > stop:
                raise _Damage(at, f"interface {len(ifaces)} has an option running past its block")
            if code == 2:        # if_name
                ifname = bytes(buf[v:v + olen]).rstrip(b"\0").decode("utf-8", "replace")
            elif code == 9 and olen >= 1:    # if_tsresol: power of 10, or of 2 with the top bit
                r = buf[v]
                per_sec = 1 << (r & 0x7F) if r & 0x80 else 10 ** r
            elif code == 14 and olen >= 8:   # if_tsoffset: seconds added to every timestamp
                off_ns = s["i64"].unpack_from(buf, v)[0] * 1000000000
            p = v + ((olen + 3) & ~3)
        if per_sec <= 1000000000 and 1000000000 % per_sec == 0:
            mul, div = 1000000000 // per_sec, 1
        else:
            mul, div = 1000000000, per_sec
        limit = snaplen if 0 < snaplen < MAX_RECORD else MAX_RECORD
        ok = linktype in SUPPORTED_LINKTYPES
        self.linktypes.add(linktype)
        ifaces.append((linktype, ifname, mul, div, off_ns, limit, ok, snaplen))

    def _pcapng_frames(self, buf):
        pos = 0
        base = 0
        n = 0
        last_ns = 0
        frame = Frame
        new = object.__new__
        ifaces: list[tuple] = []
        s = _S["<"]
        blk, head, u32 = s["blk"].unpack_from, s["head"].unpack_from, s["u32"].unpack_from
        try:
            while True:
                end = len(buf)
                need = 12
                while pos + 12 <= end:
                    if pos + 28 <= end:
                        # One unpack serves the common case, an EPB; other blocks ignore the rest.
                        btype, blen, ifid, hi, lo, caplen, orig_len = head(buf, pos)
                    else:
                        btype, blen = blk(buf, pos)
                    if btype == _SHB_TYPE:
                        # A new section may switch byte order (the SHB type reads the same
                        # either way); its interfaces start afresh.
                        bom = buf[pos + 8:pos + 12]
                        if bom == _BOM_LE:
                            s = _S["<"]
                        elif bom == _BOM_BE:
                            s = _S[">"]
                        else:
                            raise _Damage(base + pos, f"section header with a bad byte-order "
                                          f"magic {bom.hex()}")
                        blk, head, u32 = s["blk"].unpack_from, s["head"].unpack_from, s["u32"].unpack_from
                        btype, blen = blk(buf, pos)
                        if blen < 28:
                            raise _Damage(base + pos, f"section header with a bad length {blen}")
                        ifaces = []
                    nxt = pos + blen
                    if blen < 12 or blen & 3 or blen > _MAX_BLOCK:
                        raise _Damage(base + pos, f"{_block_name(btype)} block with a bad "
                                      f"length {blen}")
                    if nxt > end:
                        need = blen
                        break
                    if u32(buf, nxt - 4)[0] != blen:
                        raise _Damage(base + pos, f"{_block_name(btype)} block whose trailing "
                                      f"length disagrees with its leading length {blen}")
                    if btype == _EPB:
                        if blen < 32:
                            raise _Damage(base + pos, f"enhanced packet block with a bad length {blen}")
                        if ifid >= len(ifaces):
                            raise _Damage(base + pos, f"record {n + 1} names interface {ifid}, "
                                          f"which was never described")
                        linktype, ifname, mul, div, off_ns, limit, ok, _snap = ifaces[ifid]
                        if caplen > limit or 32 + caplen > blen:
                            raise _Damage(base + pos, f"record {n + 1} claims {caplen} captured "
                                          f"bytes (block length {blen}, snapshot length {limit})")
                        if not ok:
                            raise self._refuse_linktype(linktype, f" (interface {ifid}"
                                                        + (f" {ifname}" if ifname else "") + ")")
                        ticks = (hi << 32) | lo
                        ns = (ticks * mul if div == 1 else ticks * mul // div) + off_ns
                        n += 1
                        last_ns = ns
                        f = new(frame)
                        f.n = n
                        f.ts = ns / 1000000000
                        f.ts_ns = ns
                        f.linktype = linktype
                        f.data = buf[pos + 28:pos + 28 + caplen]
                        f.orig_len = orig_len
                        f.ifname = ifname
                        f.offset = base + pos
                        yield f
                    elif btype == _IDB:
                        if blen < 20:
                            raise _Damage(base + pos, f"interface description block with a bad "
                                          f"length {blen}")
                        self._parse_idb(buf, pos, nxt, s, ifaces, base + pos)
                    elif btype == _SPB:
                        if blen < 16:
                            raise _Damage(base + pos, f"simple packet block with a bad length {blen}")
                        if not ifaces:
                            raise _Damage(base + pos, f"record {n + 1} comes before any interface "
                                          f"was described")
                        linktype, ifname, _m, _d, _o, limit, ok, snap = ifaces[0]
                        orig_len = u32(buf, pos + 8)[0]
                        caplen = min(orig_len, blen - 16)
                        if snap:
                            caplen = min(caplen, snap)
                        if not ok:
                            raise self._refuse_linktype(linktype, " (interface 0)")
                        n += 1
                        # An SPB has no timestamp: it inherits the previous packet's, which keeps
                        # the capture in time order for `at` times.
                        yield frame(n, last_ns / 1000000000, last_ns, linktype,
                                    buf[pos + 12:pos + 12 + caplen], orig_len, ifname, base + pos)
                    elif btype == _OPB:
                        if blen < 32:
                            raise _Damage(base + pos, f"packet block with a bad length {blen}")
                        ifid, _drops, hi, lo, caplen, orig_len = s["opb"].unpack_from(buf, pos + 8)
                        if ifid >= len(ifaces):
                            raise _Damage(base + pos, f"record {n + 1} names interface {ifid}, "
                                          f"which was never described")
                        linktype, ifname, mul, div, off_ns, limit, ok, _snap = ifaces[ifid]
                        if caplen > limit or 32 + caplen > blen:
                            raise _Damage(base + pos, f"record {n + 1} claims {caplen} captured "
                                          f"bytes (block length {blen}, snapshot length {limit})")
                        if not ok:
                            raise self._refuse_linktype(linktype, f" (interface {ifid})")
                        ticks = (hi << 32) | lo
                        ns = (ticks * mul if div == 1 else ticks * mul // div) + off_ns
                        n += 1
                        last_ns = ns
                        yield frame(n, ns / 1000000000, ns, linktype, buf[pos + 28:pos + 28 + caplen],
                                    orig_len, ifname, base + pos)
                    # Every other block (name resolution, statistics, secrets, custom...) is
                    # skipped by its length.
                    pos = nxt
                held = end - pos
                buf = self._more(buf, pos, need)
                base += pos
                pos = 0
                if len(buf) == held:
                    if held:
                        what = _block_name(blk(buf, 0)[0]) if held >= 8 else "block"
                        if what in ("enhanced packet", "simple packet", "packet"):
                            raise _Damage(base, f"record {n + 1} cut short", "truncated")
                        raise _Damage(base, f"{what} block cut short", "truncated")
                    break
        except _Damage as d:
            self._stop(n, d)
            return
        self.count = n

    # --- the public face ------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        return self._iter

    def __enter__(self) -> "CaptureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._close_stream:
            self._stream.close()

    def __repr__(self) -> str:
        return f"CaptureReader({self.path!r}, format={self.format!r})"


def _block_name(btype: int) -> str:
    return _BLOCK_NAMES.get(btype, f"type 0x{btype:x}")


def open_capture(path: str | os.PathLike) -> CaptureReader:
    """Open a pcap or pcapng capture (``-`` is standard input) for one pass of Frames."""
    path = os.fspath(path)
    if path == "-":
        stream = sys.stdin.buffer
        if stream.isatty():
            raise CaptureError("<stdin>: standard input is a terminal; pipe a capture into it")
        reader = CaptureReader(path, stream, close_stream=False)
    else:
        try:
            # Unbuffered: each of our 1 MiB reads is one read(2), with no second copy.
            stream = open(path, "rb", buffering=0)
        except OSError as e:
            raise CaptureError(f"{path}: cannot open: {e.strerror or e}") from None
        reader = CaptureReader(path, stream, close_stream=True)
    try:
        head = reader._fill(b"", 4)
        if not head:
            raise CaptureError(f"{reader.name}: empty file, not a capture")
        magic = head[:4]
        if magic in _PCAP_MAGICS:
            reader._iter = reader._start_pcap(head)
        elif magic == _PCAPNG_SHB:
            reader._iter = reader._start_pcapng(head)
        else:
            raise CaptureError(f"{reader.name}: not a capture ({_what_is(magic)})")
    except BaseException:
        reader.close()
        raise
    return reader


def _what_is(magic: bytes) -> str:
    """A few words on what a non-capture looks like, for the refusal message."""
    if len(magic) < 4:
        return f"only {len(magic)} byte{'s' if len(magic) != 1 else ''} long"
    if magic[:2] == b"\x1f\x8b":
        return "gzip-compressed; gunzip it first"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd-compressed; unzstd it first"
    if magic in (b"\xa1\xb2\xcd\x34", b"\x34\xcd\xb2\xa1"):
        return "Kuznetzov's modified pcap format, which is not supported"
    return f"unknown magic {magic.hex()}; expected pcap (a1b2c3d4 / a1b23c4d) or pcapng (0a0d0d0a)"
