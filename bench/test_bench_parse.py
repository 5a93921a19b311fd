"""Parse speed: demux beside dpkt, scapy and tshark, on the same capture, in one run.

Every peer pulls the same fields per packet (addresses, ports, TCP flags, payload
length). scapy runs on a 5000-packet sample: it is two orders of magnitude slower.
"""

from __future__ import annotations

import shutil

import pytest

from bench.conftest import record
from demux.commands import bench as b


def _rate(benchmark, group, name, fn, *args):
    n = benchmark.pedantic(fn, args=args, rounds=3, iterations=1, warmup_rounds=1)
    rate = n / benchmark.stats.stats.min
    benchmark.extra_info["packets"] = n
    benchmark.extra_info["packets_per_s"] = rate
    record(group, name, rate, "packets/s")


@pytest.mark.benchmark(group="parse")
def test_dpkt(benchmark, mix_capture):
    _rate(benchmark, "parse", "dpkt loop", b.peer_dpkt, mix_capture)


@pytest.mark.benchmark(group="parse")
def test_demux_batch_parse(benchmark, mix_capture):
    _rate(benchmark, "parse", "demux numba walk + parse", b.ours_batch_parse, mix_capture)


@pytest.mark.benchmark(group="parse")
def test_demux_wire_parse(benchmark, mix_capture):
    _rate(benchmark, "parse", "demux.wire.parse loop (reference parser)", b.ours_parse, mix_capture)


@pytest.mark.benchmark(group="parse")
def test_scapy(benchmark, mix_capture):
    _rate(benchmark, "parse", "scapy loop (5000-packet sample)", b.peer_scapy, mix_capture, 5000)


@pytest.mark.benchmark(group="parse")
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark(benchmark, mix_capture):
    _rate(benchmark, "parse", "tshark -T fields", b.peer_tshark, mix_capture)
