"""``demux infer CAPTURE [-o SCENARIO]``: write the scenario a capture implies (SPEC §6)."""

from __future__ import annotations

import sys

from demux.errors import DemuxError
from demux.infer import infer_frames_with_header
from demux.scenario import dumps


def write_output(text: str, output: str | None) -> None:
    """Write scenario text to ``output``, or standard output when it is None or ``-``."""
    if not output or output == "-":
        sys.stdout.write(text)
        return
    try:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as err:
        raise DemuxError(f"{output}: cannot write: {err.strerror or err}") from None


def run(args) -> int:
    from demux.capture import open_capture
    with open_capture(args.capture) as reader:
        sc, header = infer_frames_with_header(reader, reader.name)
        warning = reader.warning
    write_output(dumps(sc, header), args.output)
    if warning:
        # As replay does (SPEC §3): what came before the damage is used, and said so.
        print(f"demux infer: warning: {warning}", file=sys.stderr)
        return 1
    return 0
