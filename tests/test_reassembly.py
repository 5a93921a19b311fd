"""IP fragment reassembly: order, overlap, duplicates, IPv6, timeouts (ip_fragment.c rules)."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether

from demux.wire import parse
from demux.wire.reassembly import IPFRAG_TIME, Reassembler

DATAGRAM = IP(src="192.0.2.1", dst="192.0.2.2", id=4242) / UDP(sport=5000, dport=53) / (b"0123456789" * 300)


def v4_frags(pkt=DATAGRAM, size=1000):
    return [bytes(f) for f in fragment(pkt, fragsize=size)]


def feed(r, frames, lt=228, t0=0.0, step=0.1, first_n=1):
    out = []
    for i, raw in enumerate(frames):
        got = r.push(parse(first_n + i, t0 + i * step, lt, raw))
        if got is not None:
            out.append(got)
    return out


def test_in_order():
    r = Reassembler()
    frames = v4_frags()
    assert len(frames) == 4
    (whole,) = feed(r, frames)
    assert whole.n == 4 and abs(whole.ts - 0.3) < 1e-9
    assert (whole.proto, whole.sport, whole.dport, whole.payload_len) == (17, 5000, 53, 3000)
    assert whole.frag is None and whole.error is None
    assert bytes(whole.data) == bytes(IP(bytes(DATAGRAM)))      # header fixed, checksum recomputed
    assert r.last_fragments == [1, 2, 3, 4]
    assert r.pending() == [] and r.expire(100.0) == []


def test_out_of_order_and_completed_by_the_first_fragment():
    r = Reassembler()
    frames = v4_frags()
    order = [frames[2], frames[3], frames[1], frames[0]]
    (whole,) = feed(r, order)
    assert whole.n == 4 and whole.dport == 53 and whole.payload_len == 3000


def test_non_fragments_pass_straight_through():
    r = Reassembler()
    p = parse(1, 0.0, 1, bytes(Ether() / IP() / TCP(dport=80)))
    assert r.push(p) is p


def test_overlap_discards_the_whole_datagram():
    r = Reassembler()
    frames = v4_frags()
    # A fragment overlapping the first one's tail: offset 496 (62 units), 1000 bytes.
    raw = bytes(DATAGRAM)
    overlap = IP(src="192.0.2.1", dst="192.0.2.2", id=4242, proto=17, flags="MF", frag=62) / raw[20 + 496:20 + 1496]
    assert feed(r, [frames[0], bytes(overlap)]) == []
    assert r.pending() == []                  # the queue is gone...
    assert feed(r, frames[1:], first_n=3) == []   # ...so the rest start a new one that never completes
    ended = r.expire(0.5)
    assert [e.reason for e in ended] == ["overlap"]
    assert ended[0].frames == [1, 2]
    assert len(r.pending()) == 1


def test_exact_duplicate_is_dropped_alone():
    r = Reassembler()
    frames = v4_frags()
    assert feed(r, [frames[0], frames[1], frames[1]]) == []
    assert [e.reason for e in r.expire(0.3)] == ["duplicate"]
    (whole,) = feed(r, frames[2:], first_n=4)
    assert whole.payload_len == 3000


def test_timeout_after_ipfrag_time():
    r = Reassembler()
    frames = v4_frags()
    assert feed(r, frames[:2]) == []
    assert r.expire(IPFRAG_TIME - 0.01) == []
    (pending,) = r.pending()
    assert pending.have == 2000 and pending.total is None
    ended = r.expire(IPFRAG_TIME + 1)
    assert [(e.reason, e.frames, e.ident) for e in ended] == [("timeout", [1, 2], 4242)]
    # Fragments arriving after the timer fired begin a fresh queue.
    assert feed(r, frames[2:], t0=IPFRAG_TIME + 2) == []
    assert r.pending()[0].total == 3008      # UDP header + 3000 bytes


def test_timeout_noticed_by_push():
    r = Reassembler()
    frames = v4_frags()
    feed(r, frames[:1])
    feed(r, [bytes(IP(src="10.9.9.9", dst="10.9.9.8", id=1, flags="MF") / (b"x" * 16))], t0=31.0)
    assert [e.reason for e in r.expire(31.0)] == ["timeout"]


def test_second_last_fragment_with_another_end_is_dropped():
    r = Reassembler()
    frames = v4_frags()
    raw = bytes(DATAGRAM)
    bad_last = IP(src="192.0.2.1", dst="192.0.2.2", id=4242, proto=17, frag=250) / raw[20 + 2000:20 + 2100]
    feed(r, [frames[3], bytes(bad_last)])
    assert [e.reason for e in r.expire(1.0)] == ["bad-length"]
    (whole,) = feed(r, frames[:3], first_n=3)
    assert whole.payload_len == 3000


def test_key_includes_protocol_and_id():
    r = Reassembler()
    a = v4_frags()
    b = v4_frags(IP(src="192.0.2.1", dst="192.0.2.2", id=4243) / UDP(sport=1, dport=2) / (b"z" * 3000))
    got = feed(r, [a[0], b[0], a[1], b[1], a[2], b[2], a[3], b[3]])
    assert [(p.sport, p.n) for p in got] == [(5000, 7), (1, 8)]


def test_ipv6_fragments_in_and_out_of_order():
    base = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt()
    whole_pkt = base / IPv6ExtHdrFragment(id=99) / UDP(sport=7, dport=8) / (b"6" * 3000)
    frames = [bytes(f) for f in fragment6(whole_pkt, 1280)]
    assert len(frames) == 3
    for order in (frames, frames[::-1], [frames[1], frames[0], frames[2]]):
        r = Reassembler()
        (whole,) = feed(r, order, lt=229)
        assert (whole.family, whole.proto, whole.sport, whole.dport, whole.payload_len) == (6, 17, 7, 8, 3000)
        expected = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / UDP(sport=7, dport=8) / (b"6" * 3000))
        assert bytes(whole.data) == expected


def test_ipv6_overlap_drops_everything():
    whole_pkt = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=5) / UDP(sport=7, dport=8) / (b"6" * 100)
    body = bytes(UDP(sport=7, dport=8) / (b"6" * 100))
    hdr = IPv6(src="2001:db8::1", dst="2001:db8::2")
    f1 = hdr / IPv6ExtHdrFragment(id=5, nh=17, offset=0, m=1) / body[:64]
    f2 = hdr / IPv6ExtHdrFragment(id=5, nh=17, offset=4, m=0) / body[32:]     # overlaps 32..64
    r = Reassembler()
    assert feed(r, [bytes(f1), bytes(f2)], lt=229) == []
    assert [e.reason for e in r.expire(0.0)] == ["overlap"]
    # Without the overlap the same datagram comes together.
    r = Reassembler()
    (whole,) = feed(r, [bytes(f) for f in fragment6(whole_pkt, 1280)], lt=229)
    assert whole.payload_len == 100


def test_oversize_datagram_is_discarded():
    # Fragments that fill 0..65520 of payload: with the 20-byte header, 65540 > 65535.
    r = Reassembler()
    hdr = dict(src="192.0.2.1", dst="192.0.2.2", id=7, proto=17)
    size = 1480
    offsets = list(range(0, 65520, size))
    frames = []
    for off in offsets:
        end = min(off + size, 65520)
        more = "MF" if end < 65520 else 0
        frames.append(bytes(IP(flags=more, frag=off // 8, **hdr) / (b"m" * (end - off))))
    assert feed(r, frames) == []
    assert [e.reason for e in r.expire(0.0)] == ["oversize"]
    assert r.pending() == []


def test_snaplen_cut_fragment_gives_a_truncated_datagram():
    r = Reassembler()
    frames = v4_frags()
    packets = [parse(i + 1, 0.0, 228, raw) for i, raw in enumerate(frames)]
    cut = frames[1][:100]
    packets[1] = parse(2, 0.0, 228, cut, orig_len=len(frames[1]))
    got = [r.push(p) for p in packets]
    whole = got[-1]
    assert whole is not None and whole.error is None and whole.dport == 53
    assert whole.orig_len == 3028 and len(whole.data) == 20 + 1000 + 80
