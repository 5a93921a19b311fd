"""One test per numbered rule of KERNEL.md, against the emulated kernel.

Names follow the rule they pin (test_A3_..., test_C_row_..., test_F11_...). The same rules
are checked against the real kernel in test_kernel_cases_real.py.
"""

from __future__ import annotations

import collections

import pytest

from demux.kernel import Kernel
from demux.kernel.sock import pack
from demux.scenario import loads
from demux.wire.packet import Packet

HOST = '[host]\naddresses = ["10.9.0.1", "10.9.0.3", "fd9::1"]\ninterfaces = { eth0 = ["10.9.0.1"], eth1 = ["10.9.0.3"] }\n'


def kernel(socks: str, procs: str = "", sysctl: str = "", timeline: bool = False) -> Kernel:
    text = HOST + sysctl + procs
    if socks:
        text += f'[[process]]\nname = "p"\npid = 100\nsockets = [\n{socks}\n]\n'
    k = Kernel.from_scenario(loads(text), seed=1)
    if not timeline:        # apply `at`/`close_at` calls too, as `demux check` does
        k.apply_all()
    return k


def results(k: Kernel) -> list[str]:
    return [o.result for o in k.outcomes]


def seg(src, sport, dst, dport, flags="S", seq=1000, ack=0, proto=6, plen=0, ifname=None, ts=0.0, window=64240):
    p = Packet(ts=ts, ifname=ifname)
    p.src, p.dst = pack(src), pack(dst)
    p.family = 4 if len(p.dst) == 4 else 6
    p.proto, p.sport, p.dport, p.seq, p.ack, p.payload_len = proto, sport, dport, seq, ack, plen
    p.window = window
    bits = {"F": 1, "S": 2, "R": 4, "P": 8, ".": 16}
    p.flags = sum(bits[c] for c in flags) if proto == 6 else 0
    return p


# ---- C: bind() conflicts, the verified table ------------------------------------------

C_ROWS = [
    ('{proto="tcp", bind="0.0.0.0:80"}', '{proto="tcp", bind="10.9.0.1:80"}', "EADDRINUSE"),
    ('{proto="tcp", bind="10.9.0.1:80"}', '{proto="tcp", bind="0.0.0.0:80", listen=false}', "EADDRINUSE"),
    ('{proto="tcp", bind="10.9.0.1:80", listen=false}', '{proto="tcp", bind="10.9.0.3:80", listen=false}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseaddr=true}', '{proto="tcp", bind="0.0.0.0:80", reuseaddr=true, listen=false}', "EADDRINUSE"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseaddr=true, listen=false}', '{proto="tcp", bind="0.0.0.0:80", reuseaddr=true, listen=false}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseaddr=true, listen=false}', '{proto="tcp", bind="0.0.0.0:80", reuseaddr=true}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseaddr=true}', '{proto="tcp", bind="10.9.0.1:80", reuseaddr=true}', "EADDRINUSE"),
    ('{proto="tcp", bind="10.9.0.1:80", reuseaddr=true}', '{proto="tcp", bind="0.0.0.0:80", reuseaddr=true}', "EADDRINUSE"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseaddr=true, listen=false}', '{proto="tcp", bind="10.9.0.1:80", reuseaddr=true}', "ok"),
    ('{proto="tcp", bind="10.9.0.1:80", reuseaddr=true, listen=false}', '{proto="tcp", bind="0.0.0.0:80", reuseaddr=true}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseaddr=true}', '{proto="tcp", bind="10.9.0.1:80"}', "EADDRINUSE"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseport=true}', '{proto="tcp", bind="0.0.0.0:80", reuseport=true}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseport=true, listen=false}', '{proto="tcp", bind="0.0.0.0:80", reuseport=true, listen=false}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseport=true}', '{proto="tcp", bind="10.9.0.1:80", reuseport=true}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80", reuseport=true}', '{proto="tcp", bind="0.0.0.0:80"}', "EADDRINUSE"),
    ('{proto="tcp", bind="[::]:80", v6only=false}', '{proto="tcp", bind="0.0.0.0:80"}', "EADDRINUSE"),
    ('{proto="tcp", bind="[::]:80", v6only=true}', '{proto="tcp", bind="0.0.0.0:80"}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80"}', '{proto="tcp", bind="[::]:80", v6only=false, listen=false}', "EADDRINUSE"),
    ('{proto="tcp", bind="10.9.0.1:80"}', '{proto="tcp", bind="[::]:80", v6only=false, listen=false}', "EADDRINUSE"),
    ('{proto="tcp", bind="10.9.0.1:80"}', '{proto="tcp", bind="[::]:80", v6only=true, listen=false}', "ok"),
    ('{proto="tcp", bind="[fd9::1]:80"}', '{proto="tcp", bind="[::]:80", v6only=true, listen=false}', "EADDRINUSE"),
    ('{proto="tcp", bind="[::ffff:10.9.0.1]:80", v6only=false}', '{proto="tcp", bind="10.9.0.1:80", listen=false}', "EADDRINUSE"),
    ('{proto="udp", bind="0.0.0.0:53"}', '{proto="udp", bind="0.0.0.0:53"}', "EADDRINUSE"),
    ('{proto="udp", bind="0.0.0.0:53", reuseaddr=true}', '{proto="udp", bind="0.0.0.0:53", reuseaddr=true}', "ok"),
    ('{proto="udp", bind="0.0.0.0:53"}', '{proto="udp", bind="10.9.0.1:53"}', "EADDRINUSE"),
    ('{proto="udp", bind="10.9.0.1:53"}', '{proto="udp", bind="0.0.0.0:53"}', "EADDRINUSE"),
    ('{proto="udp", bind="0.0.0.0:53", reuseaddr=true}', '{proto="udp", bind="10.9.0.1:53", reuseaddr=true}', "ok"),
    ('{proto="udp", bind="0.0.0.0:53", reuseport=true}', '{proto="udp", bind="0.0.0.0:53", reuseport=true}', "ok"),
    ('{proto="udp", bind="0.0.0.0:53", reuseport=true}', '{proto="udp", bind="10.9.0.1:53", reuseport=true}', "ok"),
    ('{proto="tcp", bind="0.0.0.0:80"}', '{proto="udp", bind="0.0.0.0:80"}', "ok"),
    ('{proto="tcp", bind="127.0.0.1:81", listen=false}', '{proto="tcp", bind="10.9.9.9:80", listen=false}', "EADDRNOTAVAIL"),
    ('{proto="tcp", bind="127.0.0.1:81", listen=false}', '{proto="tcp", bind="127.0.0.2:80", listen=false}', "ok"),
]


