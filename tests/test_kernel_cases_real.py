"""The oracle pinned: KERNEL.md section C (every verified row) and cases F1-F11, run on
the real kernel through ``realkernel.run_real``.

These do not touch the emulator. They make sure the facts the emulator is built on
still hold on the kernel the suite runs on, and that the harness the differential test
relies on reads the kernel correctly (every assertion here can fail if it does not).

Not here: F4 (a second SYN for a SYN-RECV 4-tuple) and F5 (segments of an accepted
connection after its listener closed) need hand-made segments or per-connection control
that the harness does not offer yet; F12 (TIME-WAIT) likewise.

Host addresses: 10.9.0.1, 10.9.0.3 and fd9::1 (KERNEL.md used 10.9.0.2 as a second
local address; here 10.9.0.2 is the peer, so rows written with 10.9.0.2 use 10.9.0.3).
"""

from __future__ import annotations

import collections
import time

import pytest

from demux.scenario import loads
from realkernel import Probe, run_real

pytestmark = pytest.mark.netns

ADDRS = ["10.9.0.1", "10.9.0.3", "fd9::1"]


def scenario(*processes, sysctl: dict | None = None, addresses=ADDRS,
             interfaces: dict | None = None):
    """A scenario from ``(uid, [inline TOML socket table, ...])`` per process."""
    lines = ["[host]", "addresses = [" + ", ".join(f'"{a}"' for a in addresses) + "]"]
    if interfaces:
        lines.append("interfaces = { " + ", ".join(
            f"{k} = [" + ", ".join(f'"{a}"' for a in v) + "]" for k, v in interfaces.items()) + " }")
    if sysctl:
        lines.append("[sysctl]")
        lines += [f'"{k}" = {v!r}'.replace("'", '"') for k, v in sysctl.items()]
    for i, (uid, socks) in enumerate(processes):
        lines += ["[[process]]", f'name = "p{i}"', f"uid = {uid}",
                  "sockets = [" + ", ".join(socks) + "]"]
    return loads("\n".join(lines) + "\n", "<case>")


def results(real) -> list[str]:
    return [c["result"] for c in real.calls]


# ---- C: bind() conflicts -----------------------------------------------------------------

T = 'proto = "tcp"'
U = 'proto = "udp"'
NL = "listen = false"

