"""``demux ss`` against iproute2's ``ss`` on the same sockets, built for real.

Each scenario below is built in the host namespace of its own ``realcapture.Lab`` (one child
per process, named as the scenario names it, under its uid, with only fds 0-2 open, so
its sockets get 3, 4, ... as the emulator assumes). Where the scenario has connections,
the peer opens them one at a time and holds them open (the host child accepts and
echoes) while tcpdump captures the host's eth0, so ``demux ss --capture`` can replay
them. Then real ``ss`` runs inside the namespace and ``demux ss`` runs on the scenario
rewritten with the children's real pids, fds and kernel-chosen ports, with the same
flags: ``-tulnap``, ``-tlnp``, ``-ulnp``, ``-tanp`` and, without ``-a`` or ``-l`` (ss's
default state filter: no listeners or unconnected sockets), ``-tunp`` and ``-unp``
(``-u`` alone asks for one state, so ss prints no State column).

Rows are compared as multisets (ss prints in hash order, demux in creation order),
column by column after splitting on whitespace: Netid and State (when printed), Local
Address:Port, Peer Address:Port and the ``users:((...))`` part. Recv-Q and Send-Q are
ignored, as are column widths. A difference is reported as the real line next to the
demux line of the same socket (matched by the process part, else by local port).
tests/test_ss_filter.py compares the states of a connection's end (TIME-WAIT,
SYN-RECV, CLOSE-WAIT) and the queues.

Disagreements found against bb75a21 (since fixed): a dual-stack ``[::]`` socket is
``*:443`` with peer ``*:*`` in ss (demux printed ``[::]``), and an IPv4 connection
accepted by a dual-stack listener is v4-mapped (``[::ffff:10.9.0.1]:443``).
"""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest

from demux.scenario import Endpoint, dumps, loads
from realcapture import Lab

pytestmark = pytest.mark.netns

HOST = ["10.9.0.1", "10.9.0.3", "fd9::1"]
PEER4, PEER6 = "10.9.0.2", "fd9::2"
FLAGS = ["-tulnap", "-tlnp", "-ulnp", "-tanp", "-tunp", "-unp"]
_H = ('[host]\naddresses = ["10.9.0.1", "10.9.0.3", "fd9::1"]\n'
      'interfaces = { eth0 = ["10.9.0.1", "10.9.0.3", "fd9::1"] }\n')


def _proc(name: str, *socks: str, uid: int = 0) -> str:
    return (f'[[process]]\nname = "{name}"\nuid = {uid}\nsockets = [\n'
            + "".join(f"  {{ {s} }},\n" for s in socks) + "]\n")


