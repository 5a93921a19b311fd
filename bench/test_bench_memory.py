"""Peak memory of a batch replay of a 10M-packet capture (``DEMUX_BENCH_MEMORY_PACKETS``).

The replay runs in a fresh subprocess, which reports its own peak RSS and its
packets/s; the target is under 500 MB: the batch engine holds one read buffer, one
chunk of columns and a flow table of fixed size, never the capture. The capture is
generated in another subprocess: Linux keeps ``ru_maxrss`` across fork and exec, so a
child of a big parent would report the parent's size; ``VmHWM`` (reset at exec) is
reported beside ``getrusage``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.conftest import record, synthetic

PACKETS = int(os.environ.get("DEMUX_BENCH_MEMORY_PACKETS", "10000000"))

CHILD = r"""
import json, resource, sys, time
from demux import scenario as scen, synth
from demux.batch import replay_batch
sc = scen.loads(synth.SCENARIO)
t = time.perf_counter()
if sys.argv[2] == "jsonl":
    with open("/dev/null", "wb") as out:
        s, w, _ = replay_batch(sys.argv[1], sc, 0, 1, out)
else:
    s, w, _ = replay_batch(sys.argv[1], sc, 0, 1, None)
dt = time.perf_counter() - t
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"packets": s.packets, "seconds": dt, "vmhwm_mb": int(hwm) / 1024,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.fixture(scope="module")
def big_capture():
    # Made in a child process so this one (the replay's parent) stays small.
    subprocess.run([sys.executable, "-c", "import sys; from bench.conftest import synthetic; "
                    f"synthetic({PACKETS}, seed=3)"], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return synthetic(PACKETS, seed=3)


@pytest.mark.benchmark(group="memory")
@pytest.mark.parametrize("mode", ["summary", "jsonl"])
def test_memory_10m(benchmark, big_capture, mode):
    res = {}

    def go():
        out = subprocess.run([sys.executable, "-c", CHILD, big_capture, mode], check=True,
                             capture_output=True, text=True).stdout
        res.update(json.loads(out.strip().splitlines()[-1]))
    benchmark.pedantic(go, rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    record("memory", f"batch {mode}: peak RSS (VmHWM), {res['packets']:,} packets", res["vmhwm_mb"], "MB")
    record("memory", f"batch {mode}: peak RSS (getrusage)", res["rss_mb"], "MB")
    record("memory", f"batch {mode}: packets/s", res["packets"] / res["seconds"], "packets/s")
