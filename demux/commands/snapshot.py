"""``demux snapshot [-o SCENARIO]``: the scenario of this machine's sockets (SPEC §7)."""

from __future__ import annotations

from demux.commands.infer import write_output
from demux.scenario import dumps
from demux.snapshot import snapshot


def run(args) -> int:
    sc, header = snapshot()
    write_output(dumps(sc, header), args.output)
    return 0
