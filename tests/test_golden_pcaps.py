"""Golden tests: every capture in pcaps/ replayed against its scenario agrees with what the
real kernel did when the capture was made (pcaps/NAME.kernel.json).

- Each recorded flow: the first segment/datagram reaches the recorded process, pid and fd
  (any member of the same SO_REUSEPORT group counts: the kernel's hash secret differs per
  boot), accepted connections then reach the accepted fd; refused ones get the reply the
  kernel sent; dropped SYNs are drops.
- Every reply demux predicts (RST, ICMP port unreachable) is in the capture, and every
  RST / ICMP port unreachable the host sent answers a packet demux rejected.
- The TCP state a connection ends in follows who closed first.
"""

from __future__ import annotations

import glob
import json
import os

import pytest

from demux import scenario as scen
from demux.capture import open_capture
from demux.engine import Engine
from demux.kernel.sock import endpoint
from demux.render.summary import Summary

PCAPS = os.path.join(os.path.dirname(__file__), "..", "pcaps")
CASES = sorted(os.path.basename(p)[:-len(".kernel.json")] for p in glob.glob(os.path.join(PCAPS, "*.kernel.json")))


def replay(name: str):
    capture = next(p for p in glob.glob(os.path.join(PCAPS, name + ".pcap*")))
    sc = scen.load(os.path.join(PCAPS, name + ".toml"))
    eng = Engine(sc, seed=0)
    with open_capture(capture) as reader:
        recs = [eng.feed(f) for f in reader]
    return sc, recs, json.load(open(os.path.join(PCAPS, name + ".kernel.json")))


def flow_records(recs, flow):
    """Records of one flow's packets, both directions, in capture order."""
    out = []
    for r in recs:
        p = r.packet
        if p.proto not in (6, 17) or ("tcp" if p.proto == 6 else "udp") != flow["proto"]:
            continue
        a, b = endpoint(p.src, p.sport), endpoint(p.dst, p.dport)
        if (a, b) == (flow["client"], flow["local"]) or (b, a) == (flow["client"], flow["local"]):
            out.append(r)
    return out


def reuseport_peers(sc, pid):
    """pids whose sockets could share a SO_REUSEPORT group with pid's listener."""
    me = next(p for p in sc.processes if p.pid == pid)
    keys = {(s.proto, str(s.bind)) for s in me.sockets if s.reuseport}
    return {p.pid for p in sc.processes if any((s.proto, str(s.bind)) in keys and s.reuseport for s in p.sockets)} | {pid}


@pytest.mark.parametrize("name", CASES)
def test_every_flow_reaches_the_process_the_kernel_chose(name):
    sc, recs, kj = replay(name)
    assert kj["flows"], "the capture records flows"
    accepted_before: set[int] = set()
    for flow in kj["flows"]:
        frs = [r for r in flow_records(recs, flow) if r.direction == "in"
               and endpoint(r.packet.dst, r.packet.dport) == flow["local"]]
        assert frs, f"{name}: no packets for {flow}"
        first_in = frs[0]
        d = first_in.as_dict()
        outcome = flow["outcome"]
        if outcome in ("accepted", "received", "queued-not-accepted"):
            assert d["verdict"] == "deliver", (flow, d)
            assert d["pid"] in reuseport_peers(sc, flow["pid"]), (flow, d)
            if d["pid"] == flow["pid"]:
                assert d["fd"] == flow["fd"], (flow, d)
            if flow["proto"] == "tcp":
                assert d["state"] == "SYN-RECV"
                later = [r.as_dict() for r in frs if r is not first_in
                         and r.v.verdict == "deliver" and r.v.state not in ("SYN-RECV",)]
                assert later, flow
                listener_fds = {s.fd for p in sc.processes if p.pid == later[0]["pid"] for s in p.sockets}
                if outcome == "accepted":
                    assert later[0]["fd"] is not None and later[0]["fd"] not in listener_fds, later[0]
                # accept() returns the lowest free descriptor, but when a process closes the
                # previous connection's is up to the program: compare each process's first
                # accepted connection; and member choice in a SO_REUSEPORT group depends on the
                # boot's hash secret, so only outside groups.
                if (outcome == "accepted" and reuseport_peers(sc, flow["pid"]) == {flow["pid"]}
                        and flow["pid"] not in accepted_before):
                    assert later[0]["fd"] == flow["accepted_fd"], (flow, later[0])
                accepted_before.add(flow["pid"])
                if outcome == "queued-not-accepted":
                    assert all(x["fd"] is None for x in later), later
        elif outcome == "refused":
            assert (d["verdict"], d["reply"]) == ("reject", "rst"), (flow, d)
        elif outcome == "unreachable":
            assert (d["verdict"], d["reply"]) == ("reject", "icmp-port-unreachable"), (flow, d)
        elif outcome == "no-answer" and flow["proto"] == "udp":
            assert (d["verdict"], d["reply"]) == ("reject", None), (flow, d)
        elif outcome == "no-answer":
            syns = [r.as_dict() for r in frs if r.direction == "in"]
            assert all(x["verdict"] == "drop" for x in syns), syns
        else:
            pytest.fail(f"unknown outcome {outcome}")


