"""``demux bench``: how fast demux parses and replays, beside dpkt, scapy and tshark.

Generates a synthetic capture (``demux.synth``; or uses ``--capture``) and times, on the
same file in the same run: demux's reference engine, the batch engine (summary, and
jsonl to /dev/null), demux's per-packet parser, a dpkt loop, a scapy loop (on a sample:
it is slow) and ``tshark -T fields`` when installed; then, on a generated capture of long
flows (few packets need the emulated kernel), the engines and dpkt again. Prints packets
per second, ratios against dpkt in the same table, and the machine. The peer loops live
here so bench/ measures the same.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

# Fields every peer extracts per packet, so they do comparable work: addresses, ports,
# TCP flags, payload length.
TSHARK_FIELDS = ("frame.number", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport",
                 "tcp.dstport", "udp.srcport", "udp.dstport", "tcp.flags", "tcp.len")


def machine() -> dict:
    """CPU model, cores, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation()}


def count_frames(path: str) -> int:
    from demux.capture import open_capture
    with open_capture(path) as r:
        return sum(1 for _ in r)


def ours_parse(path: str, limit: int | None = None) -> int:
    """demux.wire.parse over every frame (the reference engine's parser)."""
    from demux.capture import open_capture
    from demux.wire import parse
    n = 0
    with open_capture(path) as r:
        for f in r:
            parse(f.n, f.ts, f.linktype, f.data, f.ifname, f.orig_len)
            n += 1
            if limit is not None and n >= limit:
                break
    return n


def ours_batch_parse(path: str) -> int:
    """The batch engine's numba walk and parse, no verdicts."""
    import numpy as np

    from demux.batch import _nb
    K = 1 << 13                   # the batch engine's chunk
    C = np.zeros((K, _nb.NCOL), np.int64)
    data = np.fromfile(path, np.uint8)
    ifs = np.zeros((1, 7), np.int64)
    le = data[:4].tobytes() in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    nanos = data[:4].tobytes() in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    ifs[0] = (int.from_bytes(data[20:24].tobytes(), "little" if le else "big") & 0xFFFF,
              1 if nanos else 1000, 1, 0, 262144, 1, 0)
    pos, n = 24, 0
    while True:
        pos, k, code, _ = _nb.walk(data, pos, len(data), 0, le, ifs, 1, 0, C, K, n, 0, True)
        if k:
            _nb.parse(data, C, k)
            n += k
        if code != _nb.W_FULL:
            return n


def peer_dpkt(path: str, limit: int | None = None) -> int:
    import dpkt
    n = 0
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.UniversalReader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                _s, _d = ip.src, ip.dst
                l4 = ip.data
                if isinstance(l4, dpkt.tcp.TCP):
                    _x = (l4.sport, l4.dport, l4.flags, len(l4.data))
                elif isinstance(l4, dpkt.udp.UDP):
                    _x = (l4.sport, l4.dport, len(l4.data))
            n += 1
            if limit is not None and n >= limit:
                break
    return n


def peer_scapy(path: str, limit: int = 5000) -> int:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader
    n = 0
    with PcapReader(path) as r:
        for pkt in r:
            ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
            if ip is not None:
                _s, _d = ip.src, ip.dst
                l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
                if l4 is not None:
                    _x = (l4.sport, l4.dport, len(l4.payload))
            n += 1
            if n >= limit:
                break
    return n


def peer_tshark(path: str) -> int | None:
    """Frames tshark -T fields printed, or None when tshark is not installed."""
    exe = shutil.which("tshark")
    if exe is None:
        return None
    cmd = [exe, "-n", "-r", path, "-T", "fields"]
    for fld in TSHARK_FIELDS:
        cmd += ["-e", fld]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    return p.stdout.count(b"\n")


def replay_reference(path: str, scenario) -> int:
    from demux.batch import reference_jsonl
    s, _, _ = reference_jsonl(path, scenario)
    return s.packets


def replay_batch(path: str, scenario, jsonl: bool = False, workers: int = 1) -> int:
    from demux.batch import replay_batch as rb
    if jsonl:
        with open(os.devnull, "wb") as out:
            s, _, _ = rb(path, scenario, 0, workers, out)
    else:
        s, _, _ = rb(path, scenario, 0, workers, None)
    return s.packets


def replay_split(path: str, scenario, engine: str) -> int:
    """``demux replay --summary --split DIR`` with one engine, DIR a temporary directory."""
    from demux.batch import replay_batch as rb
    from demux.render.outputs import OutputSet
    from demux.render.split import SplitSink
    from demux.render.summary import Summary
    with tempfile.TemporaryDirectory() as d, OutputSet() as outputs:
        sink = SplitSink(os.path.join(d, "split"), scenario.processes, outputs)
        if engine == "batch":
            s, _, _ = rb(path, scenario, 0, 1, None, [sink])
        else:
            from demux.capture import open_capture
            from demux.engine import Engine
            eng, s = Engine(scenario, 0), Summary(scenario)
            with open_capture(path) as reader:
                for frame in reader:
                    rec = eng.feed(frame)
                    s.add(rec)
                    sink.write(rec)
        sink.close(s)
        outputs.commit()
    return s.packets


