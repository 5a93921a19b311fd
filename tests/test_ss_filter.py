"""``demux ss``: which states it shows, when timers end an entry, and Recv-Q.

- The state filter of iproute2's misc/ss.c: by default SS_CONN (no LISTEN, UNCONN,
  TIME-WAIT or SYN-RECV; a connected UDP socket is ESTAB and shows), ``-l`` listening
  (LISTEN, and UNCONN for UDP; a bound-only TCP socket is never dumped for ``-l``),
  ``-a`` everything.
- ``--at T`` runs the kernel's timers up to T: a TIME-WAIT entry is gone 60 s after it
  began and a request socket 63 s after its SYN, packets or not.
- A connection nobody accept()ed shows what it received as Recv-Q, its FIN included.

The captures in pcaps/ carry the real ``ss`` output of their run; the last test builds
all of these states on a real kernel in a pair of namespaces and compares whole rows,
Recv-Q and Send-Q included, for every combination of flags that selects states.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from demux.render.ss import shown

ROOT = os.path.join(os.path.dirname(__file__), "..")
PCAPS = os.path.join(ROOT, "pcaps")


def demux_ss(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "demux", "ss", *args], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def states(text: str) -> list[str]:
    """The State column of each row (Netid or not)."""
    lines = text.splitlines()
    col = 1 if lines[0].startswith("Netid") else 0
    return [line.split()[col] for line in lines[1:] if line.strip()]


def capture(name: str, scenario: str | None = None) -> list[str]:
    return ["-s", os.path.join(PCAPS, (scenario or name.rsplit(".", 1)[0]) + ".toml"),
            "--capture", os.path.join(PCAPS, name)]


# ---- the state filter -------------------------------------------------------------------

TCP_STATES = ["LISTEN", "UNCONN", "SYN-SENT", "SYN-RECV", "ESTAB", "FIN-WAIT-1", "FIN-WAIT-2",
              "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT"]


def test_shown_is_iproute2s_state_mask():
    conn = {"SYN-SENT", "ESTAB", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK"}
    assert {s for s in TCP_STATES if shown("tcp", s, False, False)} == conn
    assert {s for s in TCP_STATES if shown("tcp", s, True, False)} == {"LISTEN"}
    assert {s for s in TCP_STATES if shown("tcp", s, False, True)} == set(TCP_STATES)
    assert {s for s in ("UNCONN", "ESTAB") if shown("udp", s, False, False)} == {"ESTAB"}
    assert {s for s in ("UNCONN", "ESTAB") if shown("udp", s, True, False)} == {"UNCONN"}
    assert {s for s in ("UNCONN", "ESTAB") if shown("udp", s, False, True)} == {"UNCONN", "ESTAB"}
    assert shown("tcp", "TIME-WAIT", True, True)      # -l with -a: everything, as ss -tlan


def test_default_hides_time_wait():
    # http4: three requests over by 1 s, their TIME-WAIT entries on the server
    assert states(demux_ss(*capture("http4.pcap"), "--at", "1", "-tan")).count("TIME-WAIT") == 3
    assert states(demux_ss(*capture("http4.pcap"), "--at", "1", "-tn")) == []
    assert states(demux_ss(*capture("http4.pcap"), "--at", "1", "-tln")) == ["LISTEN"]


def test_default_hides_syn_recv():
    # 34.5 us in: the first SYN has been answered, the final ACK not yet seen
    at = ["--at", "0.0000345"]
    assert states(demux_ss(*capture("http4.pcap"), *at, "-tan")) == ["LISTEN", "SYN-RECV"]
    assert states(demux_ss(*capture("http4.pcap"), *at, "-tn")) == []


def test_default_shows_connected_udp_and_listening_hides_it():
    # localcli's connected socket exists from 4.404995 to 4.405345
    at = ["--at", "4.4052"]
    cap = capture("mixed-pcapng.pcapng", "mixed-pcapng")
    only_udp = demux_ss(*cap, *at, "-un").splitlines()
    # one state asked for (ESTABLISHED alone): ss prints no State column
    assert only_udp[0].split()[:2] == ["Recv-Q", "Send-Q"]
    assert [line.split()[2:] for line in only_udp[1:]] == [["127.0.0.1:40053", "127.0.0.1:9053"]]
    assert states(demux_ss(*cap, *at, "-uln")) == ["UNCONN", "UNCONN"]
    assert sorted(states(demux_ss(*cap, *at, "-uan"))) == ["ESTAB", "UNCONN", "UNCONN"]


def test_bound_only_tcp_socket_is_not_listening(tmp_path):
    toml = tmp_path / "bound.toml"
    toml.write_text('[host]\naddresses = ["10.1.0.1"]\n\n[[process]]\nname = "app"\npid = 7\nsockets = [\n'
                    '  { proto = "tcp", bind = "10.1.0.1:80" },\n'
                    '  { proto = "tcp", bind = "10.1.0.1:81", listen = false },\n'
                    '  { proto = "udp", bind = "10.1.0.1:53" },\n]\n')
    assert states(demux_ss("-s", str(toml), "-tln")) == ["LISTEN"]
    assert states(demux_ss("-s", str(toml), "-tn")) == []
    assert states(demux_ss("-s", str(toml), "-tuln")) == ["UNCONN", "LISTEN"]     # UDP first, as ss


# ---- timers after the last packet -------------------------------------------------------

def test_time_wait_ends_60s_after_it_began():
    # http6 lasts 0.94 s; its three TIME-WAIT entries began within it
    cap = capture("http6.pcap")
    assert states(demux_ss(*cap, "--at", "59", "-tan")).count("TIME-WAIT") == 3
    assert states(demux_ss(*cap, "--at", "62", "-tan")) == ["LISTEN"]
    assert states(demux_ss(*cap, "--at", "1000", "-tan")) == ["LISTEN"]


def _pcap_of_one_syn(path, ts: float, src: str, sport: int, dst: str, dport: int, seq: int):
    """A classic pcap (Ethernet) holding one IPv4 SYN, checksums right."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    frame = bytes.fromhex("020000000001" "020000000002" "0800") + ip + tcp
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        f.write(struct.pack("<IIII", int(ts), int(ts % 1 * 1e6), len(frame), len(frame)) + frame)


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def test_request_socket_ends_63s_after_its_syn(tmp_path):
    # net.ipv4.tcp_synack_retries = 5: SYN-ACKs at 0, 1, 3, 7, 15, 31 s, given up at 63 s
    pcap = tmp_path / "syn.pcap"
    _pcap_of_one_syn(pcap, 1_700_000_000.25, "10.77.0.2", 40000, "10.77.0.1", 8080, 12345)
    cap = ["-s", os.path.join(PCAPS, "http4.toml"), "--capture", str(pcap)]
    assert states(demux_ss(*cap, "--at", "0", "-tan")) == ["LISTEN", "SYN-RECV"]
    assert states(demux_ss(*cap, "--at", "62", "-tan")) == ["LISTEN", "SYN-RECV"]
    assert states(demux_ss(*cap, "--at", "64", "-tan")) == ["LISTEN"]


