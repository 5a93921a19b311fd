"""``demux explain CAPTURE -n N [-s SCENARIO] [--json] [--seed S]`` (SPEC §4).

Finds frame N, parses it, and prints what ``demux.explain`` makes of it, followed by the
engine's step-by-step lookup and verdict (``demux.engine.explain_lookup``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from demux.errors import DemuxError


def run(args) -> int:
    from demux import explain, services
    from demux.capture import open_capture
    from demux.wire import parse

    path, n, tmp = args.capture, args.n, None
    try:
        if path == "-":
            # The lookup replays the capture a second time, so keep standard input.
            if sys.stdin.isatty():
                raise DemuxError("<stdin>: standard input is a terminal; pipe a capture into it")
            fd, tmp = tempfile.mkstemp(prefix="demux-explain-", suffix=".cap")
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(sys.stdin.buffer, out)
            path = tmp
        name = "<stdin>" if tmp else args.capture
        if n < 1:
            raise DemuxError(f"{name}: no packet {n}: packets are numbered from 1")
        frame, count = None, 0
        with open_capture(path) as reader:
            for fr in reader:
                count = fr.n
                if fr.n == n:
                    frame = fr
                    break
            damage = reader.warning
        if frame is None:
            raise DemuxError(f"{name}: no packet {n}: the capture holds {count} packet"
                             f"{'' if count == 1 else 's'}" + (f" before its damage ({damage})" if damage else ""))
        packet = parse(frame.n, frame.ts, frame.linktype, frame.data, frame.ifname, frame.orig_len)
        port_range = services.EPHEMERAL_DEFAULT
        if args.scenario:
            from demux import scenario
            port_range = scenario.load(args.scenario).port_range()
        doc = explain.describe(packet, port_range)

        lookup, verdict = [], None
        from demux import engine
        if hasattr(engine, "explain_lookup"):
            try:
                lookup, verdict = engine.explain_lookup(path, n, args.scenario, args.seed)
            except ImportError:
                # A part the engine leans on (e.g. inferring a host) is not there yet:
                # the fields are still worth teaching.
                lookup, verdict = [], None

        if args.json:
            out = {"layers": doc["layers"], "ports": doc["ports"], "lookup": list(lookup),
                   "verdict": verdict}
            sys.stdout.write(json.dumps(out, indent=2) + "\n")
        else:
            from rich.console import Console
            Console(soft_wrap=False).print(explain.render_text(doc, lookup, verdict, packet))
        return 0
    finally:
        if tmp:
            os.unlink(tmp)
