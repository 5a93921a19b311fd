"""``demux check``: apply a scenario's socket calls and report each outcome (SPEC §2)."""

from __future__ import annotations

import json
import sys

from demux import scenario as scen
from demux.kernel import Kernel


def run(args) -> int:
    sc = scen.load(args.scenario)
    k = Kernel.from_scenario(sc)
    k.apply_all()
    if args.json:
        json.dump([o.as_dict() for o in k.outcomes], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    from rich.console import Console
    from rich.table import Table
    con = Console(highlight=False, width=None if sys.stdout.isatty() else 250)
    t = Table(title=f"{sc.path}: {len(k.outcomes)} socket call(s)", show_edge=False)
    for col in ("process", "pid", "fd", "proto", "call", "local", "result", "why"):
        t.add_column(col, overflow="fold")
    for o in k.outcomes:
        style = "green" if o.result == "ok" else "red"
        t.add_row(o.process, str(o.pid), str(o.fd), o.proto, o.call, o.local,
                  f"[{style}]{o.result}[/{style}]", o.why)
    con.print(t)
    return 0
