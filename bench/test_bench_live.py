"""Dispatch throughput of ``demux live``: segments per second from the device to the
handler processes and their answers back.

The device is a datagram socketpair standing in for the TUN (``PairDevice``), so the
number measures demux (parse, kernel lookup, channel to the worker processes, answer
building) and not the host's network stack; it needs no root. The dispatcher runs in
its own process, as ``demux live`` does, with a SO_REUSEPORT group of four UDP echo
processes; this process sends datagrams from many source ports and counts the echoes.
Run: ``pytest bench/test_bench_live.py --benchmark-only``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time

import pytest

from demux.live import packets as pk

N = 20_000
HOST, PEER = bytes([10, 66, 0, 2]), bytes([10, 66, 0, 1])
SCENARIO = """
[host]
addresses = ["10.66.0.2"]
""" + "".join(f"""
[[process]]
name = "echo{i}"
sockets = [ {{ proto = "udp", bind = "0.0.0.0:53", reuseport = true }} ]
""" for i in range(4))


def _serve(sock_fd: int, ready) -> None:
    from demux.kernel import Kernel
    from demux.live.dispatcher import Dispatcher
    from demux.live.handlers import echo
    from demux.scenario import loads

    class Dev:
        def __init__(self):
            self.sock = socket.socket(fileno=sock_fd)
            self.sock.setblocking(False)

        def mtu(self):
            return 1500

        def tx_dropped(self):
            return 0

        def fileno(self):
            return self.sock.fileno()

        def read(self):
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                return None

        def write(self, pkt):
            import select
            for _ in range(50):
                try:
                    self.sock.send(pkt)
                    return True
                except BlockingIOError:
                    select.select([], [self.sock], [], 0.1)
            return False

    k = Kernel.from_scenario(loads(SCENARIO))
    d = Dispatcher(k, Dev(), {p.name: echo for p in k.procs}, queue=100_000)
    d.install_signals()
    d.start()
    ready.set()
    try:
        d.run()
    finally:
        d.shutdown()


@pytest.fixture(scope="module")
def server():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 23)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_serve, args=(b.fileno(), ready))
    proc.start()
    b.close()
    assert ready.wait(10)
    yield a
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(10)
    a.close()


def _round(peer: socket.socket, frames: list[bytes]) -> float:
    """Send every frame while another thread counts the answers; segments/s."""
    got = [0]

    def reader():
        peer.settimeout(5)
        try:
            while got[0] < len(frames):
                peer.recv(65536)
                got[0] += 1
        except socket.timeout:
            pass
    t = threading.Thread(target=reader)
    t0 = time.perf_counter()
    t.start()
    for f in frames:
        peer.send(f)
    t.join(60)
    elapsed = time.perf_counter() - t0
    assert got[0] == len(frames), f"{len(frames) - got[0]} answers missing"
    return len(frames) / elapsed


def test_bench_live_udp_dispatch(benchmark, server):
    frames = [pk.udp_packets(PEER, HOST, 1024 + i % 60000, 53, b"query %d" % i)[0] for i in range(N)]
    rates = []
    benchmark.pedantic(lambda: rates.append(_round(server, frames)), rounds=3, iterations=1)
    benchmark.extra_info["segments_per_second"] = round(max(rates))
    benchmark.extra_info["handler_processes"] = 4
    print(f"\ndemux live dispatch: {max(rates):,.0f} segments/s (UDP, to 4 handler processes and back)")