def timed(fn, *a, **kw) -> tuple[int, float]:
    t = time.perf_counter()
    n = fn(*a, **kw)
    return n, time.perf_counter() - t


def run(args) -> int:
    from rich.console import Console

    from demux import scenario as scen
    from demux import synth
    console = Console()
    tmp = None
    if args.capture:
        from demux.engine import load_or_infer
        path = args.capture
        scenario = load_or_infer(path, None)
        what = path
    else:
        tmp = tempfile.mkdtemp(prefix="demux-bench-")
        path = os.path.join(tmp, "synth.pcap")
        t = time.perf_counter()
        synth.make(path, args.packets, seed=1)
        scenario = scen.loads(synth.SCENARIO)
        what = f"synthetic ({time.perf_counter() - t:.1f} s to generate)"
    try:
        total = count_frames(path)
        # Compile the numba code outside the timings (cached on disk after the first run).
        replay_batch(path, scenario, jsonl=True) if total < 5000 else _warm(scenario)
        two = (os.cpu_count() or 1) > 1
        rows = []

        def add(name, fn, *a, **kw):
            n, dt = min((timed(fn, *a, **kw) for _ in range(max(1, args.repeat))), key=lambda r: r[1])
            if n is None:
                rows.append((name, None, None))
            else:
                rows.append((name, n, n / dt if dt > 0 else float("inf")))
            console.print(f"  {name}: {n} packets" + (f", {n / dt:,.0f}/s" if n else ""), style="dim")

        add("demux replay, batch engine, --summary", replay_batch, path, scenario)
        if two:
            add("  the same, --workers 2", replay_batch, path, scenario, False, 2)
        add("  the same, --split DIR", replay_split, path, scenario, "batch")
        add("demux replay, batch engine, jsonl > /dev/null", replay_batch, path, scenario, True)
        if two:
            add("  the same, --workers 2", replay_batch, path, scenario, True, 2)
        add("demux replay, reference engine, --summary", replay_reference, path, scenario)
        add("  the same, --split DIR", replay_split, path, scenario, "reference")
        add("demux batch parse (numba walk + headers)", ours_batch_parse, path)
        add("demux.wire.parse loop", ours_parse, path)
        add("dpkt loop", peer_dpkt, path)
        add("scapy loop (first 5000 packets)", peer_scapy, path, 5000)
        add("tshark -T fields", peer_tshark, path)
        console.print(_table(rows, f"{total:,} packets: {what}"))
        if not args.capture:
            # The same engines where few packets need the emulated kernel: long flows.
            long_path = os.path.join(tmp, "long.pcap")
            synth.make(long_path, args.packets, seed=2, mean_data=2000.0)
            rows = []
            add("demux replay, batch engine, --summary", replay_batch, long_path, scenario)
            if two:
                add("  the same, --workers 2", replay_batch, long_path, scenario, False, 2)
            add("  the same, --split DIR", replay_split, long_path, scenario, "batch")
            add("demux replay, batch engine, jsonl > /dev/null", replay_batch, long_path, scenario, True)
            add("demux replay, reference engine, --summary", replay_reference, long_path, scenario)
            add("  the same, --split DIR", replay_split, long_path, scenario, "reference")
            add("dpkt loop", peer_dpkt, long_path)
            console.print(_table(rows, f"{count_frames(long_path):,} packets: synthetic, long flows"))
        m = machine()
        console.print(f"machine: {m['cpu']}, {m['cores']} cores, {m['implementation']} {m['python']}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _table(rows, title):
    from rich.table import Table
    base = next((r[2] for r in rows if r[0] == "dpkt loop"), None)
    t = Table(title=title, show_edge=False)
    for col, j in (("", "left"), ("packets", "right"), ("packets/s", "right"), ("× dpkt", "right")):
        t.add_column(col, justify=j)
    for name, n, rate in rows:
        if n is None:
            t.add_row(name, "-", "not installed", "-")
        else:
            t.add_row(name, f"{n:,}", f"{rate:,.0f}", f"{rate / base:.2f}" if base else "-")
    return t


def _warm(scenario) -> None:
    """Run the batch engine once on a tiny capture so numba compiles (or loads) first."""
    from demux import synth
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "w.pcap")
        synth.make(p, 2000, seed=2)
        replay_batch(p, scenario, jsonl=True)
        ours_batch_parse(p)


if __name__ == "__main__":      # pragma: no cover
    sys.exit(run(type("A", (), {"packets": 200_000, "capture": None, "repeat": 1})()))
