"""Every header field of every IP packet in pcaps/ equals scapy's dissection, through
both the fast parser and the explain walk (one table of fields serves both), and every
field the walk shows is one Wireshark shows: same name, same bit offset and width."""

from __future__ import annotations

import glob
import ipaddress
import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether

from demux.capture import open_capture
from demux.wire import parse
from demux.wire.walk import walk
from wire_oracle import NO_TSHARK, TSHARK, ip_fields, pdml, tcp_fields, udp_fields

PCAPS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "pcaps", "*.pcap*")))
_LINK = {1: Ether, 113: CookedLinux, 276: CookedLinuxV2}


def _values(linktype: int, data: bytes) -> dict:
    out: dict = {}
    for layer in walk(linktype, data):
        for fl in layer["fields"]:
            out.setdefault(fl["name"], fl["value"])
    return out


@pytest.mark.parametrize("path", PCAPS, ids=[os.path.basename(p) for p in PCAPS])
def test_every_field_of_every_packet_matches_scapy(path):
    checked = 0
    with open_capture(path) as reader:
        for f in reader:
            pkt = _LINK[f.linktype](f.data)
            ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            if ip is None:
                continue
            p = parse(f.n, f.ts, f.linktype, f.data, f.ifname, f.orig_len)
            assert p.error is None, (f.n, p.error)
            values = _values(f.linktype, f.data)
            for name, value in ip_fields(ip).items():
                assert values[name] == value, (f.n, name)
            packed = (ipaddress.ip_address(ip.src).packed, ipaddress.ip_address(ip.dst).packed)
            assert (p.src, p.dst) == packed, f.n
            l4 = ip.getlayer(TCP) if ip.getlayer(TCP) is not None else ip.getlayer(UDP)
            if l4 is None or (isinstance(ip, IP) and (ip.flags.MF or ip.frag)):
                continue
            fields = tcp_fields(l4) if isinstance(l4, TCP) else udp_fields(l4)
            for name, value in fields.items():
                assert values[name] == value, (f.n, name)
            assert (p.sport, p.dport) == (l4.sport, l4.dport), f.n
            if isinstance(l4, TCP):
                assert (p.seq, p.ack, p.flags, p.window) == (l4.seq, l4.ack, int(l4.flags), l4.window), f.n
            checked += 1
    assert checked > 10


@pytest.mark.skipif(TSHARK is None, reason=NO_TSHARK)
@pytest.mark.parametrize("path", PCAPS, ids=[os.path.basename(p) for p in PCAPS])
def test_every_field_lies_where_wireshark_shows_it(path):
    shown = pdml(path)
    with open_capture(path) as reader:
        frames = list(reader)
    assert len(shown) == len(frames)
    checked = 0
    for f, seen in zip(frames, shown):
        for layer in walk(f.linktype, f.data):
            for fl in layer["fields"]:
                key = (fl["name"], fl["offset_bits"], fl["width_bits"])
                assert key in seen, (f.n, key, sorted(s for s in seen if s[0] == fl["name"]))
                checked += 1
    assert checked > 100