@pytest.mark.parametrize("first,second,expected", C_ROWS, ids=[f"C_row_{i + 1}" for i in range(len(C_ROWS))])
def test_C_verified_table(first, second, expected):
    k = kernel(first + ",\n" + second)
    assert results(k) == ["ok", expected], [o.why for o in k.outcomes]


def test_C_why_names_the_conflicting_socket():
    k = kernel('{proto="tcp", bind="0.0.0.0:80"}, {proto="tcp", bind="10.9.0.1:80"}')
    why = k.outcomes[1].why
    assert "p pid 100 fd 3" in why and "0.0.0.0:80" in why


def test_C_listen_rechecks_conflicts():
    # Both SO_REUSEADDR, neither listening: both bind; the second listen() fails.
    k = kernel('{proto="tcp", bind="0.0.0.0:80", reuseaddr=true},'
               '{proto="tcp", bind="0.0.0.0:80", reuseaddr=true}')
    assert [(o.call, o.result) for o in k.outcomes] == [("listen", "ok"), ("bind", "EADDRINUSE")]
    k = kernel('{proto="tcp", bind="0.0.0.0:80", reuseaddr=true, listen=false},'
               '{proto="tcp", bind="0.0.0.0:80", reuseaddr=true},'
               '{proto="tcp", bind="0.0.0.0:81", reuseaddr=true, listen=false}')
    assert results(k) == ["ok", "ok", "ok"]


def test_C_reuseport_needs_same_uid():
    procs = ('[[process]]\nname = "a"\nuid = 1000\nsockets = [{proto="tcp", bind="0.0.0.0:8080", reuseport=true}]\n'
             '[[process]]\nname = "b"\nuid = 1001\nsockets = [{proto="tcp", bind="0.0.0.0:8080", reuseport=true}]\n')
    k = kernel("", procs)
    assert results(k) == ["ok", "EADDRINUSE"]
    assert "same uid" in k.outcomes[1].why


def test_C_device_bound_sockets_do_not_conflict_across_devices():
    k = kernel('{proto="tcp", bind="0.0.0.0:80", device="eth0"}, {proto="tcp", bind="0.0.0.0:80", device="eth1"},'
               '{proto="tcp", bind="0.0.0.0:80"}')
    assert results(k) == ["ok", "ok", "EADDRINUSE"]


def test_C_v4mapped_on_v6only_socket_is_einval():
    k = kernel('{proto="tcp", bind="[::ffff:10.9.0.1]:80", v6only=true}')
    assert results(k) == ["EINVAL"]


# ---- F10: privileged ports ---------------------------------------------------------------

def test_F10_privileged_port_needs_root():
    procs = ('[[process]]\nname = "u"\nuid = 1000\nsockets = [{proto="tcp", bind="0.0.0.0:80"}]\n'
             '[[process]]\nname = "r"\nsockets = [{proto="tcp", bind="0.0.0.0:81"}]\n')
    assert results(kernel("", procs)) == ["EACCES", "ok"]
    k = kernel("", procs, '[sysctl]\n"net.ipv4.ip_unprivileged_port_start" = 0\n')
    assert results(k) == ["ok", "ok"]


def test_F10_address_checked_before_port_for_ipv4():
    procs = '[[process]]\nname = "u"\nuid = 1000\nsockets = [{proto="tcp", bind="10.9.9.9:80"}, {proto="tcp", bind="[fd9::9]:80"}]\n'
    # __inet_bind checks the address first; __inet6_bind checks the port first.
    assert results(kernel("", procs)) == ["EADDRNOTAVAIL", "EACCES"]


# ---- D: ephemeral ports ------------------------------------------------------------------

def test_D1_bind_zero_takes_an_odd_port_in_range_skipping_reserved():
    k = kernel(",".join(['{proto="tcp", bind="0.0.0.0:0", listen=false}'] * 20),
               sysctl='[sysctl]\n"net.ipv4.ip_local_port_range" = "40000 40100"\n'
                      '"net.ipv4.ip_local_reserved_ports" = "40001-40051"\n')
    ports = [int(o.local.rsplit(":", 1)[1]) for o in k.outcomes]
    assert all(r == "ok" for r in results(k))
    assert all(40052 <= p <= 40100 and p % 2 == 1 for p in ports)
    assert len(set(ports)) == 20


def test_D2_connect_prefers_even_ports_and_reuses_them_per_destination():
    socks = ",".join(['{proto="tcp", connect="10.9.0.2:443"}'] * 5 + ['{proto="tcp", connect="10.9.0.4:443"}'] * 5)
    k = kernel(socks)
    ports = [int(o.local.rsplit(":", 1)[1]) for o in k.outcomes]
    assert all(p % 2 == 0 for p in ports)
    assert len(set(ports[:5])) == 5 and len(set(ports[5:])) == 5


def test_F11_exhaustion_is_per_destination():
    sysctl = '[sysctl]\n"net.ipv4.ip_local_port_range" = "60000 60009"\n'
    socks = ",".join(['{proto="tcp", connect="10.9.0.2:80"}'] * 11 + ['{proto="tcp", connect="10.9.0.4:80"}'] * 10)
    k = kernel(socks, sysctl=sysctl)
    r = results(k)
    assert r[:10] == ["ok"] * 10 and r[10] == "EADDRNOTAVAIL" and r[11:] == ["ok"] * 10


