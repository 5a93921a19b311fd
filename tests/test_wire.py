"""The wire layer: the field table, the fast parser, literal bytes, scapy as oracle, and
the explain walk's layouts against Wireshark's (tshark PDML, on crafted frames)."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, IPOption_Router_Alert
from scapy.layers.inet6 import (ICMPv6DestUnreach, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback

from demux.wire import FragmentInfo, Packet, parse
from demux.wire import fields as F
from demux.wire.parser import parse_general
from demux.wire.walk import walk

from wire_oracle import NO_TSHARK, TSHARK, crafted, norm6, pdml, tshark_fields, write_by_linktype

SLOTS = Packet.__slots__


def slots(p: Packet) -> dict:
    return {name: getattr(p, name) for name in SLOTS}


# -- the table ---------------------------------------------------------------------

ALL_HEADERS = [v for v in vars(F).values() if isinstance(v, F.Header)]


@pytest.mark.parametrize("header", ALL_HEADERS, ids=lambda h: h.name)
def test_fields_lie_inside_their_header(header):
    for fld in header.fields:
        assert fld.offset >= 0 and fld.width > 0, fld
        assert (fld.offset + fld.width + 7) // 8 <= header.length, fld
        assert fld.meaning and "." in fld.name


def test_required_spec_names_present():
    names = {fld.name for h in ALL_HEADERS for fld in h.fields}
    required = """ip.version ip.hdr_len ip.len ip.id ip.flags.df ip.ttl ip.proto ip.checksum ip.src
    ip.dst ipv6.version ipv6.flow ipv6.plen ipv6.nxt ipv6.hlim ipv6.src ipv6.dst tcp.srcport
    tcp.dstport tcp.seq_raw tcp.ack_raw tcp.hdr_len tcp.flags.syn tcp.flags.ack tcp.flags.fin
    tcp.flags.reset tcp.flags.push tcp.flags.urg tcp.flags.ece tcp.flags.cwr
    tcp.window_size_value tcp.checksum tcp.options.mss_val tcp.options.wscale.shift
    tcp.options.timestamp.tsval tcp.options.timestamp.tsecr tcp.options.sack_perm
    tcp.options.sack_le tcp.options.sack_re udp.srcport udp.dstport udp.length udp.checksum
    eth.dst eth.src eth.type vlan.id sll.pkttype ip.dsfield ip.dsfield.dscp ip.flags.mf ip.frag_offset
    ipv6.tclass tcp.urgent_pointer""".split()
    assert set(required) <= names


def test_structs_come_from_the_table():
    assert F.IPV4.struct("ip.version", "ip.len", "ip.ttl", "ip.proto", "ip.src").format == "!B1xH4xBB2x4s"
    assert F.TCP.struct("tcp.srcport", "tcp.dstport", "tcp.seq_raw").format == "!HHI"
    assert F.UDP.struct("udp.length").format == "!4xH"
    with pytest.raises(ValueError):
        F.IPV4.struct("ip.len", "ip.version")
    assert F.IPV4["ip.flags.df"].within(F.IPV4["ip.frag_offset"]) == (14, 1)
    assert F.TCP["tcp.flags.syn"].within(F.TCP["tcp.flags.cwr"]) == (1, 1)


def test_field_values_scale_and_text():
    hdr = bytes.fromhex("4500003c1c4640004006b1e6c0a80001c0a800c7")
    assert F.IPV4["ip.hdr_len"].value(hdr) == 20
    assert F.IPV4["ip.flags.df"].value(hdr) == 1
    assert F.IPV4["ip.src"].value(hdr) == "192.168.0.1"
    assert F.IPV4["ip.proto"].describe(6).endswith("TCP")
    with pytest.raises(IndexError):
        F.IPV4["ip.dst"].raw(hdr[:18])


# -- literal bytes, header by header (deconstruct) -----------------------------------

ETH = bytes.fromhex("ffffffffffff" "525400123456" "0800")
IPV4_HDR = bytes.fromhex("45000030" "12344000" "4011" "0000" "0a000005" "0a000001")  # UDP, tot 48
UDP_HDR = bytes.fromhex("d431" "0035" "001c" "0000")                                     # 54321 -> 53, len 28
TCP_HDR = bytes.fromhex("d431" "0050" "00000064" "000000c8" "6012" "faf0" "0000" "0000"
                        "020405b4")                                                     # SYN-ACK, MSS 1460


def test_literal_udp_over_ipv4_over_ethernet():
    frame = ETH + IPV4_HDR + UDP_HDR + b"q" * 20
    p = parse(7, 1.5, 1, frame)
    assert p.error is None
    assert (p.n, p.ts, p.family, p.proto, p.ttl) == (7, 1.5, 4, 17, 64)
    assert p.src == bytes([10, 0, 0, 5]) and p.dst == bytes([10, 0, 0, 1])
    assert (p.sport, p.dport, p.payload_len) == (54321, 53, 20)
    assert (p.l3_off, p.l4_off, p.payload_off) == (14, 34, 42)
    assert p.link_bcast is True
    assert slots(p) == slots(parse_general(7, 1.5, 1, frame))


def test_literal_tcp_with_mss():
    ip = bytearray(IPV4_HDR)
    ip[9] = 6
    struct.pack_into("!H", ip, 2, 20 + len(TCP_HDR))
    frame = bytes.fromhex("0200000000010200000000020800") + bytes(ip) + TCP_HDR
    p = parse(1, 0.0, 1, frame)
    assert p.error is None and p.proto == 6
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.window) == (54321, 80, 100, 200, 0x12, 0xFAF0)
    assert p.mss == 1460 and p.tsval is None and p.payload_len == 0
    assert p.link_bcast is False
    assert slots(p) == slots(parse_general(1, 0.0, 1, frame))


def test_literal_vlan_stack_and_sll():
    tagged = (bytes.fromhex("0000000000aa0000000000bb" "88a8" "0064" "8100" "2005" "0800")
              + IPV4_HDR + UDP_HDR + b"q" * 20)
    p = parse(1, 0.0, 1, tagged)
    assert (p.l3_off, p.dport, p.error) == (22, 53, None)
    sll = bytes.fromhex("0001" "0001" "0006" "525400123456" "0000" "0800") + IPV4_HDR + UDP_HDR + b"q" * 20
    p = parse(1, 0.0, 113, sll)
    assert (p.l3_off, p.link_bcast, p.dport) == (16, True, 53)
    sll2 = bytes.fromhex("0800" "0000" "00000003" "0001" "00" "06" "5254001234560000") + IPV4_HDR + UDP_HDR + b"q" * 20
    p = parse(1, 0.0, 276, sll2)
    assert (p.l3_off, p.link_bcast, p.dport) == (20, False, 53)


def test_literal_ipv6_with_fragment_header():
    ip6 = bytes.fromhex("60000000" "0010" "2c" "40") + bytes(15) + b"\x01" + bytes(15) + b"\x02"
    frag = bytes.fromhex("11" "00" "0009" "0000abcd")       # UDP, offset 1 (8 bytes), M=1
    p = parse(1, 0.0, 229, ip6 + frag + b"x" * 8)
    assert p.error is None and p.proto == 17
    assert p.frag == FragmentInfo(0xABCD, 8, True)
    assert (p.frag.hdr_off, p.frag.nxt_off, p.payload_off, p.payload_len) == (40, 6, 48, 8)
    atomic = bytes.fromhex("11" "00" "0000" "00000001")      # offset 0, M=0: a whole packet
    body = atomic + UDP_HDR[:4] + struct.pack("!H", 8) + b"\0\0"
    p = parse(1, 0.0, 229, ip6[:4] + struct.pack("!H", len(body)) + ip6[6:] + body)
    assert p.frag is None and p.dport == 53 and p.error is None


def test_literal_null_and_loop_both_byte_orders():
    body = IPV4_HDR + UDP_HDR + b"q" * 20
    for head in (struct.pack("<I", 2), struct.pack(">I", 2)):
        for lt in (0, 108):
            assert parse(1, 0.0, lt, head + body).dport == 53
    v6 = IPv6(src="::1", dst="::2") / UDP(sport=1, dport=2)
    for af in (24, 28, 30):
        for fmt in ("<I", ">I"):
            p = parse(1, 0.0, 0, struct.pack(fmt, af) + bytes(v6))
            assert (p.family, p.dport, p.error) == (6, 2, None)
    assert parse(1, 0.0, 0, struct.pack("<I", 7) + body).proto == -1


# -- errors: one line, never an exception --------------------------------------------

def test_cut_short_messages():
    frame = ETH + IPV4_HDR[:2] + struct.pack("!H", 60) + IPV4_HDR[4:] + TCP_HDR[:12]
    frame = bytearray(frame)
    frame[14 + 9] = 6
    frame = bytes(frame)
    p = parse(1, 0.0, 1, frame)
    assert p.error == "IPv4 total length 60 exceeds the 32 bytes of the packet"
    # The same bytes cut by snaplen from a frame long enough: the TCP header is cut.
    p = parse(1, 0.0, 1, frame, orig_len=74)
    assert p.error == "TCP header cut short: 12 of 20 bytes"
    assert parse(1, 0.0, 1, ETH[:10]).error == "Ethernet header cut short: 10 of 14 bytes"


def test_a_header_cut_short_still_names_ports_and_flags():
    # As tcpdump prints "1.1.1.1.40000 > 2.2.2.2.80: [|tcp]": what the bytes hold is read
    # (ports from 4 bytes, TCP's flags from 14), and the record shows only that.
    from demux.engine import Record
    from demux.kernel import Verdict
    full = bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=40000, dport=80, flags="PA"))
    for cut, ports, flags in ((34 + 2, None, None), (34 + 6, ("1.1.1.1:40000", "2.2.2.2:80"), None),
                              (34 + 14, ("1.1.1.1:40000", "2.2.2.2:80"), "P.")):
        p = parse(1, 0.0, 1, full[:cut], orig_len=len(full))
        assert p.error.startswith("TCP header cut short")
        d = Record(1, 0.0, p, None, Verdict("malformed", p.error)).as_dict()
        assert (d["src"], d["dst"]) == (ports or ("1.1.1.1", "2.2.2.2"))
        assert d["flags"] == flags
    udp = bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=5000, dport=53))
    d = Record(1, 0.0, parse(1, 0.0, 1, udp[:34 + 5], orig_len=len(udp)), None, Verdict("malformed", "")).as_dict()
    assert (d["src"], d["dst"], d["flags"]) == ("1.1.1.1:5000", "2.2.2.2:53", None)


def test_snaplen_cut_with_whole_headers_is_fine():
    full = bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / TCP(dport=80) / (b"z" * 500))
    p = parse(1, 0.0, 1, full[:80], orig_len=len(full))
    assert p.error is None and p.payload_len == 500 and p.dport == 80
    # ... but the same cut without the snaplen excuse means the packet lies.
    assert "exceeds" in parse(1, 0.0, 1, full[:80]).error


def test_bad_ihl_and_data_offset():
    ip = bytearray(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP()))
    ip[0] = 0x43
    assert parse(1, 0.0, 228, bytes(ip)).error == "bad IPv4 header length: IHL 3 (12 bytes, minimum 20)"
    ip = bytearray(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP()))
    ip[20 + 12] = 0x40
    assert parse(1, 0.0, 228, bytes(ip)).error == "bad TCP data offset 4 (16 bytes, minimum 20)"
    udp = bytearray(bytes(IP() / UDP() / b"abc"))
    struct.pack_into("!H", udp, 24, 50)
    assert parse(1, 0.0, 228, bytes(udp)).error == "UDP length 50 exceeds the 11 bytes of IP payload"
    struct.pack_into("!H", udp, 24, 3)
    assert parse(1, 0.0, 228, bytes(udp)).error == "bad UDP length 3 (minimum 8)"


def test_non_ip_is_not_an_error():
    p = parse(1, 0.0, 1, bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP()))
    assert (p.proto, p.family, p.error, p.link_bcast) == (-1, 0, None, True)
    assert parse(1, 0.0, 147, b"abc").error == "unsupported link type 147"
    assert parse(1, 0.0, 101, bytes([0x55]) * 30).error == "raw IP packet with IP version 5"


def test_every_truncation_of_every_kind_never_raises():
    frames = [(1, bytes(p)) for p in (
        Ether() / Dot1AD(vlan=2) / Dot1Q(vlan=3) / IP(options=[IPOption_RR()]) / TCP(options=[("MSS", 1400), ("Timestamp", (1, 2))]),
        Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrFragment() / UDP(),
        Ether() / IP() / ICMP(type=3, code=3) / IP() / UDP(),
        Ether() / IPv6() / ICMPv6DestUnreach(code=4) / IPv6() / TCP(),
    )]
    frames.append((113, bytes(CookedLinux(pkttype=2, proto=0x0800) / IP() / UDP())))
    frames.append((276, bytes(CookedLinuxV2(proto=0x86DD) / IPv6() / TCP())))
    frames.append((0, bytes(Loopback(type=2) / IP() / UDP())))
    for lt, data in frames:
        for cut in range(len(data) + 1):
            for orig in (cut, len(data)):
                p = parse(3, 0.0, lt, data[:cut], orig_len=orig)
                assert p.error is None or "\n" not in p.error
                assert slots(p) == slots(parse_general(3, 0.0, lt, data[:cut], orig_len=orig))


# -- scapy as the oracle --------------------------------------------------------------

CASES = [
    (1, Ether(dst="01:00:5e:00:00:01") / IP(src="10.1.1.1", dst="224.0.0.1", ttl=3) / UDP(sport=5353, dport=5353) / b"m"),
    (1, Ether() / IP(src="10.0.0.2", dst="10.0.0.1", options=[IPOption_Router_Alert()]) / TCP(sport=1, dport=22, flags="PA", seq=7, ack=9, window=33) / b"data"),
    (1, Ether() / Dot1Q(vlan=10) / Dot1Q(vlan=20) / Dot1Q(vlan=30) / IPv6(src="2001:db8::5", dst="2001:db8::1", hlim=9) / TCP(sport=40000, dport=443, flags="S", options=[("MSS", 1440), ("SAckOK", b""), ("Timestamp", (123456, 0)), ("NOP", None), ("WScale", 7)])),
    (1, Ether() / Dot1AD(vlan=5) / Dot1Q(vlan=6) / IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1000, dport=2000) / (b"x" * 40)),
    (1, Ether() / IPv6(src="fe80::1", dst="ff02::fb") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / UDP(sport=5, dport=6) / b"hi"),
    (113, CookedLinux(pkttype=1, proto=0x0800) / IP(src="10.0.0.9", dst="10.0.0.255") / UDP(sport=137, dport=137) / b"nb"),
    (276, CookedLinuxV2(proto=0x86DD, pkttype=0) / IPv6(src="::1", dst="::1") / TCP(sport=5, dport=6, flags="FA")),
    (101, IP(src="8.8.8.8", dst="10.0.0.1") / TCP(sport=53, dport=40000, flags="R")),
    (101, IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=53, dport=40000) / b"answer"),
    (228, IP(src="8.8.8.8", dst="10.0.0.1", flags="DF") / UDP(sport=123, dport=123) / b"ntp"),
    (229, IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=1, dport=2, flags="SA", options=[("SAck", (5, 10, 20, 30)), ("EOL", None)])),
    (0, Loopback(type=2) / IP(src="127.0.0.1", dst="127.0.0.1") / TCP(sport=3, dport=4)),
    (0, Loopback(type=24) / IPv6(src="::1", dst="::1") / UDP(sport=3, dport=4)),
]


def _scapy_of(lt, raw):
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether
    # scapy's Loopback does not bind every BSD AF_INET6 value: dissect the IP part only.
    return {1: Ether, 113: CookedLinux, 276: CookedLinuxV2,
            0: lambda b: IP(b[4:]) if b[4] >> 4 == 4 else IPv6(b[4:]),
            101: lambda b: IP(b) if b[0] >> 4 == 4 else IPv6(b), 228: IP, 229: IPv6}[lt](raw)


@pytest.mark.parametrize("lt,pkt", CASES, ids=range(len(CASES)))
def test_parse_agrees_with_scapy(lt, pkt):
    raw = bytes(pkt)
    s = _scapy_of(lt, raw)
    p = parse(1, 0.0, lt, raw)
    assert p.error is None
    ip = s[IP] if IP in s else s[IPv6]
    if isinstance(ip, IP):
        assert p.family == 4 and p.src == bytes(map(int, ip.src.split("."))) and p.ttl == ip.ttl
    else:
        import ipaddress
        assert p.family == 6 and p.src == ipaddress.IPv6Address(ip.src).packed and p.ttl == ip.hlim
    if TCP in s:
        t = s[TCP]
        assert (p.proto, p.sport, p.dport, p.seq, p.ack, p.flags, p.window) == (
            6, t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window)
        opts = dict((k, v) for k, v in t.options)
        assert p.mss == opts.get("MSS")
        assert p.tsval == (opts["Timestamp"][0] if "Timestamp" in opts else None)
        assert p.payload_len == len(bytes(t.payload))
    else:
        u = s[UDP]
        assert (p.proto, p.sport, p.dport, p.payload_len) == (17, u.sport, u.dport, u.len - 8)
    assert slots(p) == slots(parse_general(1, 0.0, lt, raw))


def test_link_bcast_by_link_type():
    assert parse(1, 0.0, 1, bytes(CASES[0][1])).link_bcast            # IPv4 multicast MAC
    assert not parse(1, 0.0, 1, bytes(CASES[1][1])).link_bcast
    assert parse(1, 0.0, 113, bytes(CASES[5][1])).link_bcast          # SLL broadcast
    assert not parse(1, 0.0, 276, bytes(CASES[6][1])).link_bcast


def test_icmp_errors_quote_the_flow():
    frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=3, code=3)
                  / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=40000, dport=53))
    p = parse(1, 0.0, 1, frame)
    assert (p.proto, p.icmp_type, p.icmp_code, p.error) == (1, 3, 3, None)
    assert p.inner.proto == 17 and (p.inner.sport, p.inner.dport) == (40000, 53)
    assert p.inner.src == bytes([10, 0, 0, 2])
    frame6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6DestUnreach(code=4)
                   / IPv6(src="2001:db8::2", dst="2001:db8::1") / IPv6ExtHdrDestOpt() / TCP(sport=5, dport=6))
    p = parse(1, 0.0, 229, frame6)
    assert (p.proto, p.icmp_type, p.icmp_code) == (58, 1, 4)
    assert p.inner == (6, 6, bytes.fromhex("20010db8" + "0" * 22 + "02"), bytes.fromhex("20010db8" + "0" * 22 + "01"), 5, 6)
    echo = parse(1, 0.0, 228, bytes(IP() / ICMP(type=8)))
    assert (echo.icmp_type, echo.inner) == (8, None)


def test_ipv4_fragments_are_marked_not_parsed():
    from scapy.layers.inet import fragment
    frags = fragment(IP(src="1.1.1.1", dst="2.2.2.2", id=9) / UDP(dport=53) / (b"a" * 100), fragsize=48)
    first, second = (parse(i, 0.0, 228, bytes(f)) for i, f in enumerate(frags[:2], 1))
    assert first.frag == FragmentInfo(9, 0, True) and first.sport == 0 and first.error is None
    assert second.frag.offset == 48 and second.payload_len == 48
    # A TCP fragment's record has no flags: its bytes are not a TCP header.
    from demux.engine import Record
    from demux.kernel import Verdict
    tfr = fragment(IP(src="1.1.1.1", dst="2.2.2.2", id=9) / TCP(dport=80) / (b"a" * 100), fragsize=48)
    for f in tfr[:2]:
        d = Record(1, 0.0, parse(1, 0.0, 228, bytes(f)), "in", Verdict("ignored", "")).as_dict()
        assert (d["src"], d["dst"], d["flags"]) == ("1.1.1.1", "2.2.2.2", None)
    assert norm6("2001:0db8::0001") == "2001:db8::1"


# -- Wireshark's names and layouts ------------------------------------------------------

CRAFTED = crafted()


def _rows(lt: int, raw: bytes) -> list[tuple[str, int, int]]:
    return [(fl["name"], fl["offset_bits"], fl["width_bits"])
            for layer in walk(lt, raw) for fl in layer["fields"]]


@pytest.fixture(scope="module")
def wireshark_view(tmp_path_factory):
    """Crafted id -> every (name, offset bits, width bits) Wireshark shows in that frame."""
    view = {}
    for path, names in write_by_linktype(CRAFTED, tmp_path_factory.mktemp("crafted")):
        view.update(zip(names, pdml(path), strict=True))
    return view


@pytest.mark.skipif(TSHARK is None, reason=NO_TSHARK)
@pytest.mark.parametrize("name,lt,raw", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_frames_lie_where_wireshark_shows_them(name, lt, raw, wireshark_view):
    seen, known = wireshark_view[name], tshark_fields()
    rows = _rows(lt, raw)
    assert len(rows) >= 6
    for row in rows:
        assert row[0] in known, row
        assert row in seen, (row, sorted(s for s in seen if s[0] == row[0]))


def _table_names() -> set[str]:
    """Every name the field table can hand the walk: header rows, per-type rows, the
    names of variable-width data, and what the SLL helpers make."""
    names: set[str] = set()

    def collect(value):
        if isinstance(value, F.Header):
            names.update(fl.name for fl in value.fields)
        elif isinstance(value, F.Field):
            names.add(value.name)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)
    collect(list(vars(F).values()))
    names |= {F.AH_ICV_NAME, F.TCP_OPT_DATA_NAME, F.IPV6_ROUTING_UNKNOWN}
    for halen in range(10):
        names |= {fl.name for fl in F.sll_address(halen, 6)}
    for hatype, value in ((F.ARPHRD_IPGRE, 0x800), (1, 4), (1, 0x800)):
        names.add(F.sll_protocol(F.SLL["sll.etype"], hatype, value).name)
    for kind in range(256):
        for length in (0, 1):
            names |= {fl.name for fl in F.icmp_rest(kind, 4, length)}
            names |= {fl.name for fl in F.icmpv6_rest(kind, length, 32)}
    return names


@pytest.mark.skipif(TSHARK is None, reason=NO_TSHARK)
def test_every_name_in_the_table_is_a_wireshark_field():
    names = _table_names()
    assert len(names) > 150
    assert sorted(names - tshark_fields()) == []


def _by_name(lt: int, raw: bytes) -> dict:
    out: dict = {}
    for layer in walk(lt, raw):
        for fl in layer["fields"]:
            out.setdefault(fl["name"], []).append((fl["offset_bits"], fl["width_bits"], fl["value"]))
    return out


def test_walk_layouts_as_wireshark_draws_them():
    """The layouts the PDML test pins down, kept without tshark too."""
    got = {name: _by_name(lt, raw) for name, lt, raw in CRAFTED}
    frag = got["v6-frag-first"]
    assert [n for n in frag if n.startswith("ipv6.frag")] == [
        "ipv6.fraghdr.nxt", "ipv6.fraghdr.reserved_octet", "ipv6.fraghdr.offset",
        "ipv6.fraghdr.reserved_bits", "ipv6.fraghdr.more", "ipv6.fraghdr.ident"]
    assert frag["ipv6.fraghdr.ident"] == [(58 * 8, 32, 0xABCD)] and frag["ipv6.fraghdr.more"][0][2] == 1
    # SLL: the address as long as sll.halen says, the rest of the 8-byte slot unused.
    assert got["sll-1-6-800"]["sll.src.eth"] == [(48, 48, "21:22:23:24:25:26")]
    assert got["sll-1-6-800"]["sll.unused"] == [(96, 16, "2728")]
    assert got["sll2-1-6-800"]["sll.src.eth"] == [(96, 48, "21:22:23:24:25:26")]
    assert got["sll2-1-6-800"]["sll.unused"] == [(144, 16, "2728")]
    assert got["sll-778-4-86dd"]["sll.src.ipv4"] == [(48, 32, "33.34.35.36")]
    assert "sll.gretype" in got["sll-778-4-86dd"] and "sll.ltype" in got["sll-1-6-4"]
    assert got["sll-65534-0-800"]["sll.unused"] == [(48, 64, "2122232425262728")]
    assert got["sll2-800-8-86dd"]["sll.src.other"] == [(96, 64, "2122232425262728")]
    assert "sll.unused" not in got["sll2-800-8-86dd"]
    assert got["sll-1-3-800"]["sll.src.other"] == [(48, 24, "212223")]
    # ICMP bytes 4-7 by type; an RFC 4884 length splits them.
    assert got["icmp-port-unreach"]["icmp.unused"][0][:2] == (20 * 8 + 32, 32)
    assert [n for n in got["icmp-frag-needed-4884"] if n.startswith("icmp.")][3:] == [
        "icmp.unused", "icmp.length", "icmp.mtu"]
    assert "icmp.unused" not in got["icmp-source-quench"]
    assert got["icmpv6-port-unreach"]["icmpv6.reserved"][0][:2] == (40 * 8 + 32, 32)
    assert "icmpv6.length" in got["icmpv6-unreach-4884"]
    # A source route under way: the header's destination is the current hop.
    lsrr = got["v4-lsrr"]
    assert lsrr["ip.cur_rt"] == [(128, 32, "10.0.0.1")]
    assert [v for _, _, v in lsrr["ip.dst"]] == ["3.3.3.3"] and lsrr["ip.src_rt"][0][2] == "2.2.2.2"
    names = {n for view in got.values() for n in view}
    for gone in ("ipv6.fragment.id", "ipv6.opt.data", "ipv6.routing.data", "ip.opt.data",
                 "icmp.rest", "icmpv6.rest", "sll.reserved"):
        assert gone not in names
