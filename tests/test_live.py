"""demux live (SPEC §8): packet builders and the TCP stack as pure functions (scapy is
the oracle for every byte), the dispatcher over a socketpair, and the whole command in a
fresh network namespace answering real clients (curl, nc, Python sockets).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6, IPerror6

from demux.kernel import tcp_states as ts
from demux.live import packets as pk
from demux.live.stack import COOKIE_MSS, Stack
from demux.wire import parse
from demux.wire.packet import ACK, FIN, PSH, RST, SYN

REPO = Path(__file__).resolve().parents[1]
A4, B4 = bytes([10, 66, 0, 2]), bytes([10, 66, 0, 1])
A6, B6 = socket.inet_pton(socket.AF_INET6, "fd66::2"), socket.inet_pton(socket.AF_INET6, "fd66::1")


def P(raw: bytes):
    """Parse a raw IP packet as the dispatcher does."""
    return parse(1, 0.0, 101, raw)


def client(src, dst, sport, dport, seq, ack, flags, payload=b"", options=b"", window=64240):
    return P(pk.tcp_packet(src, dst, sport, dport, seq, ack, flags, window, options, payload))


def rechecked(layer_pkt):
    """The same packet with scapy computing every length and checksum itself."""
    fresh = layer_pkt.copy()
    for layer in (IP, TCP, UDP, ICMP, IPv6):
        if fresh.haslayer(layer):
            for f in ("chksum", "len", "plen"):
                if f in fresh[layer].fields:
                    del fresh[layer].fields[f]
    if fresh.haslayer(ICMPv6DestUnreach):
        del fresh[ICMPv6DestUnreach].fields["cksum"]
    return fresh.__class__(bytes(fresh))


# ---- packets: scapy is the oracle -------------------------------------------------------

@pytest.mark.parametrize("src,dst", [(A4, B4), (A6, B6)])
@pytest.mark.parametrize("payload", [b"", b"x", b"hello world!\n" * 7])
def test_tcp_packet_checksums_match_scapy(src, dst, payload):
    raw = pk.tcp_packet(src, dst, 80, 40000, 0xFFFFFFF0, 12345, ACK | PSH, 65535,
                        pk.mss_option(1460), payload)
    s = (IP if len(src) == 4 else IPv6)(raw)
    assert bytes(rechecked(s)) == raw
    assert s[TCP].sport == 80 and s[TCP].dport == 40000 and s[TCP].seq == 0xFFFFFFF0
    assert s[TCP].options == [("MSS", 1460)] and bytes(s[TCP].payload) == payload
    if len(src) == 4:
        assert s[IP].flags == "DF" and s[IP].ttl == 64
    else:
        assert s[IPv6].hlim == 64


@pytest.mark.parametrize("src,dst", [(A4, B4), (A6, B6)])
def test_udp_datagram_checksum_matches_scapy(src, dst):
    for payload in (b"", b"a", b"\x00" * 10, os.urandom(333)):
        (raw,) = pk.udp_packets(src, dst, 53, 5353, payload)
        s = (IP if len(src) == 4 else IPv6)(raw)
        assert bytes(rechecked(s)) == raw
        assert bytes(s[UDP].payload) == payload


def test_checksum_never_sends_zero_for_udp():
    # Find a payload whose checksum would be 0: it must go out as 0xFFFF (RFC 768).
    for i in range(70000):
        payload = i.to_bytes(4, "big")
        seg = pk.udp_datagram(A4, B4, 1, 2, payload)
        if seg[6:8] == b"\xff\xff":
            assert IP(pk.ipv4_header(A4, B4, 17, len(seg)) + seg)[UDP].chksum == 0xFFFF
            break
    else:
        pytest.fail("no payload hit the 0 checksum")


@pytest.mark.parametrize("src,dst,mtu", [(A4, B4, 576), (A6, B6, 1280)])
def test_udp_fragments_reassemble(src, dst, mtu):
    from demux.wire.reassembly import Reassembler
    payload = bytes(range(256)) * 12
    frags = pk.udp_packets(src, dst, 53, 9999, payload, mtu=mtu, ident=77)
    assert len(frags) > 1 and all(len(f) <= mtu for f in frags)
    r = Reassembler()
    whole = None
    for i, f in enumerate(frags):
        p = parse(i + 1, 0.0, 101, f)
        assert p.error is None and p.frag is not None
        whole = r.push(p) or whole
    assert whole is not None and whole.error is None
    assert bytes(whole.data[whole.payload_off:whole.payload_off + whole.payload_len]) == payload


def test_rst_for_segment_with_ack_takes_its_ack_as_seq():
    p = client(B4, A4, 40000, 81, 1000, 5555, ACK | PSH, b"data")
    s = IP(pk.tcp_reset(p))
    assert bytes(rechecked(s)) == bytes(s)
    assert (s.src, s.dst, s[TCP].sport, s[TCP].dport) == ("10.66.0.2", "10.66.0.1", 81, 40000)
    assert s[TCP].flags == "R" and s[TCP].seq == 5555 and s[TCP].ack == 0 and s[TCP].window == 0
    assert s[IP].flags == "DF" and s[IP].id == 0


@pytest.mark.parametrize("flags,plen,want_ack", [(SYN, 0, 1001), (SYN, 5, 1006), (FIN, 0, 1001),
                                                 (SYN | FIN, 3, 1005), (0, 7, 1007)])
def test_rst_for_segment_without_ack_acknowledges_it(flags, plen, want_ack):
    p = client(A6 and B6, A6, 40000, 81, 1000, 0, flags, b"z" * plen)
    s = IPv6(pk.tcp_reset(p))
    assert bytes(rechecked(s)) == bytes(s)
    assert s[TCP].flags == "RA" and s[TCP].seq == 0 and s[TCP].ack == want_ack


def test_rst_never_answers_rst():
    assert pk.tcp_reset(client(B4, A4, 1, 2, 5, 0, RST)) is None
    assert pk.tcp_reset(client(B4, A4, 1, 2, 5, 9, RST | ACK)) is None


def test_icmp_port_unreachable_quotes_the_datagram_v4():
    (raw,) = pk.udp_packets(B4, A4, 40000, 9, b"ping" * 300)       # 1228 bytes: quote cut
    p = P(raw)
    s = IP(pk.icmp_port_unreachable(p, ident=7))
    assert bytes(rechecked(s)) == bytes(s)
    assert s.src == "10.66.0.2" and s.dst == "10.66.0.1" and s[IP].tos == 0xC0 and not s[IP].flags.DF
    assert s[ICMP].type == 3 and s[ICMP].code == 3 and len(s) == 576
    assert s[IPerror].src == "10.66.0.1" and s[UDPerror].dport == 9
    assert bytes(s)[28:] == raw[:548]


def test_icmpv6_port_unreachable_quotes_the_datagram():
    (raw,) = pk.udp_packets(B6, A6, 40000, 9, b"x" * 10)
    s = IPv6(pk.icmp_port_unreachable(P(raw)))
    assert bytes(rechecked(s)) == bytes(s)
    assert s[ICMPv6DestUnreach].type == 1 and s[ICMPv6DestUnreach].code == 4
    assert s[IPerror6].src == "fd66::1" and bytes(s[ICMPv6DestUnreach].payload) == raw


def test_icmp_rate_limit_is_a_token_bucket_per_peer():
    rl = pk.IcmpRateLimit()
    assert [rl.allow(B4, 100.0) for _ in range(8)] == [True] * 6 + [False] * 2
    assert rl.allow(A4, 100.0)                 # another peer has its own bucket
    assert not rl.allow(B4, 100.5) and rl.allow(B4, 101.1) and not rl.allow(B4, 101.2)


# ---- the TCP stack, with byte arrays ----------------------------------------------------

class App:
    """The application side of a Stack under test."""

    def __init__(self, room=10**9):
        self.data, self.eofs, self.room = [], [], room
        self.stack = Stack(1500, on_data=self.on_data, on_eof=self.eofs.append, secret=b"k" * 16)

    def on_data(self, conn, data):
        if len(self.data) >= self.room:
            return False
        self.data.append(data)
        return True


def segs(raws):
    return [P(r) for r in raws]


def handshake(app, sport=40000, isn=1000, now=0.0, family=4):
    src, dst = (B4, A4) if family == 4 else (B6, A6)
    (sa,) = segs(app.stack.input(client(src, dst, sport, 80, isn, 0, SYN, options=pk.mss_option(1400)),
                                 "proc", now, listener="L", backlog=8))
    assert sa.flags == SYN | ACK and sa.ack == isn + 1 and sa.mss == 1460 - (0 if family == 4 else 20)
    out = app.stack.input(client(src, dst, sport, 80, isn + 1, sa.seq + 1, ACK), "proc", now)
    assert out == []
    c = app.stack.conns[(dst, 80, src, sport)]
    assert c.state == ts.ESTAB and c.mss == 1400
    return c, sa.seq + 1


def test_stack_handshake_data_answer_and_close_by_peer():
    app = App()
    c, our = handshake(app)
    (ack,) = segs(app.stack.input(client(B4, A4, 40000, 80, 1001, our, ACK | PSH, b"GET /"), "proc", 0.1))
    assert ack.flags == ACK and ack.ack == 1006 and app.data == [b"GET /"]
    (d,) = segs(app.stack.send(c, b"200 OK", 0.2))
    assert d.seq == our and d.ack == 1006 and d.flags == ACK | PSH
    assert d.data[d.payload_off:] == b"200 OK"
    assert app.stack.input(client(B4, A4, 40000, 80, 1006, our + 6, ACK), "proc", 0.3) == []
    assert not c.unacked and c.deadline == 0.0
    (a,) = segs(app.stack.input(client(B4, A4, 40000, 80, 1006, our + 6, FIN | ACK), "proc", 0.4))
    assert a.ack == 1007 and c.state == ts.CLOSE_WAIT and app.eofs == [c]
    (f,) = segs(app.stack.close(c, 0.5))
    assert f.flags == FIN | ACK and f.seq == our + 6 and c.state == ts.LAST_ACK
    assert app.stack.input(client(B4, A4, 40000, 80, 1007, our + 7, ACK), "proc", 0.6) == []
    assert c.state == ts.CLOSE and not app.stack.conns


def test_stack_we_close_first_then_time_wait_reacks_fin():
    app = App()
    c, our = handshake(app, family=6)
    (f,) = segs(app.stack.close(c, 1.0))
    assert c.state == ts.FIN_WAIT_1
    app.stack.input(client(B6, A6, 40000, 80, 1001, our + 1, ACK), "proc", 1.1)
    assert c.state == ts.FIN_WAIT_2
    (a,) = segs(app.stack.input(client(B6, A6, 40000, 80, 1001, our + 1, FIN | ACK), "proc", 1.2))
    assert a.ack == 1002 and c.state == ts.TIME_WAIT
    (again,) = segs(app.stack.timewait_ack(client(B6, A6, 40000, 80, 1001, our + 1, FIN | ACK)))
    assert again.ack == 1002 and again.seq == our + 1
    app.stack.tick(1.2 + ts.TIME_WAIT_SECONDS + 0.1)
    assert not app.stack.conns


def test_stack_duplicates_and_out_of_order_are_reacked_not_delivered_twice():
    app = App()
    c, our = handshake(app)
    app.stack.input(client(B4, A4, 40000, 80, 1001, our, ACK, b"abc"), "proc", 0.1)
    (dup,) = segs(app.stack.input(client(B4, A4, 40000, 80, 1001, our, ACK, b"abc"), "proc", 0.2))
    assert dup.ack == 1004
    app.stack.input(client(B4, A4, 40000, 80, 1002, our, ACK, b"bcdef"), "proc", 0.3)   # overlap
    (ooo,) = segs(app.stack.input(client(B4, A4, 40000, 80, 1100, our, ACK, b"later"), "proc", 0.4))
    assert ooo.ack == 1007 and app.data == [b"abc", b"def"]


def test_stack_full_receive_queue_drops_and_acks_old_point():
    app = App(room=1)
    c, our = handshake(app)
    app.stack.input(client(B4, A4, 40000, 80, 1001, our, ACK, b"one"), "proc", 0.1)
    (a,) = segs(app.stack.input(client(B4, A4, 40000, 80, 1004, our, ACK, b"two"), "proc", 0.2))
    assert a.ack == 1004 and app.data == [b"one"] and app.stack.stats["rcvq_drops"] == 1
    app.room = 2
    (a,) = segs(app.stack.input(client(B4, A4, 40000, 80, 1004, our, ACK, b"two"), "proc", 0.3))
    assert a.ack == 1007 and app.data == [b"one", b"two"]


def test_stack_segments_answer_by_mss_and_window_and_retransmits():
    app = App()
    c, our = handshake(app)
    c.snd_wnd = 3000
    out = segs(app.stack.send(c, b"y" * 5000, 0.0))
    assert [s.payload_len for s in out] == [1400, 1400, 200] and [s.seq - our for s in out] == [0, 1400, 2800]
    (re_,) = segs(app.stack.tick(c.deadline + 0.01))
    assert re_.seq == our and re_.payload_len == 1400 and app.stack.stats["retransmits"] == 1
    more = segs(app.stack.input(client(B4, A4, 40000, 80, 1001, our + 3000, ACK, window=8000), "proc", 1.0))
    assert [(s.seq - our, s.payload_len) for s in more] == [(3000, 1400), (4400, 600)]


def test_stack_rst_in_and_rst_out():
    app = App()
    c, our = handshake(app)
    (chal,) = segs(app.stack.input(client(B4, A4, 40000, 80, 1500, 0, RST), "proc", 0.1))
    assert chal.flags == ACK and c.state == ts.ESTAB        # RFC 5961 challenge ACK
    assert app.stack.input(client(B4, A4, 40000, 80, 1001, 0, RST), "proc", 0.2) == []
    assert not app.stack.conns
    c, our = handshake(app, sport=40001)
    (r,) = segs(app.stack.abort(c, "test"))
    assert r.flags == RST | ACK and r.seq == our and not app.stack.conns


def test_stack_bare_ack_without_connection_gets_rst():
    app = App()
    (r,) = segs(app.stack.input(client(B4, A4, 40000, 80, 77, 999, ACK), "proc", 0.0))
    assert r.flags == RST and r.seq == 999


def test_stack_syn_queue_full_answers_with_cookies_that_open_connections():
    app = App()
    forgotten = []
    app.stack.on_forget = forgotten.append
    for i in range(8):
        app.stack.input(client(B4, A4, 1000 + i, 80, 5, 0, SYN), "proc", 10.0, listener="L", backlog=8)
    assert app.stack.half_open == {"L": 8}
    (sa,) = segs(app.stack.input(client(B4, A4, 2000, 80, 5000, 0, SYN, options=pk.mss_option(1460)),
                                 "proc", 10.0, listener="L", backlog=8))
    assert sa.flags == SYN | ACK and len(app.stack.conns) == 8 and forgotten == [(A4, 80, B4, 2000)]
    out = app.stack.input(client(B4, A4, 2000, 80, 5001, sa.seq + 1, ACK | PSH, b"hi"), "proc", 70.0)
    c = app.stack.conns[(A4, 80, B4, 2000)]
    assert c.state == ts.ESTAB and c.mss == COOKIE_MSS[3] and app.data == [b"hi"] and segs(out)[0].ack == 5003
    (r,) = segs(app.stack.input(client(B4, A4, 2001, 80, 5001, sa.seq + 1, ACK), "proc", 70.0))
    assert r.flags == RST                                   # a cookie for another 4-tuple


def test_stack_synack_retransmitted_then_given_up():
    app = App()
    app.stack.input(client(B4, A4, 40000, 80, 5, 0, SYN), "proc", 0.0, listener="L", backlog=8)
    sent = []
    t = 0.0
    for _ in range(10):
        t += 100.0
        sent += segs(app.stack.tick(t))
    assert [s.flags for s in sent] == [SYN | ACK] * 5 and not app.stack.conns and not app.stack.half_open