def test_D3_bind_zero_fails_when_range_is_used_up():
    sysctl = '[sysctl]\n"net.ipv4.ip_local_port_range" = "60000 60003"\n'
    k = kernel(",".join(['{proto="tcp", bind="0.0.0.0:0", listen=false}'] * 5), sysctl=sysctl)
    assert results(k) == ["ok"] * 4 + ["EADDRINUSE"]


def test_D_connect_to_local_port_without_listener_is_refused():
    k = kernel('{proto="tcp", connect="127.0.0.1:9999"}')
    assert results(k) == ["ECONNREFUSED"]


# ---- A: TCP lookup -----------------------------------------------------------------------

def deliver_fd(k: Kernel, p) -> int | None:
    v = k.input(p, p.ts)
    return v.fd if v.verdict == "deliver" else v.verdict


@pytest.mark.parametrize("order", ["wildcard-first", "specific-first"])
def test_F1_A3_specific_listener_beats_wildcard_in_either_order(order):
    # Both listening on one port needs SO_REUSEPORT; wildcard and specific are separate groups.
    a = '{proto="tcp", bind="0.0.0.0:80", reuseport=true}'
    b = '{proto="tcp", bind="10.9.0.1:80", reuseport=true}'
    k = kernel(a + "," + b if order == "wildcard-first" else b + "," + a)
    assert results(k) == ["ok", "ok"]
    specific_fd = 4 if order == "wildcard-first" else 3
    assert deliver_fd(k, seg("10.9.0.2", 5000, "10.9.0.1", 80)) == specific_fd
    assert deliver_fd(k, seg("10.9.0.2", 5001, "10.9.0.3", 80)) == 7 - specific_fd


def test_F2_v6only_and_ipv4_listeners_split_by_family():
    k = kernel('{proto="tcp", bind="[::]:80", v6only=true}, {proto="tcp", bind="0.0.0.0:80"}')
    assert deliver_fd(k, seg("10.9.0.2", 5000, "10.9.0.1", 80)) == 4
    assert deliver_fd(k, seg("fd9::2", 5000, "fd9::1", 80)) == 3


def test_A4_dual_stack_ipv6_listener_takes_ipv4():
    k = kernel('{proto="tcp", bind="[::]:80", v6only=false}')
    v = k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80), 0.0)
    assert v.verdict == "deliver" and v.socket == "tcp LISTEN [::]:80"


def test_F3_reuseport_spreads_flows_evenly_and_keeps_each_flow():
    k = kernel(",".join(['{proto="tcp", bind="0.0.0.0:80", reuseport=true}'] * 4))
    counts = collections.Counter()
    for i in range(10000):
        sport = 1024 + i % 60000
        src = f"10.9.{1 + i // 60000}.2"
        syn = seg(src, sport, "10.9.0.1", 80, ts=i * 1e-4)
        fd = deliver_fd(k, syn)
        ack = seg(src, sport, "10.9.0.1", 80, flags=".", seq=1001, ts=i * 1e-4)
        v = k.input(ack, ack.ts)
        assert v.verdict == "deliver" and v.proc.pid == 100
        counts[fd] += 1
    assert set(counts) == {3, 4, 5, 6}
    assert max(counts.values()) - min(counts.values()) < 0.08 * 2500


def test_listener_pick_is_the_flow_hash_of_lookup():
    # Kernel._listener writes out flow_hash's second half on its hot path; it must pick
    # what reuseport_select(flow_hash(...)) picks, as the explain walk does.
    from demux.kernel import lookup as lk
    k = kernel(",".join(['{proto="tcp", bind="0.0.0.0:80", reuseport=true}'] * 5))
    group = k.listeners[80][0].group
    local = pack("10.9.0.1")
    for i in range(2000):
        remote, rport = pack(f"10.9.{i % 200}.{1 + i // 200}"), 1024 + 37 * i % 60000
        want = lk.reuseport_select(group, lk.flow_hash(k.seed, remote, rport, local, 80), None)
        assert k._listener(None, local, 80, remote, rport)[0] is want
        steps: list = []
        assert k._listener(None, local, 80, remote, rport, steps)[0] is want


def test_F4_second_syn_goes_to_the_same_request_socket():
    k = kernel(",".join(['{proto="tcp", bind="0.0.0.0:80", reuseport=true}'] * 4))
    v1 = k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80), 0.0)
    v2 = k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80, ts=1.0), 1.0)
    assert v1.fd == v2.fd and v2.state == "SYN-RECV" and "retransmitted" in v2.reason


def test_F5_established_survives_listener_close():
    k = kernel('{proto="tcp", bind="0.0.0.0:80", close_at = 5.0}', timeline=True)
    k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80), 0.0)
    v = k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80, flags=".", seq=1001), 0.1)
    assert v.state == "ESTAB"
    k.advance(6.0)
    v = k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80, flags="P.", seq=1001, plen=10), 7.0)
    assert v.verdict == "deliver" and v.state == "ESTAB" and v.proc.name == "p"
    assert k.input(seg("10.9.0.2", 5001, "10.9.0.1", 80, ts=8.0), 8.0).verdict == "reject"


def test_F6_A6_no_listener_rst_and_rst_gets_nothing():
    k = kernel('{proto="tcp", bind="0.0.0.0:80"}')
    v = k.input(seg("10.9.0.2", 5000, "10.9.0.1", 81), 0.0)
    assert (v.verdict, v.reply) == ("reject", "rst")
    v = k.input(seg("10.9.0.2", 5000, "10.9.0.1", 81, flags="R"), 0.0)
    assert (v.verdict, v.reply) == ("reject", None)