# ---- Recv-Q of a connection nobody accepted ---------------------------------------------

def _cells(text: str) -> collections.Counter:
    """Rows as tuples of their cells, the process part cut to users:((...))."""
    out = collections.Counter()
    for line in text.splitlines()[1:]:
        cells = line.split()
        if cells:
            out[tuple(c for c in cells if not c.startswith(("ino:", "sk:", "cgroup:", "timer:", "v6only:",
                                                              "<", "-", "uid:")))] += 1
    return out


def test_mixed_capture_matches_the_real_ss_after_it():
    """pcaps/mixed-pcapng.kernel.json saved ``ss -tuanpe`` of the run just after the
    traffic: two never-accepted connections in CLOSE-WAIT with 9 bytes and a FIN
    unread (Recv-Q 10), the listener's queue of 2, a TIME-WAIT, UDP sockets. At 5 s
    (after localcli closed its socket) demux must print the same rows, queues too."""
    with open(os.path.join(PCAPS, "mixed-pcapng.kernel.json")) as f:
        real = json.load(f)["ss_after_traffic"]
    emu = demux_ss(*capture("mixed-pcapng.pcapng", "mixed-pcapng"), "--at", "5", "-tuanp")
    assert _cells(emu) == _cells(real), emu
    # still ESTAB before the FINs (3.5 s): 9 bytes each
    early = demux_ss(*capture("mixed-pcapng.pcapng", "mixed-pcapng"), "--at", "1", "-tn")
    assert [line.split()[:2] for line in early.splitlines()[1:]] == [["ESTAB", "9"], ["ESTAB", "9"]]


# ---- against the real kernel ------------------------------------------------------------

