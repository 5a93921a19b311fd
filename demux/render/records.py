"""Per-packet output of ``demux replay``: JSON lines, CSV, and the human table."""

from __future__ import annotations

import csv
import json
import sys

from demux.engine import ts_text

FIELDS = ("n", "ts", "proto", "src", "dst", "flags", "len", "direction", "verdict", "process",
          "pid", "fd", "socket", "state", "reason", "reply")

_STYLE = {"deliver": "green", "reject": "red", "drop": "yellow", "outbound": "cyan",
          "ignored": "dim", "malformed": "magenta"}


class JsonlSink:
    def __init__(self, out=None):
        self.out = out or sys.stdout
        self._dumps = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False).encode

    def write(self, rec) -> None:
        self.out.write(rec.jsonl(self._dumps) + "\n")

    def close(self, summary) -> None:
        pass


class CsvSink:
    def __init__(self, out=None):
        self.w = csv.writer(out or sys.stdout, lineterminator="\n")
        self.w.writerow(FIELDS)

    def write(self, rec) -> None:
        d = rec.as_dict()
        d["ts"] = ts_text(rec.ts)
        self.w.writerow(["" if d[k] is None else d[k] for k in FIELDS])

    def close(self, summary) -> None:
        pass


class TableSink:
    """One line per packet (coloured on a terminal), then the summary tables."""

    def __init__(self, out=None):
        from rich.console import Console
        self.console = Console(file=out or sys.stdout, highlight=False, soft_wrap=True)
        self.color = self.console.is_terminal
        self._out = self.console.file
        self.t0 = None
        head = f"{'n':>6} {'time':>12} {'proto':5} {'source':>28}   {'destination':28} {'flags':5} " \
               f"{'len':>5} {'dir':3} {'verdict':9} {'process':24} {'state':10} reason"
        self._emit(head, "bold")

    def _emit(self, text: str, style: str | None = None) -> None:
        if self.color and style:
            from rich.text import Text
            self.console.print(Text(text, style=style))
        else:
            self._out.write(text + "\n")

    def write(self, rec) -> None:
        if self.t0 is None:
            self.t0 = rec.ts
        d = rec.as_dict()
        who = (f"{d['process']}[{d['pid']}]" + (f" fd {d['fd']}" if d["fd"] is not None else "")
               if d["process"] else "")
        if d["reply"]:
            who = f"reply: {d['reply']}"
        line = (f"{d['n']:>6} {rec.ts - self.t0:>12.6f} "
                f"{d['proto']:5} {d['src'] or '':>28} > {d['dst'] or '':28} {d['flags'] or '':5} "
                f"{d['len']:>5} {d['direction'] or '':3} {d['verdict']:9} {who:24} {d['state'] or '':10} "
                f"{d['reason']}")
        self._emit(line, _STYLE.get(d["verdict"]))

    def close(self, summary) -> None:
        print_summary(self.console, summary)


def print_summary(console, summary) -> None:
    from rich.table import Table
    d = summary.as_dict()
    t = Table(title=f"{d['packets']} packets", show_edge=False)
    for k in ("deliver", "reject", "drop", "outbound", "ignored", "malformed"):
        t.add_column(k, justify="right")
    t.add_row(*(str(d[k]) for k in ("deliver", "reject", "drop", "outbound", "ignored", "malformed")))
    console.print()
    console.print(t)
    if d["processes"]:
        p = Table(title="delivered per process", show_edge=False)
        p.add_column("process")
        p.add_column("pid", justify="right")
        p.add_column("packets", justify="right")
        p.add_column("bytes", justify="right")
        for name, e in sorted(d["processes"].items(), key=lambda kv: -kv[1]["packets"]):
            p.add_row(name, str(e["pid"]), str(e["packets"]), str(e["bytes"]))
        console.print(p)