# (first socket, second socket, result of the second's failing or last call)
TABLE_C = [
    (f'{{{T}, bind = "0.0.0.0:80"}}', f'{{{T}, bind = "10.9.0.1:80"}}', "EADDRINUSE"),
    (f'{{{T}, bind = "10.9.0.1:80"}}', f'{{{T}, bind = "0.0.0.0:80", {NL}}}', "EADDRINUSE"),
    (f'{{{T}, bind = "10.9.0.1:80", {NL}}}', f'{{{T}, bind = "10.9.0.3:80", {NL}}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true}}',
     f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true, {NL}}}', "EADDRINUSE"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true, {NL}}}',
     f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true, {NL}}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true, {NL}}}',
     f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true}}',
     f'{{{T}, bind = "10.9.0.1:80", reuseaddr = true}}', "EADDRINUSE"),
    (f'{{{T}, bind = "10.9.0.1:80", reuseaddr = true}}',
     f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true}}', "EADDRINUSE"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true, {NL}}}',
     f'{{{T}, bind = "10.9.0.1:80", reuseaddr = true}}', "ok"),
    (f'{{{T}, bind = "10.9.0.1:80", reuseaddr = true, {NL}}}',
     f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true}}', f'{{{T}, bind = "10.9.0.1:80"}}', "EADDRINUSE"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseport = true}}',
     f'{{{T}, bind = "0.0.0.0:80", reuseport = true}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseport = true, {NL}}}',
     f'{{{T}, bind = "0.0.0.0:80", reuseport = true, {NL}}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseport = true}}',
     f'{{{T}, bind = "10.9.0.1:80", reuseport = true}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80", reuseport = true}}', f'{{{T}, bind = "0.0.0.0:80"}}', "EADDRINUSE"),
    (f'{{{T}, bind = "[::]:80", v6only = false}}', f'{{{T}, bind = "0.0.0.0:80"}}', "EADDRINUSE"),
    (f'{{{T}, bind = "[::]:80", v6only = true}}', f'{{{T}, bind = "0.0.0.0:80"}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80"}}', f'{{{T}, bind = "[::]:80", v6only = false, {NL}}}', "EADDRINUSE"),
    (f'{{{T}, bind = "10.9.0.1:80"}}', f'{{{T}, bind = "[::]:80", v6only = false, {NL}}}', "EADDRINUSE"),
    (f'{{{T}, bind = "10.9.0.1:80"}}', f'{{{T}, bind = "[::]:80", v6only = true, {NL}}}', "ok"),
    (f'{{{T}, bind = "[fd9::1]:80"}}', f'{{{T}, bind = "[::]:80", v6only = true, {NL}}}', "EADDRINUSE"),
    (f'{{{T}, bind = "[::ffff:10.9.0.1]:80", v6only = false}}',
     f'{{{T}, bind = "10.9.0.1:80", {NL}}}', "EADDRINUSE"),
    (f'{{{U}, bind = "0.0.0.0:53"}}', f'{{{U}, bind = "0.0.0.0:53"}}', "EADDRINUSE"),
    (f'{{{U}, bind = "0.0.0.0:53", reuseaddr = true}}',
     f'{{{U}, bind = "0.0.0.0:53", reuseaddr = true}}', "ok"),
    (f'{{{U}, bind = "0.0.0.0:53"}}', f'{{{U}, bind = "10.9.0.1:53"}}', "EADDRINUSE"),
    (f'{{{U}, bind = "10.9.0.1:53"}}', f'{{{U}, bind = "0.0.0.0:53"}}', "EADDRINUSE"),
    (f'{{{U}, bind = "0.0.0.0:53", reuseaddr = true}}',
     f'{{{U}, bind = "10.9.0.1:53", reuseaddr = true}}', "ok"),
    (f'{{{U}, bind = "0.0.0.0:53", reuseport = true}}',
     f'{{{U}, bind = "0.0.0.0:53", reuseport = true}}', "ok"),
    (f'{{{U}, bind = "0.0.0.0:53", reuseport = true}}',
     f'{{{U}, bind = "10.9.0.1:53", reuseport = true}}', "ok"),
    (f'{{{T}, bind = "0.0.0.0:80"}}', f'{{{U}, bind = "0.0.0.0:80"}}', "ok"),
    (None, f'{{{T}, bind = "10.9.9.9:80"}}', "EADDRNOTAVAIL"),
    (None, f'{{{T}, bind = "127.0.0.2:80"}}', "ok"),
]


@pytest.mark.parametrize("first,second,expected", TABLE_C,
                         ids=[f"{i:02d}" for i in range(len(TABLE_C))])
def test_table_c(netns_available, first, second, expected):
    procs = ([(0, [first])] if first else []) + [(0, [second])]
    real = run_real(scenario(*procs), [])
    if first:
        assert real.calls[0]["result"] == "ok", real.calls
    assert real.calls[-1]["result"] == expected, real.calls
    if expected == "EADDRINUSE" or expected == "EADDRNOTAVAIL":
        # a conflicting address is refused at bind() except where listen() re-checks
        assert real.calls[-1]["call"] in ("bind", "listen")


def test_reuseaddr_excuses_only_sockets_not_listening(netns_available):
    """SO_REUSEADDR on both: a bind next to a listener fails, next to a bound socket not."""
    real = run_real(scenario((0, [f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true}}']),
                             (0, [f'{{{T}, bind = "0.0.0.0:80", reuseaddr = true, {NL}}}']),
                             (0, [f'{{{T}, bind = "0.0.0.0:81", reuseaddr = true, {NL}}}',
                                  f'{{{T}, bind = "0.0.0.0:81", reuseaddr = true}}'])), [])
    assert [(c["call"], c["result"]) for c in real.calls] == [
        ("listen", "ok"), ("bind", "EADDRINUSE"), ("bind", "ok"), ("listen", "ok")]


# ---- F: lookups --------------------------------------------------------------------------

def tcp(src_port, dst, dport, src="10.9.0.2"):
    return Probe("tcp", src, src_port, dst, dport)


def udp(src_port, dst, dport, src="10.9.0.2"):
    return Probe("udp", src, src_port, dst, dport)


