"""``demux live --tun NAME -s SCENARIO [--address CIDR] [--handlers MODULE]`` (SPEC §8).

Wires the edges together: the scenario's kernel, the TUN device, the handler
processes and the dispatcher loop; prints the summary when Ctrl-C (or SIGTERM, or
``--duration``) ends it.
"""

from __future__ import annotations

import sys

from demux import scenario as scen
from demux.errors import DemuxError


def run(args) -> int:
    from demux.kernel import Kernel
    from demux.live.dispatcher import Dispatcher
    from demux.live.handlers import load_handlers
    from demux.live.tun import Tun

    if args.queue < 1:
        raise DemuxError(f"--queue {args.queue}: must be at least 1")
    if args.duration is not None and args.duration <= 0:
        raise DemuxError(f"--duration {args.duration}: must be positive")
    sc = scen.load(args.scenario)
    if not sc.host.addresses:
        raise DemuxError(f"{args.scenario}: host.addresses is empty: nothing to route into the TUN")
    kernel = Kernel.from_scenario(sc)
    for o in kernel.outcomes:
        if o.result != "ok":
            print(f"demux live: {o.process} (pid {o.pid}) {o.call} {o.local}: {o.result} ({o.why}); "
                  "that socket does not exist", file=sys.stderr)
    handlers = load_handlers(args.handlers, [p.name for p in kernel.procs])
    tun = Tun(args.tun, args.address, list(sc.host.addresses))
    d = Dispatcher(kernel, tun, handlers, args.queue)
    try:
        d.install_signals()
        d.start()
        print(f"demux live: {tun.name} up{' (created)' if tun.created else ''}, "
              f"host {', '.join(sc.host.addresses)} behind it; {len(d.workers)} handler processes; "
              "Ctrl-C ends", file=sys.stderr, flush=True)
        for w in d.workers:
            print(f"  {w.proc.name} pid {w.proc.pid} (uid {w.proc.uid}): os pid {w.os_proc.pid}",
                  file=sys.stderr, flush=True)
        d.run(args.duration)
    finally:
        d.shutdown()
        summary = d.summary()        # before close: it reads the device's drop counter
        tun.close()
    print(summary, flush=True)
    return 0
