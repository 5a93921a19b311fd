"""``demux import-ss``: scenarios from saved ss output of several iproute2 styles, and
the round trip through ``demux ss``."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from demux import scenario as scen
from demux.errors import DemuxError
from demux.importss import import_ss
from demux.kernel import Kernel
from demux.render.ss import render

# iproute2 6.x, `ss -tulnpe` as root (the sockets of tests/test_snapshot.py).
SS6_TULNPE = """\
Netid State  Recv-Q Send-Q      Local Address:Port Peer Address:PortProcess
udp   UNCONN 0      0                 0.0.0.0:5353      0.0.0.0:*    users:(("python3",pid=11083,fd=7)) ino:384201 sk:72 cgroup:unreachable:1 <->
udp   UNCONN 0      0               [fd99::1]:5000         [::]:*    users:(("python3",pid=11083,fd=12)) uid:1000 ino:384205 sk:73 cgroup:unreachable:1 v6only:1 <->
tcp   LISTEN 0      128               0.0.0.0:8080      0.0.0.0:*    users:(("python3",pid=11083,fd=4)) ino:384198 sk:74 cgroup:unreachable:1 <->
tcp   LISTEN 0      128               0.0.0.0:8080      0.0.0.0:*    users:(("python3",pid=11083,fd=3)) ino:384197 sk:75 cgroup:unreachable:1 <->
tcp   LISTEN 0      10             0.0.0.0%v0:7000      0.0.0.0:*    users:(("python3",pid=11083,fd=9)) ino:384203 sk:76 cgroup:unreachable:1 <->
tcp   LISTEN 0      3      [::ffff:10.99.0.1]:7100            *:*    users:(("python3",pid=11083,fd=11)) ino:384204 sk:78 cgroup:unreachable:1 v6only:0 <->
tcp   LISTEN 0      5                       *:80              *:*    users:(("python3",pid=11083,fd=6)) ino:384200 sk:79 cgroup:unreachable:1 v6only:0 <->
tcp   LISTEN 0      5                    [::]:9090         [::]:*    users:(("python3",pid=11083,fd=5)) ino:384199 sk:7a cgroup:unreachable:1 v6only:1 <->
"""

# `ss -tuanp`: connections, a connected UDP socket, no -e extras.
SS_TUANP = """\
Netid State     Recv-Q Send-Q  Local Address:Port   Peer Address:Port Process
udp   ESTAB     0      0           10.0.0.5:41235      10.0.0.53:53    users:(("resolved",pid=512,fd=14))
udp   UNCONN    0      0          127.0.0.53%lo:53        0.0.0.0:*     users:(("resolved",pid=512,fd=13))
tcp   LISTEN    0      511            0.0.0.0:80          0.0.0.0:*     users:(("nginx",pid=1201,fd=6),("nginx",pid=1202,fd=6),("nginx",pid=1200,fd=6))
tcp   LISTEN    0      128            0.0.0.0:22          0.0.0.0:*     users:(("sshd",pid=800,fd=3))
tcp   LISTEN    0      128               [::]:22             [::]:*     users:(("sshd",pid=800,fd=4))
tcp   ESTAB     0      0             10.0.0.5:22        10.0.0.9:51234 users:(("sshd",pid=9000,fd=4))
tcp   TIME-WAIT 0      0             10.0.0.5:80        10.0.0.9:51240
"""

# Without -n: service names; without Netid (only -t).
SS_TLP_NAMES = """\
State  Recv-Q Send-Q Local Address:Port  Peer Address:Port Process
LISTEN 0      4096         0.0.0.0:http-alt   0.0.0.0:*     users:(("java",pid=77,fd=120))
LISTEN 0      4096       127.0.0.1:ipp        0.0.0.0:*     users:(("cupsd",pid=66,fd=7))
LISTEN 0      80                 *:mysql            *:*     users:(("mysqld",pid=55,fd=21))
"""

# Old iproute2 (3.x): `*` is 0.0.0.0, IPv6 unbracketed, users without pid=/fd=.
SS_OLD = """\
Netid  State      Recv-Q Send-Q     Local Address:Port       Peer Address:Port
tcp    LISTEN     0      128                    *:22                    *:*      users:(("sshd",1022,3))
tcp    LISTEN     0      128                   :::22                   :::*      users:(("sshd",1022,4))
udp    UNCONN     0      0                      *:68                    *:*      users:(("dhclient",901,6))
tcp    LISTEN     0      100                  ::1:25                   :::*      users:(("master",1500,14))
"""


def socks(sc):
    return [(p.name, p.pid, s.proto, str(s.bind), str(s.connect) if s.connect else None, s.fd, s.backlog,
             s.reuseport, s.v6only, s.device) for p in sc.processes for s in p.sockets]


def ss_of(sc, **kw):
    k = Kernel.from_scenario(sc)
    k.apply_all()
    return render(k, numeric=True, processes=True, **kw)


def outcomes_ok(sc):
    k = Kernel.from_scenario(sc)
    k.apply_all()
    return [(o.local, o.result, o.why) for o in k.outcomes if o.result != "ok"]


def test_iproute2_6_tulnpe():
    sc, header = import_ss(SS6_TULNPE, "ss.txt")
    got = socks(sc)
    assert ("python3", 11083, "udp", "0.0.0.0:5353", None, 7, 4096, False, None, None) in got
    assert ("python3", 11083, "tcp", "0.0.0.0:7000", None, 9, 10, False, None, "v0") in got
    assert ("python3", 11083, "tcp", "[::]:80", None, 6, 5, False, False, None) in got
    assert ("python3", 11083, "tcp", "[::]:9090", None, 5, 5, False, True, None) in got
    assert ("python3", 11083, "tcp", "[::ffff:10.99.0.1]:7100", None, 11, 3, False, False, None) in got
    assert ("python3", 11083, "udp", "[fd99::1]:5000", None, 12, 4096, False, True, None) in got
    shared = [s for s in got if s[3] == "0.0.0.0:8080"]
    assert len(shared) == 2 and all(s[7] for s in shared)
    assert "SO_REUSEPORT assumed" in (sc.processes[0].sockets[2].comment or "")
    assert set(sc.host.addresses) == {"10.99.0.1", "fd99::1"}
    assert "SO_REUSEADDR/SO_REUSEPORT are not in ss output" in header
    assert not outcomes_ok(sc)


def test_tuanp_connections_shared_socket_and_device():
    sc, header = import_ss(SS_TUANP, "tuanp.txt")
    got = socks(sc)
    assert ("resolved", 512, "udp", "10.0.0.5:41235", "10.0.0.53:53", 14, 4096, False, None, None) in got
    assert ("resolved", 512, "udp", "127.0.0.53:53", None, 13, 4096, False, None, "lo") in got
    nginx = [s for s in got if s[0] == "nginx"]
    assert sorted(s[1] for s in nginx) == [1200, 1201, 1202] and all(s[7] and s[6] == 511 for s in nginx)
    assert "inherited" in next(s.comment for p in sc.processes if p.name == "nginx" for s in p.sockets)
    # sshd's [::]:22 beside 0.0.0.0:22 can only be v6only.
    assert ("sshd", 800, "tcp", "[::]:22", None, 4, 128, False, True, None) in got
    assert "skipped 1 tcp ESTAB line" in header and "skipped 1 tcp TIME-WAIT line" in header
    assert not outcomes_ok(sc)


def test_service_names_and_no_netid():
    sc, _ = import_ss(SS_TLP_NAMES, "names.txt")
    got = {(s[0], s[3], s[8]) for s in socks(sc)}
    assert got == {("java", "0.0.0.0:8080", None), ("cupsd", "127.0.0.1:631", None),
                   ("mysqld", "[::]:3306", False)}


def test_old_iproute2_style():
    sc, header = import_ss(SS_OLD, "old.txt")
    got = {(s[0], s[1], s[2], s[3], s[5]) for s in socks(sc)}
    assert got == {("sshd", 1022, "tcp", "0.0.0.0:22", 3), ("sshd", 1022, "tcp", "[::]:22", 4),
                   ("dhclient", 901, "udp", "0.0.0.0:68", 6), ("master", 1500, "tcp", "[::1]:25", 14)}
    assert "old ss style" in header
    assert not outcomes_ok(sc)


def test_without_processes_and_uids():
    text = "State  Recv-Q Send-Q Local Address:Port Peer Address:Port\nUNCONN 0 0 0.0.0.0:123 0.0.0.0:*\n"
    sc, header = import_ss(text, "u.txt")
    assert socks(sc) == [("unknown", 1000, "udp", "0.0.0.0:123", None, None, 4096, False, None, None)]
    assert "uid 0 assumed" in header


def test_uid_from_extras():
    sc, _ = import_ss(SS6_TULNPE.splitlines()[0] + "\n" + SS6_TULNPE.splitlines()[2] + "\n", "x")
    assert sc.processes[0].uid == 1000


@pytest.mark.parametrize("line, what", [
    ("tcp LISTEN 0 128 0.0.0.0:80", "not an ss socket line"),
    ("tcp LISTEN 0 128 host.example:80 0.0.0.0:*", "is not an address"),
    ("tcp LISTEN 0 128 0.0.0.0:no-such-service 0.0.0.0:*", "unknown service name"),
    ("tcp LISTEN 0 128 0.0.0.0:99999 0.0.0.0:*", "out of range"),
    ("hello world", "unknown Netid"),
])
def test_bad_lines_name_file_and_line(line, what):
    with pytest.raises(DemuxError) as e:
        import_ss("Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port\n" + line + "\n", "f.txt")
    assert str(e.value).startswith("f.txt:2: ") and what in str(e.value)


def test_cli_bad_input_one_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("tcp LISTEN x y z\n")
    r = subprocess.run([sys.executable, "-m", "demux", "import-ss", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"{bad}:1:" in r.stderr
    r = subprocess.run([sys.executable, "-m", "demux", "import-ss", "-"], input=SS_TUANP,
                       capture_output=True, text=True)
    assert r.returncode == 0 and scen.loads(r.stdout).processes


ROUND = """
[host]
addresses = ["10.1.0.1", "fd01::1"]
interfaces = { eth0 = ["10.1.0.1", "fd01::1"] }
[[process]]
name = "dns"
uid = 53
sockets = [ { proto = "udp", bind = "10.1.0.1:5353" }, { proto = "udp", bind = "[::]:5353", v6only = true } ]
[[process]]
name = "web"
pid = 4000
sockets = [
  { proto = "tcp", bind = "0.0.0.0:8080", reuseport = true, backlog = 511 },
  { proto = "tcp", bind = "[fd01::1]:8443" },
  { proto = "tcp", bind = "127.0.0.1:9000", device = "eth0", backlog = 7 },
]
[[process]]
name = "worker"
sockets = [ { proto = "tcp", bind = "0.0.0.0:8080", reuseport = true, backlog = 511 },
            { proto = "udp", bind = "0.0.0.0:0", connect = "10.1.0.53:53" } ]
