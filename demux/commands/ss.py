"""``demux ss``: the emulated socket table as iproute2's ss prints it (SPEC §5)."""

from __future__ import annotations

import sys

from demux.errors import DemuxError
from demux.kernel import Kernel
from demux.render.ss import render


def run(args) -> int:
    if args.at is not None and not args.capture:
        raise DemuxError("--at needs --capture")
    if args.capture:
        from demux.capture import open_capture
        from demux.engine import Engine, load_or_infer
        scenario = load_or_infer(args.capture, args.scenario)
        eng = Engine(scenario, args.seed)
        with open_capture(args.capture) as reader:
            for frame in reader:
                if args.at is not None and eng.t0 is not None and frame.ts - eng.t0 > args.at:
                    break
                eng.feed(frame)
        if args.at is not None and eng.t0 is not None:
            eng.kernel.advance(args.at)
        kernel = eng.kernel
    else:
        if args.scenario:
            from demux import scenario as scen
            sc = scen.load(args.scenario)
        else:
            # No scenario: this machine's own table, as `demux snapshot` reads it.
            from demux.snapshot import snapshot
            sc, _ = snapshot()
        kernel = Kernel.from_scenario(sc, args.seed)
        kernel.apply_all()
    sys.stdout.write(render(kernel, args.tcp, args.udp, args.listening, args.all, args.numeric,
                            args.processes, args.extended))
    return 0
