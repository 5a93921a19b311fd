"""Fixtures of the benchmark suite (not part of the test run: pyproject's testpaths is
["tests"]). Run: ``pytest bench/ --benchmark-only`` (add ``-s`` to see the tables).

Captures are generated once (``demux.synth``, seeded) into ``$DEMUX_BENCH_DIR``
(default /tmp/demux-bench) and reused between runs. Sizes: ``DEMUX_BENCH_PACKETS``
(default 200000) for the parse and replay suites, ``DEMUX_BENCH_MEMORY_PACKETS``
(default 10000000) for the memory suite.

Each benchmark stores packets/s (or ns per lookup) in ``extra_info``; at the end a table
puts every result of a group beside the others, with ratios, so numbers from one run
are compared with numbers from the same run.
"""

from __future__ import annotations

import os

import pytest

BENCH_DIR = os.environ.get("DEMUX_BENCH_DIR", "/tmp/demux-bench")
PACKETS = int(os.environ.get("DEMUX_BENCH_PACKETS", "200000"))
_RESULTS: dict[str, list[tuple[str, float, str]]] = {}


def synthetic(packets: int, seed: int = 1, mean_data: float = 60.0) -> str:
    """Path of a cached synthetic capture (made on first use)."""
    from demux import synth
    os.makedirs(BENCH_DIR, exist_ok=True)
    path = os.path.join(BENCH_DIR, f"synth-{packets}-{seed}-{int(mean_data)}.pcap")
    if not os.path.exists(path):
        synth.make(path + ".tmp", packets, seed, mean_data)
        os.replace(path + ".tmp", path)
    return path


@pytest.fixture(scope="session")
def scenario():
    from demux import scenario as scen
    from demux import synth
    return scen.loads(synth.SCENARIO)


@pytest.fixture(scope="session")
def mix_capture():
    """The default traffic mix: many short flows, ~11% of packets need the kernel."""
    return synthetic(PACKETS)


@pytest.fixture(scope="session")
def bulk_capture():
    """Long flows (mean 2000 data segments): the flow cache's best case."""
    return synthetic(PACKETS, seed=2, mean_data=2000.0)


@pytest.fixture(scope="session")
def frames_in():
    from demux.commands.bench import count_frames
    cache: dict[str, int] = {}

    def get(path):
        if path not in cache:
            cache[path] = count_frames(path)
        return cache[path]
    return get


def record(group: str, name: str, value: float, unit: str) -> None:
    """Keep one result for the end-of-run table."""
    _RESULTS.setdefault(group, []).append((name, value, unit))


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("demux: results side by side")
    for group, rows in _RESULTS.items():
        tr.write_line(f"[{group}]")
        base = rows[0][1] if rows else 0
        for name, value, unit in rows:
            ratio = f"{value / base:8.2f}x first" if base else ""
            tr.write_line(f"  {name:58} {value:>16,.1f} {unit:10} {ratio}")
