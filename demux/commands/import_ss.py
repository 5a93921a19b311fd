"""``demux import-ss FILE [-o SCENARIO]``: a scenario from saved ``ss -tulnpe`` output (SPEC §7)."""

from __future__ import annotations

import sys

from demux.commands.infer import write_output
from demux.errors import DemuxError
from demux.importss import import_ss
from demux.scenario import dumps


def run(args) -> int:
    if args.file == "-":
        name, text = "<stdin>", sys.stdin.read()
    else:
        name = args.file
        try:
            with open(args.file, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
        except OSError as err:
            raise DemuxError(f"{args.file}: cannot read: {err.strerror or err}") from None
    sc, header = import_ss(text, name)
    write_output(dumps(sc, header), args.output, (args.file,))
    return 0
