"""``demux ss``: the emulated socket table as iproute2's ss prints it (SPEC §5).

With ``--capture`` the table is the one the packets leave behind; with ``--at T`` the
one at T seconds after the first packet, the kernel's timers included (a TIME-WAIT or
SYN-RECV entry whose timer fired by then is gone, as it would be from real ``ss``).
"""

from __future__ import annotations

import sys

from demux.errors import DemuxError
from demux.kernel import Kernel
from demux.render.ss import render


def run(args) -> int:
    if args.at is not None and not args.capture:
        raise DemuxError("--at needs --capture")
    warning = None
    if args.capture:
        from demux.capture import open_capture
        from demux.engine import Engine, load_or_infer
        notes: list[str] = []
        scenario = load_or_infer(args.capture, args.scenario, notes)
        for line in notes:
            print(f"demux ss: note: {line}", file=sys.stderr)
        eng = Engine(scenario, args.seed)
        with open_capture(args.capture) as reader:
            for frame in reader:
                if args.at is not None and eng.t0 is not None and frame.ts - eng.t0 > args.at:
                    break
                eng.feed(frame)
            else:
                # The table is the one after the packets before the damage (as replay
                # reports them); exit status 1 as replay's.
                warning = reader.warning
        if args.at is not None and eng.t0 is not None:
            eng.kernel.advance(args.at)
            # The timers too: the engine runs them only when a packet comes, and none
            # came between the last one fed and T. Kernel.expire takes the capture's
            # clock (packet timestamps), where T is t0 + at.
            eng.kernel.expire(eng.t0 + args.at)
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
    sys.stdout.write(render(kernel, args.tcp, args.udp, args.states == "listening", args.states == "all",
                            args.numeric,
                            args.processes, args.extended))
    if warning:
        print(f"demux ss: warning: {warning}", file=sys.stderr)
        return 1
    return 0
