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

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6, IPerror6

from demux.kernel import tcp_states as ts
from demux.live import packets as pk
from demux.live.handlers import echo
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
    p = client(B6, A6, 40000, 81, 1000, 0, flags, b"z" * plen)
    s = IPv6(pk.tcp_reset(p))
    assert bytes(rechecked(s)) == bytes(s)
    assert s[TCP].flags == "RA" and s[TCP].seq == 0 and s[TCP].ack == want_ack
    assert s[IPv6].hlim == 64 and s[IPv6].tc == 0 and s[IPv6].fl == pk.flow_label(A6, B6, 81, 40000) != 0


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


# ---- the dispatcher over a socketpair (no namespace needed) ------------------------------

def _slow(data, info):
    time.sleep(0.05)
    return data


def _dispatch(scenario_text, handlers, queue, peer_job, limit=10.0):
    """Run a Dispatcher in this thread while ``peer_job(peer)`` plays the network."""
    from demux.kernel import Kernel
    from demux.live.dispatcher import Dispatcher
    from demux.live.tun import PairDevice
    from demux.scenario import loads
    k = Kernel.from_scenario(loads(scenario_text))
    dev = PairDevice()
    d = Dispatcher(k, dev, {p.name: handlers.get(p.name, echo) for p in k.procs}, queue)
    result = {}

    def job():
        try:
            result["value"] = peer_job(dev.peer)
        finally:
            d.stopping = True
    d.start()
    t = threading.Thread(target=job)
    t.start()
    try:
        d.run(limit)
    finally:
        d.shutdown()
        t.join(5)
        dev.close()
    return d, result.get("value")


UDP_SCENARIO = """
[host]
addresses = ["10.66.0.2"]
[[process]]
name = "dns"
sockets = [ { proto = "udp", bind = "0.0.0.0:53" } ]
"""


def _collect(peer, n, timeout=3.0):
    peer.settimeout(timeout)
    got = []
    try:
        while len(got) < n:
            got.append(P(peer.recv(65536)))
    except socket.timeout:
        pass
    return got


def test_dispatcher_answers_udp_and_rejects_closed_port():
    def peer_job(peer):
        for i in range(3):
            (raw,) = pk.udp_packets(B4, A4, 5000 + i, 53, b"q%d" % i)
            peer.send(raw)
        (raw,) = pk.udp_packets(B4, A4, 6000, 54, b"nobody")
        peer.send(raw)
        return _collect(peer, 4)
    d, got = _dispatch(UDP_SCENARIO, {}, 16, peer_job)
    answers = sorted((p.dport, bytes(p.data[p.payload_off:])) for p in got if p.proto == 17)
    assert answers == [(5000, b"q0"), (5001, b"q1"), (5002, b"q2")]
    (icmp,) = [p for p in got if p.proto == 1]
    assert icmp.icmp_type == 3 and icmp.icmp_code == 3 and icmp.inner.dport == 54
    assert d.rejected["icmp-port-unreachable"] == 1 and d.delivered[0][:2] == [3, 6]


def test_dispatcher_full_handler_queue_drops_and_counts():
    def peer_job(peer):
        for i in range(30):
            (raw,) = pk.udp_packets(B4, A4, 5000 + i, 53, b"x")
            peer.send(raw)
        return _collect(peer, 30, timeout=2.0)
    d, got = _dispatch(UDP_SCENARIO, {"dns": _slow}, 2, peer_job)
    dropped = d.dropped.get("handler queue full (dns pid 1000)", 0)
    assert dropped > 0 and d.delivered[0][2] + dropped == 30 and len(got) == d.delivered[0][2]


