"""Capture writers: classic pcap for ``--split``, pcapng with comments for ``--annotate``.

``PcapWriter`` writes one link type per file, as tcpdump expects. ``PcapngWriter``
declares an interface (IDB) for each (link type, interface name) pair the first time
it is used, with nanosecond timestamps (if_tsresol 9) so original timestamps survive
at full resolution, and can attach to each packet a comment (opt_comment) and the
process id of the socket that took it (epb_processid_threadid, option 8 of the pcapng
draft: process id and thread id as two 32-bit integers, 0 meaning unknown).

Timestamps are given as integer nanoseconds (``Frame.ts_ns``, exact) or float seconds.
Both writers write little-endian files, buffered; ``-`` means standard output.

What each format can hold: a pcap record has unsigned 32-bit seconds (1970 to 2106);
a timestamp outside raises ``ValueError``. A pcapng packet has an unsigned 64-bit
count of nanoseconds (1970 to 2554) from its interface's if_tsoffset (signed 64-bit
seconds). Timestamps in that plain range are written with no offset; one outside it
(a pcapng input may hold it: a negative if_tsoffset, coarse ticks, far-future dates)
goes on a twin interface, same link type and name, whose if_tsoffset is the
timestamp's second rounded down to a multiple of 2**34 s, so every instant whose
second fits a signed 64-bit number is written exactly.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import BinaryIO

__all__ = ["PcapWriter", "PcapngWriter"]

_NS = 1000000000
_BUFSIZE = 1 << 20

_PCAP_HDR = struct.Struct("<IHHiIII")
_PCAP_REC = struct.Struct("<IIII")
_BLK = struct.Struct("<II")
_U32 = struct.Struct("<I")
_OPT = struct.Struct("<HH")
_EPB = struct.Struct("<IIIIIII")    # type, length, ifid, ts high, ts low, caplen, orig len
_PIDTID = struct.Struct("<HHII")    # option code, length, pid, tid

_SHB_TYPE, _IDB_TYPE, _EPB_TYPE = 0x0A0D0D0A, 1, 6
_OPT_COMMENT, _OPT_IF_NAME, _OPT_IF_TSRESOL, _OPT_SHB_USERAPPL = 1, 2, 9, 4
_OPT_EPB_FLAGS, _OPT_EPB_PIDTID = 2, 8
_OPT_IF_TSOFFSET = 14
_DIRECTION_FLAGS = {None: None, "in": 1, "out": 2}
_U64 = 1 << 64
# The if_tsoffset grid: 2**34 s of nanoseconds (1.7e19) fit in the 64-bit tick count.
_GRID = 1 << 34


def _to_ns(ts: int | float) -> int:
    """Nanoseconds since the epoch from int nanoseconds or float seconds."""
    if isinstance(ts, int):
        return ts
    sec = int(ts // 1)
    # Split first: 1.7e9 s * 1e9 in one float would lose everything below ~256 ns.
    return sec * _NS + round((ts - sec) * _NS)


def _seconds(ts: int | float) -> str:
    """A timestamp for messages, in seconds since the epoch."""
    ns = _to_ns(ts)
    sec, frac = divmod(abs(ns), _NS)
    return f"{'-' if ns < 0 else ''}{sec}.{frac:09d}"


def _open_out(target) -> tuple[BinaryIO, bool]:
    """A binary stream for a path, ``-`` (stdout) or an open file object; and whether we own it."""
    if hasattr(target, "write"):
        return target, False
    target = os.fspath(target)
    if target == "-":
        return sys.stdout.buffer, False
    return open(target, "wb", buffering=_BUFSIZE), True


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _option(code: int, value: bytes) -> bytes:
    return _OPT.pack(code, len(value)) + value + b"\0" * _pad(len(value))


class _Output:
    """What both writers share: the output file, flushing, closing, ``with`` blocks.
    A file object handed in is flushed but left open; a path is closed."""

    _f = None
    _own = False

    def flush(self) -> None:
        self._f.flush()

    def write_records(self, records, count: int) -> None:
        """``count`` records already in this file's format, as ``write`` makes them (on
        interfaces already declared, for pcapng): the batch engine builds a chunk's."""
        self._write(records)
        self.count += count

    def close(self) -> None:
        if self._f is None:
            return
        if self._own:
            self._f.close()
        else:
            self._f.flush()
        self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PcapWriter(_Output):
    """Classic pcap (magic a1b2c3d4, or a1b23c4d with ``nanos``), one link type per file.

    Data longer than ``snaplen`` is cut to it; ``orig_len`` keeps the length on the wire.
    """

    def __init__(self, path_or_fileobj, linktype: int, snaplen: int = 262144, nanos: bool = False):
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanos = nanos
        self.count = 0
        self._f, self._own = _open_out(path_or_fileobj)
        self._write = self._f.write
        self._write(_PCAP_HDR.pack(0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0,
                                   snaplen, linktype))

    def write(self, ts: int | float, data: bytes, orig_len: int | None = None) -> None:
        """One record: ``ts`` in integer nanoseconds or float seconds."""
        sec, ns = divmod(_to_ns(ts), _NS)
        if self.nanos:
            frac = ns
        else:
            frac = (ns + 500) // 1000      # nearest microsecond
            if frac == 1000000:
                sec, frac = sec + 1, 0
        if not 0 <= sec <= 0xFFFFFFFF:
            raise ValueError(f"timestamp {_seconds(ts)} s is outside what a pcap record "
                             f"holds (1970 to 2106)")
        if orig_len is None:
            orig_len = len(data)
        if len(data) > self.snaplen:
            data = data[:self.snaplen]
        self._write(_PCAP_REC.pack(sec, frac, len(data), max(orig_len, len(data))))
        self._write(data)
        self.count += 1

    def write_frame(self, frame) -> None:
        """Copy a ``demux.capture.Frame`` (its link type must be this file's)."""
        if frame.linktype != self.linktype:
            raise ValueError(f"frame {frame.n} has link type {frame.linktype}, "
                             f"this pcap holds link type {self.linktype}")
        self.write(frame.ts_ns, frame.data, frame.orig_len)


