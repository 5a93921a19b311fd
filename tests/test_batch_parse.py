"""The batch engine's numba header parser (demux.batch._nb.parse) against demux.wire.parse.

Every frame the numba parser reads (KIND = FAST) must carry the fields the reference
parser gives it: addresses, ports, flags, sequence numbers, window, payload length and
the TCP timestamp value. Real captures in pcaps/ and hypothesis-generated TCP option
lists (the timestamp found after any other options, cut or malformed lists) check it.
"""

from __future__ import annotations

import glob
import os
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from demux.batch import _nb
from demux.wire import parse

HERE = os.path.dirname(__file__)
PCAPS = sorted(glob.glob(os.path.join(HERE, "..", "pcaps", "*.pcap")))


def _columns(data: bytes):
    """walk + parse over a little-endian microsecond pcap: the columns, the frames."""
    buf = np.frombuffer(data, np.uint8)
    lt = struct.unpack_from("<I", data, 20)[0] & 0xFFFF
    ifs = np.zeros((1, 7), np.int64)
    ifs[0] = (lt, 1000, 1, 0, 262144, 1, 0)
    C = np.zeros((1 << 12, _nb.NCOL), np.int64)
    pos, k, code, _ = _nb.walk(buf, 24, len(buf), 0, True, ifs, 1, 0, C, len(C), 0, 0, True)
    assert code == _nb.W_MORE and pos == len(buf)
    _nb.parse(buf, C, k)
    frames, pos = [], 24
    while pos < len(data):
        _, _, cap, orig = struct.unpack_from("<IIII", data, pos)
        frames.append((data[pos + 16:pos + 16 + cap], orig))
        pos += 16 + cap
    assert len(frames) == k
    return C[:k], frames, lt


def _int(addr: bytes) -> tuple[int, int]:
    if len(addr) == 4:
        return 0, int.from_bytes(addr, "big")
    return int.from_bytes(addr[:8], "big", signed=True), int.from_bytes(addr[8:], "big", signed=True)


def _agree(C, frames, lt) -> int:
    fast = 0
    for row, (data, orig) in zip(C, frames):
        if row[_nb.KIND] != _nb.FAST:
            continue
        fast += 1
        p = parse(1, 0.0, lt, data, None, orig)
        assert p.error is None and p.frag is None
        assert (row[_nb.FAM], row[_nb.PROTO]) == (p.family, p.proto)
        assert (row[_nb.SA_HI], row[_nb.SA_LO]) == _int(p.src)
        assert (row[_nb.DA_HI], row[_nb.DA_LO]) == _int(p.dst)
        assert (row[_nb.SPORT], row[_nb.DPORT], row[_nb.PLEN]) == (p.sport, p.dport, p.payload_len)
        if p.proto == 6:
            assert (row[_nb.FLAGS], row[_nb.SEQ], row[_nb.ACK], row[_nb.WIN]) == (p.flags, p.seq, p.ack, p.window)
            assert row[_nb.TSVAL] == (-1 if p.tsval is None else p.tsval)
    return fast


def test_real_captures():
    fast = 0
    for path in PCAPS:
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] != b"\xd4\xc3\xb2\xa1":
            continue
        fast += _agree(*_columns(data))
    assert fast > 500


_OPTION = st.one_of(
    st.just(b"\x01"),                                                       # NOP
    st.just(b"\x00"),                                                       # end of list
    st.binary(min_size=4, max_size=4).map(lambda v: b"\x08\x0a" + v + v[::-1]),  # timestamp
    st.just(b"\x02\x04\x05\xb4"),                                           # MSS
    st.just(b"\x03\x03\x07"),                                               # window scale
    st.just(b"\x04\x02"),                                                   # SACK permitted
    st.binary(min_size=1, max_size=12),                                     # anything
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.lists(_OPTION, max_size=6).map(b"".join),
                          # Linux's own layout: NOP, NOP, timestamp
                          st.binary(min_size=8, max_size=8).map(lambda v: b"\x01\x01\x08\x0a" + v)),
                min_size=1, max_size=20),
       st.integers(0, 255), st.integers(0, 65535))
def test_generated_options(options, flags, window):
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, opts in enumerate(options):
        opts = (opts + b"\x00" * 3)[:40 - 40 % 4] if len(opts) > 40 else opts + b"\x00" * (-len(opts) % 4)
        tcp = struct.pack("!HHIIBBHHH", 40000 + i, 80, 7 * i, 9 * i, (5 + len(opts) // 4) << 4, flags,
                          window, 0, 0) + opts + b"x" * i
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                         bytes([10, 1, 0, 2]), bytes([10, 0, 0, 1]))
        frame = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + ip + tcp
        out.append(struct.pack("<IIII", 1, i, len(frame), len(frame)) + frame)
    C, frames, lt = _columns(b"".join(out))
    assert _agree(C, frames, lt) == len(options)
