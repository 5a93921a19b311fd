"""Full replay, every verdict computed: the reference engine and the batch engine.

Two captures: the default mix (many short flows: handshakes and closes are about one
packet in nine, and each of those goes through the kernel) and long flows (the flow
cache's best case). Outputs: ``--summary`` (counts only) and jsonl written to
/dev/null. Workers: 1 and 2 (the second formats jsonl on another core).
"""

from __future__ import annotations

import pytest

from bench.conftest import record
from demux.commands import bench as b


def _rate(benchmark, group, name, n_frames, fn, *args, rounds=3):
    n = benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1, warmup_rounds=1)
    assert n == n_frames
    rate = n / benchmark.stats.stats.min
    benchmark.extra_info["packets"] = n
    benchmark.extra_info["packets_per_s"] = rate
    record(group, name, rate, "packets/s")


@pytest.mark.benchmark(group="replay-mix")
def test_reference_summary_mix(benchmark, mix_capture, scenario, frames_in):
    _rate(benchmark, "replay, short-flow mix", "reference engine --summary", frames_in(mix_capture),
          b.replay_reference, mix_capture, scenario, rounds=1)


@pytest.mark.benchmark(group="replay-mix")
def test_batch_summary_mix(benchmark, mix_capture, scenario, frames_in):
    _rate(benchmark, "replay, short-flow mix", "batch engine --summary", frames_in(mix_capture),
          b.replay_batch, mix_capture, scenario)


@pytest.mark.benchmark(group="replay-mix")
@pytest.mark.parametrize("workers", [1, 2])
def test_batch_jsonl_mix(benchmark, mix_capture, scenario, frames_in, workers):
    _rate(benchmark, "replay, short-flow mix", f"batch engine jsonl > /dev/null, workers {workers}",
          frames_in(mix_capture), b.replay_batch, mix_capture, scenario, True, workers)


@pytest.mark.benchmark(group="replay-bulk")
def test_reference_summary_bulk(benchmark, bulk_capture, scenario, frames_in):
    _rate(benchmark, "replay, long flows", "reference engine --summary", frames_in(bulk_capture),
          b.replay_reference, bulk_capture, scenario, rounds=1)


@pytest.mark.benchmark(group="replay-bulk")
def test_batch_summary_bulk(benchmark, bulk_capture, scenario, frames_in):
    _rate(benchmark, "replay, long flows", "batch engine --summary", frames_in(bulk_capture),
          b.replay_batch, bulk_capture, scenario)


@pytest.mark.benchmark(group="replay-bulk")
@pytest.mark.parametrize("workers", [1, 2])
def test_batch_jsonl_bulk(benchmark, bulk_capture, scenario, frames_in, workers):
    _rate(benchmark, "replay, long flows", f"batch engine jsonl > /dev/null, workers {workers}",
          frames_in(bulk_capture), b.replay_batch, bulk_capture, scenario, True, workers)
