"""``demux replay``: the verdict of every packet of a capture (SPEC §3)."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from demux.capture import open_capture
from demux.engine import Engine, load_or_infer
from demux.errors import DemuxError
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
    spooled = None
    if capture == "-" and not args.scenario:
        capture = spooled = _spool_stdin()
    try:
        return _run(args, capture)
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


def _run(args, capture) -> int:
    scenario = load_or_infer(capture, args.scenario)
    engine = args.engine
    if engine != "reference":
        from demux import batch
        if engine == "auto":
            # --workers asks for the batch engine whatever the size of the capture.
            engine = "batch" if batch.usable(args, auto=args.workers == 1) else "reference"
        if engine == "batch":
            return _run_batch(args, capture, scenario, batch)
    if args.workers != 1:
        raise DemuxError("--workers needs the batch engine: a capture file with --format jsonl or --summary")
    sinks = []
    if not args.summary:
        from demux.render import records
        sinks.append({"jsonl": records.JsonlSink, "csv": records.CsvSink,
                      "table": records.TableSink}[args.format]())
    if args.split:
        from demux.render.split import SplitSink
        sinks.append(SplitSink(args.split))
    if args.annotate:
        from demux.render.split import AnnotateSink
        sinks.append(AnnotateSink(args.annotate))
    summary = Summary(scenario)
    add = summary.add
    writes = [s.write for s in sinks]
    with open_capture(capture) as reader:
        eng = Engine(scenario, args.seed)
        feed = eng.feed
        bar = None if args.no_progress else _progress(reader, capture)
        if bar is not None:
            bar[0].start()
        try:
            for frame in reader:
                rec = feed(frame)
                add(rec)
                for w in writes:
                    w(rec)
                if bar is not None and frame.n % 4096 == 0:
                    bar[0].update(bar[1], completed=frame.offset)
        finally:
            if bar is not None:
                bar[0].stop()
        for s in sinks:
            s.close(summary)
        for line in eng.finish():
            print(f"demux replay: note: {line}", file=sys.stderr)
        if args.summary or args.format != "table":
            if args.summary:
                sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
        sys.stdout.flush()
        if reader.warning:
            print(f"demux replay: warning: {reader.warning}", file=sys.stderr)
            return 1
    return 0


def _run_batch(args, capture, scenario, batch) -> int:
    """The batch engine: the same records as the reference engine, faster on big files."""
    if not batch.usable(args):
        raise DemuxError("--engine batch replays a capture file with --format jsonl or --summary "
                         "(not standard input, --split, --annotate, table or csv)")
    sys.stdout.flush()
    out = None if args.summary else sys.stdout.buffer
    summary, warning = batch.replay_batch(capture, scenario, args.seed, args.workers, out)
    if args.summary:
        sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
    sys.stdout.flush()
    if warning:
        print(f"demux replay: warning: {warning}", file=sys.stderr)
        return 1
    return 0