@pytest.mark.parametrize("name", CASES)
def test_predicted_replies_are_the_replies_in_the_capture(name):
    sc, recs, kj = replay(name)
    rst_out, icmp_out = [], []
    for r in recs:
        p = r.packet
        if r.direction == "out" and p.proto == 6 and p.flags & 0x04:
            rst_out.append((p.dst, p.dport, p.src, p.sport))
        if p.proto in (1, 58) and p.inner is not None and (p.icmp_type, p.icmp_code) in ((3, 3), (1, 4)):
            q = p.inner
            icmp_out.append((q.src, q.sport, q.dst, q.dport))
    want_rst, want_icmp = [], []
    for r in recs:
        p, v = r.packet, r.v
        if r.direction != "in" or v.verdict != "reject":
            continue
        key = (p.src, p.sport, p.dst, p.dport)
        if v.reply == "rst":
            want_rst.append(key)
        elif v.reply == "icmp-port-unreachable":
            want_icmp.append(key)
        elif p.proto == 17:
            assert key not in icmp_out, f"demux says no ICMP for packet {r.n}, the kernel sent one"
    assert sorted(want_rst) == sorted(rst_out)
    assert sorted(want_icmp) == sorted(icmp_out)


@pytest.mark.parametrize("name", CASES)
def test_connections_end_in_the_state_of_who_closed_first(name):
    sc, recs, kj = replay(name)
    for flow in kj["flows"]:
        if flow["proto"] != "tcp" or flow["outcome"] != "accepted" or "first_fin_from" not in flow:
            continue
        # The server side's states: what it received and what it sent. On loopback a packet
        # is seen once, as the receiver's, so only the received half is in the records.
        local = flow["local"]
        states = [r.v.state for r in flow_records(recs, flow) if r.v.state and (
            (r.direction == "in" and endpoint(r.packet.dst, r.packet.dport) == local)
            or (r.direction == "out" and endpoint(r.packet.src, r.packet.sport) == local))]
        loopback = flow["client"].startswith(("127.", "[::1]"))
        final = states[-1]
        if flow["first_fin_from"] == "server":
            assert final == "TIME-WAIT", (flow, states)
            assert loopback or "FIN-WAIT-1" in states
        else:
            assert final == "CLOSE", (flow, states)
            assert "CLOSE-WAIT" in states and (loopback or "LAST-ACK" in states)


@pytest.mark.parametrize("name", CASES)
def test_counts_add_up(name):
    sc, recs, kj = replay(name)
    s = Summary(sc)
    for r in recs:
        s.add(r)
    d = s.as_dict()
    assert d["packets"] == len(recs) == kj["packet_counts"]["packets"]
    assert sum(d[k] for k in ("deliver", "reject", "drop", "outbound", "ignored", "malformed")) == d["packets"]
    assert d["malformed"] == 0


