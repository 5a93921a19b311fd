"""``demux snapshot`` and ``demux import-ss`` on a real socket table.

In a fresh network namespace a child process opens known sockets; `demux snapshot`
run inside the namespace must reproduce them (pid, fd, uid, address, options), and
the real `ss -tulnpe` of the namespace, imported, must give the same sockets.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from demux import scenario as scen
from demux.importss import import_ss

pytestmark = pytest.mark.netns

ROOT = os.path.join(os.path.dirname(__file__), "..")

CHILD = textwrap.dedent("""
    import socket, sys, time
    S = socket.socket
    out = {}
    def tcp(name, fam, addr, backlog, reuseport=False, v6only=None, dev=None, reuseaddr=False):
        s = S(fam, socket.SOCK_STREAM)
        if reuseport: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if reuseaddr: s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only is not None: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        if dev: s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        s.bind(addr); s.listen(backlog); out[name] = s
    tcp("a", socket.AF_INET, ("0.0.0.0", 8080), 128, reuseport=True)
    tcp("b", socket.AF_INET, ("0.0.0.0", 8080), 128, reuseport=True)
    tcp("v6", socket.AF_INET6, ("::", 9090), 5, v6only=True)
    tcp("dev", socket.AF_INET, ("0.0.0.0", 7000), 10, dev="dmxv0")
    tcp("ra", socket.AF_INET, ("127.0.0.1", 6310), 4096, reuseaddr=True)
    u = S(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 5353)); out["u"] = u
    c = S(socket.AF_INET, socket.SOCK_DGRAM); c.connect(("10.98.0.2", 53)); out["c"] = c
    print(" ".join(f"{k}={s.fileno()}" for k, s in out.items()), c.getsockname()[1], flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def netns(netns_available):
    name = f"dmx-snap-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        def sh(cmd):
            subprocess.run(["ip", "netns", "exec", name, "sh", "-c", cmd], check=True)
        sh("ip link set lo up && ip link add dmxv0 type veth peer name dmxv1 && "
           "ip link set dmxv0 up && ip link set dmxv1 up && "
           "ip addr add 10.98.0.1/24 dev dmxv0 && ip addr add fd98::1/64 dev dmxv0 nodad")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def child(netns):
    p = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", CHILD],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().split()
        assert line, "the socket-holding child did not start"
        fds = dict(kv.split("=") for kv in line[:-1])
        yield p.pid, {k: int(v) for k, v in fds.items()}, int(line[-1])
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def expected(pid, fds, cport):
    # (proto, bind, connect, fd, backlog, reuseport, reuseaddr, v6only, device)
    return {
        ("tcp", "0.0.0.0:8080", None, fds["a"], 128, True, False, None, None),
        ("tcp", "0.0.0.0:8080", None, fds["b"], 128, True, False, None, None),
        ("tcp", "[::]:9090", None, fds["v6"], 5, False, False, True, None),
        ("tcp", "0.0.0.0:7000", None, fds["dev"], 10, False, False, None, "dmxv0"),
        ("tcp", "127.0.0.1:6310", None, fds["ra"], 4096, False, True, None, None),
        ("udp", "0.0.0.0:5353", None, fds["u"], 4096, False, False, None, None),
        ("udp", f"10.98.0.1:{cport}", "10.98.0.2:53", fds["c"], 4096, False, False, None, None),
    }


def table(sc, pid, reuseaddr=True):
    (proc,) = [p for p in sc.processes if p.pid == pid]
    return proc, {(s.proto, str(s.bind), str(s.connect) if s.connect else None, s.fd, s.backlog,
                   s.reuseport, s.reuseaddr if reuseaddr else False, s.v6only, s.device)
                  for s in proc.sockets}


def test_snapshot_and_import_ss_reproduce_the_sockets(netns, child, tmp_path):
    # The child runs under `ip netns exec`, which execs python: same pid.
    pid, fds, cport = child
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    out = tmp_path / "snap.toml"
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "demux", "snapshot", "-o", str(out)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    sc = scen.load(str(out))
    proc, got = table(sc, pid)
    assert proc.name == "python3" or proc.name.startswith("python"), proc.name
    assert proc.uid == 0
    assert got == expected(pid, fds, cport)
    assert {"10.98.0.1", "fd98::1"} <= set(sc.host.addresses)
    assert set(sc.host.interfaces["dmxv0"]) >= {"10.98.0.1", "fd98::1"}
    assert "SO_REUSEADDR/SO_REUSEPORT read from each socket" in out.read_text()
    # The snapshot is a scenario the emulator accepts as it is.
    from demux.kernel import Kernel
    k = Kernel.from_scenario(sc)
    k.apply_all()
    assert [o for o in k.outcomes if o.result != "ok"] == []

    # The real ss of the namespace, imported, gives the same sockets (SO_REUSEADDR is
    # not in ss output, so it is not compared).
    ss = subprocess.run(["ip", "netns", "exec", netns, "ss", "-tuanpe"], capture_output=True, text=True, check=True)
    imported, header = import_ss(ss.stdout, "ss.txt")
    _, got2 = table(imported, pid, reuseaddr=False)
    want = {t[:6] + (False,) + t[7:] for t in expected(pid, fds, cport)}
    assert got2 == want
    assert "SO_REUSEPORT assumed" in "".join(s.comment or "" for p in imported.processes for s in p.sockets)