# name -> (scenario TOML, connections as (dst address, port) made from the peer, in order)
SCENARIOS: dict[str, tuple[str, list[tuple[str, int]]]] = {
    "tcp-v4": (_H + _proc("web", 'proto = "tcp", bind = "0.0.0.0:80"',
                          'proto = "tcp", bind = "10.9.0.1:8080", backlog = 128'), []),
    "tcp-v6only-beside-v4": (_H + _proc("web", 'proto = "tcp", bind = "[::]:80", v6only = true',
                                        'proto = "tcp", bind = "0.0.0.0:80"'), []),
    "tcp-dual-stack": (_H + _proc("web", 'proto = "tcp", bind = "[::]:443", v6only = false',
                                  'proto = "tcp", bind = "[::]:8443"'), []),
    "tcp-v6-specific": (_H + _proc("sshd", 'proto = "tcp", bind = "[fd9::1]:22"',
                                   'proto = "tcp", bind = "10.9.0.3:22"'), []),
    "udp-bound": (_H + _proc("dns", 'proto = "udp", bind = "0.0.0.0:53"',
                             'proto = "udp", bind = "[::]:53", v6only = true',
                             'proto = "udp", bind = "10.9.0.1:123"',
                             'proto = "udp", bind = "[::]:5353", v6only = false'), []),
    "udp-connected": (_H + _proc("client", 'proto = "udp", bind = "0.0.0.0:0", connect = "10.9.0.2:53"',
                                 'proto = "udp", connect = "[fd9::2]:53"',
                                 'proto = "udp", bind = "10.9.0.3:5000", connect = "10.9.0.2:5000"'), []),
    "bindtodevice": (_H + _proc("dhcpd", 'proto = "udp", bind = "0.0.0.0:67", device = "eth0"',
                                'proto = "tcp", bind = "0.0.0.0:80", device = "eth0"',
                                'proto = "tcp", bind = "[::]:80", v6only = true, device = "eth0"'), []),
    "reuseport-groups": (_H + _proc("nginx", 'proto = "tcp", bind = "0.0.0.0:8080", reuseport = true',
                                    'proto = "tcp", bind = "0.0.0.0:8080", reuseport = true',
                                    'proto = "udp", bind = "0.0.0.0:5353", reuseport = true')
                         + _proc("nginx2", 'proto = "tcp", bind = "0.0.0.0:8080", reuseport = true',
                                 'proto = "udp", bind = "0.0.0.0:5353", reuseport = true'), []),
    "uid-1000": (_H + _proc("app", 'proto = "tcp", bind = "0.0.0.0:8000"',
                            'proto = "udp", bind = "[::]:8000", v6only = true', uid=1000), []),
    "connections": (_H + _proc("web", 'proto = "tcp", bind = "0.0.0.0:80"',
                               'proto = "tcp", bind = "[::]:443", v6only = false',
                               'proto = "tcp", bind = "[fd9::1]:8080"'),
                    [("10.9.0.1", 80), ("10.9.0.3", 80), ("10.9.0.1", 443), ("fd9::1", 443),
                     ("fd9::1", 8080)]),
    # The group lives in one process: which member takes a connection is the kernel's
    # secret hash, but in one process the accepted fd is the lowest free either way, so
    # the rows must agree. (A group across processes is compared without connections,
    # in "reuseport-groups": with them, the owner of each row is the hash's choice.)
    "connections-reuseport": (_H + _proc("w1", 'proto = "tcp", bind = "0.0.0.0:80", reuseport = true',
                                         'proto = "tcp", bind = "0.0.0.0:80", reuseport = true')
                              + _proc("w2", 'proto = "udp", bind = "0.0.0.0:80"'),
                              [("10.9.0.1", 80), ("10.9.0.1", 80), ("10.9.0.3", 80), ("10.9.0.1", 80)]),
}


@pytest.fixture
def lab(netns_available):
    # A fresh pair of namespaces per scenario: no listener, TIME-WAIT or port of one
    # scenario can show up in (or conflict with) the next one's table.
    with Lab(HOST, [PEER4, PEER6]) as lab_:
        lab_.peer_child = lab_.peer()
        yield lab_


# ---- building and running -----------------------------------------------------------------

def build(lab: Lab, name: str, tmp_path):
    """Apply the scenario for real, make its connections; return (scenario with real
    pids/fds/ports, capture path or None, host children)."""
    text, conns = SCENARIOS[name]
    sc = loads(text, name)
    hosts = [lab.host(p.name, p.uid) for p in sc.processes]
    for pi, p in enumerate(sc.processes):
        p.pid = hosts[pi].pid
        for si, spec in enumerate(p.sockets):
            c = hosts[pi].call("make", si, spec)
            assert c["result"] == "ok", f"{name}: socket {si} of {p.name}: {c}"
            spec.fd = c["fd"]
            if spec.bind is None or spec.bind.port == 0:
                # the kernel's choice of port, so both tables show the same one
                port = int(c["local"].rsplit(":", 1)[1])
                addr = spec.bind.addr if spec.bind is not None else ("::" if spec.family == 6 else "0.0.0.0")
                spec.bind = Endpoint(spec.family, addr, port)
    pcap = None
    if conns:
        pcap = tmp_path / f"{name}.pcap"
        cap = lab.capture(pcap)
        for h in hosts:
            h.start("serve", True, True)
        for n, (dst, port) in enumerate(conns):
            # one at a time: accept() order, hence the accepted fds, is then the SYN order
            f = {"id": n, "proto": "tcp", "src": PEER6 if ":" in dst else PEER4, "sport": 0,
                 "dst": dst, "dport": port, "token": f"ss {name} {n}\n".encode()}
            out = lab.peer_child.call("flows", [f], 2.0, True, timeout=10)[n]
            assert out["outcome"] == "held", f"{name}: connection {f}: {out}"
        for h in hosts:
            h.conn.send(("stop", ()))
        for h in hosts:
            h.answer(10)
        cap.stop()
    return sc, pcap, hosts


def real_ss(lab: Lab, flags: str) -> str:
    return lab.run(lab.hns, ["ss", flags])


