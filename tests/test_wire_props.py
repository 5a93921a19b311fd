"""Generated packets: the parser and the explain walk agree with scapy, and never raise.

Hypothesis builds link stacks (VLAN tags of any depth, SLL, SLL2, NULL, raw IP), IPv4
with options or IPv6 with extension-header chains, TCP with random options or UDP; scapy
writes the bytes and dissects them back as the oracle. Examples are capped to keep the
suite fast.
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting)
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether

from demux.wire import Packet, parse
from demux.wire.parser import parse_general
from demux.wire.walk import walk

from wire_oracle import ip_fields, tcp_fields, tcp_options, udp_fields

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
v4 = st.integers(1, 0xFFFFFFFE).map(lambda i: str(ipaddress.IPv4Address(i)))
v6 = st.integers(1, (1 << 128) - 1).map(lambda i: str(ipaddress.IPv6Address(i)))

tcp_option = st.one_of(
    st.builds(lambda v: ("MSS", v), u16),
    st.builds(lambda v: ("WScale", v), st.integers(0, 14)),
    st.just(("SAckOK", b"")),
    st.builds(lambda a, b: ("Timestamp", (a, b)), u32, u32),
    st.just(("NOP", None)),
    st.builds(lambda xs: ("SAck", tuple(xs)), st.lists(u32, min_size=2, max_size=6).filter(lambda x: len(x) % 2 == 0)),
    st.builds(lambda k, d: (k, d), st.sampled_from([6, 7, 30, 99, 253]), st.binary(min_size=0, max_size=6)),
)


def _opt_len(opt) -> int:
    name, value = opt
    return {"MSS": 4, "WScale": 3, "SAckOK": 2, "Timestamp": 10, "NOP": 1}.get(
        name, 2 + (len(value) * 4 if name == "SAck" else len(value) if isinstance(value, bytes) else 0))


tcp_options_st = st.lists(tcp_option, max_size=8).filter(lambda os: sum(map(_opt_len, os)) <= 40)


@st.composite
def transports(draw):
    payload = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        flags = draw(st.integers(0, 255))
        return TCP(sport=draw(u16), dport=draw(u16), seq=draw(u32), ack=draw(u32), flags=flags,
                   window=draw(u16), urgptr=draw(u16), options=draw(tcp_options_st)) / payload
    return UDP(sport=draw(u16), dport=draw(u16)) / payload


@st.composite
def ip_packets(draw):
    l4 = draw(transports())
    if draw(st.booleans()):
        opts = draw(st.lists(st.sampled_from(["nop", "ra", "rr"]), max_size=3))
        options = [{"nop": IPOption_NOP(), "ra": IPOption_Router_Alert(), "rr": IPOption_RR(routers=["1.2.3.4"])}[o]
                   for o in opts]
        return IP(src=draw(v4), dst=draw(v4), ttl=draw(st.integers(1, 255)), id=draw(u16),
                  tos=draw(st.integers(0, 255)), flags=draw(st.sampled_from([0, 2])), options=options) / l4
    pkt = IPv6(src=draw(v6), dst=draw(v6), hlim=draw(st.integers(0, 255)), tc=draw(st.integers(0, 255)),
               fl=draw(st.integers(0, (1 << 20) - 1)))
    chain = []
    if draw(st.booleans()):
        chain.append(IPv6ExtHdrHopByHop())
    for kind in draw(st.lists(st.sampled_from(["route", "dest", "atomic"]), max_size=3)):
        chain.append({"route": IPv6ExtHdrRouting(addresses=["2001:db8::9"]), "dest": IPv6ExtHdrDestOpt(),
                      "atomic": IPv6ExtHdrFragment(offset=0, m=0, id=7)}[kind])
    for ext in chain:
        pkt = pkt / ext
    return pkt / l4


@st.composite
def frames(draw):
    """(linktype, bytes) of a whole, well-formed frame."""
    ip = draw(ip_packets())
    et = 0x0800 if isinstance(ip, IP) else 0x86DD
    kind = draw(st.sampled_from(["eth", "sll", "sll2", "raw", "null"]))
    if kind == "eth":
        frame = Ether(dst=draw(st.sampled_from(["ff:ff:ff:ff:ff:ff", "52:54:00:00:00:01", "33:33:00:00:00:01"])))
        for tag in draw(st.lists(st.sampled_from(["q", "ad"]), max_size=3)):
            frame = frame / (Dot1Q(vlan=draw(st.integers(0, 4095))) if tag == "q" else Dot1AD(vlan=draw(st.integers(0, 4095))))
        return 1, bytes(frame / ip)
    if kind == "sll":
        return 113, bytes(CookedLinux(pkttype=draw(st.integers(0, 4)), proto=et) / ip)
    if kind == "sll2":
        return 276, bytes(CookedLinuxV2(pkttype=draw(st.integers(0, 4)), proto=et) / ip)
    if kind == "null":
        fam = 2 if et == 0x0800 else draw(st.sampled_from([24, 28, 30]))
        return 0, struct.pack(draw(st.sampled_from(["<I", ">I"])), fam) + bytes(ip)
    return 101, bytes(ip)


def _oracle(lt: int, raw: bytes):
    """scapy's dissection of the IP packet inside the frame (the link layer is ours)."""
    off = {1: None, 113: 16, 276: 20, 0: 4, 101: 0}[lt]
    if off is None:
        e = Ether(raw)
        ip = e.getlayer(IP) or e.getlayer(IPv6)
        return ip
    body = raw[off:]
    return IP(body) if body[0] >> 4 == 4 else IPv6(body)