@pytest.mark.parametrize("order", ["wildcard-first", "specific-first"])
def test_f1_exact_address_beats_wildcard(netns_available, order):
    a = f'{{{T}, bind = "0.0.0.0:80", reuseport = true}}'
    b = f'{{{T}, bind = "10.9.0.1:80", reuseport = true}}'
    procs = [(0, [a]), (0, [b])] if order == "wildcard-first" else [(0, [b]), (0, [a])]
    ia, ib = ((0, 0), (1, 0)) if order == "wildcard-first" else ((1, 0), (0, 0))
    real = run_real(scenario(*procs), [tcp(20000 + i, "10.9.0.1", 80) for i in range(8)]
                    + [tcp(21000, "10.9.0.3", 80)])
    assert results(real) == ["ok", "ok"]
    assert [p["receivers"] for p in real.probes[:8]] == [[ib]] * 8
    assert real.probes[8]["receivers"] == [ia]


def test_f2_dual_stack_and_ipv4_wildcard_cannot_coexist(netns_available):
    real = run_real(scenario((0, [f'{{{T}, bind = "[::]:80", v6only = false}}']),
                             (0, [f'{{{T}, bind = "0.0.0.0:80"}}'])), [])
    assert results(real) == ["ok", "EADDRINUSE"]


def test_f2_v6only_and_ipv4_wildcard_split_by_family(netns_available):
    real = run_real(scenario((0, [f'{{{T}, bind = "[::]:80", v6only = true}}']),
                             (0, [f'{{{T}, bind = "0.0.0.0:80"}}'])),
                    [tcp(20001, "10.9.0.1", 80), tcp(20002, "fd9::1", 80, src="fd9::2"),
                     tcp(20003, "10.9.0.3", 80)])
    assert results(real) == ["ok", "ok"]
    assert [p["receivers"] for p in real.probes] == [[(1, 0)], [(0, 0)], [(1, 0)]]


def test_f2_dual_stack_alone_takes_ipv4(netns_available):
    real = run_real(scenario((0, [f'{{{T}, bind = "[::]:80", v6only = false}}'])),
                    [tcp(20001, "10.9.0.1", 80), tcp(20002, "fd9::1", 80, src="fd9::2")])
    assert [p["receivers"] for p in real.probes] == [[(0, 0)], [(0, 0)]]


def test_f3_reuseport_group_spreads_flows_and_keeps_each_flow(netns_available):
    member = f'{{{T}, bind = "0.0.0.0:80", reuseport = true}}'
    umember = f'{{{U}, bind = "0.0.0.0:53", reuseport = true}}'
    flows = 400
    probes = [tcp(20000 + i, "10.9.0.1", 80) for i in range(flows)]
    # the same UDP 4-tuple three times: a flow always lands on one member
    probes += [udp(30000 + i, "10.9.0.1", 53) for i in range(40) for _ in range(3)]
    real = run_real(scenario((0, [member, member, member, member, umember, umember])), probes)
    assert results(real) == ["ok"] * 6
    tcp_counts = collections.Counter()
    for p in real.probes[:flows]:
        assert len(p["receivers"]) == 1, p
        tcp_counts[p["receivers"][0]] += 1
    assert set(tcp_counts) == {(0, 0), (0, 1), (0, 2), (0, 3)}
    # 100 expected per member, sd ~8.7: outside 60..140 means the spread is not even
    assert all(60 <= n <= 140 for n in tcp_counts.values()), tcp_counts
    udp_probes = real.probes[flows:]
    for k in range(0, len(udp_probes), 3):
        got = {tuple(p["receivers"]) for p in udp_probes[k:k + 3]}
        assert len(got) == 1 and len(next(iter(got))) == 1, udp_probes[k:k + 3]
    assert {p["receivers"][0] for p in udp_probes} == {(0, 4), (0, 5)}


def test_f6_syn_to_closed_port_gets_rst_and_udp_gets_icmp(netns_available):
    real = run_real(scenario((0, [f'{{{T}, bind = "10.9.0.1:80"}}', f'{{{U}, bind = "10.9.0.1:53"}}'])),
                    [tcp(20001, "10.9.0.1", 81), tcp(20002, "10.9.0.3", 80),
                     tcp(20003, "fd9::1", 80, src="fd9::2"),
                     udp(20004, "10.9.0.1", 54), udp(20005, "10.9.0.3", 53),
                     udp(20006, "fd9::1", 53, src="fd9::2"),
                     tcp(20007, "10.9.0.1", 80), udp(20008, "10.9.0.1", 53)])
    refused = [p["refused"] for p in real.probes]
    assert refused == ["rst"] * 3 + ["icmp-port-unreachable"] * 3 + [None, None]
    assert [p["receivers"] for p in real.probes[6:]] == [[(0, 0)], [(0, 1)]]
    assert not any(p["timed_out"] for p in real.probes)