def demux_ss(scenario_path, flags: str, pcap) -> str:
    argv = [sys.executable, "-m", "demux", "ss", "-s", str(scenario_path), *_split_flags(flags)]
    if pcap is not None:
        argv += ["--capture", str(pcap)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"demux ss {flags}: exit {r.returncode}: {r.stderr.strip()}"
    return r.stdout


def _split_flags(flags: str) -> list[str]:
    """``-tulnap`` as separate flags, as argparse wants them."""
    return [f"-{c}" for c in flags.lstrip("-")]


# ---- comparing --------------------------------------------------------------------------

def rows(text: str) -> list[tuple[tuple, str]]:
    """(compared columns, original line) for each row: Netid, State, Local, Peer, Process,
    with Recv-Q and Send-Q dropped; Netid or State "" when ss does not print it."""
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines:
        return []
    head = lines[0].split()
    out = []
    for line in lines[1:]:
        cells = line.split()
        if "State" not in head:
            cells = [""] + cells
        if "Netid" not in head:
            cells = [""] + cells
        netid_, state, _rq, _sq, local, peer, *rest = cells
        out.append(((netid_, state, local, peer, " ".join(rest)), line.strip()))
    return out


def compare(real: str, emu: str) -> list[str]:
    """The rows of one table missing from the other, paired where they are one socket."""
    r, e = rows(real), rows(emu)
    rc, ec = collections.Counter(k for k, _ in r), collections.Counter(k for k, _ in e)
    missing = rc - ec
    extra = ec - rc
    only_r, only_e = [], []
    for items, surplus, into in ((r, missing, only_r), (e, extra, only_e)):
        for k, line in items:
            if surplus[k] > 0:      # this many copies of the row have no counterpart
                surplus[k] -= 1
                into.append((k, line))
    diffs = []
    for k, line in only_r:
        # the demux row of the same socket: same process part, else same local port
        mate = next((x for x in only_e if k[4] and x[0][4] == k[4]), None) or \
            next((x for x in only_e if x[0][2].rsplit(":", 1)[-1] == k[2].rsplit(":", 1)[-1]
                  and x[0][0] == k[0]), None)
        if mate is not None:
            only_e.remove(mate)
            cols = [n for n, a, b in zip(("Netid", "State", "Local", "Peer", "Process"), k, mate[0]) if a != b]
            diffs.append(f"{'/'.join(cols)} differ:\n      ss:    {line}\n      demux: {mate[1]}")
        else:
            diffs.append(f"missing from demux:\n      ss:    {line}")
    for _, line in only_e:
        diffs.append(f"not in real ss:\n      demux: {line}")
    return diffs


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_ss_matches_real_ss(lab, tmp_path, name):
    sc, pcap, hosts = build(lab, name, tmp_path)
    try:
        path = tmp_path / f"{name}.toml"
        path.write_text(dumps(sc))
        report = []
        compared = 0
        for flags in FLAGS:
            real = real_ss(lab, flags)
            emu = demux_ss(path, flags, pcap)
            compared += len(rows(real))
            d = compare(real, emu)
            if d:
                report.append(f"ss {flags}:\n    " + "\n    ".join(d))
    finally:
        for h in hosts:
            lab.reap(h.pid)
    if report:
        pytest.fail(f"demux ss and ss disagree on {name}:\n  " + "\n  ".join(report)
                    + f"\nscenario:\n{dumps(sc)}", pytrace=False)
    assert compared > 0, "real ss showed no socket at all: the scenario was not built"


def test_compare_sees_each_column():
    """The comparison is not blind: a change in any compared column is reported, and
    only Recv-Q/Send-Q and spacing are ignored (no kernel needed)."""
    head = "Netid State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n"
    line = 'tcp   LISTEN 0      4096         0.0.0.0:80        0.0.0.0:*    users:(("web",pid=5,fd=3))\n'
    assert compare(head + line, head + line.replace("4096", "511").replace("   ", " ")) == []
    for old, new in (("tcp ", "udp "), ("LISTEN", "UNCONN"), ("0.0.0.0:80", "[::]:80"),
                     ("0.0.0.0:*", "*:*"), ("fd=3", "fd=4")):
        assert compare(head + line, head + line.replace(old, new, 1)), (old, new)
    assert compare(head + line, head) and compare(head, head + line)
    noid = "State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n"
    assert compare(noid + line.split(None, 1)[1], noid + line.split(None, 1)[1]) == []
    # a table without a State column (ss -u) against one with it
    nostate = "Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n"
    assert compare(nostate + line.split(None, 2)[2], nostate + line.split(None, 2)[2]) == []
    assert compare(nostate + line.split(None, 2)[2], noid + line.split(None, 1)[1])
