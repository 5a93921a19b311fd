"""Segments that no connection sends, or sends out of turn, against the real kernel.

- Null, FIN, Xmas, SYN+FIN, SYN-ACK, PSH and RST probes (what port scanners send) to a
  listening port and a closed one (tcp_rcv_state_process, TCP_LISTEN: a listener
  discards a segment without ACK, SYN and RST and a SYN with FIN, and answers RST to
  one with ACK; with no socket the kernel answers RST to anything but a RST).
- Segments to a TIME-WAIT socket (tcp_timewait_state_process: a bare ACK in window is
  not answered, one out of window is, a RST out of window is ignored).
- Data without ACK on an open connection (tcp_rcv_established discards it).
- Segments past a zero window the host offers (tcp_sequence drops them whole).

demux must say ``reply: rst`` exactly where the kernel sent one, and drop or deliver as
it did. The probes leave a fresh namespace with scapy, tcpdump records the host's side,
and the capture is replayed.
"""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from demux import scenario as scen
from demux.capture import open_capture
from demux.engine import Engine
from demux.wire import parse

pytestmark = pytest.mark.netns

HOST, PEER = "10.9.77.1", "10.9.77.2"
# (destination port, scapy flags); each probe has its own source port.
PROBES = [(80, ""), (80, "F"), (80, "FPU"), (80, "SF"), (80, "SA"), (80, "P"), (80, "S"), (80, "R"),
          (81, ""), (81, "F"), (81, "FPU"), (81, "SF"), (81, "SA"), (81, "P"), (81, "R")]
SCENARIO = f"""
[host]
addresses = ["{HOST}"]

[[process]]
name = "srv"
pid = 100
sockets = [ {{ proto = "tcp", bind = "{HOST}:80", listen = true }} ]
"""
LISTENER = f"""
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{HOST}", 80))
s.listen(16)
print("ready", flush=True)
time.sleep(60)
"""