def test_F9_device_bound_listener_wins_on_its_device():
    k = kernel('{proto="tcp", bind="0.0.0.0:80", device="eth0"}, {proto="tcp", bind="0.0.0.0:80", device="eth1"}')
    assert deliver_fd(k, seg("10.9.0.2", 5000, "10.9.0.1", 80, ifname="eth0")) == 3
    assert deliver_fd(k, seg("10.9.0.2", 5000, "10.9.0.3", 80, ifname="eth1")) == 4
    assert deliver_fd(k, seg("10.9.0.2", 5001, "10.9.0.1", 80, ifname="eth2")) == "reject"


def test_A7_full_accept_queue_drops_syn():
    k = kernel('{proto="tcp", bind="0.0.0.0:80", backlog=1, accept=false}')
    verdicts = []
    for i in range(4):
        sport = 5000 + i
        v = k.input(seg("10.9.0.2", sport, "10.9.0.1", 80, ts=i), i)
        if v.verdict == "deliver":
            v = k.input(seg("10.9.0.2", sport, "10.9.0.1", 80, flags=".", seq=1001, ts=i), i)
        verdicts.append(v.verdict)
    # sk_acceptq_is_full is "queued > backlog": backlog 1 holds two connections.
    assert verdicts == ["deliver", "deliver", "drop", "drop"]


def test_F12_A8_time_wait_drops_old_segments_and_reopens_on_higher_syn():
    k = kernel('{proto="tcp", bind="0.0.0.0:80"}')
    c, s = ("10.9.0.2", 5000), ("10.9.0.1", 80)
    k.input(seg(*c, *s, seq=100), 0.0)
    k.input(seg(*c, *s, flags=".", seq=101, ack=5001), 0.1)
    out = seg(*s, *c, flags="F.", seq=5001, ack=101)
    assert k.output(out, 0.2).state == "FIN-WAIT-1"
    assert k.input(seg(*c, *s, flags="F.", seq=101, ack=5002), 0.3).state == "TIME-WAIT"
    # A bare ACK in window restarts the timer unanswered; one out of window gets an ACK
    # (the real kernel's answers: tests/test_tcp_flags_real.py).
    v = k.input(seg(*c, *s, flags=".", seq=102, ack=5002), 1.0)
    assert (v.verdict, v.reply) == ("drop", None) and "nothing is sent" in v.reason
    assert k.est[(pack("10.9.0.1"), 80, pack("10.9.0.2"), 5000)].expire == 61.0
    v = k.input(seg(*c, *s, flags=".", seq=9000, ack=5002), 1.5)
    assert (v.verdict, v.reply) == ("drop", None) and "answered with an ACK" in v.reason
    assert v.reason.startswith("segment for TIME-WAIT 10.9.0.1:80 10.9.0.2:5000")
    v = k.input(seg(*c, *s, flags="S", seq=50), 2.0)
    assert v.verdict == "drop"
    v = k.input(seg(*c, *s, flags="S", seq=100000), 3.0)
    assert v.verdict == "deliver" and v.state == "SYN-RECV" and "reopens" in v.reason


def _to_time_wait(k, c, s) -> None:
    """Client c connects to server s, which closes first: the server side ends in
    TIME-WAIT at t=0.3 (rcv_nxt 102, snd_nxt 5002)."""
    k.input(seg(*c, *s, seq=100), 0.0)
    k.input(seg(*c, *s, flags=".", seq=101, ack=5001), 0.1)
    k.output(seg(*s, *c, flags="F.", seq=5001, ack=101), 0.2)
    assert k.input(seg(*c, *s, flags="F.", seq=101, ack=5002), 0.3).state == "TIME-WAIT"


def test_A8_time_wait_expires_after_60_seconds():
    k = kernel('{proto="tcp", bind="0.0.0.0:80"}')
    c, s = ("10.9.0.2", 5000), ("10.9.0.1", 80)
    _to_time_wait(k, c, s)
    v = k.input(seg(*c, *s, flags="S", seq=50, ts=61.0), 61.0)
    assert v.verdict == "deliver" and v.state == "SYN-RECV"


# ---- B: UDP --------------------------------------------------------------------------------

def udp(src, sport, dst, dport, **kw):
    return seg(src, sport, dst, dport, proto=17, flags="", **kw)


def test_F7_B1_connected_udp_socket_beats_unconnected_for_its_peer():
    k = kernel('{proto="udp", bind="10.9.0.1:6000", connect="10.9.0.2:7000", reuseaddr=true},'
               '{proto="udp", bind="0.0.0.0:6000", reuseaddr=true}')
    assert results(k) == ["ok", "ok"]
    assert deliver_fd(k, udp("10.9.0.2", 7000, "10.9.0.1", 6000)) == 3
    assert deliver_fd(k, udp("10.9.0.2", 7001, "10.9.0.1", 6000)) == 4


def test_F8_B2_newest_reuseaddr_socket_gets_unicast_and_all_get_broadcast():
    k = kernel('{proto="udp", bind="0.0.0.0:5000", reuseaddr=true}, {proto="udp", bind="0.0.0.0:5000", reuseaddr=true}')
    for i in range(5):
        assert deliver_fd(k, udp("10.9.0.2", 7000 + i, "10.9.0.1", 5000)) == 4
    v = k.input(udp("10.9.0.2", 7000, "255.255.255.255", 5000), 0.0)
    assert v.verdict == "deliver" and sorted(fd for _, fd in v.copies) == [3, 4]


def test_B4_specific_address_socket_gets_no_broadcast():
    k = kernel('{proto="udp", bind="10.9.0.1:5000"}')
    v = k.input(udp("10.9.0.2", 7000, "255.255.255.255", 5000), 0.0)
    assert (v.verdict, v.reply) == ("reject", None)