HOST4, PEER4, GHOST4 = "10.9.0.1", "10.9.0.2", "10.9.0.9"
GHOST_MAC = "02:09:00:00:00:09"       # nobody's: SYN-ACKs to 10.9.0.9 go nowhere
REAL_FLAGS = ["-tn", "-un", "-tun", "-tunp", "-tln", "-uln", "-tuln", "-tulnp", "-tan", "-uan",
              "-tuan", "-tuanp", "-tlan"]


def _iproute2_version(text: str) -> tuple[int, ...]:
    """(6, 1) from "ss utility, iproute2-6.1.0" (or iproute2-ss200127, which is older)."""
    tag = text.strip().rsplit("iproute2-", 1)[-1]
    if tag.startswith("ss") or not tag[:1].isdigit():
        return (5,)
    return tuple(int(x) for x in tag.split(".")[:2] if x.isdigit())


def _host_child(ctl):
    socks: dict[int, socket.socket] = {}
    accepted: list[socket.socket] = []

    def make(specs):
        """Sockets as (kind, bind, extra) in fd order; the local end and fd of each."""
        out = []
        for kind, addr, port, extra in specs:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind.startswith("tcp") else socket.SOCK_DGRAM)
            s.bind((addr, port))
            if kind == "tcp-listen":
                s.listen(extra)
            elif kind == "udp-connect":
                s.connect(extra)
            socks[s.fileno()] = s
            out.append((s.fileno(), s.getsockname()[1]))
        return out

    def accept(fd, close_first):
        """Take one connection off listener ``fd``, read its token; close first (the
        host then ends in TIME-WAIT) or hold it open."""
        l = socks[fd]
        l.settimeout(5)
        c, _ = l.accept()
        c.settimeout(5)
        c.recv(100)
        if close_first:
            c.close()
            return None
        accepted.append(c)
        return c.fileno()

    return {"make": make, "accept": accept}


def _peer_child(ctl):
    held: list[socket.socket] = []

    def connect(dst, port, token, fin):
        s = socket.create_connection((dst, port), timeout=5)
        s.sendall(token)
        if fin:
            s.shutdown(socket.SHUT_WR)
        held.append(s)
        return s.getsockname()[1]

    def wait_eof_and_close(i):
        """The host closed first: read its FIN, then close (the host's FIN-WAIT-2 ends)."""
        s = held[i]
        s.settimeout(5)
        while s.recv(100):
            pass
        s.close()

    def raw_syn(src, sport, dst, dport, seq):
        """A SYN from an address the peer does not have (its SYN-ACK is lost)."""
        s, d = socket.inet_aton(src), socket.inet_aton(dst)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
        tcp = tcp[:16] + struct.pack("!H", _csum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, s, d)
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        r.sendto(ip + tcp, (dst, 0))
        r.close()

    return {"connect": connect, "wait_eof_and_close": wait_eof_and_close, "raw_syn": raw_syn}


def _scenario(web_pid, stuck_pid, udp_port, peer_udp) -> str:
    return ('[host]\naddresses = ["10.9.0.1"]\ninterfaces = { eth0 = ["10.9.0.1"] }\n\n'
            f'[[process]]\nname = "web"\npid = {web_pid}\nsockets = [\n'
            '  { proto = "tcp", bind = "0.0.0.0:80", backlog = 8, fd = 3 },\n'
            '  { proto = "udp", bind = "0.0.0.0:53", fd = 4 },\n'
            f'  {{ proto = "udp", bind = "10.9.0.1:{udp_port}", connect = "{peer_udp}", fd = 5 }},\n'
            '  { proto = "tcp", bind = "10.9.0.1:82", listen = false, fd = 6 },\n]\n\n'
            f'[[process]]\nname = "stuck"\npid = {stuck_pid}\nsockets = [\n'
            '  { proto = "tcp", bind = "0.0.0.0:81", backlog = 1, accept = false, fd = 3 },\n]\n')


