"""``demux infer``: the host a capture implies (SPEC §6).

Small captures made here with scapy, one behaviour each, then the real captures of
``pcaps/`` against the scenario files describing the hosts they were taken on.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPv6, Raw, wrpcap
from scapy.layers.inet6 import ICMPv6DestUnreach

from demux import scenario as scen
from demux.capture import open_capture
from demux.engine import replay
from demux.infer import infer, infer_with_header

SRV, SRV_MAC = "10.9.0.1", "02:00:00:00:00:01"
SRV6 = "fd09::1"
CLI, CLI_MAC = "10.9.0.2", "02:00:00:00:00:02"
CLI6 = "fd09::2"
PCAPS = os.path.join(os.path.dirname(__file__), "..", "pcaps")


def _in(pkt, mac_src=CLI_MAC, mac_dst=SRV_MAC):
    return Ether(src=mac_src, dst=mac_dst) / pkt


def _out(pkt):
    return Ether(src=SRV_MAC, dst=CLI_MAC) / pkt


def handshake(sport, dport, dst=SRV, src=CLI, v6=False, data=b"hello"):
    L3 = (lambda s, d: IPv6(src=s, dst=d)) if v6 else (lambda s, d: IP(src=s, dst=d))
    return [
        _in(L3(src, dst) / TCP(sport=sport, dport=dport, flags="S", seq=100)),
        _out(L3(dst, src) / TCP(sport=dport, dport=sport, flags="SA", seq=500, ack=101)),
        _in(L3(src, dst) / TCP(sport=sport, dport=dport, flags="A", seq=101, ack=501)),
        _in(L3(src, dst) / TCP(sport=sport, dport=dport, flags="PA", seq=101, ack=501) / Raw(data)),
    ]


def refused(sport, dport, dst=SRV, src=CLI):
    return [_in(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S", seq=7)),
            _out(IP(src=dst, dst=src) / TCP(sport=dport, dport=sport, flags="RA", seq=0, ack=8))]


def write(tmp_path, packets, name="c.pcap"):
    t = 1_700_000_000.0
    for i, p in enumerate(packets):
        p.time = t + i * 0.01
    path = str(tmp_path / name)
    wrpcap(path, packets)
    return path


def sockets(sc):
    return {(s.proto, str(s.bind), s.v6only) for p in sc.processes for s in p.sockets}


def verdicts(path, sc):
    with open_capture(path) as r:
        return [rec.as_dict() for rec in replay(r, sc)]


def test_syn_ack_listener_and_rst_closed_port(tmp_path):
    path = write(tmp_path, handshake(40000, 8080) + refused(40001, 22) + handshake(40002, 8080))
    sc, header = infer_with_header(path)
    assert sc.host.addresses == [SRV]
    assert sockets(sc) == {("tcp", "0.0.0.0:8080", None)}
    (proc,) = sc.processes
    assert proc.pid == 1000 and proc.uid == 0
    assert proc.sockets[0].comment.startswith("answered 2 SYNs with SYN-ACK, first at packet 2")
    assert "tcp 10.9.0.1:22" in header and "Closed ports" in header
    # Replay against the inferred host agrees with the capture.
    recs = verdicts(path, sc)
    assert recs[0]["verdict"] == "deliver" and recs[0]["pid"] == 1000
    assert recs[4]["verdict"] == "reject" and recs[4]["reply"] == "rst"


def test_specific_address_when_another_address_refuses(tmp_path):
    other = "10.9.0.3"
    pkts = handshake(40000, 9000) + refused(40001, 9000, dst=other) + handshake(40002, 7, dst=other)
    sc = infer(write(tmp_path, pkts))
    assert set(sc.host.addresses) == {SRV, other}
    assert ("tcp", "10.9.0.1:9000", None) in sockets(sc)
    assert ("tcp", "0.0.0.0:9000", None) not in sockets(sc)
    recs = verdicts(write(tmp_path, pkts), sc)
    assert [r["verdict"] for r in recs[:6]] == ["deliver", "outbound", "deliver", "deliver", "reject", "outbound"]


def test_dual_stack_listener(tmp_path):
    sc = infer(write(tmp_path, handshake(40000, 443) + handshake(40001, 443, dst=SRV6, src=CLI6, v6=True)))
    assert sockets(sc) == {("tcp", "[::]:443", False)}
    assert sc.processes[0].name == "https"


def test_v6_only_listener_when_v4_refused(tmp_path):
    pkts = handshake(40001, 8443, dst=SRV6, src=CLI6, v6=True) + refused(40002, 8443)
    assert sockets(infer(write(tmp_path, pkts))) == {("tcp", "[::]:8443", True)}


def test_udp_answer_and_icmp_port_unreachable(tmp_path):
    q = _in(IP(src=CLI, dst=SRV) / UDP(sport=50000, dport=53) / Raw(b"q" * 20))
    a = _out(IP(src=SRV, dst=CLI) / UDP(sport=53, dport=50000) / Raw(b"a" * 40))
    probe = IP(src=CLI, dst=SRV) / UDP(sport=50001, dport=161) / Raw(b"x")
    unreach = _out(IP(src=SRV, dst=CLI) / ICMP(type=3, code=3) / bytes(probe))
    probe6 = IPv6(src=CLI6, dst=SRV6) / UDP(sport=50002, dport=123) / Raw(b"y")
    unreach6 = _out(IPv6(src=SRV6, dst=CLI6) / ICMPv6DestUnreach(code=4) / bytes(probe6))
    path = write(tmp_path, [q, a, _in(probe), unreach, _in(probe6), unreach6])
    sc, header = infer_with_header(path)
    assert sockets(sc) == {("udp", "0.0.0.0:53", None)}
    assert sc.processes[0].sockets[0].comment.startswith("answered 1 datagram, first at packet 2")
    assert "udp 10.9.0.1:161" in header and "udp [fd09::1]:123" in header
    recs = verdicts(path, sc)
    assert recs[0]["verdict"] == "deliver"
    assert recs[2]["verdict"] == "reject" and recs[2]["reply"] == "icmp-port-unreachable"


def test_midstream_flows_imply_listener(tmp_path):
    # The capture starts after the handshakes: data both ways on 10.9.0.1:5432, and a
    # local client on an ephemeral port talking to a remote 443 (no listener for it).
    pkts = [
        _in(IP(src=CLI, dst=SRV) / TCP(sport=41000, dport=5432, flags="PA", seq=1, ack=1) / Raw(b"q")),
        _out(IP(src=SRV, dst=CLI) / TCP(sport=5432, dport=41000, flags="PA", seq=1, ack=2) / Raw(b"r")),
        _out(IP(src=SRV, dst=CLI) / TCP(sport=45000, dport=443, flags="PA", seq=1, ack=1) / Raw(b"g")),
        _in(IP(src=CLI, dst=SRV) / TCP(sport=443, dport=45000, flags="A", seq=1, ack=2)),
    ]
    path = write(tmp_path, pkts + handshake(40000, 8080))
    sc = infer(path)
    assert sockets(sc) == {("tcp", "0.0.0.0:5432", None), ("tcp", "0.0.0.0:8080", None)}
    pg = next(p for p in sc.processes if p.sockets[0].bind.port == 5432)
    assert "caught mid-stream, first at packet 1" in pg.sockets[0].comment
    recs = verdicts(path, sc)
    assert recs[0]["verdict"] == "deliver" and recs[0]["pid"] == pg.pid


def test_listener_opened_during_capture(tmp_path):
    pkts = refused(40000, 8080) + handshake(40001, 8080)
    path = write(tmp_path, pkts)
    sc = infer(path)
    (s,) = sc.processes[0].sockets
    assert str(s.bind) == "10.9.0.1:8080" and s.at is not None and 0.0 < s.at < 0.02
    recs = verdicts(path, sc)
    assert recs[0]["verdict"] == "reject" and recs[2]["verdict"] == "deliver"


def test_several_answering_hosts_pick_the_busiest(tmp_path):
    other, other_mac = "10.9.0.7", "02:00:00:00:00:07"
    busy = handshake(40000, 80) + handshake(40001, 80)
    quiet = [_in(IP(src=CLI, dst=other) / TCP(sport=40002, dport=25, flags="S")),
             Ether(src=other_mac, dst=CLI_MAC) / IP(src=other, dst=CLI) / TCP(sport=25, dport=40002, flags="SA")]
    sc, header = infer_with_header(write(tmp_path, busy + quiet))
    assert sc.host.addresses == [SRV]
    assert "2 hosts answered" in header and "10.9.0.7 (1 answers)" in header
    assert sockets(sc) == {("tcp", "0.0.0.0:80", None)}


def test_written_scenario_loads_and_cli(tmp_path):
    path = write(tmp_path, handshake(40000, 8080) + refused(40001, 22))
    out = tmp_path / "s.toml"
    r = subprocess.run([sys.executable, "-m", "demux", "infer", path, "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.startswith(f"# Inferred by `demux infer` from {path}")
    assert "# answered 1 SYN with SYN-ACK" in text
    sc = scen.loads(text)
    assert sockets(sc) == {("tcp", "0.0.0.0:8080", None)}
    bad = subprocess.run([sys.executable, "-m", "demux", "infer", str(tmp_path / "nope.pcap")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


REAL = sorted(p for p in glob.glob(os.path.join(PCAPS, "*.pcap*"))
              if os.path.exists(os.path.splitext(p)[0] + ".toml"))


@pytest.mark.parametrize("capture", REAL, ids=[os.path.basename(p) for p in REAL])
def test_real_captures_listeners_found(capture):
    """Every listening port of the real host that had traffic is among the inferred ones."""
    truth = scen.load(os.path.splitext(capture)[0] + ".toml")
    inferred = infer(capture)
    got = {(s.proto, s.bind.port) for p in inferred.processes for s in p.sockets}
    seen: set[tuple[str, int]] = set()
    delivered = 0
    with open_capture(capture) as r:
        for rec in replay(r, truth):
            d = rec.as_dict()
            if d["direction"] == "in" and d["verdict"] == "deliver" and d["socket"]:
                proto, state, local = d["socket"].split()[:3]
                if state in ("LISTEN", "UNCONN") or "SYN" in (d["flags"] or ""):
                    seen.add((proto, int(local.rpartition(":")[2])))
                delivered += 1
    listening = {(s.proto, s.bind.port) for p in truth.processes for s in p.sockets
                 if s.bind and (s.listen or (s.proto == "udp" and s.connect is None))}
    missing = (seen & listening) - got
    assert not missing, f"inferred scenario misses {missing}"
    # And replay with the inferred host rejects nothing the real host delivered.
    with open_capture(capture) as r:
        real = [rec.as_dict()["verdict"] for rec in replay(r, truth)]
    with open_capture(capture) as r:
        mine = [rec.as_dict()["verdict"] for rec in replay(r, inferred)]
    wrong = [i + 1 for i, (a, b) in enumerate(zip(real, mine)) if a == "deliver" and b == "reject"]
    assert not wrong, f"packets delivered on the real host but rejected by the inferred one: {wrong[:10]}"
