"""``demux explain``: describe() against scapy, the text rendering, the command, services,
and Wireshark's names for every field the command emits (SPEC §4)."""

from __future__ import annotations

import glob
import json
import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import wrpcap

from demux import engine, explain, services
from demux.capture import open_capture
from demux.cli import main
from demux.wire import parse

from wire_oracle import (NO_TSHARK, TSHARK, crafted, ip_fields, tcp_fields, tcp_options,
                         tshark_fields, udp_fields, write_by_linktype)

PCAPS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "pcaps", "*.pcap*")))

SYN = (Ether(src="52:54:00:00:00:02", dst="52:54:00:00:00:01") / Dot1Q(vlan=12)
       / IP(src="192.168.1.5", dst="10.0.0.1", ttl=61, flags="DF", id=777)
       / TCP(sport=54321, dport=80, flags="S", seq=1000, window=64240,
             options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (4242, 0)), ("NOP", None), ("WScale", 7)]))
UDP6 = (Ether() / IPv6(src="2001:db8::2", dst="2001:db8::1", fl=0x12345)
        / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / UDP(sport=5353, dport=53) / b"query")


def _fields(doc):
    return {fl["name"]: fl for layer in doc["layers"] for fl in layer["fields"]}


def test_describe_shape_and_values_match_scapy():
    raw = bytes(SYN)
    doc = explain.describe(parse(1, 0.0, 1, raw))
    assert set(doc) == {"layers", "ports"}
    assert [l["name"] for l in doc["layers"]] == ["Ethernet II", "802.1Q Virtual LAN",
                                                 "Internet Protocol Version 4", "Transmission Control Protocol"]
    for layer in doc["layers"]:
        for fl in layer["fields"]:
            assert set(fl) == {"name", "offset_bits", "width_bits", "value", "meaning"}
            assert isinstance(fl["value"], (int, str)) and fl["meaning"]
    s = Ether(raw)
    got = _fields(doc)
    for name, value in {**ip_fields(s[IP]), **tcp_fields(s[TCP])}.items():
        assert got[name]["value"] == value, name
    opts = [(fl["name"], fl["value"]) for fl in doc["layers"][3]["fields"] if fl["name"].startswith("tcp.options.")]
    assert opts == tcp_options(s[TCP])
    assert got["eth.src"]["value"] == "52:54:00:00:00:02"
    assert got["vlan.id"]["value"] == 12
    # offsets count from the start of the frame: 14 Ethernet + 4 tag bytes before IP.
    assert got["ip.version"]["offset_bits"] == 18 * 8 and got["ip.version"]["width_bits"] == 4
    assert got["ip.hdr_len"] == {"name": "ip.hdr_len", "offset_bits": 148, "width_bits": 4,
                                 "value": 20, "meaning": got["ip.hdr_len"]["meaning"]}
    assert got["tcp.srcport"]["offset_bits"] == 38 * 8
    assert got["tcp.flags.syn"]["value"] == 1 and got["tcp.flags.ack"]["value"] == 0
    assert got["ip.proto"]["meaning"].endswith("TCP")
    ports = doc["ports"]
    assert ports["src"] == {"port": 54321, "category": "dynamic", "service": None, "ephemeral": True}
    assert ports["dst"]["category"] == "well-known" and ports["dst"]["ephemeral"] is False


def test_describe_ipv6_chain_and_udp():
    raw = bytes(UDP6)
    doc = explain.describe(parse(1, 0.0, 1, raw))
    names = [l["name"] for l in doc["layers"]]
    assert names == ["Ethernet II", "Internet Protocol Version 6", "IPv6 Hop-by-Hop Options",
                     "IPv6 Routing", "User Datagram Protocol"]
    s = Ether(raw)
    got = _fields(doc)
    for name, value in {**ip_fields(s[IPv6]), **udp_fields(s[UDP])}.items():
        assert got[name]["value"] == value, name
    assert got["ipv6.src"]["value"] == "2001:db8::2"
    assert doc["ports"]["dst"]["service"] == services.service(53, "udp")


def test_describe_is_safe_on_garbage_and_fragments():
    doc = explain.describe(parse(1, 0.0, 1, bytes(SYN)[:40]))
    assert doc["ports"] is None and doc["layers"][0]["name"] == "Ethernet II"
    assert explain.describe(parse(1, 0.0, 1, b""))["layers"] == []


def test_render_text_has_tables_diagram_ports_lookup_verdict():
    from rich.console import Console
    doc = explain.describe(parse(1, 0.0, 1, bytes(SYN)))
    console = Console(record=True, width=160)
    console.print(explain.render_text(doc, ["established hash: no entry", "listener 0.0.0.0:80"],
                                      {"verdict": "deliver", "process": "nginx", "pid": 1201, "fd": 3,
                                       "reason": "listener 0.0.0.0:80"}))
    text = console.export_text()
    assert "tcp.options.mss_val" in text and "1460" in text
    assert "Source Port" in text and "|             54321             |" in text
    assert "MSS=1460" in text and "WS=7" in text
    assert "well-known" in text and "http" in text
    assert "established hash: no entry" in text
    assert "verdict: deliver -> nginx (pid 1201, fd 3)" in text


def test_bit_diagram_of_udp():
    from demux.wire import fields as F
    art = explain.bit_diagram(F.UDP, {"udp.srcport": 53, "udp.dstport": 40000, "udp.length": 8, "udp.checksum": 0})
    rows = art.splitlines()
    assert rows[2] == "+" + "-+" * 32
    assert rows[3] == "|          Source Port          |        Destination Port       |"
    assert rows[4] == "|               53              |             40000             |"
    assert all(len(r) == 65 for r in rows[2:])