def test_live_errors_are_one_line(tmp_path, capsys):
    from demux.cli import main
    sc = tmp_path / "s.toml"
    sc.write_text(UDP_SCENARIO)
    assert main(["live", "--tun", "dmx0", "-s", str(sc), "--handlers", str(tmp_path / "nope.py")]) == 2
    assert capsys.readouterr().err == f"demux live: {tmp_path / 'nope.py'}: no such handler module\n"
    (tmp_path / "h.py").write_text("def other(data, info):\n    return data\n")
    assert main(["live", "--tun", "dmx0", "-s", str(sc), "--handlers", str(tmp_path / "h.py")]) == 2
    assert "no function 'dns' (nor 'default')" in capsys.readouterr().err
    assert main(["live", "--tun", "x" * 20, "-s", str(sc)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["live", "--tun", "dmx0", "-s", str(tmp_path / "missing.toml")]) == 2


# ---- the whole command in a network namespace ---------------------------------------------

SCENARIO = """
[host]
addresses = ["10.66.0.2", "fd66::2"]

[[process]]
name = "web"
sockets = [ { proto = "tcp", bind = "[::]:80" } ]

[[process]]
name = "dns"
sockets = [ { proto = "udp", bind = "0.0.0.0:53" }, { proto = "udp", bind = "[::]:53", v6only = true } ]

[[process]]
name = "rp"
pid = 2001
uid = 65534
sockets = [ { proto = "tcp", bind = "0.0.0.0:8080", reuseport = true } ]

[[process]]
name = "rp"
pid = 2002
uid = 65534
sockets = [ { proto = "tcp", bind = "0.0.0.0:8080", reuseport = true } ]

[[process]]
name = "rp"
pid = 2003
uid = 65534
sockets = [ { proto = "tcp", bind = "0.0.0.0:8080", reuseport = true } ]

[[process]]
name = "victim"
sockets = [ { proto = "tcp", bind = "0.0.0.0:9000" } ]

[[process]]
name = "steady"
sockets = [ { proto = "udp", bind = "0.0.0.0:9001" } ]

[[process]]
name = "flood"
sockets = [ { proto = "tcp", bind = "0.0.0.0:7000", backlog = 16 } ]
"""

HANDLERS = '''
import os

def web(data, info):
    if b"\\r\\n\\r\\n" not in data:
        return None
    body = f"hello {info['src']} from {info['process']} {info['pid']}\\n".encode()
    return (b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: %d\\r\\n\\r\\n"
            % len(body) + body)

flood = web

def dns(data, info):
    return b"answer:" + data

def rp(data, info):
    return f"{os.getpid()} {os.getuid()} {info['conn']}\\n".encode()

def victim(data, info):
    return f"{os.getpid()}\\n".encode()

def steady(data, info):
    return data
'''

# Runs inside the namespace: one client action per call, one JSON line out.
CLIENT = r'''
import json, os, random, socket, struct, sys, time
sys.path.insert(0, sys.argv[1])
cmd, args = sys.argv[2], sys.argv[3:]

def fam(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def ask(s, msg):
    s.sendall(msg)
    return s.recv(4096).decode()

if cmd == "udp":
    host, port, msg = args[0], int(args[1]), args[2].encode()
    s = socket.socket(fam(host), socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(msg, (host, port))
    data, peer = s.recvfrom(4096)
    print(json.dumps({"answer": data.decode(), "from": [peer[0], peer[1]]}))
elif cmd == "tcp_closed":
    host, port = args[0], int(args[1])
    s = socket.socket(fam(host), socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        print(json.dumps({"result": "connected"}))
    except OSError as e:
        print(json.dumps({"result": type(e).__name__}))
elif cmd == "udp_closed":
    host, port = args[0], int(args[1])
    s = socket.socket(fam(host), socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((host, port))
    s.send(b"anyone?")
    try:
        s.recv(100)
        print(json.dumps({"result": "answered"}))
    except OSError as e:
        print(json.dumps({"result": type(e).__name__}))
elif cmd == "flows":
    host, port, nconn, nreq = args[0], int(args[1]), int(args[2]), int(args[3])
    socks = []
    for i in range(nconn):
        s = socket.create_connection((host, port), timeout=5)
        socks.append(s)
    out = [[ask(s, b"who?\n").split() for _ in range(nreq)] for s in socks]
    for s in socks:
        s.close()
    print(json.dumps(out))
elif cmd == "steady":
    host, port, n = args[0], int(args[1]), int(args[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.settimeout(0.001)
    got = set()
    for i in range(n):
        s.sendto(b"%d" % i, (host, port))
        t = time.monotonic() + 0.004
        while time.monotonic() < t:
            try:
                got.add(int(s.recv(100)))
            except socket.timeout:
                pass
    end = time.monotonic() + 3
    s.settimeout(0.2)
    while len(got) < n and time.monotonic() < end:
        try:
            got.add(int(s.recv(100)))
        except socket.timeout:
            pass
    print(json.dumps({"sent": n, "got": len(got), "missing": sorted(set(range(n)) - got)[:20]}))
elif cmd == "flood":
    from demux.live.packets import tcp_packet
    dst, port, n = socket.inet_aton(args[0]), int(args[1]), int(args[2])
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rnd = random.Random(7)
    sent = 0
    for i in range(n):
        src = bytes([10, 66, 0, 100 + i % 100])
        pkt = tcp_packet(src, dst, rnd.randrange(1024, 65535), port, rnd.getrandbits(32), 0, 0x02, 1024)
        try:
            raw.sendto(pkt, (args[0], 0))
            sent += 1
        except OSError:
            pass
    print(json.dumps({"sent": sent}))
'''


def _ns(ns, *cmd, timeout=10, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)


class Live:
    """`demux live` running in its own namespace, with helpers to act as its clients."""

    def __init__(self, tmp: Path):
        self.ns = f"dmx-live-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        (tmp / "scenario.toml").write_text(SCENARIO)
        (tmp / "handlers.py").write_text(HANDLERS)
        (tmp / "client.py").write_text(CLIENT)
        self.err: list[str] = []
        self.proc = None
        subprocess.run(["ip", "netns", "add", self.ns], check=True, timeout=10)

    def start(self):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "demux", "live", "--tun", "dmx0",
             "-s", str(self.tmp / "scenario.toml"), "--address", "10.66.0.1/24", "--address", "fd66::1/64",
             "--handlers", str(self.tmp / "handlers.py"), "--queue", "64"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._read_err, daemon=True).start()
        self.wait_err("Ctrl-C ends", 10)

    def _read_err(self):
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))

    def wait_err(self, text, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self.err):
                return
            if self.proc.poll() is not None:
                time.sleep(0.2)
                pytest.fail(f"demux live exited {self.proc.returncode}: {self.err}")
            time.sleep(0.05)
        pytest.fail(f"no {text!r} from demux live within {timeout} s: {self.err}")

    def client(self, *args, timeout=20):
        r = _ns(self.ns, sys.executable, str(self.tmp / "client.py"), str(REPO), *map(str, args),
                timeout=timeout)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def run(self, *cmd, timeout=10, **kw):
        return _ns(self.ns, *cmd, timeout=timeout, **kw)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=15)
        return out

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def live(netns_available, tmp_path_factory):
    lv = Live(tmp_path_factory.mktemp("live"))
    try:
        lv.start()
        yield lv
    finally:
        lv.close()