def test_B3_udp_reuseport_group_keeps_a_flow_on_one_member():
    k = kernel(",".join(['{proto="udp", bind="0.0.0.0:53", reuseport=true}'] * 3))
    seen = collections.defaultdict(set)
    for i in range(300):
        sport = 10000 + i % 50
        seen[sport].add(deliver_fd(k, udp("10.9.0.2", sport, "10.9.0.1", 53)))
    assert all(len(fds) == 1 for fds in seen.values())
    assert set().union(*seen.values()) == {3, 4, 5}


def test_B5_udp_no_socket_port_unreachable():
    k = kernel("")
    v = k.input(udp("10.9.0.2", 7000, "10.9.0.1", 9), 0.0)
    assert (v.verdict, v.reply) == ("reject", "icmp-port-unreachable")


def test_lookup_api_reports_trace_and_group():
    k = kernel(",".join(['{proto="tcp", bind="0.0.0.0:80", reuseport=true}'] * 2))
    r = k.lookup("tcp", "10.9.0.2", 5000, "10.9.0.1", 80)
    assert len(r.socks) == 1 and r.socks[0].group is not None and r.reply is None
    assert any("SO_REUSEPORT group of 2" in s for s in r.trace)
    assert k.lookup("tcp", "10.9.0.2", 5000, "10.9.0.1", 81).reply == "rst"


def test_A7_full_request_queue_answers_with_syn_cookies():
    k = kernel('{proto="tcp", bind="0.0.0.0:80", backlog=2}')
    vs = [k.input(seg("10.9.0.2", 5000 + i, "10.9.0.1", 80, ts=0.1 * i), 0.1 * i) for i in range(4)]
    assert [v.state for v in vs] == ["SYN-RECV", "SYN-RECV", "LISTEN", "LISTEN"]
    assert "SYN cookie" in vs[2].reason and vs[2].verdict == "deliver"
    v = k.input(seg("10.9.0.2", 5002, "10.9.0.1", 80, flags=".", seq=1001, ts=1.0), 1.0)
    assert v.verdict == "deliver" and v.state == "ESTAB" and "cookie" in v.reason
    # A SYN-ACK on a 4-tuple that was answered with a cookie is no cookie's final ACK
    # (tcp_v4_cookie_check looks only at segments without SYN): the listener answers RST.
    v = k.input(seg("10.9.0.2", 5003, "10.9.0.1", 80, flags="S.", seq=1001, ts=1.0), 1.0)
    assert (v.verdict, v.reply) == ("reject", "rst") and "SYN-ACK" in v.reason
    assert all(c.state != "SYN-RECV" or c.expire for c in k.est.values())
    # Without cookies the same SYN is dropped; request sockets are forgotten after 63 s.
    k = kernel('{proto="tcp", bind="0.0.0.0:80", backlog=1}', sysctl='[sysctl]\n"net.ipv4.tcp_syncookies" = 0\n')
    assert k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80), 0.0).verdict == "deliver"
    assert k.input(seg("10.9.0.2", 5001, "10.9.0.1", 80, ts=1.0), 1.0).verdict == "drop"
    assert k.input(seg("10.9.0.2", 5002, "10.9.0.1", 80, ts=70.0), 70.0).state == "SYN-RECV"


def test_D_connect_capacity_matches_connecting_until_eaddrnotavail():
    sysctl = ('[sysctl]\n"net.ipv4.ip_local_port_range" = "60000 60013"\n'
              '"net.ipv4.ip_local_reserved_ports" = "60003"\n')
    held = '{proto="tcp", bind="0.0.0.0:60005", listen=false}'
    k = kernel(held, sysctl=sysctl)
    cap = k.connect_capacity(pack("10.9.0.2"), 80)
    assert (cap["ports_walked"], cap["reserved"], cap["held_by_bind"]) == (14, 1, 1)
    k2 = kernel(held + "," + ",".join(['{proto="tcp", connect="10.9.0.2:80"}'] * 14), sysctl=sysctl)
    r = results(k2)[1:]
    assert r.count("ok") == cap["free"] == 12 and r[12:] == ["EADDRNOTAVAIL"] * 2
    # Connections closed into TIME-WAIT hold their 4-tuples; towards loopback tcp_tw_reuse=2 frees them.
    assert k.connect_capacity(pack("10.9.0.2"), 80, time_wait=5)["free"] == 7
    assert k.connect_capacity(pack("127.0.0.1"), 80, time_wait=5)["free"] == 12


def test_A1_established_hash_first_even_against_a_better_listener():
    k = kernel('{proto="tcp", bind="0.0.0.0:80", reuseport=true}, '
               '{proto="tcp", bind="10.9.0.1:80", reuseport=true, at = 5.0}', timeline=True)
    k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80), 0.0)
    k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80, flags=".", seq=1001), 0.1)
    k.advance(6.0)
    v = k.input(seg("10.9.0.2", 5000, "10.9.0.1", 80, flags="P.", seq=1001, plen=5, ts=7.0), 7.0)
    assert v.state == "ESTAB" and v.socket.startswith("tcp ESTAB") and v.proc.name == "p"
    # A new flow now goes to the specific listener (fd 5: the accepted connection took 4).
    assert deliver_fd(k, seg("10.9.0.2", 5001, "10.9.0.1", 80, ts=8.0)) == 5


def test_A5_reuseport_groups_need_same_address_uid_family_v6only():
    procs = ('[[process]]\nname = "a"\nuid = 1000\nsockets = [{proto="tcp", bind="0.0.0.0:8080", reuseport=true},'
             '{proto="tcp", bind="0.0.0.0:8080", reuseport=true}, {proto="tcp", bind="10.9.0.1:8080", reuseport=true},'
             '{proto="tcp", bind="[::]:8080", reuseport=true, v6only=true}]\n')
    k = kernel("", procs)
    socks = [k._by_index[(0, i)] for i in range(4)]
    assert socks[0].group is socks[1].group
    assert len({id(s.group) for s in socks}) == 3


