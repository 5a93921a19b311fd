"""Capture readers and writers (demux.capture, demux.pcapout).

scapy is the oracle for files it can write (pcap in both byte orders and resolutions,
pcapng); what it cannot write (big-endian pcapng, several interfaces with different
if_tsresol, SPB, OPB, unknown blocks, several sections) is built here byte by byte
from the pcapng draft. tcpdump and tshark, when installed, check what we write.
"""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from demux.capture import MAX_RECORD, SUPPORTED_LINKTYPES, Frame, open_capture
from demux.errors import CaptureError
from demux.pcapout import PcapngWriter, PcapWriter

scapy_all = pytest.importorskip("scapy.all")
from scapy.all import IP, TCP, UDP, IPv6, raw  # noqa: E402
from scapy.all import Ether as _Ether  # noqa: E402
from scapy.utils import PcapNgWriter as ScapyNgWriter  # noqa: E402
from scapy.utils import PcapWriter as ScapyPcapWriter  # noqa: E402
from scapy.utils import rdpcap  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
T0 = 1764000000


def packets():
    """A handful of ordinary frames with microsecond timestamps."""
    Ether = lambda: _Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # noqa: E731
    ps = [
        Ether() / IP(src="192.168.1.5", dst="10.0.0.1") / TCP(sport=54321, dport=80, flags="S"),
        Ether() / IP(src="10.0.0.1", dst="192.168.1.5") / TCP(sport=80, dport=54321, flags="SA"),
        Ether() / IPv6(src="2001:db8::5", dst="2001:db8::1") / UDP(sport=5353, dport=53) / (b"q" * 33),
        Ether() / IP(src="10.0.0.9", dst="10.0.0.1") / UDP(sport=1, dport=2) / (b"x" * 1400),
    ]
    for i, p in enumerate(ps):
        p.time = Decimal(T0 + i) + Decimal(i * 123457 % 1000000) / 1000000
    return ps


def read_all(path) -> tuple[list[Frame], object]:
    with open_capture(path) as r:
        frames = list(r)
    return frames, r


def same_frames(a: list[Frame], b: list[Frame]) -> None:
    """Equal in everything but ifname and offset."""
    key = lambda f: (f.n, f.ts, f.ts_ns, f.linktype, f.data, f.orig_len)  # noqa: E731
    assert [key(f) for f in a] == [key(f) for f in b]


# --- byte-level pcap / pcapng builders --------------------------------------------


def pcap_bytes(records, bo="<", nanos=False, linktype=1, snaplen=65535) -> bytes:
    """records: (sec, frac, data, orig_len)."""
    out = [struct.pack(bo + "IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0,
                       snaplen, linktype)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(bo + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def opt(bo, code, value: bytes) -> bytes:
    return struct.pack(bo + "HH", code, len(value)) + _pad(value)


def block(bo, btype, body: bytes) -> bytes:
    body = _pad(body)
    n = 12 + len(body)
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def shb(bo) -> bytes:
    return block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1)
                 + opt(bo, 4, b"test") + opt(bo, 0, b""))