def _tcp_segment(src: str, sport: int, dst: str, dport: int, flags: int, seq: int) -> bytes:
    """A bare IPv4 TCP header with a correct checksum (the kernel adds the IP header)."""
    import socket
    import struct
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(hdr))
    data = pseudo + hdr
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return hdr[:16] + struct.pack("!H", ~total & 0xFFFF) + hdr[18:]


def _send_raw_and_listen(segments: list[tuple[int, int]], wait: float) -> list[list[int]]:
    """Peer side: send each (flags, source port) segment from 10.9.0.2 to 10.9.0.1:81 on a
    raw socket and collect the TCP flags of every segment that comes back to that port."""
    import select
    import socket
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    answers: list[list[int]] = []
    for flags, sport in segments:
        raw.sendto(_tcp_segment("10.9.0.2", sport, "10.9.0.1", 81, flags, 1000), ("10.9.0.1", 0))
        got, end = [], time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            if not select.select([raw], [], [], left)[0]:
                break
            pkt = raw.recv(2048)
            ihl = (pkt[0] & 0x0F) * 4
            if pkt[12:16] == socket.inet_aton("10.9.0.1") and int.from_bytes(pkt[ihl + 2:ihl + 4], "big") == sport:
                got.append(pkt[ihl + 13])
        answers.append(got)
    return answers


def test_f6_rst_to_closed_port_gets_nothing(netns_available):
    """A SYN to a closed port is answered with RST|ACK; a RST is answered with nothing."""
    syn, rst = 0x02, 0x04
    real = run_real(scenario((0, [f'{{{T}, bind = "10.9.0.1:80"}}'])), [],
                    peer_call=(_send_raw_and_listen, ([(syn, 41000), (rst, 41001)], 0.3)))
    after_syn, after_rst = real.peer_result
    assert after_syn == [0x14]     # RST|ACK: the observation method sees answers
    assert after_rst == []


def test_f6_many_closed_udp_ports_all_answered(netns_available):
    """More closed ports than the default ICMP burst: the harness must see every one."""
    real = run_real(scenario((0, [f'{{{U}, bind = "10.9.0.1:53"}}'])),
                    [udp(20000 + i, "10.9.0.1", 1000 + i) for i in range(30)])
    assert [p["refused"] for p in real.probes] == ["icmp-port-unreachable"] * 30


def test_f7_connected_udp_socket_wins_for_its_peer(netns_available):
    real = run_real(scenario(
        (0, [f'{{{U}, bind = "10.9.0.1:6000", connect = "10.9.0.2:7000", reuseaddr = true}}']),
        (0, [f'{{{U}, bind = "0.0.0.0:6000", reuseaddr = true}}'])),
        [udp(7000, "10.9.0.1", 6000)] * 3 + [udp(7001, "10.9.0.1", 6000)] * 3)
    assert results(real) == ["ok", "ok"]
    assert [p["receivers"] for p in real.probes] == [[(0, 0)]] * 3 + [[(1, 0)]] * 3


def test_f8_reuseaddr_udp_newest_gets_unicast_all_get_broadcast(netns_available):
    s = f'{{{U}, bind = "0.0.0.0:5353", reuseaddr = true}}'
    real = run_real(scenario((0, [s]), (0, [s])),
                    [udp(20000 + i, "10.9.0.1", 5353) for i in range(5)]
                    + [udp(21000, "10.9.0.255", 5353)])
    assert results(real) == ["ok", "ok"]
    assert [p["receivers"] for p in real.probes[:5]] == [[(1, 0)]] * 5
    assert real.probes[5]["receivers"] == [(0, 0), (1, 0)]
    assert real.probes[5]["refused"] is None


def test_f8_broadcast_to_closed_port_gets_no_icmp(netns_available):
    real = run_real(scenario((0, [f'{{{U}, bind = "0.0.0.0:5353"}}'])),
                    [udp(21000, "10.9.0.255", 5354), udp(21001, "10.9.0.1", 5354)])
    assert real.probes[0]["refused"] is None and real.probes[0]["receivers"] == []
    assert real.probes[1]["refused"] == "icmp-port-unreachable"