class PcapngWriter(_Output):
    """pcapng: one section, an IDB per (link type, interface name), EPBs with options."""

    def __init__(self, path_or_fileobj, snaplen: int = 262144, application: str | None = None):
        self.snaplen = snaplen
        self.count = 0
        self._ifaces: dict[tuple[int, str | None, int], int] = {}
        self._f, self._own = _open_out(path_or_fileobj)
        self._write = self._f.write
        if application is None:
            from demux import __version__
            application = f"demux {__version__}"
        opts = _option(_OPT_SHB_USERAPPL, application.encode()) + _OPT.pack(0, 0)
        body = _U32.pack(0x1A2B3C4D) + struct.pack("<HHq", 1, 0, -1) + opts
        self._block(_SHB_TYPE, body)

    def _block(self, btype: int, body: bytes) -> None:
        blen = 12 + len(body)
        self._write(_BLK.pack(btype, blen) + body + _U32.pack(blen))

    def interface(self, linktype: int, ifname: str | None = None, tsoffset: int = 0) -> int:
        """The interface id for (linktype, ifname, if_tsoffset in seconds), declaring it
        on first use."""
        key = (linktype, ifname, tsoffset)
        ifid = self._ifaces.get(key)
        if ifid is None:
            opts = b""
            if ifname is not None:
                opts += _option(_OPT_IF_NAME, ifname.encode("utf-8"))
            opts += _option(_OPT_IF_TSRESOL, b"\x09")
            if tsoffset:
                opts += _option(_OPT_IF_TSOFFSET, struct.pack("<q", tsoffset))
            opts += _OPT.pack(0, 0)
            self._block(_IDB_TYPE, struct.pack("<HHI", linktype, 0, self.snaplen) + opts)
            ifid = self._ifaces[key] = len(self._ifaces)
        return ifid

    def write(self, ts: int | float, data: bytes, orig_len: int | None = None, *,
              linktype: int = 1, ifname: str | None = None, comment: str | None = None,
              pid: int | None = None, tid: int = 0, direction: str | None = None) -> None:
        """One EPB. ``comment`` becomes opt_comment; ``pid`` (and ``tid``, 0 = unknown)
        epb_processid_threadid; ``direction`` ``"in"``/``"out"`` the epb_flags direction bits."""
        ticks = _to_ns(ts)
        offset = 0
        if not 0 <= ticks < _U64:
            offset = ticks // _NS // _GRID * _GRID
            if not -(1 << 63) <= offset < 1 << 63:
                raise ValueError(f"timestamp {_seconds(ts)} s is outside what a pcapng "
                                 f"interface can hold (a signed 64-bit count of seconds)")
            ticks -= offset * _NS
        ifid = self.interface(linktype, ifname, offset)
        if orig_len is None:
            orig_len = len(data)
        if len(data) > self.snaplen:
            data = data[:self.snaplen]
        caplen = len(data)
        opts = self.epb_options(comment, pid, tid, direction)
        pad = _pad(caplen)
        blen = 32 + caplen + pad + len(opts)
        self._write(_EPB.pack(_EPB_TYPE, blen, ifid, ticks >> 32, ticks & 0xFFFFFFFF, caplen,
                              max(orig_len, caplen)))
        self._write(data + b"\0" * pad + opts + _U32.pack(blen))
        self.count += 1

    @staticmethod
    def epb_options(comment: str | None = None, pid: int | None = None, tid: int = 0,
                    direction: str | None = None) -> bytes:
        """The options ``write`` puts in an EPB after the data (b"" when none)."""
        opts = b""
        if comment is not None:
            opts += _option(_OPT_COMMENT, comment.encode("utf-8"))
        flags = _DIRECTION_FLAGS[direction]
        if flags is not None:
            opts += _OPT.pack(_OPT_EPB_FLAGS, 4) + _U32.pack(flags)
        # The option holds 32-bit ids; a scenario's pid beyond that (Linux never has one)
        # is left to the comment rather than failing the whole file.
        if pid is not None and 0 <= pid <= 0xFFFFFFFF and 0 <= tid <= 0xFFFFFFFF:
            opts += _PIDTID.pack(_OPT_EPB_PIDTID, 8, pid, tid)
        if opts:
            opts += _OPT.pack(0, 0)
        return opts

    def interface_id(self, linktype: int, ifname: str | None = None, tsoffset: int = 0) -> int | None:
        """The id of an interface already declared, else None (``interface`` declares)."""
        return self._ifaces.get((linktype, ifname, tsoffset))

    def write_frame(self, frame, comment: str | None = None, pid: int | None = None,
                    direction: str | None = None) -> None:
        """Copy a ``demux.capture.Frame``, keeping its link type, interface and timestamp."""
        self.write(frame.ts_ns, frame.data, frame.orig_len, linktype=frame.linktype,
                   ifname=frame.ifname, comment=comment, pid=pid, direction=direction)