"""

SCENARIOS = [("inline", ROUND)] + [(os.path.basename(p), open(p).read())
                                   for p in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..",
                                                                          "pcaps", "*.toml")))]


@pytest.mark.parametrize("name, text", SCENARIOS, ids=[n for n, _ in SCENARIOS])
@pytest.mark.parametrize("flags", [dict(listening=True, tcp=True, udp=True),
                                   dict(all_=True, tcp=True, udp=True, extended=True),
                                   dict(listening=True, tcp=True)])
def test_round_trip_through_demux_ss(name, text, flags):
    first = ss_of(scen.loads(text), **flags)
    sc, _ = import_ss(first, "ss.txt")
    assert ss_of(scen.loads(scen.dumps(sc)), **flags) == first


def test_round_trip_cli(tmp_path):
    src = tmp_path / "x.toml"
    src.write_text(ROUND)
    out = subprocess.run([sys.executable, "-m", "demux", "ss", "-tulnp", "-s", str(src)],
                         capture_output=True, text=True, check=True).stdout
    saved = tmp_path / "ss.txt"
    saved.write_text(out)
    back = tmp_path / "back.toml"
    subprocess.run([sys.executable, "-m", "demux", "import-ss", str(saved), "-o", str(back)], check=True)
    again = subprocess.run([sys.executable, "-m", "demux", "ss", "-tulnp", "-s", str(back)],
                           capture_output=True, text=True, check=True).stdout
    assert again == out


def test_a_socket_shown_without_owner_stays_without_one_in_ss():
    # ss without -p (or not root) shows no process; the scenario needs a stand-in owner,
    # which `demux ss -p` must not print as if it were real.
    from demux.importss import import_ss
    from demux.kernel import Kernel
    from demux.render.ss import render
    text = ("Netid State  Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n"
            'tcp   LISTEN 0      128          0.0.0.0:22        0.0.0.0:*    users:(("sshd",pid=812,fd=3))\n'
            "tcp   LISTEN 0      511          0.0.0.0:80        0.0.0.0:*\n")
    sc, _ = import_ss(text)
    k = Kernel.from_scenario(sc, 0)
    k.apply_all()
    out = render(k, True, False, True, False, True, True)
    line22 = next(l for l in out.splitlines() if ":22 " in l)
    line80 = next(l for l in out.splitlines() if ":80 " in l)
    assert 'users:(("sshd",pid=812,fd=3))' in line22 and "users:" not in line80


def test_wildcard_only_listing_replays_the_hosts_capture(tmp_path):
    # `ss -tlnp` of a host whose listeners are all on the wildcard names none of its
    # addresses. Replaying the host's capture against it must not call every packet
    # transit: replay takes the host's addresses from the capture, and says so.
    here = os.path.join(os.path.dirname(__file__), "..", "pcaps")
    listing = tmp_path / "ss.txt"
    listing.write_text(
        "State  Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n"
        'LISTEN 0      5            0.0.0.0:8080      0.0.0.0:*    users:(("httpd",pid=28261,fd=3))\n')
    sc_path = tmp_path / "host.toml"
    subprocess.run([sys.executable, "-m", "demux", "import-ss", str(listing), "-o", str(sc_path)],
                   check=True, capture_output=True, timeout=60)
    assert scen.load(str(sc_path)).host.addresses == []
    assert "take them from the capture" in sc_path.read_text()

    def replay(scenario):
        r = subprocess.run([sys.executable, "-m", "demux", "replay", os.path.join(here, "http4.pcap"),
                            "-s", scenario, "--format", "jsonl"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        return [(d["direction"], d["verdict"], d["process"], d["pid"], d["fd"], d["state"]) for d in rows], r.stderr
    got, err = replay(str(sc_path))
    want, _ = replay(os.path.join(here, "http4.toml"))
    assert got == want
    assert ("in", "deliver", "httpd", 28261, 3, "SYN-RECV") in got
    assert f"{sc_path} names no host address: took 10.77.0.1" in err