def test_F9_reuseport_chain_order_beats_device_score():
    # Verified on the real kernel: the first matching reuseport socket ends the search, and
    # newer AF_INET listeners sit at the head of the chain.
    k = kernel('{proto="tcp", bind="0.0.0.0:80", device="eth0", reuseport=true},'
               '{proto="tcp", bind="0.0.0.0:80", reuseport=true}')
    assert deliver_fd(k, seg("10.9.0.2", 5000, "10.9.0.1", 80, ifname="eth0")) == 4
    # AF_INET6 reuseport listeners go to the tail: the first bound wins.
    k = kernel('{proto="tcp", bind="[::]:80", device="eth0", reuseport=true},'
               '{proto="tcp", bind="[::]:80", reuseport=true}')
    assert deliver_fd(k, seg("fd9::2", 5000, "fd9::1", 80, ifname="eth0")) == 3


def test_A8_time_wait_with_timestamps_reopens_only_on_a_newer_tsval():
    k = kernel('{proto="tcp", bind="0.0.0.0:80"}')
    c, s = ("10.9.0.2", 5000), ("10.9.0.1", 80)

    def tsseg(*a, tsval, **kw):
        p = seg(*a, **kw)
        p.tsval = tsval
        return p
    k.input(tsseg(*c, *s, seq=100, tsval=1000), 0.0)
    k.input(tsseg(*c, *s, flags=".", seq=101, ack=5001, tsval=1001), 0.1)
    k.output(seg(*s, *c, flags="F.", seq=5001, ack=101), 0.2)
    k.input(tsseg(*c, *s, flags="F.", seq=101, ack=5002, tsval=1002), 0.3)
    assert k.input(tsseg(*c, *s, flags="S", seq=900000, tsval=999, ts=1.0), 1.0).verdict == "drop"
    v = k.input(tsseg(*c, *s, flags="S", seq=5, tsval=2000, ts=2.0), 2.0)
    assert v.verdict == "deliver" and v.state == "SYN-RECV"


def test_timers_sweep_time_wait_and_request_sockets_from_the_table():
    k = kernel('{proto="tcp", bind="0.0.0.0:80"}')
    c, s = ("10.9.0.2", 5000), ("10.9.0.1", 80)
    _to_time_wait(k, c, s)
    k.input(seg("10.9.0.2", 6000, "10.9.0.1", 80, ts=1.0), 1.0)       # a half-open request
    assert len(k.est) == 2
    gen = k.generation
    k.input(seg("10.9.0.4", 7000, "10.9.0.1", 81, ts=100.0), 100.0)   # any later packet runs the timers
    assert len(k.est) == 0 and k.generation == gen


def test_C_ipv6_multicast_and_link_local_binds():
    # Verified on 6.18: TCP on multicast is EINVAL; link-local scope needs a device.
    socks = ('{proto="tcp", bind="[ff05::1]:8080"}, {proto="udp", bind="[ff05::1]:8080"},'
             '{proto="udp", bind="[ff02::1]:8080"}, {proto="udp", bind="[fe80::1]:8080"},'
             '{proto="udp", bind="224.0.0.251:8080"}, {proto="tcp", bind="224.0.0.251:8080", listen=false}')
    assert results(kernel(socks)) == ["EINVAL", "ok", "EINVAL", "EINVAL", "ok", "ok"]


def test_B5_icmp_rate_limit_is_a_token_bucket_per_peer():
    # The one ICMP limiter (replay and live both ask the kernel): burst 6, then 1 s a token.
    k = kernel("")
    a, b = pack("198.51.100.1"), pack("198.51.100.2")
    assert [k._icmp_allowed(b, 100.0) for _ in range(8)] == [True] * 6 + [False] * 2
    assert k._icmp_allowed(a, 100.0)                 # another peer has its own bucket
    assert not k._icmp_allowed(b, 100.5) and k._icmp_allowed(b, 101.1) and not k._icmp_allowed(b, 101.2)
    assert k.icmp_ratelimited == 4
    assert all(k._icmp_allowed(pack("127.0.0.1"), 100.0) for _ in range(20))   # loopback: never


def test_open_connection_validates_segments():
    # tcp_rcv_established / tcp_validate_incoming (RFC 5961); the real kernel's answers
    # are in tests/test_tcp_flags_real.py.
    k = kernel('{proto="tcp", bind="0.0.0.0:80"}')
    c, s = ("10.9.0.2", 5000), ("10.9.0.1", 80)
    k.input(seg(*c, *s, seq=100), 0.0)
    assert k.input(seg(*c, *s, flags=".", seq=101, ack=5001), 0.1).state == "ESTAB"
    v = k.input(seg(*c, *s, flags="P", seq=101, plen=5), 0.2)
    assert (v.verdict, v.state) == ("drop", "ESTAB") and "without ACK" in v.reason
    assert k.input(seg(*c, *s, flags="P.", seq=101, ack=5001, plen=5), 0.3).verdict == "deliver"
    v = k.input(seg(*c, *s, flags="S", seq=500), 0.4)
    assert (v.verdict, v.state) == ("drop", "ESTAB") and "challenge ACK" in v.reason
    v = k.input(seg(*c, *s, flags="R", seq=107), 0.5)
    assert (v.verdict, v.state) == ("drop", "ESTAB") and "not rcv_nxt 106" in v.reason
    v = k.input(seg(*c, *s, flags="R", seq=106), 0.6)
    assert (v.verdict, v.state) == ("deliver", "CLOSE")


