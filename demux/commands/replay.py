"""``demux replay``: the verdict of every packet of a capture (SPEC §3)."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from demux.capture import open_capture
from demux.engine import Engine, load_or_infer
from demux.errors import DemuxError
from demux.render.outputs import OutputSet, silence_stdout
from demux.render.summary import Summary


def _spool_stdin() -> str:
    # Inferring a host needs two passes over the capture; stdin can be read only once.
    fd, path = tempfile.mkstemp(prefix="demux-", suffix=".pcap")
    with os.fdopen(fd, "wb") as f:
        while chunk := sys.stdin.buffer.read(1 << 20):
            f.write(chunk)
    return path


def run(args) -> int:
    capture = args.capture
    outputs = OutputSet()
    # Outputs must not overwrite what the user gave: the capture (by any path, or the
    # file standard input is redirected from) and the scenario.
    if capture == "-":
        outputs.protect(fd=0, what="the capture being read (standard input)")
    else:
        outputs.protect(capture, what="the capture being read")
    if args.scenario:
        outputs.protect(args.scenario, what="the scenario")
    # Refused before the scenario is inferred or anything read; SplitSink checks the rest.
    if args.annotate == "-":
        # The records (or the summary) go to standard output: a pcapng there would be
        # interleaved with them.
        raise DemuxError("--annotate -: standard output carries the records; name a file for the pcapng")
    if args.annotate:
        outputs.reserve(args.annotate, "--annotate")
    if args.split:
        outputs.reserve(os.path.join(args.split, "rejected.pcap"), "--split")
    spooled = None
    if capture == "-" and not args.scenario:
        capture = spooled = _spool_stdin()
    try:
        with outputs:
            return _run(args, capture, outputs)
    finally:
        if spooled:
            os.unlink(spooled)


def _progress(reader, capture):
    """A progress bar on stderr for long replays, only on a terminal."""
    if capture == "-" or not sys.stderr.isatty():
        return None
    try:
        size = os.path.getsize(capture)
    except OSError:
        return None
    if size < 20 << 20:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn
    from rich.console import Console
    prog = Progress(TextColumn("replay"), BarColumn(), TransferSpeedColumn(),
                    console=Console(file=sys.stderr), transient=True)
    task = prog.add_task("replay", total=size)
    return prog, task


def _run(args, capture, outputs) -> int:
    notes: list[str] = []
    scenario = load_or_infer(capture, args.scenario, notes)
    _note(notes)
    engine = args.engine
    if engine != "reference":
        from demux import batch
        if engine == "auto":
            # --workers asks for the batch engine whatever the size of the capture.
            engine = "batch" if batch.usable(args, auto=args.workers == 1) else "reference"
        if engine == "batch":
            return _run_batch(args, capture, scenario, batch, outputs)
    if args.workers != 1:
        raise DemuxError("--workers needs the batch engine: a capture file with --format jsonl or --summary")
    # The capture is opened (and its header checked) before any output: an unreadable
    # capture is one line on stderr, not a table header and then the line.
    with open_capture(capture) as reader:
        # Output files first: one that cannot be written is refused before stdout gets a line.
        files = _file_sinks(args, scenario, outputs)
        shown = None
        if not args.summary:
            from demux.render import records
            shown = {"jsonl": records.JsonlSink, "csv": records.CsvSink,
                     "table": records.TableSink}[args.format]()
        summary = Summary(scenario)
        add = summary.add
        writes = ([shown.write] if shown is not None else []) + [s.write for s in files]
        eng = Engine(scenario, args.seed)
        feed = eng.feed
        frames = iter(reader)
        bar = None if args.no_progress else _progress(reader, capture)
        if bar is not None:
            bar[0].start()
        try:
            while True:
                try:
                    for frame in frames:
                        rec = feed(frame)
                        add(rec)
                        for w in writes:
                            w(rec)
                        if bar is not None and frame.n % 4096 == 0:
                            bar[0].update(bar[1], completed=frame.offset)
                    break
                except BrokenPipeError:
                    # The reader of stdout went away (`| head`, `| less` quit). The files
                    # asked for still get the whole capture; without any, stop as Unix
                    # tools do. Only the stdout sink (first in `writes`) can raise this,
                    # so the record it failed on has not reached the files yet.
                    if shown is None or not files:
                        raise
                    silence_stdout()
                    shown = None
                    writes = writes[1:]
                    for w in writes:
                        w(rec)
        finally:
            if bar is not None:
                bar[0].stop()
        for s in files:
            s.close(summary)
        # The replay is complete (up to any damage, which the warning reports): the
        # split and annotated captures replace their destinations only now.
        outputs.commit()
        if shown is not None:
            shown.close(summary)
        _note(eng.finish())
        if args.summary:
            sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
        sys.stdout.flush()
        if reader.warning:
            print(f"demux replay: warning: {reader.warning}", file=sys.stderr)
            return 1
    return 0


def _note(lines) -> None:
    for line in lines:
        print(f"demux replay: note: {line}", file=sys.stderr)


def _file_sinks(args, scenario, outputs) -> list:
    """The --split and --annotate sinks asked for (demux.render.split)."""
    files = []
    if args.split:
        from demux.render.split import SplitSink
        files.append(SplitSink(args.split, scenario.processes, outputs))
    if args.annotate:
        from demux.render.split import AnnotateSink
        files.append(AnnotateSink(args.annotate, outputs))
    return files


class _KeepGoing:
    """Standard output for the batch engine's jsonl when files are written too: a reader
    that goes away (`| head`) silences it, and the files still get the whole capture, as
    in the reference loop."""

    def __init__(self, raw):
        self.raw, self.gone = raw, False

    def write(self, b):
        if not self.gone:
            try:
                return self.raw.write(b)
            except BrokenPipeError:
                silence_stdout()
                self.gone = True
        return len(b)

    def flush(self) -> None:
        if not self.gone:
            self.raw.flush()


def _run_batch(args, capture, scenario, batch, outputs) -> int:
    """The batch engine: the same records and files as the reference engine, faster on
    big files."""
    if not batch.usable(args):
        raise DemuxError("--engine batch replays a capture file with --format jsonl or --summary "
                         "(not standard input, table or csv)")
    files = _file_sinks(args, scenario, outputs)
    sys.stdout.flush()
    out = None if args.summary else (_KeepGoing(sys.stdout.buffer) if files else sys.stdout.buffer)
    summary, warning, notes = batch.replay_batch(capture, scenario, args.seed, args.workers, out, files)
    for s in files:
        s.close(summary)
    outputs.commit()
    _note(notes)
    if args.summary:
        sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
    sys.stdout.flush()
    if warning:
        print(f"demux replay: warning: {warning}", file=sys.stderr)
        return 1
    return 0
