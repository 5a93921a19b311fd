"""``demux infer CAPTURE [-o SCENARIO]``: write the scenario a capture implies (SPEC §6)."""

from __future__ import annotations

import sys

from demux.errors import DemuxError
from demux.infer import infer_frames_with_header
from demux.scenario import dumps


def write_output(text: str, output: str | None, inputs: tuple[str, ...] = ()) -> None:
    """Write scenario text to ``output``, or standard output when it is None or ``-``.
    An output that is one of ``inputs`` (``-``: standard input) is refused with one line:
    nothing the user gave is modified. The file is replaced only once it is written."""
    if not output or output == "-":
        sys.stdout.write(text)
        return
    from demux.render.outputs import OutputSet
    outputs = OutputSet()
    for path in inputs:
        if path == "-":
            outputs.protect(fd=0, what="the input being read (standard input)")
        else:
            outputs.protect(path, what="the input being read")
    with outputs:
        f = outputs.open(output, "-o")
        try:
            f.write(text.encode("utf-8"))
        except OSError as err:
            raise DemuxError(f"{output}: cannot write: {err.strerror or err}") from None
        outputs.commit()


def run(args) -> int:
    from demux.capture import open_capture
    with open_capture(args.capture) as reader:
        sc, header = infer_frames_with_header(reader, reader.name)
        warning = reader.warning
    write_output(dumps(sc, header), args.output, (args.capture,))
    if warning:
        # As replay does (SPEC §3): what came before the damage is used, and said so.
        print(f"demux infer: warning: {warning}", file=sys.stderr)
        return 1
    return 0