@pytest.mark.netns
def test_state_filter_and_queues_match_real_ss(netns_available, tmp_path):
    """One host with every state the filter treats apart: LISTEN (one with a queued
    connection), UDP UNCONN and ESTAB, a bound-only TCP socket, TIME-WAIT (the host
    closed first), ESTAB held, CLOSE-WAIT never accepted with 9 bytes and a FIN unread,
    SYN-RECV (its SYN-ACK goes to a MAC nobody has). Real ``ss`` and ``demux ss`` on the
    capture must print the same rows, Recv-Q and Send-Q included, for each flag set."""
    from realcapture import Child, Lab
    with Lab([HOST4], [PEER4]) as lab:
        lab.run(lab.hns, ["ip", "neigh", "replace", GHOST4, "lladdr", GHOST_MAC, "dev", "eth0",
                          "nud", "permanent"])
        web = Child(lab, lab.hns, 0, "web", _host_child, "web")
        stuck = Child(lab, lab.hns, 0, "stuck", _host_child, "stuck")
        peer = Child(lab, lab.pns, 0, "peer", _peer_child, "peer")
        made = web.call("make", [("tcp-listen", "0.0.0.0", 80, 8), ("udp", "0.0.0.0", 53, None),
                                 ("udp-connect", HOST4, 0, (PEER4, 5300)), ("tcp", HOST4, 82, None)])
        assert [fd for fd, _ in made] == [3, 4, 5, 6], made
        assert stuck.call("make", [("tcp-listen", "0.0.0.0", 81, 1)]) == [(3, 81)]
        cap = lab.capture(tmp_path / "real.pcap")
        peer.call("connect", HOST4, 80, b"first\n", False)
        assert web.call("accept", 3, True) is None
        peer.call("wait_eof_and_close", 0)
        peer.call("connect", HOST4, 80, b"second\n", False)
        assert web.call("accept", 3, False) == 7
        peer.call("connect", HOST4, 81, b"123456789", True)
        peer.call("raw_syn", GHOST4, 40999, HOST4, 80, 777)
        time.sleep(0.3)        # the delayed ACKs of the FIN and the data
        cap.stop()
        scen = tmp_path / "real.toml"
        scen.write_text(_scenario(web.pid, stuck.pid, made[2][1], f"{PEER4}:5300"))
        report = []
        old_ss = _iproute2_version(lab.run(lab.hns, ["ss", "-V"])) < (6, 10)
        for flags in REAL_FLAGS:
            real = lab.run(lab.hns, ["ss", flags])
            emu = demux_ss("-s", str(scen), "--capture", str(cap.path), *[f"-{c}" for c in flags[1:]])
            r, e = _cells(real), _cells(emu)
            if old_ss:
                # ss before 6.10 never asks for TCP_BOUND_INACTIVE, so even -a does not
                # show the bound-only socket; demux follows current iproute2
                e = collections.Counter({k: n for k, n in e.items() if f"{HOST4}:82" not in k})
            if r != e:
                report.append(f"ss {flags}:\n  only real: {sorted((r - e).elements())}\n"
                              f"  only demux: {sorted((e - r).elements())}")
        seen = set(states(lab.run(lab.hns, ["ss", "-tuan"])))
    assert seen >= {"LISTEN", "UNCONN", "ESTAB", "TIME-WAIT", "CLOSE-WAIT", "SYN-RECV"}, seen
    assert not report, "\n".join(report)


def test_the_last_of_a_and_l_wins():
    # iproute2 keeps one state filter: -tlan shows everything, -taln only listeners.
    import os
    import subprocess
    import sys
    root = os.path.join(os.path.dirname(__file__), "..")
    base = [sys.executable, "-m", "demux", "ss", "-s", "pcaps/http4.toml", "--capture", "pcaps/http4.pcap",
            "--at", "0.5"]
    every = subprocess.run(base + ["-tlan"], capture_output=True, text=True, cwd=root, timeout=60).stdout
    listen = subprocess.run(base + ["-taln"], capture_output=True, text=True, cwd=root, timeout=60).stdout
    assert "TIME-WAIT" in every and "LISTEN" in every
    assert "TIME-WAIT" not in listen and "LISTEN" in listen


def test_a_client_connection_in_time_wait_has_no_owner():
    # The client closed (its FIN went out): its descriptor is gone, and ss shows the
    # TIME-WAIT socket with no process, as the recorded real ss of this capture does.
    import os
    import subprocess
    import sys
    root = os.path.join(os.path.dirname(__file__), "..")
    out = subprocess.run([sys.executable, "-m", "demux", "ss", "-s", "pcaps/any-sll.toml", "--capture",
                          "pcaps/any-sll.pcap", "--at", "0.6685", "-tanp"], capture_output=True, text=True,
                         cwd=root, timeout=60).stdout
    tw = [line for line in out.splitlines() if "TIME-WAIT" in line]
    assert tw and all("users:" not in line for line in tw)