@pytest.mark.netns
@pytest.mark.parametrize("url,src", [("http://10.66.0.2/", "10.66.0.1"), ("http://[fd66::2]/", "fd66::1")])
def test_curl_fetches_a_page_through_the_tun(live, url, src):
    r = live.run("curl", "-sS", "-m", "5", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"hello {src} from web 1000\n"


@pytest.mark.netns
@pytest.mark.parametrize("host", ["10.66.0.2", "fd66::2"])
def test_udp_clients_get_answers(live, host):
    got = live.client("udp", host, 53, "question")
    assert got["answer"] == "answer:question" and got["from"][:2] == [host, 53]
    r = live.run("nc", "-u", "-w", "1", host, "53", input="from nc\n")
    assert r.stdout == "answer:from nc\n"


@pytest.mark.netns
@pytest.mark.parametrize("host", ["10.66.0.2", "fd66::2"])
def test_closed_ports_are_refused_by_rst_and_icmp(live, host):
    assert live.client("tcp_closed", host, 81) == {"result": "ConnectionRefusedError"}
    assert live.run("nc", "-z", "-w", "2", host, "81").returncode != 0
    assert live.run("nc", "-z", "-w", "2", host, "80").returncode == 0
    assert live.client("udp_closed", host, 54) == {"result": "ConnectionRefusedError"}


@pytest.mark.netns
def test_reuseport_group_spreads_flows_each_flow_on_one_process(live):
    flows = live.client("flows", "10.66.0.2", 8080, 12, 3)
    pids = set()
    for answers in flows:
        assert len({a[0] for a in answers}) == 1          # one flow, one process
        assert {a[1] for a in answers} == {"65534"}      # running as the scenario's uid
        pids.add(answers[0][0])
    assert len(pids) >= 2


@pytest.mark.netns
def test_killed_handler_restarts_and_others_lose_nothing(live):
    steady = subprocess.Popen(
        ["ip", "netns", "exec", live.ns, sys.executable, str(live.tmp / "client.py"), str(REPO),
         "steady", "10.66.0.2", "9001", "300"], stdout=subprocess.PIPE, text=True)
    try:
        (old,) = live.client("flows", "10.66.0.2", 9000, 1, 1)[0][0]
        os.kill(int(old), signal.SIGKILL)
        live.wait_err("victim (pid", 5)
        (new,) = live.client("flows", "10.66.0.2", 9000, 1, 1)[0][0]
        assert new != old
        out, _ = steady.communicate(timeout=20)
    finally:
        if steady.poll() is None:
            steady.kill()
    got = json.loads(out)
    assert got["got"] == got["sent"] == 300, got
    assert any(re.search(r"handler victim \(pid \d+\) killed by SIGKILL; restarted", line) for line in live.err)


@pytest.mark.netns
def test_syn_flood_is_survived_with_drops_counted(live):
    assert live.client("flood", "10.66.0.2", 7000, 2000)["sent"] == 2000
    r = live.run("curl", "-sS", "-m", "5", "http://10.66.0.2:7000/")
    assert r.returncode == 0 and r.stdout.startswith("hello 10.66.0.1 from flood"), r.stderr


@pytest.mark.netns
def test_zz_interrupt_ends_cleanly_with_summary(live):
    out = live.stop()
    assert live.proc.returncode == 0, live.err
    assert not any("Traceback" in line for line in live.err), live.err
    m = re.search(r"rejected: \d+ \(rst (\d+), icmp-port-unreachable (\d+)", out)
    assert m and int(m.group(1)) >= 4 and int(m.group(2)) >= 2, out
    assert re.search(r"^  web pid 1000: [1-9]\d* packets", out, re.M), out
    cookies = int(re.search(r"tcp: (\d+) SYN cookies sent", out).group(1))
    dropped = int(re.search(r"^dropped: (\d+)", out, re.M).group(1))
    assert cookies + dropped >= 2000 - 16, out
    assert live.run("ip", "link", "show", "dmx0").returncode != 0    # the TUN went with demux


@pytest.mark.netns
def test_rst_and_icmp_match_the_real_kernel_byte_for_byte(netns_available, tmp_path):
    """Two namespaces joined by a veth pair: a client meets closed ports on the real
    kernel; demux's RST and ICMP for the same probes must be the kernel's bytes (but
    the ICMP's IP ID and the IPv6 flow label, which come from boot-seeded hashes)."""
    a, b = f"dmx-rk-{uuid.uuid4().hex[:6]}", f"dmx-rk-{uuid.uuid4().hex[:6]}"
    pcap = tmp_path / "real.pcap"
    dump = None
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
        sh = [["ip", "link", "add", "vA", "netns", a, "type", "veth", "peer", "name", "vB", "netns", b],
              ["ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", "vA"],
              ["ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", "vB"],
              ["ip", "-n", a, "addr", "add", "fd77::1/64", "dev", "vA", "nodad"],
              ["ip", "-n", b, "addr", "add", "fd77::2/64", "dev", "vB", "nodad"],
              ["ip", "-n", a, "link", "set", "vA", "up"], ["ip", "-n", b, "link", "set", "vB", "up"]]
        for cmd in sh:
            subprocess.run(cmd, check=True, timeout=10)
        probe = ("import socket\n"
                 "for h in ('10.77.0.2', 'fd77::2'):\n"
                 "    f = socket.AF_INET6 if ':' in h else socket.AF_INET\n"
                 "    s = socket.socket(f); s.settimeout(2)\n"
                 "    try: s.connect((h, 81))\n"
                 "    except OSError: pass\n"
                 "    u = socket.socket(f, socket.SOCK_DGRAM); u.settimeout(2); u.connect((h, 54))\n"
                 "    u.send(b'x' * 30)\n"
                 "    try: u.recv(10)\n"
                 "    except OSError: pass\n")
        _ns(a, sys.executable, "-c", probe, timeout=15)        # warms up ARP and ND
        dump = subprocess.Popen(["ip", "netns", "exec", a, "tcpdump", "-i", "vA", "-U", "--immediate-mode", "-w", str(pcap)],
                                stderr=subprocess.PIPE, text=True)
        assert "listening" in dump.stderr.readline()
        _ns(a, sys.executable, "-c", probe, timeout=15)
        time.sleep(0.3)
    finally:
        if dump is not None:
            dump.terminate()
            dump.wait(timeout=5)
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
    from scapy.utils import rdpcap
    frames = [parse(i, 0.0, 101, bytes(f)[14:]) for i, f in enumerate(rdpcap(str(pcap)))]
    frames = [f for f in frames if f.family and f.proto in (1, 6, 17, 58)]
    checked = 0
    for i, answer in enumerate(frames):
        if not ((answer.proto == 6 and answer.flags & RST) or (answer.proto in (1, 58) and answer.icmp_type in (1, 3))):
            continue
        probe_pkt = next(f for f in reversed(frames[:i])
                         if f.proto in (6, 17) and f.src == answer.dst and f.dst == answer.src)
        real = bytes(answer.data)
        if answer.proto == 6:
            ours = pk.tcp_reset(probe_pkt)
        else:
            ours = pk.icmp_port_unreachable(probe_pkt, int.from_bytes(real[4:6], "big"))
        if answer.family == 6:
            # The flow label is hashed with a boot-time seed; the TCP checksum on the
            # sending veth is left to offload (CHECKSUM_PARTIAL), so compare the rest.
            real, ours = real[4:], ours[4:]
            if answer.proto == 6:
                real, ours = real[:52] + real[54:], ours[:52] + ours[54:]
        assert ours == real, (answer.proto, answer.family)
        checked += 1
    assert checked == 4