def test_services():
    assert services.category(0) == "well-known" and services.category(1023) == "well-known"
    assert services.category(1024) == "registered" and services.category(49151) == "registered"
    assert services.category(49152) == "dynamic" and services.category(65535) == "dynamic"
    assert services.in_ephemeral(32768) and services.in_ephemeral(60999)
    assert not services.in_ephemeral(61000) and services.in_ephemeral(61000, (1024, 65535))
    table = services.parse_services("http 80/tcp www # web\nfoo 99/udp\n# x 1/tcp\nbad line\n")
    assert table == {(80, "tcp"): "http", (99, "udp"): "foo"}
    builtin = services.builtin_table()
    assert len(builtin) >= 60 and builtin[(22, "tcp")] == "ssh" and builtin[(53, "udp")] == "domain"
    assert services.service(22) == "ssh"


# -- the command ------------------------------------------------------------------

@pytest.fixture()
def capture(tmp_path):
    path = tmp_path / "two.pcap"
    wrpcap(str(path), [SYN, UDP6])
    return str(path)


def test_command_json(capture, capsys):
    assert main(["explain", capture, "-n", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"layers", "lookup", "verdict"} <= set(doc)
    assert isinstance(doc["lookup"], list)
    assert _fields(doc)["udp.dstport"]["value"] == 53


def test_command_text(capture, capsys):
    assert main(["explain", capture, "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "Transmission Control Protocol" in out and "tcp.flags.syn" in out


def test_command_out_of_range(capture, capsys):
    assert main(["explain", capture, "-n", "3"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("no packet 3: the capture holds 2 packets")
    assert len(err.strip().splitlines()) == 1
    assert main(["explain", capture, "-n", "0"]) == 2


def test_command_bad_capture(tmp_path, capsys):
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"not a capture at all")
    assert main(["explain", str(bad), "-n", "1"]) == 2
    assert "Traceback" not in capsys.readouterr().err


# -- Wireshark's names (SPEC §4: "Field names follow Wireshark's display filter names") --

def _explain_json(capsys, path: str, n: int) -> dict:
    assert main(["explain", path, "-n", str(n), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _emitted_names(capsys, path: str) -> dict[str, int]:
    """Every field name ``demux explain --json`` emits over all packets of ``path``."""
    with open_capture(path) as reader:
        count = sum(1 for _ in reader)
    names: dict[str, int] = {}
    for n in range(1, count + 1):
        for layer in _explain_json(capsys, path, n)["layers"]:
            for fl in layer["fields"]:
                names.setdefault(fl["name"], n)
    return names


@pytest.fixture()
def no_lookup(monkeypatch):
    # The lookup replays the capture and names no fields: leave it out to keep this quick.
    monkeypatch.setattr(engine, "explain_lookup", lambda *a, **k: ([], None), raising=False)


@pytest.mark.skipif(TSHARK is None, reason=NO_TSHARK)
@pytest.mark.parametrize("path", PCAPS, ids=[os.path.basename(p) for p in PCAPS])
def test_every_emitted_name_is_a_wireshark_field(path, capsys, no_lookup):
    known = tshark_fields()
    names = _emitted_names(capsys, path)
    assert len(names) > 10
    assert {name: n for name, n in names.items() if name not in known} == {}


@pytest.mark.skipif(TSHARK is None, reason=NO_TSHARK)
def test_every_name_emitted_for_crafted_headers_is_a_wireshark_field(tmp_path, capsys, no_lookup):
    """IPv6 extension headers and fragments, IPv4 options, ICMP/ICMPv6 errors, SLL/SLL2."""
    known = tshark_fields()
    names: dict[str, str] = {}
    for path, ids in write_by_linktype(crafted(), tmp_path):
        for name, n in _emitted_names(capsys, path).items():
            names.setdefault(name, ids[n - 1])
    assert {"ipv6.fraghdr.ident", "ip.opt.ptr", "icmp.unused", "icmpv6.reserved", "sll.src.eth",
            "sll.unused", "ipv6.opt.padn", "ipv6.routing.src.addr"} <= names.keys()
    assert {name: where for name, where in names.items() if name not in known} == {}


def test_sll_source_address_is_six_bytes_then_unused(capsys):
    """The audit's repro: ``demux explain pcaps/any-sll.pcap -n 3 --json`` (and SLL2)."""
    here = os.path.join(os.path.dirname(__file__), "..", "pcaps")
    for pcap, at in (("any-sll.pcap", 48), ("any-sll2.pcap", 96)):
        rows = _explain_json(capsys, os.path.join(here, pcap), 3)["layers"][0]["fields"]
        got = {fl["name"]: (fl["offset_bits"], fl["width_bits"], fl["value"]) for fl in rows}
        assert got["sll.src.eth"] == (at, 48, "02:77:00:00:00:02"), pcap
        assert got["sll.unused"] == (at + 48, 16, "0000"), pcap
        assert "sll.reserved" not in got


def test_ipv6_fragment_header_names(tmp_path, capsys):
    path = tmp_path / "frag.pcap"
    wrpcap(str(path), [Ether() / IPv6() / IPv6ExtHdrFragment(id=0x1234, m=1) / UDP()])
    layer = _explain_json(capsys, str(path), 1)["layers"][2]
    assert layer["name"] == "IPv6 Fragment"
    assert [(fl["name"], fl["offset_bits"] - 54 * 8, fl["width_bits"]) for fl in layer["fields"]] == [
        ("ipv6.fraghdr.nxt", 0, 8), ("ipv6.fraghdr.reserved_octet", 8, 8), ("ipv6.fraghdr.offset", 16, 13),
        ("ipv6.fraghdr.reserved_bits", 29, 2), ("ipv6.fraghdr.more", 31, 1), ("ipv6.fraghdr.ident", 32, 32)]
    assert layer["fields"][-1]["value"] == 0x1234