def idb(bo, linktype=1, snaplen=0, name=None, tsresol=None, tsoffset=None) -> bytes:
    opts = b""
    if name is not None:
        opts += opt(bo, 2, name.encode())
    if tsresol is not None:
        opts += opt(bo, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += opt(bo, 14, struct.pack(bo + "q", tsoffset))
    if opts:
        opts += opt(bo, 0, b"")
    return block(bo, 1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts)


def epb(bo, ifid, ticks, data, orig=None, comment=None) -> bytes:
    orig = len(data) if orig is None else orig
    opts = opt(bo, 1, comment.encode()) + opt(bo, 0, b"") if comment else b""
    return block(bo, 6, struct.pack(bo + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF,
                                    len(data), orig) + _pad(data) + opts)


def spb(bo, data, orig=None) -> bytes:
    return block(bo, 3, struct.pack(bo + "I", len(data) if orig is None else orig) + _pad(data))


def opb(bo, ifid, ticks, data) -> bytes:
    return block(bo, 2, struct.pack(bo + "HHIIII", ifid, 0, ticks >> 32, ticks & 0xFFFFFFFF,
                                    len(data), len(data)) + _pad(data))


def nrb(bo) -> bytes:
    rec = struct.pack(bo + "HH", 1, 4 + 10) + _pad(bytes([10, 0, 0, 1]) + b"host.test\0")
    return block(bo, 4, rec + struct.pack(bo + "HH", 0, 0))


def unknown_blocks(bo) -> bytes:
    return (nrb(bo)
            + block(bo, 5, struct.pack(bo + "III", 0, 0, 0))            # ISB
            + block(bo, 10, struct.pack(bo + "II", 0x544C534B, 4) + b"keys")  # DSB
            + block(bo, 0x00000BAD, struct.pack(bo + "I", 32473) + b"custom..")
            + block(bo, 0x7FFF1234, b"local use block"))


# --- scapy as the oracle -------------------------------------------------------------


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_from_scapy(tmp_path, endianness, nano):
    path = tmp_path / "s.pcap"
    ps = packets()
    w = ScapyPcapWriter(str(path), linktype=1, endianness=endianness, nano=nano)
    for p in ps:
        w.write(p)
    w.close()
    frames, r = read_all(path)
    assert r.format == "pcap" and r.linktypes == {1} and r.warning is None and r.truncated_at is None
    theirs = rdpcap(str(path))
    assert len(frames) == len(theirs) == len(ps)
    for i, (f, p) in enumerate(zip(frames, theirs), 1):
        assert f.n == i
        assert f.data == raw(p)
        assert f.orig_len == p.wirelen
        assert f.linktype == 1 and f.ifname is None
        assert f.ts_ns == int(p.time * 1_000_000_000)
        assert f.ts == f.ts_ns / 10**9     # correctly rounded, not via a float 1e9
    assert frames[0].offset == 24
    assert frames[1].offset == 24 + 16 + len(frames[0].data)


def test_pcapng_from_scapy_matches_pcap(tmp_path):
    ps = packets()
    w = ScapyNgWriter(str(tmp_path / "s.pcapng"))
    for p in ps:
        w.write(p)
    w.close()
    w = ScapyPcapWriter(str(tmp_path / "s.pcap"), linktype=1)
    for p in ps:
        w.write(p)
    w.close()
    ng, rng = read_all(tmp_path / "s.pcapng")
    pc, _ = read_all(tmp_path / "s.pcap")
    assert rng.format == "pcapng" and rng.linktypes == {1}
    assert len(ng) == len(ps)
    same_frames(ng, pc)


# --- hand-built files -------------------------------------------------------------------


def test_big_endian_nanosecond_pcap_by_hand(tmp_path):
    data = raw(packets()[0])
    path = tmp_path / "be.pcap"
    path.write_bytes(pcap_bytes([(T0, 999_999_999, data, 1514), (T0 + 1, 1, data[:20], 60)],
                                bo=">", nanos=True, linktype=101))
    frames, r = read_all(path)
    assert r.linktypes == {101}
    assert [f.ts_ns for f in frames] == [T0 * 10**9 + 999_999_999, (T0 + 1) * 10**9 + 1]
    assert frames[0].orig_len == 1514 and frames[1].data == data[:20]


def test_pcap_linktype_ignores_fcs_bits(tmp_path):
    path = tmp_path / "fcs.pcap"
    # LINKTYPE field with the FCS-present bits (28..31) set: still Ethernet.
    path.write_bytes(pcap_bytes([(T0, 0, b"\0" * 60, 60)], linktype=1 | (0x2 << 28) | (1 << 27)))
    frames, r = read_all(path)
    assert r.linktypes == {1} and frames[0].linktype == 1


def multi_pcapng(path: Path) -> list[tuple]:
    """Two sections (LE then BE), several interfaces with different resolutions,
    SPB, OPB and blocks a reader must skip. Returns the expected frames."""
    d = [bytes([i]) * (40 + i) for i in range(8)]
    ns = T0 * 10**9 + 123_456_789
    le = (shb("<") + unknown_blocks("<")
          + idb("<", 1, name="eth0")                            # default: microseconds
          + idb("<", 101, name="tun0", tsresol=9)               # nanoseconds
          + idb("<", 113, tsresol=0x80 | 30)                     # 2^-30 s
          + idb("<", 1, name="ms", tsresol=3, tsoffset=100)      # milliseconds, +100 s
          + epb("<", 0, ns // 1000, d[0], orig=1500, comment="hello")
          + epb("<", 1, ns, d[1])
          + nrb("<")
          + epb("<", 2, (ns << 30) // 10**9, d[2])
          + epb("<", 3, ns // 10**6 - 100_000, d[3])
          + opb("<", 1, ns + 5, d[4]))
    be = (shb(">") + idb(">", 276, name="any", tsresol=9, snaplen=50)
          + unknown_blocks(">")
          + spb(">", d[5][:50], orig=len(d[5]))     # no timestamp: inherits the previous one
          + epb(">", 0, ns + 7, d[6]) + spb(">", d[7][:47]))
    path.write_bytes(le + be)
    two30 = ((ns << 30) // 10**9) * 10**9 >> 30
    return [
        (1, ns // 1000 * 1000, 1, d[0], 1500, "eth0"),
        (2, ns, 101, d[1], len(d[1]), "tun0"),
        (3, two30, 113, d[2], len(d[2]), None),
        (4, (ns // 10**6) * 10**6, 1, d[3], len(d[3]), "ms"),
        (5, ns + 5, 101, d[4], len(d[4]), "tun0"),
        (6, ns + 5, 276, d[5][:50], len(d[5]), "any"),
        (7, ns + 7, 276, d[6], len(d[6]), "any"),
        (8, ns + 7, 276, d[7][:47], 47, "any"),
    ]


def test_pcapng_sections_interfaces_resolutions_and_unknown_blocks(tmp_path):
    path = tmp_path / "multi.pcapng"
    expected = multi_pcapng(path)
    frames, r = read_all(path)
    assert r.warning is None and r.truncated_at is None
    assert r.format == "pcapng"
    assert r.linktypes == {1, 101, 113, 276}
    got = [(f.n, f.ts_ns, f.linktype, f.data, f.orig_len, f.ifname) for f in frames]
    assert got == expected
    assert all(f.ts == f.ts_ns / 10**9 for f in frames)
    blob = path.read_bytes()
    for f in frames:   # offsets point at the packet's block
        assert struct.unpack_from("<I" if f.n <= 5 else ">I", blob, f.offset)[0] in (2, 3, 6)


def test_pcapng_power_of_two_resolution_is_floored_not_drifting(tmp_path):
    path = tmp_path / "p2.pcapng"
    path.write_bytes(shb("<") + idb("<", 1, tsresol=0x80 | 1) + epb("<", 0, 3, b"\0" * 20))
    (f,), _ = read_all(path)
    assert f.ts_ns == 1_500_000_000 and f.ts == 1.5


# --- standard input ------------------------------------------------------------------------


class Trickle:
    """A pipe-like stream that hands out a few bytes per read."""

    def __init__(self, data: bytes, step: int):
        self._b = io.BytesIO(data)
        self.step = step

    def read1(self, n=-1):
        return self._b.read(min(n, self.step) if n > 0 else self.step)

    read = read1

    def isatty(self):
        return False


@pytest.mark.parametrize("step", [1, 7, 4096])
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_stdin_in_small_pieces_reads_the_same(tmp_path, monkeypatch, step, kind):
    path = tmp_path / ("c." + kind)
    if kind == "pcap":
        path.write_bytes(pcap_bytes([(T0, i, raw(p), len(raw(p))) for i, p in enumerate(packets())]))
    else:
        multi_pcapng(path)
    want, _ = read_all(path)
    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": Trickle(path.read_bytes(), step)})())
    with open_capture("-") as r:
        got = list(r)
    assert r.path == "-" and r.warning is None
    assert [(f.n, f.ts_ns, f.data, f.ifname, f.offset) for f in got] == \
           [(f.n, f.ts_ns, f.data, f.ifname, f.offset) for f in want]


def test_stdin_through_a_real_pipe(tmp_path):
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes([(T0, i, bytes([i]) * 100, 100) for i in range(50)]))
    code = ("from demux.capture import open_capture\n"
            "r = open_capture('-')\n"
            "print(sum(len(f.data) for f in r), r.format, r.warning)\n")
    with open(path, "rb") as f:
        out = subprocess.run([sys.executable, "-c", code], stdin=f, capture_output=True,
                             text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5000", "pcap", "None"]


def test_big_records_across_chunk_boundaries(tmp_path):
    recs = [(T0, i, bytes([i % 251]) * (MAX_RECORD - i), MAX_RECORD) for i in range(9)]
    path = tmp_path / "big.pcap"
    path.write_bytes(pcap_bytes(recs, snaplen=MAX_RECORD))
    frames, r = read_all(path)
    assert r.warning is None
    assert [f.data for f in frames] == [d for _, _, d, _ in recs]


# --- damage --------------------------------------------------------------------------------


@pytest.mark.parametrize("cut_into", [3, 16, 30])   # inside the record header, just after, inside data
def test_truncated_pcap(tmp_path, cut_into):
    recs = [(T0, i, bytes([i]) * 60, 60) for i in range(5)]
    blob = pcap_bytes(recs)
    rec3 = 24 + 3 * (16 + 60)
    path = tmp_path / "cut.pcap"
    path.write_bytes(blob[:rec3 + cut_into])
    frames, r = read_all(path)
    assert [f.n for f in frames] == [1, 2, 3]
    assert r.truncated_at == rec3
    assert r.warning == f"{path}: truncated at byte {rec3} (record 4 cut short); 3 packets read"
    assert "\n" not in r.warning


def test_truncated_pcapng(tmp_path):
    path = tmp_path / "multi.pcapng"
    multi_pcapng(path)
    full, _ = read_all(path)
    seventh = full[6].offset
    path.write_bytes(path.read_bytes()[:seventh + 33])
    frames, r = read_all(path)
    same_frames(frames, full[:6])
    assert r.truncated_at == seventh
    assert "record 7 cut short" in r.warning and "6 packets read" in r.warning


def test_pcap_ending_exactly_after_the_header_is_empty_not_damaged(tmp_path):
    path = tmp_path / "hdr.pcap"
    path.write_bytes(pcap_bytes([]))
    frames, r = read_all(path)
    assert frames == [] and r.warning is None and r.truncated_at is None


@pytest.mark.parametrize("bad_caplen,snaplen", [(0x7FFFFFFF, 65535), (2000, 1500), (MAX_RECORD + 1, 0)])
def test_record_that_lies_about_its_length(tmp_path, bad_caplen, snaplen):
    recs = [(T0, i, bytes([i]) * 60, 60) for i in range(4)]
    blob = bytearray(pcap_bytes(recs, snaplen=snaplen))
    rec2 = 24 + 2 * 76
    struct.pack_into("<I", blob, rec2 + 8, bad_caplen)
    path = tmp_path / "lie.pcap"
    path.write_bytes(bytes(blob) + b"\0" * 4000)
    frames, r = read_all(path)
    assert len(frames) == 2
    assert r.truncated_at == rec2
    assert f"record 3 claims {bad_caplen} captured bytes" in r.warning


def test_pcapng_block_with_a_bad_length(tmp_path):
    blob = shb("<") + idb("<") + epb("<", 0, 1, b"a" * 40)
    bad = bytearray(epb("<", 0, 2, b"b" * 40))
    struct.pack_into("<I", bad, 4, 13)                 # not a multiple of 4
    path = tmp_path / "bad.pcapng"
    path.write_bytes(blob + bytes(bad) + epb("<", 0, 3, b"c" * 40))
    frames, r = read_all(path)
    assert len(frames) == 1 and r.truncated_at == len(blob)
    assert r.warning == (f"{path}: damaged at byte {len(blob)} (enhanced packet block with a "
                         f"bad length 13); 1 packet read")


def test_pcapng_trailing_length_mismatch_is_damage(tmp_path):
    blob = shb("<") + idb("<")
    bad = bytearray(epb("<", 0, 2, b"b" * 40))
    struct.pack_into("<I", bad, len(bad) - 4, 4)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(blob + bytes(bad))
    frames, r = read_all(path)
    assert frames == [] and r.truncated_at == len(blob) and "trailing length" in r.warning


def test_pcapng_epb_for_undeclared_interface_is_damage(tmp_path):
    path = tmp_path / "noif.pcapng"
    blob = shb("<") + idb("<") + epb("<", 0, 1, b"a" * 40)
    path.write_bytes(blob + epb("<", 5, 1, b"a" * 40))
    frames, r = read_all(path)
    assert len(frames) == 1 and r.truncated_at == len(blob) and "interface 5" in r.warning


# --- refusals --------------------------------------------------------------------------------


def refused(path) -> str:
    with pytest.raises(CaptureError) as e:
        open_capture(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert e.value.status == 2
    return msg


def test_missing_file(tmp_path):
    assert "No such file" in refused(tmp_path / "nope.pcap")


def test_directory(tmp_path):
    assert "cannot open" in refused(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.pcap").write_bytes(b"")
    assert "empty" in refused(tmp_path / "e.pcap")


def test_not_a_capture(tmp_path):
    (tmp_path / "t.pcap").write_text("hello, this is text\n")
    assert "not a capture" in refused(tmp_path / "t.pcap")
    (tmp_path / "short").write_bytes(b"\xd4\xc3")
    assert "not a capture" in refused(tmp_path / "short")


def test_gzipped_capture_says_so(tmp_path):
    (tmp_path / "c.pcap.gz").write_bytes(gzip.compress(pcap_bytes([])))
    assert "gzip" in refused(tmp_path / "c.pcap.gz")


def test_pcap_header_cut_short(tmp_path):
    (tmp_path / "h.pcap").write_bytes(pcap_bytes([])[:10])
    assert "header cut short" in refused(tmp_path / "h.pcap")


def test_unsupported_linktype_pcap(tmp_path):
    (tmp_path / "u.pcap").write_bytes(pcap_bytes([(T0, 0, b"\0" * 40, 40)], linktype=147))
    msg = refused(tmp_path / "u.pcap")
    assert "unsupported link type 147" in msg


def test_unsupported_linktype_pcapng_refused_at_open(tmp_path):
    (tmp_path / "u.pcapng").write_bytes(shb("<") + idb("<", 189, name="usbmon0")
                                        + epb("<", 0, 1, b"\0" * 40))
    assert "unsupported link type 189" in refused(tmp_path / "u.pcapng")


def test_unused_unsupported_interface_is_harmless(tmp_path):
    (tmp_path / "u.pcapng").write_bytes(shb("<") + idb("<", 189) + idb("<", 1)
                                        + epb("<", 1, 1, b"\0" * 40))
    frames, r = read_all(tmp_path / "u.pcapng")
    assert len(frames) == 1 and r.linktypes == {1, 189}


def test_pcapng_bad_section_header(tmp_path):
    blob = bytearray(shb("<"))
    struct.pack_into("<I", blob, 8, 0x12345678)
    (tmp_path / "b.pcapng").write_bytes(bytes(blob))
    assert "byte-order magic" in refused(tmp_path / "b.pcapng")
    blob = bytearray(shb("<"))
    struct.pack_into("<I", blob, 4, 14)
    (tmp_path / "b.pcapng").write_bytes(bytes(blob))
    assert "bad length 14" in refused(tmp_path / "b.pcapng")


def test_supported_linktypes():
    assert SUPPORTED_LINKTYPES == {0, 1, 12, 14, 101, 108, 113, 228, 229, 276}


# --- writers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("nanos", [False, True])
def test_pcap_writer_round_trip(tmp_path, nanos):
    src = tmp_path / "src.pcapng"
    multi_pcapng(src)
    frames, _ = read_all(src)
    eth = [f for f in frames if f.linktype == 1]
    out = tmp_path / "out.pcap"
    with PcapWriter(out, 1, nanos=nanos) as w:
        for f in eth:
            w.write_frame(f)
    back, r = read_all(out)
    assert r.nanos == nanos and r.linktypes == {1}
    assert [(b.data, b.orig_len) for b in back] == [(f.data, f.orig_len) for f in eth]
    assert [b.ts_ns for b in back] == [f.ts_ns if nanos else (f.ts_ns + 500) // 1000 * 1000 for f in eth]
    theirs = rdpcap(str(out))
    assert [raw(p) for p in theirs] == [f.data for f in eth]
    assert [p.wirelen for p in theirs] == [f.orig_len for f in eth]
    with pytest.raises(ValueError):
        PcapWriter(io.BytesIO(), 1).write_frame(frames[1])   # a RAW frame into an Ethernet file


def test_pcap_writer_float_timestamps_and_snaplen(tmp_path):
    out = tmp_path / "f.pcap"
    with PcapWriter(out, 101, snaplen=64) as w:
        w.write(1764000000.000100, b"\x45" + b"\0" * 99)
        w.write(1764000000.9999996, b"\x45" + b"\0" * 19)    # rounds up into the next second
    back, r = read_all(out)
    assert r.snaplen == 64
    assert [b.ts_ns for b in back] == [1764000000_000100000, 1764000001_000000000]
    assert len(back[0].data) == 64 and back[0].orig_len == 100


def test_pcap_writer_to_a_file_object():
    buf = io.BytesIO()
    w = PcapWriter(buf, 1)
    w.write(0, b"\0" * 14)
    w.close()
    assert buf.getvalue()[:4] == b"\xd4\xc3\xb2\xa1" and len(buf.getvalue()) == 24 + 16 + 14


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_tcpdump_reads_our_pcap(tmp_path):
    out = tmp_path / "t.pcap"
    with PcapWriter(out, 1, nanos=True) as w:
        for p in packets():
            w.write(int(p.time * 10**6) * 1000 + 7, raw(p))
    res = subprocess.run(["tcpdump", "-nn", "-tt", "--nano", "-r", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{T0}.000000007 IP 192.168.1.5.54321 > 10.0.0.1.80: Flags [S]")


def parse_epb_options(blob: bytes) -> list[dict]:
    """Options of every EPB of a little-endian pcapng we wrote, by code."""
    res, pos = [], 0
    while pos < len(blob):
        btype, blen = struct.unpack_from("<II", blob, pos)
        if btype == 6:
            caplen = struct.unpack_from("<I", blob, pos + 20)[0]
            p, end, opts = pos + 28 + caplen + (-caplen % 4), pos + blen - 4, {}
            while p + 4 <= end:
                code, olen = struct.unpack_from("<HH", blob, p)
                if code == 0:
                    break
                opts[code] = blob[p + 4:p + 4 + olen]
                p += 4 + olen + (-olen % 4)
            res.append(opts)
        pos += blen
    return res


def test_pcapng_writer_round_trip(tmp_path):
    src = tmp_path / "src.pcapng"
    multi_pcapng(src)
    frames, _ = read_all(src)
    out = tmp_path / "ann.pcapng"
    with PcapngWriter(out) as w:
        for f in frames:
            w.write_frame(f, comment=f"demux: frame {f.n} é", pid=1000 + f.n if f.n % 2 else None,
                          direction="in" if f.n == 1 else None)
    back, r = read_all(out)
    assert r.format == "pcapng"
    assert [(b.ts_ns, b.linktype, b.data, b.orig_len, b.ifname) for b in back] == \
           [(f.ts_ns, f.linktype, f.data, f.orig_len, f.ifname) for f in frames]
    opts = parse_epb_options(out.read_bytes())
    assert [o[1].decode() for o in opts] == [f"demux: frame {f.n} é" for f in frames]
    assert [struct.unpack("<II", o[8]) if 8 in o else None for o in opts] == \
           [(1000 + f.n, 0) if f.n % 2 else None for f in frames]
    assert struct.unpack("<I", opts[0][2]) == (1,)
    # scapy reads the same packets and the comments
    theirs = rdpcap(str(out))
    assert [raw(p) for p in theirs] == [f.data for f in frames]
    if hasattr(theirs[0], "comments"):
        assert theirs[0].comments == ["demux: frame 1 é".encode()]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_shows_our_comments(tmp_path):
    out = tmp_path / "ann.pcapng"
    with PcapngWriter(out) as w:
        for i, p in enumerate(packets()):
            w.write(int(p.time * 10**6) * 1000, raw(p), comment=f"demux: deliver {i}", pid=1201,
                    ifname="eth0")
    res = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.comment",
                          "-e", "frame.time_epoch"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert [row[0] for row in rows] == [f"demux: deliver {i}" for i in range(4)]
    assert rows[0][1].startswith(f"{T0}.000000000")


# --- properties ------------------------------------------------------------------------------

frame_st = st.tuples(
    st.integers(min_value=0, max_value=2**32 * 10**9 - 1),     # ts_ns within pcap's range
    st.binary(min_size=0, max_size=300),
    st.integers(min_value=0, max_value=100),                     # extra bytes on the wire
    st.sampled_from(sorted(SUPPORTED_LINKTYPES)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frame_st, max_size=12))
def test_round_trip_property(tmp_path, recs):
    lt = recs[0][3] if recs else 1
    pc, ng = io.BytesIO(), io.BytesIO()
    with PcapWriter(pc, lt, nanos=True) as w1, PcapngWriter(ng) as w2:
        for ts, data, extra, _ in recs:
            w1.write(ts, data, len(data) + extra)
            w2.write(ts, data, len(data) + extra, linktype=lt, comment="c" * extra)
    for name, blob in (("p.pcap", pc.getvalue()), ("p.pcapng", ng.getvalue())):
        (tmp_path / name).write_bytes(blob)
    a, ra = read_all(tmp_path / "p.pcap")
    b, rb = read_all(tmp_path / "p.pcapng")
    assert ra.warning is None and rb.warning is None
    assert [(f.ts_ns, f.data, f.orig_len, f.linktype) for f in a] == \
           [(ts, data, len(data) + extra, lt) for ts, data, extra, _ in recs]
    same_frames(a, b)


def test_pcapng_interface_option_overrunning_its_block(tmp_path):
    head = shb("<") + idb("<") + epb("<", 0, 1, b"a" * 40)
    bad = bytearray(idb("<", name="eth1"))
    struct.pack_into("<H", bad, 18, 200)           # if_name claims 200 bytes
    (tmp_path / "o.pcapng").write_bytes(head + bytes(bad) + epb("<", 1, 1, b"b" * 40))
    frames, r = read_all(tmp_path / "o.pcapng")
    assert len(frames) == 1 and r.truncated_at == len(head)
    assert "option running past its block" in r.warning


def test_pcapng_cut_inside_a_non_packet_block(tmp_path):
    head = shb("<") + idb("<") + epb("<", 0, 1, b"a" * 40)
    (tmp_path / "c.pcapng").write_bytes(head + nrb("<")[:20])
    frames, r = read_all(tmp_path / "c.pcapng")
    assert len(frames) == 1 and r.truncated_at == len(head)
    assert r.warning.endswith(f"truncated at byte {len(head)} (name resolution block cut short); "
                              f"1 packet read")


@pytest.mark.skipif(shutil.which("editcap") is None or shutil.which("mergecap") is None,
                    reason="Wireshark's editcap/mergecap not installed")
def test_files_written_by_wireshark_tools(tmp_path):
    """editcap's pcapng (with its own options and statistics blocks), its nanosecond pcap,
    and mergecap's two-interface pcapng all read as the original frames."""
    src = tmp_path / "src.pcap"
    with PcapWriter(src, 1) as w:
        for p in packets():
            w.write(int(p.time * 10**6) * 1000, raw(p))
    raw_src = tmp_path / "raw.pcap"
    with PcapWriter(raw_src, 101, nanos=True) as w:
        w.write(T0 * 10**9 + 5, raw(packets()[0])[14:])
    want, _ = read_all(src)
    for fmt in ("pcapng", "nsecpcap"):
        out = tmp_path / f"e.{fmt}"
        subprocess.run(["editcap", "-F", fmt, str(src), str(out)], check=True, timeout=60,
                       capture_output=True)
        got, r = read_all(out)
        assert r.warning is None
        same_frames(got, want)
    merged = tmp_path / "m.pcapng"
    subprocess.run(["mergecap", "-F", "pcapng", "-w", str(merged), str(src), str(raw_src)],
                   check=True, timeout=60, capture_output=True)
    got, r = read_all(merged)
    assert r.linktypes == {1, 101} and r.warning is None
    # mergecap interleaves by time: the RAW packet lands 5 ns after the first one.
    assert [f.linktype for f in got] == [1, 101, 1, 1, 1]
    assert got[1].ts_ns == T0 * 10**9 + 5 and got[1].data == raw(packets()[0])[14:]
    assert [f.data for f in got if f.linktype == 1] == [f.data for f in want]