TWO_IF = {"eth0": ["10.9.0.1", "fd9::1"], "eth1": ["10.9.1.1"]}


def test_f9_device_bound_and_unbound_conflict_without_reuse(netns_available):
    real = run_real(scenario((0, [f'{{{T}, bind = "0.0.0.0:80", device = "eth0"}}']),
                             (0, [f'{{{T}, bind = "0.0.0.0:80"}}']),
                             addresses=["10.9.0.1", "10.9.1.1", "fd9::1"], interfaces=TWO_IF), [])
    assert results(real) == ["ok", "EADDRINUSE"]


# F9 as the kernel does it. Scoring (+1 for the bound device) decides only among sockets
# without a SO_REUSEPORT group: the lookup (inet_lhash2_lookup, udp4_lib_lookup2) returns
# the group's pick as soon as the first matching reuseport socket in the chain improves
# the score, without looking further. So with reuseport the *chain order* decides: AF_INET
# sockets go to the head (newest first), AF_INET6 reuseport sockets to the tail.
# (dev, unbound, order, arrivals on eth0 -> , on eth1 -> ); indexes as (process, socket)
DEV_CASES = [
    # UDP with SO_REUSEADDR, no groups: the device-bound socket wins on eth0, either order
    ("udp", 'bind = "0.0.0.0:53", reuseaddr = true', "dev-first", "dev", "unbound"),
    ("udp", 'bind = "0.0.0.0:53", reuseaddr = true', "unbound-first", "dev", "unbound"),
    # TCP needs SO_REUSEPORT for the two to coexist: the newest (head) wins on eth0
    ("tcp", 'bind = "0.0.0.0:80", reuseport = true', "unbound-first", "dev", "unbound"),
    ("tcp", 'bind = "0.0.0.0:80", reuseport = true', "dev-first", "unbound", "unbound"),
    ("udp", 'bind = "0.0.0.0:53", reuseport = true', "dev-first", "unbound", "unbound"),
    ("udp", 'bind = "0.0.0.0:53", reuseport = true', "unbound-first", "dev", "unbound"),
]


@pytest.mark.parametrize("proto,opts,order,on_eth0,on_eth1", DEV_CASES,
                         ids=[f"{c[0]}-{c[1].split(', ')[1].split(' ')[0]}-{c[2]}" for c in DEV_CASES])
def test_f9_device_bound_vs_unbound(netns_available, proto, opts, order, on_eth0, on_eth1):
    dev = f'{{proto = "{proto}", {opts}, device = "eth0"}}'
    unbound = f'{{proto = "{proto}", {opts}}}'
    procs = [(0, [dev]), (0, [unbound])] if order == "dev-first" else [(0, [unbound]), (0, [dev])]
    index = {"dev": (0, 0) if order == "dev-first" else (1, 0),
             "unbound": (1, 0) if order == "dev-first" else (0, 0)}
    port = 80 if proto == "tcp" else 53
    make = tcp if proto == "tcp" else udp
    real = run_real(scenario(*procs, addresses=["10.9.0.1", "10.9.1.1", "fd9::1"], interfaces=TWO_IF),
                    [make(20000 + i, "10.9.0.1", port) for i in range(4)]
                    + [make(21000 + i, "10.9.1.1", port, src="10.9.1.2") for i in range(4)])
    assert results(real) == ["ok", "ok"]
    assert [p["ifname"] for p in real.probes] == ["eth0"] * 4 + ["eth1"] * 4
    assert [p["receivers"] for p in real.probes] == [[index[on_eth0]]] * 4 + [[index[on_eth1]]] * 4


@pytest.mark.parametrize("order", ["dev-first", "unbound-first"])
def test_f9_ipv6_reuseport_first_bound_wins(netns_available, order):
    """AF_INET6 reuseport listeners are appended to the chain: the first bound wins."""
    dev = '{proto = "tcp", bind = "[::]:80", reuseport = true, device = "eth0"}'
    unbound = '{proto = "tcp", bind = "[::]:80", reuseport = true}'
    procs = [(0, [dev]), (0, [unbound])] if order == "dev-first" else [(0, [unbound]), (0, [dev])]
    real = run_real(scenario(*procs, addresses=["10.9.0.1", "10.9.1.1", "fd9::1"], interfaces=TWO_IF),
                    [tcp(20000 + i, "fd9::1", 80, src="fd9::2") for i in range(4)])
    assert [p["receivers"] for p in real.probes] == [[(0, 0)]] * 4