def test_a_new_connect_from_the_same_port_has_its_own_isn():
    # connect() gave up; the next one from the same port sends a SYN with a new ISN, and
    # the SYN-ACK that acknowledges it completes the handshake (only the old ISN's would
    # be "not ISN+1").
    k = kernel("")
    out = k.output(seg("10.9.0.1", 40000, "10.8.0.9", 443, "S", seq=100), 0.0)
    assert out.state == "SYN-SENT"
    k.output(seg("10.9.0.1", 40000, "10.8.0.9", 443, "S", seq=100), 1.0)          # retransmitted
    k.output(seg("10.9.0.1", 40000, "10.8.0.9", 443, "S", seq=777777), 140.0)      # a new connect()
    v = k.input(seg("10.8.0.9", 443, "10.9.0.1", 40000, "S.", seq=5000, ack=777778), 140.1)
    assert (v.verdict, v.state) == ("deliver", "ESTAB"), v.reason
    k2 = kernel("")
    k2.output(seg("10.9.0.1", 40000, "10.8.0.9", 443, "S", seq=100), 0.0)
    v = k2.input(seg("10.8.0.9", 443, "10.9.0.1", 40000, "S.", seq=5000, ack=777778), 0.1)
    assert (v.verdict, v.state, v.reply) == ("drop", "SYN-SENT", "rst"), v.reason


def test_old_segments_by_what_we_acknowledged():
    # Kernel._old: rcv_wup is what our latest segment acknowledged.
    k = kernel('{proto="tcp", bind="0.0.0.0:80", listen=true}')
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "S", seq=1000), 0.0)
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "S.", seq=9000, ack=1001), 0.0)
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=1001, ack=9001), 0.0)
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "P.", seq=1001, ack=9001, plen=10), 0.1)
    # Not acknowledged yet, but everything so far came in order (rcv_nxt is exact): a copy
    # is a retransmission (tcp_data_queue: OLD_DATA).
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "P.", seq=1001, ack=9001, plen=10), 0.2)
    assert (v.verdict, v.state) == ("drop", "ESTAB") and "received already" in v.reason, v.reason
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, ".", seq=9001, ack=1011), 0.3)
    got = [k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, fl, seq=sq, ack=9001, plen=n), 0.4).verdict
           for fl, sq, n in (("P.", 1001, 10), (".", 1010, 0), (".", 1010, 1), (".", 1011, 0), ("P.", 1005, 10),
                             ("F.", 1015, 0))]
    # a retransmission, a keep-alive, a 1-byte keep-alive: dropped; an ACK in line, data
    # past rcv_wup and a FIN: taken.
    assert got == ["drop", "drop", "drop", "deliver", "deliver", "deliver"]


def test_an_old_fin_that_acknowledges_ours_still_moves_the_state():
    # The FIN is a retransmission (it ends at rcv_wup), but tcp_ack runs first: CLOSING
    # goes to TIME-WAIT and LAST-ACK to CLOSE; only the FIN itself is discarded.
    for ours_first, want in ((True, "TIME-WAIT"), (False, "CLOSE")):
        k = kernel('{proto="tcp", bind="0.0.0.0:80", listen=true}')
        k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "S", seq=1000), 0.0)
        k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "S.", seq=5000, ack=1001), 0.0)
        k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=1001, ack=5001), 0.0)
        if ours_first:          # simultaneous close; our ACK of their FIN is lost
            k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "F.", seq=5001, ack=1001), 0.1)
            k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "F.", seq=1001, ack=5001), 0.1)
            k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, ".", seq=5002, ack=1002), 0.1)
        else:                   # they close first; our FIN goes; their FIN comes again
            k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "F.", seq=1001, ack=5001), 0.1)
            k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "F.", seq=5001, ack=1002), 0.1)
        v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "F.", seq=1001, ack=5002), 0.2)
        assert (v.verdict, v.state) == ("drop", want), v.reason
        assert "its ACK is taken" in v.reason


def test_old_by_half_the_sequence_space():
    # before(a, b) is (s32)(a - b) < 0: a segment ending exactly 2**31 before rcv_wup is old.
    k = kernel('{proto="tcp", bind="0.0.0.0:80", listen=true}')
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "S", seq=1000), 0.0)
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "S.", seq=5000, ack=1001), 0.0)
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=1001, ack=5001), 0.0)
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=(1001 - 2**31) % 2**32, ack=5001), 0.1)
    assert v.verdict == "drop" and "tcp_sequence" in v.reason


def _open(k, ours=9000, theirs=1000):
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "S", seq=theirs), 0.0)
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "S.", seq=ours, ack=theirs + 1), 0.0)
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=theirs + 1, ack=ours + 1), 0.0)


def test_a_zero_window_drops_what_lies_past_it():
    # Kernel._beyond_zero_window (tcp_sequence, 6.17 on): once our latest segment offers a
    # zero window, a segment whose data ends past rcv_wup, or that starts past it, is
    # dropped whole; an ACK at the edge and a bare FIN are taken. The window update ends it.
    k = kernel('{proto="tcp", bind="0.0.0.0:80", listen=true}')
    _open(k)
    assert k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "P.", seq=1001, ack=9001, plen=100), 0.1).verdict == "deliver"
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, ".", seq=9001, ack=1101, window=0), 0.2)
    got = []
    for fl, sq, n in (("P.", 1101, 1), ("P.", 1050, 100), (".", 1102, 0), (".", 1101, 0), ("FP.", 1101, 5),
                      ("P.", 1001, 100)):
        v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, fl, seq=sq, ack=9001, plen=n), 0.3)
        got.append((v.verdict, v.state, "beyond the receive window" in v.reason))
    assert got == [("drop", "ESTAB", True), ("drop", "ESTAB", True), ("drop", "ESTAB", True),
                   ("deliver", "ESTAB", False), ("drop", "ESTAB", True),
                   ("drop", "ESTAB", False)]          # (the last: old, a retransmission)
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "F.", seq=1101, ack=9001), 0.4)
    assert (v.verdict, v.state) == ("deliver", "CLOSE-WAIT"), v.reason
    # A window update: data is taken again (here on a fresh connection).
    k = kernel('{proto="tcp", bind="0.0.0.0:80", listen=true}')
    _open(k)
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, ".", seq=9001, ack=1001, window=0), 0.1)
    assert k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "P.", seq=1001, ack=9001, plen=1), 0.2).verdict == "drop"
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, ".", seq=9001, ack=1001, window=300), 0.3)
    assert k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "P.", seq=1001, ack=9001, plen=1), 0.4).verdict == "deliver"