# Server code: what the accepted connection c brings until the peer's FIN, into got.
_READ_TO_EOF = """got = b""
while True:
    b = c.recv(65536)
    if not b:
        break
    got += b
"""


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@pytest.fixture
def lab(netns_available):
    tag = f"{os.getpid() % 100000}"
    h, p = f"dmx-flh-{tag}", f"dmx-flp-{tag}"
    procs = []
    try:
        _ip("netns", "add", h)
        _ip("netns", "add", p)
        _ip("link", "add", "vfl-h", "netns", h, "type", "veth", "peer", "name", "vfl-p", "netns", p)
        for ns, dev, addr in ((h, "vfl-h", HOST), (p, "vfl-p", PEER)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield h, p, procs
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
            pr.wait(timeout=5)
        _ip("netns", "del", h, check=False)
        _ip("netns", "del", p, check=False)


def _wait_line(proc, want: str, deadline: float) -> bytes:
    fd = (proc.stderr if want == "listening" else proc.stdout).fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            buf += chunk
            if want.encode() in buf:
                return buf
            if not chunk:
                break
    raise AssertionError(f"no {want!r} from {proc.args}: {buf!r}")


def _serve_and_record(h, procs, server_code: str, pcap, deadline: float, stdin=None):
    """``server_code`` running in the host namespace (it prints "ready"; procs[-2]), and
    tcpdump recording the host's side of the link into ``pcap``; returns tcpdump."""
    srv = subprocess.Popen(["ip", "netns", "exec", h, sys.executable, "-c", server_code],
                           stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(srv)
    _wait_line(srv, "ready", deadline)
    dump = subprocess.Popen(["ip", "netns", "exec", h, "tcpdump", "-i", "vfl-h", "-s", "0", "-U",
                             "--immediate-mode", "-w", str(pcap), "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(dump)
    _wait_line(dump, "listening", deadline)
    return dump


def _send(p, code: str) -> None:
    """Run scapy ``code`` in the peer namespace."""
    sent = subprocess.run(["ip", "netns", "exec", p, sys.executable, "-c", code], timeout=60,
                          capture_output=True, text=True)
    assert sent.returncode == 0, sent.stderr[-2000:]


def _stop(dump, settle: float) -> None:
    time.sleep(settle)
    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=10)


def _read(pcap):
    """The capture's frames and their parsed packets."""
    with open_capture(str(pcap)) as r:
        frames = list(r)
    return frames, [parse(f.n, f.ts, f.linktype, f.data, f.ifname, f.orig_len) for f in frames]


def test_probes_without_a_connection(lab, tmp_path):
    h, p, procs = lab
    pcap = tmp_path / "flags.pcap"
    dump = _serve_and_record(h, procs, LISTENER, pcap, time.monotonic() + 30)
    sends = ", ".join(f"IP(src='{PEER}', dst='{HOST}')/TCP(sport={20000 + i}, dport={port}, "
                      f"flags='{fl}', seq=1000, ack={5000 if 'A' in fl else 0})"
                      for i, (port, fl) in enumerate(PROBES))
    code = ("from scapy.all import IP, TCP, send\nimport time\n"
            f"for pkt in [{sends}]:\n    send(pkt, verbose=0)\n    time.sleep(0.05)\n")
    _send(p, code)
    _stop(dump, 0.5)

    # What the kernel did: which probes got a RST back.
    frames = list(zip(*_read(pcap)))
    rst_to = {pk.dport for _, pk in frames if pk.sport in (80, 81) and pk.flags & 0x04}
    synack_to = {pk.dport for _, pk in frames if pk.sport in (80, 81) and pk.flags & 0x12 == 0x12}
    eng = Engine(scen.loads(SCENARIO), 0)
    seen = {}
    for f, _ in frames:
        rec = eng.feed(f)
        pk = rec.packet
        if pk.dport in (80, 81) and 20000 <= pk.sport < 20000 + len(PROBES):
            seen.setdefault(pk.sport, rec)      # the probe, not a later answer to our SYN-ACK
    assert len(seen) == len(PROBES), f"tcpdump saw {len(seen)} of {len(PROBES)} probes"
    wrong = []
    for i, (port, fl) in enumerate(PROBES):
        rec = seen[20000 + i]
        kernel_rst = 20000 + i in rst_to
        synack = 20000 + i in synack_to
        # A listener that stays silent took nothing: drop (a socket matched, the
        # kernel discarded it); one that answers SYN-ACK took the SYN.
        want = "deliver" if synack else "reject" if kernel_rst else "drop" if port == 80 else "reject"
        if (rec.v.reply == "rst") != kernel_rst or rec.v.verdict != want:
            wrong.append(f"{fl or 'null'} to :{port}: kernel {'RST' if kernel_rst else 'SYN-ACK' if synack else 'silent'}, "
                         f"demux {rec.v.verdict} reply={rec.v.reply} ({rec.v.reason})")
    assert not wrong, "\n".join(wrong)
    # The kernel's own answers, as the rules say (so the oracle itself is checked).
    answered = {PROBES[sp - 20000] for sp in rst_to}
    assert answered == {(80, "SA")} | {(81, fl) for fl in ("", "F", "FPU", "SF", "SA", "P")}
    assert {PROBES[sp - 20000] for sp in synack_to} == {(80, "S")}


# The listener, then: accept one connection and close it first (this side ends in TIME-WAIT).
SERVER_CLOSES_FIRST = LISTENER.replace("time.sleep(60)", "c, _ = s.accept()\nc.close()\ntime.sleep(60)")
CLIENT = f"""
import socket
c = socket.create_connection(("{HOST}", 80), timeout=5)
print(c.getsockname()[1], flush=True)
while c.recv(100):
    pass
c.close()
"""


def _mac(ns, dev):
    out = _ip("-n", ns, "-o", "link", "show", dev).stdout
    return out.split("link/ether ")[1].split()[0]


def _peer_off_the_air(h, p) -> tuple[str, str]:
    """The peer's kernel gives up its address (so it answers none of the host's segments:
    scapy speaks for it at the link layer), and the host gets the peer's link address by
    hand, as nobody answers ARP for it now. Returns (host MAC, peer MAC)."""
    hmac, pmac = _mac(h, "vfl-h"), _mac(p, "vfl-p")
    _ip("-n", p, "addr", "del", f"{PEER}/24", "dev", "vfl-p")
    _ip("-n", h, "neigh", "replace", PEER, "lladdr", pmac, "dev", "vfl-h", "nud", "permanent")
    return hmac, pmac


def _connect_then(h, p, sport: int, probes) -> None:
    """From the peer's ``sport`` at the link layer: a SYN (ISN 1000) to the host's :80,
    then (flags, seq, data) probes 0.3 s apart, each acknowledging the host's SYN-ACK."""
    hmac, pmac = _peer_off_the_air(h, p)
    e = f"Ether(src='{pmac}', dst='{hmac}')/IP(src='{PEER}', dst='{HOST}')"
    _send(p, f"""from scapy.all import Ether, IP, TCP, Raw, srp1, sendp
import time
sa = srp1({e}/TCP(sport={sport}, dport=80, flags='S', seq=1000), iface='vfl-p', timeout=5, verbose=0)
for fl, seq, data in {probes!r}:
    pkt = {e}/TCP(sport={sport}, dport=80, flags=fl, seq=seq, ack=sa[TCP].seq + 1)
    sendp(pkt / Raw(data) if data else pkt, iface='vfl-p', verbose=0)
    time.sleep(0.3)
""")


def _probe_from_the_link(h, p, cport: int, probes, gap: float) -> None:
    """Send (flags, seq, ack, payload) segments from the peer's port ``cport`` at the link
    layer, ``gap`` seconds apart, once the peer's kernel no longer owns its address (so
    it answers none of the host's replies: a RST from it would change the host's state)."""
    hmac, pmac = _mac(h, "vfl-h"), _mac(p, "vfl-p")
    _ip("-n", p, "addr", "del", f"{PEER}/24", "dev", "vfl-p")
    pkts = ", ".join(f"Ether(src='{pmac}', dst='{hmac}')/IP(src='{PEER}', dst='{HOST}')/"
                     f"TCP(sport={cport}, dport=80, flags='{fl}', seq={seq & 0xFFFFFFFF}, ack={ack})"
                     + (f"/Raw({data!r})" if data else "") for fl, seq, ack, data in probes)
    _send(p, "from scapy.all import Ether, IP, TCP, Raw, sendp\nimport time\n"
             f"for pkt in [{pkts}]:\n    sendp(pkt, iface='vfl-p', verbose=0)\n    time.sleep({gap})\n")


def _answers(pkts, cport: int, after: float) -> tuple[list[int], list[list[int]]]:
    """The probes (segments from ``cport`` later than ``after``) by index, and for each the
    flags of what the host sent back before the next probe."""
    at = [i for i, pk in enumerate(pkts) if pk.sport == cport and pk.ts > after]
    ends = at[1:] + [len(pkts)]
    return at, [[pk.flags for pk in pkts[i + 1:e] if pk.dport == cport] for i, e in zip(at, ends)]


def test_time_wait_answers(lab, tmp_path):
    # tcp_timewait_state_process: a bare ACK in window restarts the timer and is not
    # answered; an ACK out of window is answered with an ACK; a RST out of window is
    # ignored (the TIME-WAIT socket stays: the next stray ACK is still answered).
    h, p, procs = lab
    pcap = tmp_path / "tw.pcap"
    dump = _serve_and_record(h, procs, SERVER_CLOSES_FIRST, pcap, time.monotonic() + 40)
    cport = int(subprocess.run(["ip", "netns", "exec", p, sys.executable, "-c", CLIENT], check=True,
                               capture_output=True, text=True, timeout=20).stdout)
    time.sleep(0.3)
    _, seen = _read(pcap)
    peer_fin = next(pk for pk in seen if pk.sport == cport and pk.flags & 0x01)
    host_fin = next(pk for pk in seen if pk.dport == cport and pk.flags & 0x01)
    rcv_nxt, snd_nxt = (peer_fin.seq + 1) & 0xFFFFFFFF, (host_fin.seq + 1) & 0xFFFFFFFF
    probes = [("A", rcv_nxt, snd_nxt, b""), ("A", rcv_nxt + 5000, snd_nxt, b""),
              ("R", rcv_nxt + 7000, 0, b""), ("A", rcv_nxt + 9000, snd_nxt, b"")]
    _probe_from_the_link(h, p, cport, probes, 0.7)
    _stop(dump, 0.3)
    frames, pkts_all = _read(pcap)
    probe_at, answered = _answers(pkts_all, cport, peer_fin.ts + 0.2)
    assert len(probe_at) == len(probes), "tcpdump missed a probe"
    # The kernel: in-window bare ACK unanswered, out-of-window ACK answered with an ACK,
    # out-of-window RST ignored, and the TIME-WAIT still there to ACK the last probe.
    assert answered == [[], [0x10], [], [0x10]], answered

    sc = scen.loads(SCENARIO.replace(", listen = true", ", listen = true, accept = true"))
    eng = Engine(sc, 0)
    recs = [eng.feed(f) for f in frames]
    got = [(recs[i].v.verdict, recs[i].v.state) for i in probe_at]
    assert got == [("drop", "TIME-WAIT")] * 4, [(recs[i].v.verdict, recs[i].v.reason) for i in probe_at]
    reasons = [recs[i].v.reason for i in probe_at]
    assert "nothing is sent" in reasons[0] and "answered with an ACK" in reasons[1]
    assert "ignored" in reasons[2] and "answered with an ACK" in reasons[3]


HOLDING_CLIENT = f"""
import socket, time
c = socket.create_connection(("{HOST}", 80), timeout=5)
print(c.getsockname()[1], flush=True)
time.sleep(30)
"""


def test_segment_without_ack_on_an_open_connection(lab, tmp_path):
    # tcp_rcv_established: "if (!th->ack && !th->rst && !th->syn) goto discard": data
    # without ACK on an open connection is dropped unanswered; with ACK it is taken and
    # acknowledged. tcp_validate_incoming (RFC 5961): a SYN is answered with a challenge
    # ACK and discarded, a RST resets only at exactly rcv_nxt (in window otherwise: a
    # challenge ACK).
    h, p, procs = lab
    pcap = tmp_path / "est.pcap"
    dump = _serve_and_record(h, procs, LISTENER, pcap, time.monotonic() + 40)
    cli = subprocess.Popen(["ip", "netns", "exec", p, sys.executable, "-c", HOLDING_CLIENT],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(cli)
    fd = cli.stdout.fileno()
    ready, _, _ = select.select([fd], [], [], 10)
    assert ready, "the client did not connect"
    cport = int(os.read(fd, 100))
    time.sleep(0.3)
    _, seen = _read(pcap)
    syn = next(pk for pk in seen if pk.sport == cport and pk.flags & 0x02)
    synack = next(pk for pk in seen if pk.dport == cport and pk.flags & 0x12 == 0x12)
    rcv_nxt, snd_nxt = (syn.seq + 1) & 0xFFFFFFFF, (synack.seq + 1) & 0xFFFFFFFF
    probes = [("P", rcv_nxt, 0, b"hello"), ("PA", rcv_nxt, snd_nxt, b"hello"), ("S", rcv_nxt + 105, 0, b""),
              ("R", rcv_nxt + 6, 0, b""), ("R", rcv_nxt + 5, 0, b"")]
    _probe_from_the_link(h, p, cport, probes, 0.6)
    _stop(dump, 0.3)
    frames, pkts_all = _read(pcap)
    probe_at, answered = _answers(pkts_all, cport, synack.ts + 0.2)
    assert len(probe_at) == len(probes), "tcpdump missed a probe"
    # The kernel: nothing; an ACK of the data; a challenge ACK; a challenge ACK; nothing.
    assert [[f & 0x17 for f in a] for a in answered] == [[], [0x10], [0x10], [0x10], []], answered

    eng = Engine(scen.loads(SCENARIO), 0)
    recs = [eng.feed(f) for f in frames]
    got = [(recs[i].v.verdict, recs[i].v.state) for i in probe_at]
    assert got == [("drop", "ESTAB"), ("deliver", "ESTAB"), ("drop", "ESTAB"), ("drop", "ESTAB"),
                   ("deliver", "CLOSE")], [recs[i].v.reason for i in probe_at]


def test_late_segments_of_a_closed_connection(lab, tmp_path):
    # The peer closes first; the host's side goes CLOSE-WAIT, LAST-ACK, CLOSE and is
    # gone. A duplicate final ACK and a retransmitted FIN then find no socket: the
    # listener answers RST to both (TCP_LISTEN: "if (th->ack) return 1"). They are no
    # connection that began before the capture.
    h, p, procs = lab
    server = LISTENER.replace("time.sleep(60)", "c, _ = s.accept()\nwhile c.recv(100):\n    pass\n"
                                                "c.close()\ntime.sleep(60)")
    pcap = tmp_path / "late.pcap"
    dump = _serve_and_record(h, procs, server, pcap, time.monotonic() + 40)
    client = (f"import socket, time\nc = socket.create_connection(('{HOST}', 80), timeout=5)\n"
              "print(c.getsockname()[1], flush=True)\nc.close()\ntime.sleep(1)\n")
    cport = int(subprocess.run(["ip", "netns", "exec", p, sys.executable, "-c", client], check=True,
                               capture_output=True, text=True, timeout=20).stdout)
    _, seen = _read(pcap)
    peer_fin = next(pk for pk in seen if pk.sport == cport and pk.flags & 0x01)
    host_fin = next(pk for pk in seen if pk.dport == cport and pk.flags & 0x01)
    last_ack = (peer_fin.seq + 1, (host_fin.seq + 1) & 0xFFFFFFFF)
    _probe_from_the_link(h, p, cport, [("A", *last_ack, b""), ("FA", peer_fin.seq, peer_fin.ack, b"")], 0.6)
    _stop(dump, 0.3)
    frames, pkts_all = _read(pcap)
    probe_at, answered = _answers(pkts_all, cport, max(pk.ts for pk in seen))
    assert len(probe_at) == 2, "tcpdump missed a probe"
    assert [[f & 0x04 for f in a] for a in answered] == [[0x04], [0x04]], answered   # RST, RST

    eng = Engine(scen.loads(SCENARIO), 0)
    recs = [eng.feed(f) for f in frames]
    assert [(recs[i].v.verdict, recs[i].v.reply) for i in probe_at] == [("reject", "rst")] * 2, \
        [recs[i].v.reason for i in probe_at]


def test_handshake_acks_that_miss_our_isn(lab, tmp_path):
    # tcp_check_req: a final ACK that acknowledges anything but ISN+1 goes to the
    # listener, which answers RST; the request socket stays, and the right ACK then
    # completes the handshake. A RST ends the request whatever it acknowledges (6.18).
    # tcp_rcv_synsent_state_process: a SYN-ACK that acknowledges anything but ISN+1 gets
    # a RST, and the connecting socket stays in SYN-SENT (a RST without ACK and an ACK
    # without SYN are discarded) until the right one. The peer's side is scapy at the
    # link layer (its kernel, without the address, answers nothing).
    h, p, procs = lab
    pcap = tmp_path / "isn.pcap"
    dialer = LISTENER.replace("time.sleep(60)", f"""
input()
c = socket.socket()
c.bind(("{HOST}", 40500))
c.settimeout(8)
try:
    c.connect(("{PEER}", 9000))
except OSError:
    pass
time.sleep(30)""")
    deadline = time.monotonic() + 40
    dump = _serve_and_record(h, procs, dialer, pcap, deadline, stdin=subprocess.PIPE)
    srv = procs[-2]
    hmac, pmac = _peer_off_the_air(h, p)
    e = f"Ether(src='{pmac}', dst='{hmac}')/IP(src='{PEER}', dst='{HOST}')"
    # Passive, from :33000: a wrong final ACK, the right one, data. From :33001: a RST
    # with a wrong ACK, then the right final ACK.
    _send(p, f"""from scapy.all import Ether, IP, TCP, Raw, srp1, sendp
import time
for sport, probes in ((33000, (('A', 1001), ('A', 1), ('PA', 1))), (33001, (('RA', 2001), ('A', 1)))):
    sa = srp1({e}/TCP(sport=sport, dport=80, flags='S', seq=1000), iface='vfl-p', timeout=5, verbose=0)
    for fl, plus in probes:
        time.sleep(0.3)
        pkt = {e}/TCP(sport=sport, dport=80, flags=fl, seq=1001, ack=(sa[TCP].seq + plus) & 0xFFFFFFFF)
        sendp(pkt / Raw(b'hello') if 'P' in fl else pkt, iface='vfl-p', verbose=0)
time.sleep(0.3)
""")
    # Active: the host connects from :40500 to the peer's :9000; the peer answers with a
    # wrong SYN-ACK, a RST without ACK, an ACK without SYN, then the right SYN-ACK.
    sniffer = subprocess.Popen(["ip", "netns", "exec", p, sys.executable, "-c", f"""from scapy.all import *
import time
s = AsyncSniffer(iface='vfl-p', filter='tcp dst port 9000 and tcp[tcpflags] & tcp-syn != 0', count=1,
                 started_callback=lambda: print('sniffing', flush=True))
s.start()
s.join(timeout=15)
isn = s.results[0][TCP].seq
for fl, plus in (('SA', 77), ('R', None), ('A', 1), ('SA', 1)):
    sendp({e}/TCP(sport=9000, dport=40500, flags=fl, seq=7000, ack=0 if plus is None else (isn + plus) & 0xFFFFFFFF),
          iface='vfl-p', verbose=0)
    time.sleep(0.3)
"""], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(sniffer)
    _wait_line(sniffer, "sniffing", deadline)
    srv.stdin.write(b"dial\n")
    srv.stdin.flush()
    sniffer.wait(timeout=30)
    assert sniffer.returncode == 0, sniffer.stderr.read()[-2000:]
    _stop(dump, 0.5)

    frames, pkts = _read(pcap)
    eng = Engine(scen.loads(SCENARIO), 0)
    recs = [eng.feed(f) for f in frames]
    wrong = []
    # (port, probes after the first, what the kernel sent back to each (RST/ACK, not the
    # connecting socket's SYN retransmissions), what demux must say)
    for port, skip, kernel, want in (
            (33000, 1, [[0x04], [], [0x10]],
             [("drop", "SYN-RECV", "rst"), ("deliver", "ESTAB", None), ("deliver", "ESTAB", None)]),
            (33001, 1, [[], [0x04]], [("deliver", "CLOSE", None), ("reject", None, "rst")]),
            (9000, 0, [[0x04], [], [], [0x10]],
             [("drop", "SYN-SENT", "rst"), ("drop", "SYN-SENT", None), ("drop", "SYN-SENT", None),
              ("deliver", "ESTAB", None)])):
        at, answered = _answers(pkts, port, 0)
        at, answered = at[skip:], answered[skip:]
        seen = [[f & 0x17 for f in a if not f & 0x02] for a in answered]
        assert seen == kernel, (port, seen)
        got = [(recs[i].v.verdict, recs[i].v.state, recs[i].v.reply) for i in at]
        if got != want:
            wrong.append(f":{port}: {got} != {want}: {[recs[i].v.reason for i in at]}")
    assert not wrong, "\n".join(wrong)


def test_old_segments_on_an_open_connection(lab, tmp_path):
    # Kernel._old: what our latest segment acknowledged arrived. tcp_sequence drops a
    # segment that ends before it (a keep-alive probe) with a duplicate ACK; tcp_data_queue
    # drops data or a FIN that ends at it (a retransmission), acknowledging it again.
    # Data past it is taken, even out of order, and a hole's filling too. The server
    # prints what it read: the dropped segments' bytes never reach it.
    h, p, procs = lab
    pcap = tmp_path / "old.pcap"
    reader = LISTENER.replace("time.sleep(60)", """c, _ = s.accept()
""" + _READ_TO_EOF + """print("GOT", got, flush=True)
c.close()
time.sleep(60)""")
    dump = _serve_and_record(h, procs, reader, pcap, time.monotonic() + 40)
    srv = procs[-2]
    probes = [("A", 1001, b""), ("PA", 1001, b"hello"), ("PA", 1001, b"hello"), ("A", 1005, b""),
              ("A", 1005, b"x"), ("PA", 1003, b"llo!!"), ("PA", 1012, b"later"), ("PA", 1008, b"abcd"),
              ("FA", 1017, b""), ("FA", 1017, b"")]
    _connect_then(h, p, 34000, probes)
    said = _wait_line(srv, "GOT", time.monotonic() + 10)
    assert b"GOT b'hello!!abcdlater'" in said, said       # what the application read
    _stop(dump, 0.3)
    frames, pkts = _read(pcap)
    at, answered = _answers(pkts, 34000, 0)
    at, answered = at[1:], answered[1:]                 # after the SYN
    assert len(at) == len(probes), "tcpdump missed a probe"
    # The kernel acknowledged each but the handshake's ACK (the FIN: with its own FIN).
    assert [bool(a) for a in answered] == [False] + [True] * 9, answered
    eng = Engine(scen.loads(SCENARIO), 0)
    recs = [eng.feed(f) for f in frames]
    got = [(recs[i].v.verdict, recs[i].v.state) for i in at]
    want = [("deliver", "ESTAB")] * 2 + [("drop", "ESTAB")] * 3 + [("deliver", "ESTAB")] * 3 + \
        [("deliver", "CLOSE-WAIT"), ("drop", "LAST-ACK")]
    assert got == want, [recs[i].v.reason for i in at]


def test_segments_after_the_peers_fin(lab, tmp_path):
    # CLOSE-WAIT (the peer's FIN taken, the application has not closed): data after the
    # FIN is not queued (tcp_rcv_state_process: "if (!before(seq, rcv_nxt)) break", then
    # discarded); a RST at rcv_nxt - 1 resets the connection (tcp_reset_check), one
    # further back does not.
    h, p, procs = lab
    pcap = tmp_path / "cw.pcap"
    holder = LISTENER.replace("time.sleep(60)", "c, _ = s.accept()\ntime.sleep(60)")
    dump = _serve_and_record(h, procs, holder, pcap, time.monotonic() + 40)
    probes = [("A", 1001, b""), ("PA", 1001, b"abc"), ("FA", 1004, b""), ("PA", 1005, b"zzz"),
              ("R", 1003, b""), ("R", 1004, b""), ("A", 1005, b"")]
    _connect_then(h, p, 35000, probes)
    _stop(dump, 0.3)
    frames, pkts = _read(pcap)
    at, answered = _answers(pkts, 35000, 0)
    at, answered = at[1:], answered[1:]
    assert len(at) == len(probes), "tcpdump missed a probe"
    # The kernel: nothing to the ACK; ACKs of the data and of the FIN; nothing to the data
    # after the FIN and to either RST; the last ACK finds no socket: RST.
    assert [[f & 0x17 for f in a] for a in answered] == [[], [0x10], [0x10], [], [], [], [0x04]], answered
    eng = Engine(scen.loads(SCENARIO), 0)
    recs = [eng.feed(f) for f in frames]
    got = [(recs[i].v.verdict, recs[i].v.state, recs[i].v.reply) for i in at]
    assert got == [("deliver", "ESTAB", None), ("deliver", "ESTAB", None), ("deliver", "CLOSE-WAIT", None),
                   ("drop", "CLOSE-WAIT", None), ("drop", "CLOSE-WAIT", None), ("deliver", "CLOSE", None),
                   ("reject", None, "rst")], [recs[i].v.reason for i in at]


ZERO_WINDOW_PEER = """from scapy.all import Ether, IP, TCP, Raw, srp1, sendp, AsyncSniffer
import time
e = Ether(src='{pmac}', dst='{hmac}')/IP(src='{peer}', dst='{host}')
seen = []
sn = AsyncSniffer(iface='vfl-p', filter='tcp and src host {host}', store=False, prn=seen.append)
sn.start()
time.sleep(0.5)

def to(sport):
    return [pk[TCP] for pk in seen if pk[TCP].dport == sport]

def wait(sport, test):
    start, end = len(to(sport)), time.time() + 10
    while time.time() < end:
        hit = [t for t in to(sport)[start:] if test(t)]
        if hit:
            return hit[-1]
        time.sleep(0.05)
    raise SystemExit('the host did not answer as expected')

def fill(sport):
    # A handshake from sport, then data up to the last byte of the window the host
    # offers. Returns seg(flags, seq, data, ack, gap) for the connection, and the edge.
    sa = srp1(e/TCP(sport=sport, dport=80, flags='S', seq=1000, options=[('MSS', 1460)]), iface='vfl-p',
              timeout=5, verbose=0)
    isn1 = sa[TCP].seq + 1

    def seg(fl, seq, data=b'', a=None, gap=0.3):
        pkt = e/TCP(sport=sport, dport=80, flags=fl, seq=seq, ack=isn1 if a is None else a, window=65535)
        sendp(pkt/Raw(data) if data else pkt, iface='vfl-p', verbose=0)
        time.sleep(gap)
    seg('A', 1001)
    seq = 1001
    while to(sport)[-1].window:
        n = min(1000, to(sport)[-1].window)
        seg('PA', seq, b'd' * n)
        seq += n
    return seg, to(sport)[-1].ack
"""

ZERO_WINDOW_PROBES = """
seg, edge = fill(36000)
seg('PA', edge, b'Z')                # data at the edge of a zero window
seg('A', edge)                       # an ACK at the edge
seg('A', edge + 5)                   # an ACK past it
seg('PA', edge - 100, b'd' * 100 + b'Z')      # data overlapping the edge
seg('RA', edge, b'RSTDATA')          # a RST with data at the edge: past it
fin = wait(36000, lambda t: t.flags & 0x01).seq + 1     # the application's shutdown(SHUT_WR)
seg('PA', edge, b'X', fin)           # past the edge, acknowledging the host's FIN
time.sleep(1.5)                      # the FIN is retransmitted if that ACK was ignored
seg('A', edge, a=fin)                # a bare ACK of the FIN
wait(36000, lambda t: t.window > 0)  # the application reads: the window opens
seg('PA', edge, b'after', fin)
seg('FA', edge + 5, a=fin)
time.sleep(0.5)
sn.stop()
"""


def _unread_server(body: str) -> str:
    """LISTENER with SO_RCVBUF 8192 (a window of a few KB), then ``body`` (what becomes of
    the accepted connections) instead of its wait."""
    return LISTENER.replace("s.listen(16)", "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)\n"
                                            "s.listen(16)").replace("time.sleep(60)", body)


def _engines_agree(pcap) -> None:
    """The batch engine's records are the reference's (its flow cache must leave the
    zero window's segments to the kernel)."""
    from demux.batch import reference_jsonl, replay_batch
    ref, out = io.BytesIO(), io.BytesIO()
    reference_jsonl(str(pcap), scen.loads(SCENARIO), 0, ref)
    replay_batch(str(pcap), scen.loads(SCENARIO), 0, 1, out)
    assert out.getvalue() == ref.getvalue()


def test_zero_window(lab, tmp_path):
    # Kernel._beyond_zero_window. The application leaves what it received unread until the
    # host offers a zero window; then tcp_sequence (6.17 on) drops a segment whose data
    # ends past the window's edge, or that starts past it, whole: the ACK it carries is
    # not processed (the host's FIN, which the dropped segment acknowledges, is sent
    # again), and the application never reads its bytes; a RST with data resets nothing.
    # An ACK at the edge is taken; the window update ends it. The application reads what
    # the kernel kept.
    h, p, procs = lab
    pcap = tmp_path / "zw.pcap"
    server = _unread_server("""c, _ = s.accept()
time.sleep(4.5)
c.shutdown(socket.SHUT_WR)
time.sleep(3)
""" + _READ_TO_EOF + """print("GOT", len(got), got.count(b"d"), got[-8:], flush=True)
time.sleep(60)""")
    dump = _serve_and_record(h, procs, server, pcap, time.monotonic() + 40)
    srv = procs[-2]
    hmac, pmac = _peer_off_the_air(h, p)
    _send(p, ZERO_WINDOW_PEER.format(pmac=pmac, hmac=hmac, peer=PEER, host=HOST) + ZERO_WINDOW_PROBES)
    said = _wait_line(srv, "GOT", time.monotonic() + 10)
    _stop(dump, 0.3)
    frames, pkts = _read(pcap)
    # What the application read: the window's fill and "after"; no byte of a dropped segment.
    n_read, n_d = int(said.split()[1]), int(said.split()[2])
    assert b"after" in said and n_read == n_d + 5, said
    fins = [i for i, pk in enumerate(pkts) if pk.sport == 80 and pk.flags & 0x01]
    x = next(i for i, pk in enumerate(pkts) if pk.sport == 36000 and pk.data.endswith(b"X"))
    bare = next(i for i, pk in enumerate(pkts) if i > x and pk.sport == 36000 and not pk.payload_len)
    assert any(x < i < bare for i in fins), "the host did not send its FIN again: the dropped segment's ACK counted"
    assert not any(i > bare for i in fins), "the bare ACK did not acknowledge the FIN"
    eng = Engine(scen.loads(SCENARIO), 0)
    recs = [eng.feed(f) for f in frames]
    edge_at = next(i for i, pk in enumerate(pkts) if pk.sport == 80 and pk.window == 0 and i > 2)
    ins = [i for i, pk in enumerate(pkts) if pk.sport == 36000 and i > edge_at]
    got = [(pkts[i].payload_len, recs[i].v.verdict, recs[i].v.state) for i in ins]
    assert got == [(1, "drop", "ESTAB"), (0, "deliver", "ESTAB"), (0, "drop", "ESTAB"), (101, "drop", "ESTAB"),
                   (7, "drop", "ESTAB"), (1, "drop", "FIN-WAIT-1"), (0, "deliver", "FIN-WAIT-2"),
                   (5, "deliver", "FIN-WAIT-2"), (0, "deliver", "TIME-WAIT")], [recs[i].v.reason for i in ins]
    fill = [i for i, pk in enumerate(pkts) if pk.sport == 36000 and pk.payload_len and i < edge_at]
    assert n_d == sum(pkts[i].payload_len for i in fill)
    assert all((recs[i].v.verdict, recs[i].v.state) == ("deliver", "ESTAB") for i in fill)
    _engines_agree(pcap)


ZERO_WINDOW_EDGE_PROBES = """
seg, edge = fill(36001)
seg('RA', edge, b'RSTDATA', gap=0.7)      # a RST with data at the edge
seg('A', edge + 5, gap=0.7)               # past the edge: a duplicate ACK if it lives
seg, edge = fill(36002)
h = wait(36002, lambda t: len(t.payload))  # the host sends 10 bytes, its window still 0
time.sleep(0.6)
seg('FA', edge, a=h.seq, gap=0.0)         # a bare FIN at the edge
seg('A', edge + 1, a=h.seq + 10, gap=1.5)  # at once: past rcv_wup, acknowledging the 10 bytes
time.sleep(0.5)
sn.stop()
"""


def test_zero_window_edge(lab, tmp_path):
    # Kernel._beyond_zero_window's edge, two cases measured on 6.18. A RST at the edge
    # carrying data ends past it: discarded, the connection lives (the host answers the
    # next probe with a duplicate ACK, not a RST). A bare FIN at the edge is taken and the
    # edge moves past it: the peer's next segment, sent before the host's ACK of the FIN
    # went out, is processed (the host never sends its 10 bytes again: acknowledged).
    h, p, procs = lab
    pcap = tmp_path / "zwe.pcap"
    server = _unread_server("""c1, _ = s.accept()
c2, _ = s.accept()
time.sleep(2.5)
c2.send(b"h" * 10)
time.sleep(60)""")
    dump = _serve_and_record(h, procs, server, pcap, time.monotonic() + 40)
    hmac, pmac = _peer_off_the_air(h, p)
    _send(p, ZERO_WINDOW_PEER.format(pmac=pmac, hmac=hmac, peer=PEER, host=HOST) + ZERO_WINDOW_EDGE_PROBES)
    _stop(dump, 0.3)
    frames, pkts = _read(pcap)
    eng = Engine(scen.loads(SCENARIO), 0)
    recs = [eng.feed(f) for f in frames]
    rst = next(i for i, pk in enumerate(pkts) if pk.sport == 36001 and pk.flags & 0x04)
    probe = next(i for i, pk in enumerate(pkts) if i > rst and pk.sport == 36001)
    answers = [pk.flags & 0x17 for pk in pkts[rst + 1:] if pk.dport == 36001]
    assert answers and not any(f & 0x04 for f in answers), "the RST reset the host's socket"
    fin = next(i for i, pk in enumerate(pkts) if pk.sport == 36002 and pk.flags & 0x01)
    after = next(i for i, pk in enumerate(pkts) if i > fin and pk.sport == 36002)
    data_out = [i for i, pk in enumerate(pkts) if pk.sport == 80 and pk.dport == 36002 and pk.payload_len]
    assert data_out and all(i < fin for i in data_out), "the host sent its data again: the ACK was ignored"
    got = [(recs[i].v.verdict, recs[i].v.state) for i in (rst, probe, fin, after)]
    assert got == [("drop", "ESTAB"), ("drop", "ESTAB"), ("deliver", "CLOSE-WAIT"), ("deliver", "CLOSE-WAIT")], \
        [recs[i].v.reason for i in (rst, probe, fin, after)]
    _engines_agree(pcap)


NOT_TAKEN_PEER = """from scapy.all import Ether, IP, TCP, Raw, srp1, sendp
import time
e = Ether(src='{pmac}', dst='{hmac}')/IP(src='{peer}', dst='{host}')

def connect(sport, isn, data=b''):
    syn = e/TCP(sport=sport, dport=80, flags='S', seq=isn)
    sa = srp1(syn/Raw(data) if data else syn, iface='vfl-p', timeout=5, verbose=0)

    def seg(fl, seq, data=b'', ack=0):
        pkt = e/TCP(sport=sport, dport=80, flags=fl, seq=seq, ack=sa[TCP].seq + 1 + ack, window=65535)
        sendp(pkt/Raw(data) if data else pkt, iface='vfl-p', verbose=0)
        time.sleep(0.3)
    seg('A', isn + 1)
    return seg

seg = connect(37001, 1000)
seg('A', 1101)                       # a bare ACK past rcv_nxt (the data before it late)
seg('PA', 1001, b'a' * 100)          # that data
seg('FA', 1101)
seg = connect(37002, 2000, b'SYNDATA')   # a SYN with data: not taken without Fast Open
seg('PA', 2001, b'SYNDATA')          # the data again, after the handshake
seg('FA', 2008)
seg = connect(37003, 3000)
seg('PA', 3001, b'x' * 50, ack=1000)      # acknowledging data the host never sent: discarded
seg('PA', 3001, b'y' * 50)           # the same bytes, with a right ACK
seg('FA', 3051)
time.sleep(0.5)
"""


def test_what_the_kernel_did_not_take_is_no_copy(lab, tmp_path):
    # Kernel._received and _sent keep rcv_exact honest: demux counts as received only what
    # the kernel took, else a later resend of the bytes would look like a copy (_old).
    # A bare ACK past rcv_nxt, a SYN's data (no Fast Open) and data acknowledging what the
    # host never sent (tcp_ack: TCP_ACK_UNSENT_DATA) are not taken; the bytes sent again
    # are, and the application reads them (found in review, measured on 6.18).
    h, p, procs = lab
    pcap = tmp_path / "taken.pcap"
    server = LISTENER.replace("time.sleep(60)", "for _ in range(3):\n    c, _ = s.accept()\n"
                              + "".join("    " + line + "\n" for line in _READ_TO_EOF.splitlines())
                              + "    print('GOT', got, flush=True)\ntime.sleep(60)")
    dump = _serve_and_record(h, procs, server, pcap, time.monotonic() + 40)
    srv = procs[-2]
    hmac, pmac = _peer_off_the_air(h, p)
    _send(p, NOT_TAKEN_PEER.format(pmac=pmac, hmac=hmac, peer=PEER, host=HOST))
    said = b""
    while said.count(b"GOT") < 3:
        said += _wait_line(srv, "GOT", time.monotonic() + 10)
    _stop(dump, 0.3)
    assert b"GOT b'" + b"a" * 100 + b"'" in said and b"GOT b'SYNDATA'" in said and b"GOT b'" + b"y" * 50 + b"'" in said, said
    frames, pkts = _read(pcap)
    eng = Engine(scen.loads(SCENARIO), 0)
    recs = [eng.feed(f) for f in frames]
    resent = [[i for i, pk in enumerate(pkts) if pk.sport == sport and pk.payload_len and pk.data.endswith(tail)][-1]
              for sport, tail in ((37001, b"a"), (37002, b"SYNDATA"), (37003, b"y"))]
    got = [(pkts[i].payload_len, recs[i].v.verdict, recs[i].v.state) for i in resent]
    assert got == [(100, "deliver", "ESTAB"), (7, "deliver", "ESTAB"), (50, "deliver", "ESTAB")], \
        [recs[i].v.reason for i in resent]
    _engines_agree(pcap)