def _slots(p: Packet) -> dict:
    return {name: getattr(p, name) for name in Packet.__slots__}


@SETTINGS
@given(frames())
def test_parse_agrees_with_scapy(frame):
    lt, raw = frame
    p = parse(1, 0.0, lt, raw)
    ip = _oracle(lt, raw)
    assert p.error is None, p.error
    assert _slots(p) == _slots(parse_general(1, 0.0, lt, raw))
    if isinstance(ip, IP):
        assert (p.family, p.src, p.dst, p.ttl) == (4, ipaddress.IPv4Address(ip.src).packed,
                                                   ipaddress.IPv4Address(ip.dst).packed, ip.ttl)
    else:
        assert (p.family, p.src, p.dst, p.ttl) == (6, ipaddress.IPv6Address(ip.src).packed,
                                                   ipaddress.IPv6Address(ip.dst).packed, ip.hlim)
    l4 = ip.getlayer(TCP) or ip.getlayer(UDP)
    assert (p.proto, p.sport, p.dport) == (6 if isinstance(l4, TCP) else 17, l4.sport, l4.dport)
    if isinstance(l4, TCP):
        assert (p.seq, p.ack, p.flags, p.window) == (l4.seq, l4.ack, int(l4.flags), l4.window)
        named = [o for o in l4.options if o[0] != "EOL"]
        mss = [v for k, v in named if k == "MSS"]
        ts = [v[0] for k, v in named if k == "Timestamp"]
        assert p.mss == (mss[-1] if mss else None)
        assert p.tsval == (ts[-1] if ts else None)
        assert p.payload_len == len(bytes(l4.payload))
    else:
        assert p.payload_len == l4.len - 8
    if lt == 1:
        assert p.link_bcast == bool(raw[0] & 1)


def _walked(lt: int, raw: bytes) -> dict:
    """Wireshark name -> value from the explain walk (first occurrence, outer headers)."""
    out: dict = {}
    seq: list = []
    for layer in walk(lt, raw):
        for fl in layer["fields"]:
            out.setdefault(fl["name"], fl["value"])
            if fl["name"].startswith("tcp.options."):
                seq.append((fl["name"], fl["value"]))
    return out, seq


def _before_eol(opts):
    out = []
    for item in opts:
        if item[0] == "tcp.options.eol":
            break
        out.append(item)
    return out


@SETTINGS
@given(frames())
def test_explain_walk_agrees_with_scapy(frame):
    lt, raw = frame
    values, opt_seq = _walked(lt, raw)
    ip = _oracle(lt, raw)
    for name, value in ip_fields(ip).items():
        assert values[name] == value, name
    if ip.getlayer(TCP) is not None:
        t = ip[TCP]
        for name, value in tcp_fields(t).items():
            assert values[name] == value, name
        assert _before_eol(opt_seq) == _before_eol(tcp_options(t))
    else:
        for name, value in udp_fields(ip[UDP]).items():
            assert values[name] == value, name


@SETTINGS
@given(frames(), st.data())
def test_truncations_never_raise(frame, data):
    lt, raw = frame
    cut = data.draw(st.integers(0, len(raw)))
    whole = parse(1, 0.0, lt, raw)
    for orig in (cut, len(raw)):
        p = parse(1, 0.0, lt, raw[:cut], orig_len=orig)
        assert p.error is None or (p.error and "\n" not in p.error)
        assert _slots(p) == _slots(parse_general(1, 0.0, lt, raw[:cut], orig_len=orig))
        if p.error is None and p.proto in (6, 17) and orig == len(raw):
            # cut by snaplen with the headers whole: same flow, same lengths
            assert (p.sport, p.dport, p.payload_len) == (whole.sport, whole.dport, whole.payload_len)
    walk(lt, raw[:cut])


@SETTINGS
@given(st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276]), st.binary(max_size=120))
def test_random_bytes_never_raise(lt, raw):
    p = parse(1, 0.0, lt, raw)
    assert p.error is None or "\n" not in p.error
    assert _slots(p) == _slots(parse_general(1, 0.0, lt, raw))
    walk(lt, raw)


@SETTINGS
@given(st.binary(min_size=20, max_size=80), st.sampled_from([6, 17, 1]))
def test_random_transport_bytes_behind_a_good_ip_header(body, proto):
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2", proto=proto)) + body
    raw = raw[:2] + struct.pack("!H", len(raw)) + raw[4:]
    p = parse(1, 0.0, 1, b"\x00" * 12 + b"\x08\x00" + raw)
    assert p.family == 4
    walk(228, raw)


@SETTINGS
@given(frames(), st.data())
def test_snaplen_cut_frames_parse_the_same_on_both_paths(frame, data):
    lt, raw = frame
    keep = data.draw(st.integers(0, len(raw)))
    cut = raw[:keep]
    assert _slots(parse(1, 0.0, lt, cut, None, len(raw))) == _slots(parse_general(1, 0.0, lt, cut, None, len(raw)))