def test_a_segment_past_a_zero_window_does_not_acknowledge_our_fin():
    # The drop comes before tcp_ack: FIN-WAIT-1 stays, though the segment acknowledges our
    # FIN; a bare ACK of it then moves the state on.
    k = kernel('{proto="tcp", bind="0.0.0.0:80", listen=true}')
    _open(k)
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "F.", seq=9001, ack=1001, window=0), 0.1)
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "P.", seq=1001, ack=9002, plen=10), 0.2)
    assert (v.verdict, v.state) == ("drop", "FIN-WAIT-1"), v.reason
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=1001, ack=9002), 0.3)
    assert (v.verdict, v.state) == ("deliver", "FIN-WAIT-2"), v.reason


def test_after_a_hole_a_copy_may_fill_it():
    # Holes are not tracked: once a segment starts past rcv_nxt, rcv_nxt is the furthest end
    # seen and data past rcv_wup is taken (it may fill the hole); before, a copy of what
    # arrived in order is dropped even while our ACK of it is delayed.
    k = kernel('{proto="tcp", bind="0.0.0.0:80", listen=true}')
    _open(k)
    data = lambda sq, n: k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "P.", seq=sq, ack=9001, plen=n), 0.1)
    assert data(1001, 100).verdict == "deliver"
    assert data(1001, 100).verdict == "drop"             # a copy, in order so far
    assert data(1051, 100).verdict == "deliver"          # overlaps, brings 50 new bytes
    assert data(1151, 0).verdict == "deliver"            # an ACK
    assert data(1301, 100).verdict == "deliver"          # a hole: 1151-1301
    assert data(1151, 150).verdict == "deliver"          # fills it
    assert data(1151, 150).verdict == "deliver"          # (a copy now: not told apart)
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, ".", seq=9001, ack=1401), 0.2)
    assert data(1301, 100).verdict == "drop"             # acknowledged: old by rcv_wup


def test_a_zero_window_keeps_a_rst_with_data_out_and_moves_past_a_taken_fin():
    # A RST at the edge carrying data ends past it: tcp_sequence fails and tcp_reset_check
    # does not hold, so nothing is reset. A bare FIN at the edge is taken; the edge is then
    # the FIN + 1, so the peer's next ACK is processed even before ours of the FIN goes out
    # (both measured on 6.18).
    k = kernel('{proto="tcp", bind="0.0.0.0:80", listen=true}')
    _open(k)
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "P.", seq=9001, ack=1001, plen=10, window=0), 0.1)
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "R.", seq=1001, ack=9001, plen=7), 0.2)
    assert (v.verdict, v.state) == ("drop", "ESTAB") and "beyond the receive window" in v.reason, v.reason
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "F", seq=1001, ack=9001), 0.3)
    assert (v.verdict, v.state) == ("drop", "ESTAB")        # (without ACK: discarded)
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "F.", seq=1001, ack=9001), 0.3)
    assert (v.verdict, v.state) == ("deliver", "CLOSE-WAIT"), v.reason
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=1002, ack=9011), 0.31)
    assert (v.verdict, v.state) == ("deliver", "CLOSE-WAIT"), v.reason
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=1003, ack=9011), 0.32)
    assert (v.verdict, v.state) == ("drop", "CLOSE-WAIT") and "beyond the receive window" in v.reason
    # A bare RST at the edge resets, zero window or not.
    v = k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "R", seq=1002), 0.4)
    assert (v.verdict, v.state) == ("deliver", "CLOSE"), v.reason


def test_only_what_the_kernel_took_makes_a_later_copy():
    # rcv_exact ends where demux would count bytes the kernel did not take: a bare ACK past
    # rcv_nxt (_received), a SYN's data, or our own ACK acknowledging less (_sent). The
    # bytes sent again are then taken, not called copies. Data in a SYN-ACK to our SYN is
    # not taken either (tcp_rcv_synsent_state_process: rcv_nxt = SEQ+1).
    lst = '{proto="tcp", bind="0.0.0.0:80", listen=true}'
    data = lambda k, sq, n: k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "P.", seq=sq, ack=9001, plen=n), 0.2)
    k = kernel(lst)
    _open(k)
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=1101, ack=9001), 0.1)
    assert data(k, 1001, 100).verdict == "deliver"
    k = kernel(lst)
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, "S", seq=1000, plen=7), 0.0)
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, "S.", seq=9000, ack=1001), 0.0)
    k.input(seg("10.8.0.9", 5555, "10.9.0.1", 80, ".", seq=1001, ack=9001), 0.0)
    assert data(k, 1001, 7).verdict == "deliver"
    k = kernel(lst)
    _open(k)
    assert data(k, 1001, 50).verdict == "deliver"
    k.output(seg("10.9.0.1", 80, "10.8.0.9", 5555, ".", seq=9001, ack=1001), 0.3)   # it took none of it
    assert data(k, 1001, 50).verdict == "deliver"
    k = kernel("")
    k.output(seg("10.9.0.1", 40000, "10.8.0.9", 443, "S", seq=100), 0.0)
    k.input(seg("10.8.0.9", 443, "10.9.0.1", 40000, "S.", seq=5000, ack=101, plen=5), 0.1)
    v = k.input(seg("10.8.0.9", 443, "10.9.0.1", 40000, "P.", seq=5001, ack=101, plen=5), 0.2)
    assert (v.verdict, v.state) == ("deliver", "ESTAB"), v.reason
    v = k.input(seg("10.8.0.9", 443, "10.9.0.1", 40000, "P.", seq=5001, ack=101, plen=5), 0.3)
    assert v.verdict == "drop" and "received already" in v.reason, v.reason
