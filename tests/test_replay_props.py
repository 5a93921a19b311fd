"""Properties of replay over generated traffic: every packet gets exactly one verdict,
the six counts add up, nothing raises, and replay is deterministic for a seed."""

from __future__ import annotations

import io
import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demux.capture import Frame, open_capture
from demux.engine import Engine
from demux.pcapout import PcapWriter
from demux.render.summary import VERDICTS, Summary
from demux.scenario import loads

HOST = ["10.9.0.1", "fd9::1"]
PEERS = ["10.9.0.2", "10.9.0.4", "fd9::2", "10.9.0.255", "224.0.0.251", "192.0.2.7"]
PORTS = [22, 53, 80, 443, 8080, 40000, 50000]


def scenario_text(socks):
    lines = ",\n".join(socks)
    return (f'[host]\naddresses = ["10.9.0.1/24", "fd9::1"]\n'
            f'[[process]]\nname = "srv"\npid = 10\nsockets = [\n{lines}\n]\n')


sock_st = st.builds(
    lambda proto, addr, port, rp, acc: (
        f'{{ proto = "{proto}", bind = "{addr}:{port}"'
        + (", reuseport = true" if rp else "")
        + (", accept = false, backlog = 1" if (proto == "tcp" and not acc) else "") + " }"),
    st.sampled_from(["tcp", "udp"]), st.sampled_from(["0.0.0.0", "10.9.0.1", "[::]"]),
    st.sampled_from([53, 80, 8080]), st.booleans(), st.booleans())


def frame_bytes(src, dst, proto, sport, dport, flags, payload):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    v6 = ":" in src or ":" in dst
    if v6 and not (":" in src and ":" in dst):
        dst = "fd9::1" if ":" in src else dst
        src = "fd9::2" if ":" not in src else src
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1000) if proto == "tcp" else UDP(sport=sport, dport=dport)
    # Explicit MACs: without them scapy resolves each destination, which is slow.
    return bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / ip / l4 / payload)


packet_st = st.tuples(st.booleans(), st.sampled_from(PEERS), st.sampled_from(HOST), st.sampled_from(["tcp", "udp"]),
                      st.sampled_from(PORTS), st.sampled_from(PORTS),
                      st.sampled_from(["S", "SA", "A", "PA", "FA", "R", "RA", ""]), st.binary(max_size=8),
                      st.integers(0, 4))


def build(packets):
    frames = []
    ts = 1_000_000_000.0
    for i, (outward, peer, local, proto, pp, lp, flags, payload, cut) in enumerate(packets):
        src, dst = (local, peer) if outward else (peer, local)
        sport, dport = (lp, pp) if outward else (pp, lp)
        data = frame_bytes(src, dst, proto, sport, dport, flags, payload)
        if cut == 4:
            data = data[:30]          # cut inside the IP header: malformed
        ts += 0.5
        frames.append(Frame(i + 1, ts, int(ts * 1e9), 1, data, len(data), None, 0))
    return frames


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sock_st, max_size=4), st.lists(packet_st, min_size=1, max_size=30))
def test_every_packet_has_exactly_one_verdict_and_counts_add_up(socks, packets):
    sc = loads(scenario_text(socks))
    frames = build(packets)
    eng = Engine(sc, seed=3)
    summary = Summary(sc)
    records = [eng.feed(f) for f in frames]
    for r in records:
        summary.add(r)
        d = r.as_dict()
        assert d["verdict"] in VERDICTS
        assert json.dumps(d)
        if d["verdict"] == "deliver":
            assert d["socket"]
        if d["reply"] is not None:
            assert d["verdict"] in ("reject", "drop")
    s = summary.as_dict()
    assert s["packets"] == len(frames)
    assert sum(s[k] for k in VERDICTS) == len(frames)
    # Deterministic: the same capture and seed give the same records.
    again = Engine(sc, seed=3)
    assert [again.feed(f).as_dict() for f in frames] == [r.as_dict() for r in records]


@settings(max_examples=20, deadline=None)
@given(st.lists(packet_st, min_size=1, max_size=20))
def test_replay_through_a_written_pcap_equals_in_memory(packets):
    frames = build(packets)
    buf = io.BytesIO()
    w = PcapWriter(buf, 1, nanos=True)
    for f in frames:
        w.write(f.ts_ns, f.data, f.orig_len)
    w.flush()
    sc = loads(scenario_text(['{ proto = "tcp", bind = "0.0.0.0:80" }', '{ proto = "udp", bind = "0.0.0.0:53" }']))
    fd, path = tempfile.mkstemp(suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        with open_capture(path) as reader:
            eng = Engine(sc)
            from_file = [eng.feed(fr).as_dict() for fr in reader]
    finally:
        os.unlink(path)
    eng = Engine(sc)
    assert from_file == [eng.feed(f).as_dict() for f in frames]
