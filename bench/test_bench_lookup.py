"""The lookup hot path of the emulated kernel (demux.kernel): nanoseconds per lookup.

Four cases, each measured alone over 1000 prebuilt keys: an established-hash hit, a
listener hit, a SO_REUSEPORT group hit (scoring plus the flow hash), and a miss (no
connection, no listener: the RST case). Then the cost against the table's size (10, 1k,
10k, 100k listeners; the same numbers of established connections) beside a linear scan
of the same entries, which is what smoltcp and lwIP do (one list of sockets, each
checked in turn). The target is 200 ns per lookup; these are measurements, not
assertions.
"""

from __future__ import annotations

import pytest

from bench.conftest import record
from demux import scenario as scen
from demux.kernel import Conn, Kernel
from demux.kernel.sock import pack

KEYS = 1000
SCEN = """
[host]
addresses = ["10.0.0.1"]

[[process]]
name = "web"
pid = 10
sockets = [ { proto = "tcp", bind = "0.0.0.0:80", listen = true } ]
""" + "".join(f"""
[[process]]
name = "w{i}"
pid = {20 + i}
sockets = [ {{ proto = "tcp", bind = "0.0.0.0:443", listen = true, reuseport = true }} ]
""" for i in range(4))

LOCAL = pack("10.0.0.1")
REMOTES = [bytes([10, 1, (i >> 8) & 0xFF, i & 0xFF]) for i in range(KEYS)]


@pytest.fixture(scope="module")
def kernel():
    k = Kernel.from_scenario(scen.loads(SCEN), 0)
    for i, r in enumerate(REMOTES):
        key = (LOCAL, 80, r, 30000 + i)
        k.est[key] = Conn(key, 4, "ESTAB", None, None, "bench")
    return k


def _ns(benchmark, group, name, fn):
    benchmark.pedantic(fn, rounds=50, iterations=1, warmup_rounds=3)
    ns = benchmark.stats.stats.median / KEYS * 1e9
    benchmark.extra_info["ns_per_lookup"] = ns
    record(group, name, ns, "ns/lookup")


@pytest.mark.benchmark(group="lookup")
def test_established_hit(benchmark, kernel):
    est = kernel.est
    keys = [(LOCAL, 80, r, 30000 + i) for i, r in enumerate(REMOTES)]

    def go():
        get = est.get
        for key in keys:
            get(key)
    _ns(benchmark, "lookup", "established hit (est dict)", go)


def _listener_case(kernel, port):
    chain = kernel.listeners.get(port, ())
    args = [(r, 40000 + i) for i, r in enumerate(REMOTES)]
    est = kernel.est
    listener = kernel._listener

    def go():
        # What Kernel._tcp_in does for a SYN: the established hash misses, then the
        # kernel's listener lookup (its per-local-end match, then SO_REUSEPORT's hash).
        for r, rp in args:
            est.get((LOCAL, port, r, rp))
            listener(None, LOCAL, port, r, rp)
    return go, chain


@pytest.mark.benchmark(group="lookup")
def test_listener_hit(benchmark, kernel):
    go, chain = _listener_case(kernel, 80)
    assert chain
    _ns(benchmark, "lookup", "listener hit (wildcard :80)", go)


@pytest.mark.benchmark(group="lookup")
def test_reuseport_hit(benchmark, kernel):
    go, chain = _listener_case(kernel, 443)
    assert len(chain) == 4
    _ns(benchmark, "lookup", "SO_REUSEPORT hit (group of 4 on :443)", go)


@pytest.mark.benchmark(group="lookup")
def test_miss(benchmark, kernel):
    go, chain = _listener_case(kernel, 8080)
    assert not chain
    _ns(benchmark, "lookup", "miss (no connection, no listener)", go)


# ---- scaling with the table's size ------------------------------------------------------

SIZES = [10, 1000, 10_000, 100_000]


def _big_kernel(n):
    """A host with n listeners (one per port, over several addresses past 50000) and n
    established connections."""
    addrs = [f"10.0.{a}.1" for a in range(n // 50_000 + 1)]
    k = Kernel.from_scenario(scen.loads(f'[host]\naddresses = {addrs!r}\n'.replace("'", '"')), 0)
    from demux.kernel.table import ProcState
    from demux.scenario import ProcessSpec
    proc = ProcState(ProcessSpec(name="big", pid=1), 0)
    for i in range(n):
        sk = k._new_sock(proc, None, "tcp", 4)
        res, why = k.bind(sk, pack(addrs[i // 50_000]), 1024 + i % 50_000)
        assert res == "ok", why
        k.listen(sk, 128)
        key = (pack(addrs[0]), 80, bytes([10, 2, (i >> 8) & 0xFF, i & 0xFF]), 1024 + (i >> 16))
        k.est[key] = Conn(key, 4, "ESTAB", proc, 3, "bench")
    return k, addrs


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}")
def big(request):
    return request.param, _big_kernel(request.param)


@pytest.mark.benchmark(group="lookup-size")
def test_size_listener(benchmark, big):
    n, (k, addrs) = big
    import random
    rnd = random.Random(1)
    picks = [rnd.randrange(n) for _ in range(KEYS)]
    qs = [(pack(addrs[i // 50_000]), 1024 + i % 50_000) for i in picks]
    listener = k._listener
    peer = bytes([10, 9, 9, 9])

    def go():
        for addr, port in qs:
            listener(None, addr, port, peer, 5555)
    _ns(benchmark, "lookup-size", f"listener lookup, {n} listeners", go)


@pytest.mark.benchmark(group="lookup-size")
def test_size_listener_linear(benchmark, big):
    n, (k, addrs) = big
    import random
    rnd = random.Random(1)
    picks = [rnd.randrange(n) for _ in range(KEYS if n <= 10_000 else 100)]
    qs = [(pack(addrs[i // 50_000]), 1024 + i % 50_000) for i in picks]
    table = [(sk.addr, sk.port, sk) for chain in k.listeners.values() for sk in chain]

    def go():
        for addr, port in qs:
            for a, p, sk in table:
                if p == port and a == addr:
                    break
    benchmark.pedantic(go, rounds=5 if n >= 10_000 else 30, iterations=1, warmup_rounds=1)
    ns = benchmark.stats.stats.median / len(qs) * 1e9
    benchmark.extra_info["ns_per_lookup"] = ns
    record("lookup-size", f"linear scan (smoltcp/lwIP style), {n} listeners", ns, "ns/lookup")


@pytest.mark.benchmark(group="lookup-size")
def test_size_established(benchmark, big):
    n, (k, addrs) = big
    keys = list(k.est)
    import random
    rnd = random.Random(2)
    qs = [keys[rnd.randrange(n)] for _ in range(KEYS)]
    get = k.est.get

    def go():
        for key in qs:
            get(key)
    _ns(benchmark, "lookup-size", f"established hit, {n} connections", go)


@pytest.mark.benchmark(group="lookup-size")
def test_size_established_linear(benchmark, big):
    n, (k, addrs) = big
    items = list(k.est.items())
    import random
    rnd = random.Random(2)
    qs = [items[rnd.randrange(n)][0] for _ in range(KEYS if n <= 10_000 else 100)]

    def go():
        for key in qs:
            for kk, c in items:
                if kk == key:
                    break
    benchmark.pedantic(go, rounds=5 if n >= 10_000 else 30, iterations=1, warmup_rounds=1)
    ns = benchmark.stats.stats.median / len(qs) * 1e9
    benchmark.extra_info["ns_per_lookup"] = ns
    record("lookup-size", f"linear scan (smoltcp/lwIP style), {n} connections", ns, "ns/lookup")