def test_device_bound_listener_gets_traffic_of_a_capture_without_interface_names():
    # A classic pcap names no interface: the scenario's interface of the local address
    # stands in, so SO_BINDTODEVICE listeners still match.
    sc = scen.loads('[host]\naddresses = ["10.77.0.1", "fd77::1"]\ninterfaces = { eth0 = ["10.77.0.1"], eth1 = ["fd77::1"] }\n'
                    '[[process]]\nname = "bound"\nsockets = [ { proto = "tcp", bind = "0.0.0.0:8080", device = "eth0" } ]\n')
    eng = Engine(sc)
    with open_capture(os.path.join(PCAPS, "http4.pcap")) as reader:
        verdicts = {eng.feed(f).v.verdict for f in reader}
    assert "deliver" in verdicts and "reject" not in verdicts
    sc.host.interfaces = {"eth0": ["fd77::1"], "eth1": ["10.77.0.1"]}
    eng = Engine(sc)
    with open_capture(os.path.join(PCAPS, "http4.pcap")) as reader:
        assert "reject" in {eng.feed(f).v.verdict for f in reader}


def _le(a: int, b: int) -> bool:
    """a at or before b in sequence space."""
    return (b - a) & 0xFFFFFFFF < 1 << 31


def test_slow_reader_every_data_segment_as_the_kernel_took_it():
    # pcaps/slow-reader: a server that reads slowly behind SO_RCVBUF 4096, so its window
    # closes and opens again, and the sender's tail loss probes resend data the server had
    # but had not acknowledged yet. The capture holds the kernel's answer to every data
    # segment: a copy it discarded is D-SACKed in its next ACK on the flow (RFC 2883: a
    # SACK block at or below the cumulative ACK); any other was taken, and the
    # application read every byte (read[] in the kernel.json). demux must agree segment by
    # segment (Kernel._old with rcv_exact; _sent and _beyond_zero_window for the windows).
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    sc, recs, kj = replay("slow-reader")
    pkts = rdpcap(os.path.join(PCAPS, "slow-reader.pcap"))
    assert len(pkts) == len(recs)
    port = int(kj["flows"][0]["local"].rsplit(":", 1)[1])
    tcp = [(i, p[TCP]) for i, p in enumerate(pkts) if TCP in p]
    assert any(t.sport == port and t.window == 0 for _, t in tcp), "the window never closed"
    # Each D-SACK names the copy: the latest data segment before that ACK within its block.
    dsacked = set()
    for j, (i, a) in enumerate(tcp):
        blocks = [b for name, b in a.options if name == "SAck"] if a.sport == port else []
        if blocks and _le(blocks[0][1], a.ack):
            left, right = blocks[0]
            dsacked.add(next(k for k, t in reversed(tcp[:j]) if t.sport == a.dport and len(t.payload)
                             and _le(left, t.seq) and _le((t.seq + len(t.payload)) & 0xFFFFFFFF, right)))
    taken = {}
    for i, t in tcp:
        if t.dport != port or not len(t.payload):
            continue
        want = "drop" if i in dsacked else "deliver"
        assert recs[i].v.verdict == want, (i + 1, t.seq, len(t.payload), recs[i].v.reason)
        if want == "deliver":
            taken.setdefault(t.sport, []).append((t.seq, (t.seq + len(t.payload)) & 0xFFFFFFFF))
    assert dsacked, "the capture holds no copy the kernel discarded"
    # What the application read is the union of the data demux delivered, flow by flow.
    read = {int(r["client"].rsplit(":", 1)[1]): r["bytes"] for r in kj["read"]}
    for sport, spans in taken.items():
        spans.sort()
        covered, reach = 0, spans[0][0]
        for a, b in spans:
            if b > reach:
                covered += b - max(a, reach)
                reach = b
        assert covered == read[sport], (sport, covered, read[sport])
