"""The ``demux`` command line: argument parsing and error handling only.

Each subcommand lives in ``demux.commands.<name>`` with a ``run(args) -> int`` and is
imported only when used, so ``demux --help`` starts fast and never loads scapy or numba.
Bad input ends as one line on stderr and a non-zero status, never a traceback; so
does a bad command line (status 2, without argparse's usage dump).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from demux.errors import DemuxError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``demux replay: error: ...``) and status 2,
    like every other bad input; ``-h`` still prints the full help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _count(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v
    parse.__name__ = "count"
    return parse


_positive, _natural = _count(1), _count(0)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return v


def _parser() -> argparse.ArgumentParser:
    # Subcommand parsers are made by add_subparsers with the parent's class: _Parser too.
    p = _Parser(
        prog="demux",
        description="Which process would have received this packet, and why: "
                    "Linux port demultiplexing, emulated.")
    from demux import __version__
    p.add_argument("--version", action="version", version=f"demux {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="apply a scenario's socket calls and report each outcome")
    c.add_argument("scenario")
    c.add_argument("--json", action="store_true", help="one JSON array, an object per call")
    c.add_argument("--connect-capacity", metavar="ADDR:PORT",
                   help="what-if: how many more connections the host can open to ADDR:PORT")
    c.add_argument("--time-wait", type=_natural, default=0, metavar="N",
                   help="with --connect-capacity: N connections to it closed in the last 60 s")

    r = sub.add_parser("replay", help="the verdict of every packet of a capture")
    r.add_argument("capture", help="pcap or pcapng file, or - for standard input")
    r.add_argument("-s", "--scenario", help="the host's scenario (default: inferred from the capture)")
    r.add_argument("--format", choices=("table", "jsonl", "csv"), default="table")
    r.add_argument("--summary", action="store_true", help="print only the summary")
    r.add_argument("--split", metavar="DIR", help="write DIR/NAME-PID.pcap per process and rejected.pcap")
    r.add_argument("--annotate", metavar="OUT", help="write the capture as pcapng with a verdict comment per packet")
    r.add_argument("--engine", choices=("auto", "reference", "batch"), default="auto")
    r.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="threads for the batch engine: the kernel decides on one, reading/parsing "
                        "and jsonl formatting run beside it")
    r.add_argument("--seed", type=int, default=0, help="seed of the SO_REUSEPORT flow hash")
    r.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    e = sub.add_parser("explain", help="teach one packet: every field, then the lookup")
    e.add_argument("capture")
    e.add_argument("-n", type=int, required=True, help="packet number, 1-based")
    e.add_argument("-s", "--scenario")
    e.add_argument("--json", action="store_true")
    e.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("ss", help="the emulated socket table, as iproute2's ss prints it")
    s.add_argument("-s", "--scenario")
    s.add_argument("-t", "--tcp", action="store_true")
    s.add_argument("-u", "--udp", action="store_true")
    # One state filter, the last of -l and -a given wins (iproute2's ss sets one
    # filter per flag, each replacing the last: `-tlan` shows all, `-taln` listeners).
    s.add_argument("-l", "--listening", dest="states", action="store_const", const="listening")
    s.add_argument("-a", "--all", dest="states", action="store_const", const="all")
    s.add_argument("-n", "--numeric", action="store_true")
    s.add_argument("-p", "--processes", action="store_true")
    s.add_argument("-e", "--extended", action="store_true")
    s.add_argument("--capture", help="replay this capture first")
    s.add_argument("--at", type=_seconds, help="seconds from the first packet (with --capture)")
    s.add_argument("--seed", type=int, default=0)

    i = sub.add_parser("infer", help="write the scenario a capture implies")
    i.add_argument("capture")
    i.add_argument("-o", "--output", help="scenario file to write (default: standard output)")

    sn = sub.add_parser("snapshot", help="write the scenario of this machine, from /proc")
    sn.add_argument("-o", "--output")

    im = sub.add_parser("import-ss", help="write a scenario from saved `ss -tulnpe` output")
    im.add_argument("file", help="saved ss output, or - for standard input")
    im.add_argument("-o", "--output")

    lv = sub.add_parser("live", help="dispatch a TUN interface's traffic to handler processes")
    lv.add_argument("--tun", required=True, metavar="NAME")
    lv.add_argument("-s", "--scenario", required=True)
    lv.add_argument("--address", metavar="CIDR", action="append",
                    help="the kernel's own end of the TUN, e.g. 10.66.0.1/24 (repeatable)")
    lv.add_argument("--handlers", metavar="MODULE", help="module with one function per process name")
    lv.add_argument("--queue", type=_positive, default=256, help="segments queued per handler before drops")
    lv.add_argument("--duration", type=float, help="stop after this many seconds")

    b = sub.add_parser("bench", help="parse and dispatch speed beside scapy, dpkt and tshark")
    b.add_argument("--packets", type=_positive, default=200_000)
    b.add_argument("--capture", help="use this capture instead of a generated one")
    b.add_argument("--repeat", type=_positive, default=1, metavar="N",
                   help="time every row N times and keep the fastest (shared machines vary)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    module = importlib.import_module(f"demux.commands.{args.command.replace('-', '_')}")
    try:
        return module.run(args)
    except DemuxError as err:
        print(f"demux {args.command}: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        from demux.render.outputs import silence_stdout
        silence_stdout()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
