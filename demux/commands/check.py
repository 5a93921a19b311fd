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
    if args.connect_capacity:
        return _capacity(k, args)
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


def _capacity(k: Kernel, args) -> int:
    """``--connect-capacity ADDR:PORT``: the NAT what-if, after the scenario's own calls."""
    from demux.errors import DemuxError
    from demux.kernel.sock import pack
    try:
        ep = scen.parse_endpoint(args.connect_capacity)
        cap = k.connect_capacity(pack(ep.addr), ep.port, args.time_wait)
    except ValueError as err:
        raise DemuxError(f"--connect-capacity {args.connect_capacity}: {err}") from None
    if args.json:
        json.dump(cap, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"from {cap['source']} towards {cap['destination']}: {cap['free']} more concurrent "
          f"connections before connect() fails with EADDRNOTAVAIL")
    print(f"  ip_local_port_range {cap['port_range']}: {cap['ports_walked']} ports walked, "
          f"{cap['reserved']} reserved, {cap['held_by_bind']} held by bind(), "
          f"{cap['established']} already connected there")
    if args.time_wait:
        print(f"  {cap['time_wait']} of {args.time_wait} recently closed connections hold their 4-tuple in "
              f"TIME-WAIT for 60 s (net.ipv4.tcp_tw_reuse)")
    if cap["per_second_sustained"]:
        print(f"  sustained: at most {cap['per_second_sustained']} new connections per second to one "
              "destination while each closed one waits 60 s in TIME-WAIT")
    return 0