def test_f9_device_bound_only_listener_refuses_other_device(netns_available):
    real = run_real(
        scenario((0, [f'{{{T}, bind = "0.0.0.0:80", device = "eth0"}}']),
                 addresses=["10.9.0.1", "10.9.1.1"], interfaces={"eth0": ["10.9.0.1"], "eth1": ["10.9.1.1"]}),
        [tcp(20000, "10.9.0.1", 80), tcp(20001, "10.9.1.1", 80, src="10.9.1.2")])
    assert real.probes[0]["receivers"] == [(0, 0)]
    assert real.probes[1]["refused"] == "rst"


@pytest.mark.parametrize("uid,start,expected", [(1000, None, "EACCES"), (0, None, "ok"),
                                                (1000, 0, "ok"), (1000, 80, "ok"),
                                                (1000, 81, "EACCES")])
def test_f10_privileged_ports(netns_available, uid, start, expected):
    sysctl = None if start is None else {"net.ipv4.ip_unprivileged_port_start": start}
    real = run_real(scenario((uid, [f'{{{T}, bind = "10.9.0.1:80"}}', f'{{{U}, bind = "0.0.0.0:80"}}']),
                             sysctl=sysctl), [])
    assert results(real) == [expected, expected]


def test_f10_unprivileged_port_start_boundary(netns_available):
    real = run_real(scenario((1000, [f'{{{T}, bind = "10.9.0.1:1000"}}', f'{{{T}, bind = "10.9.0.1:999"}}']),
                             sysctl={"net.ipv4.ip_unprivileged_port_start": 1000}), [])
    assert results(real) == ["ok", "EACCES"]


def test_f11_ephemeral_exhaustion_per_destination(netns_available):
    to_a = f'{{{T}, connect = "10.9.0.2:7000"}}'
    to_b = f'{{{T}, connect = "10.9.0.2:7001"}}'
    real = run_real(scenario((0, [to_a] * 11 + [to_b] * 10),
                             sysctl={"net.ipv4.ip_local_port_range": "60000 60009"}), [])
    assert [(c["call"], c["result"]) for c in real.calls] == \
        [("connect", "ok")] * 10 + [("connect", "EADDRNOTAVAIL")] + [("connect", "ok")] * 10
    ports_a = {int(c["local"].rsplit(":", 1)[1]) for c in real.calls[:10]}
    ports_b = {int(c["local"].rsplit(":", 1)[1]) for c in real.calls[11:]}
    assert ports_a == ports_b == set(range(60000, 60010))


def test_f11_bind_port_zero_exhaustion(netns_available):
    """bind(0) needs a port no conflicting socket holds: the 11th gets EADDRINUSE."""
    real = run_real(scenario((0, [f'{{{U}, bind = "0.0.0.0:0"}}'] * 11),
                             sysctl={"net.ipv4.ip_local_port_range": "60000 60009"}), [])
    assert results(real) == ["ok"] * 10 + ["EADDRINUSE"]
    assert {int(c["local"].rsplit(":", 1)[1]) for c in real.calls[:10]} == set(range(60000, 60010))


def test_reserved_ports_skipped_by_bind_zero(netns_available):
    real = run_real(scenario((0, [f'{{{U}, bind = "0.0.0.0:0"}}'] * 5 + [f'{{{U}, bind = "0.0.0.0:60003"}}']),
                             sysctl={"net.ipv4.ip_local_port_range": "60000 60009",
                                     "net.ipv4.ip_local_reserved_ports": "60000-60004"}), [])
    assert results(real) == ["ok"] * 6
    # asked for explicitly, a reserved port is fine; never chosen for port 0
    assert {int(c["local"].rsplit(":", 1)[1]) for c in real.calls[:5]} == set(range(60005, 60010))


def test_bindv6only_sysctl_is_the_default(netns_available):
    real = run_real(scenario((0, [f'{{{T}, bind = "[::]:80"}}']), (0, [f'{{{T}, bind = "0.0.0.0:80"}}']),
                             sysctl={"net.ipv6.bindv6only": 1}), [tcp(20000, "10.9.0.1", 80)])
    assert results(real) == ["ok", "ok"]
    assert real.probes[0]["receivers"] == [(1, 0)]
