"""Segments that no connection sends, against the real kernel: null, FIN, Xmas, SYN+FIN,
SYN-ACK and PSH probes (what port scanners send), to a listening port and a closed one.

The rules (tcp_rcv_state_process, TCP_LISTEN): a listener discards a segment without
ACK, SYN and RST and a SYN with FIN, and answers RST to one with ACK; with no socket the
kernel answers RST to anything but a RST. demux must say ``reply: rst`` exactly where
the kernel sent one. The probes leave a fresh namespace with scapy, tcpdump records the
host's side, and the capture is replayed.
"""

from __future__ import annotations

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


def _wait_line(proc, want: str, deadline: float) -> None:
    fd = (proc.stderr if want == "listening" else proc.stdout).fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            buf += chunk
            if want.encode() in buf:
                return
            if not chunk:
                break
    raise AssertionError(f"no {want!r} from {proc.args}: {buf!r}")


def test_probes_without_a_connection(lab, tmp_path):
    h, p, procs = lab
    deadline = time.monotonic() + 30
    srv = subprocess.Popen(["ip", "netns", "exec", h, sys.executable, "-c", LISTENER],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(srv)
    _wait_line(srv, "ready", deadline)
    pcap = tmp_path / "flags.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", h, "tcpdump", "-i", "vfl-h", "-s", "0", "-U",
                             "--immediate-mode", "-w", str(pcap), "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(dump)
    _wait_line(dump, "listening", deadline)
    sends = ", ".join(f"IP(src='{PEER}', dst='{HOST}')/TCP(sport={20000 + i}, dport={port}, "
                      f"flags='{fl}', seq=1000, ack={5000 if 'A' in fl else 0})"
                      for i, (port, fl) in enumerate(PROBES))
    code = ("from scapy.all import IP, TCP, send\nimport time\n"
            f"for pkt in [{sends}]:\n    send(pkt, verbose=0)\n    time.sleep(0.05)\n")
    subprocess.run(["ip", "netns", "exec", p, sys.executable, "-c", code], check=True, timeout=60,
                   capture_output=True)
    time.sleep(0.5)
    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=10)

    # What the kernel did: which probes got a RST back.
    frames = []
    with open_capture(str(pcap)) as r:
        for f in r:
            frames.append((f, parse(f.n, f.ts, f.linktype, f.data, f.ifname, f.orig_len)))
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
