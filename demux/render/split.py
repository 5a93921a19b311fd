"""``--split DIR`` and ``--annotate OUT``: the capture's frames written back out by verdict.

``--split`` writes DIR/NAME-PID.pcap for every process of the scenario, whether or not
anything reached it (an empty file says nothing did), and DIR/rejected.pcap. A process
name is only the stem of a file name, never a path: each '/' and NUL becomes '_', a
leading '.' becomes '_' (no hidden files, no '.' or '..'), an empty name is '_', and a
name is cut to 200 bytes of UTF-8 so NAME-PID.pcap stays within the 255 bytes a Linux
file name may have. So every file lands directly inside DIR. Two processes whose stems
come out the same (same pid, names that differ only there) share the file.

Every output goes through ``demux.render.outputs.OutputSet``: written beside its
destination and renamed into place when the replay ends, never over an input.
A frame a pcap cannot hold (a pcapng timestamp before 1970 or after 2106) ends the run
with one line naming the file, and nothing is written; ``--annotate``'s pcapng holds
every timestamp a capture can.
"""

from __future__ import annotations

import os

from demux.capture import linktype_name
from demux.errors import DemuxError
from demux.pcapout import PcapngWriter, PcapWriter

# Bytes of the name kept: with "-PID.pcap" (at most 16 more) and a sibling's link type
# suffix the file name stays well under NAME_MAX (255).
_NAME_BYTES = 200


def file_stem(name: str, pid: int) -> str:
    """``NAME-PID`` made safe as one file name inside DIR (rules in the module docstring)."""
    # Cut first (a multi-byte character cut in two is dropped), then make it safe.
    safe = name.encode("utf-8", "replace")[:_NAME_BYTES].decode("utf-8", "ignore")
    safe = safe.replace("/", "_").replace("\0", "_")
    if safe.startswith("."):
        safe = "_" + safe[1:]
    return f"{safe or '_'}-{pid}"


class SplitSink:
    """DIR/NAME-PID.pcap per process of the scenario and DIR/rejected.pcap, each a plain pcap.

    A pcap holds one link type: a frame of another link type than its file's first
    goes to a sibling file named after that link type, so nothing is lost. A file that
    gets no frame is written empty, with the capture's first link type."""

    whole_verdicts = False      # only the verdict's name and process decide a frame's file

    def __init__(self, directory: str, processes, outputs):
        outputs.makedirs(directory)
        self.dir = directory
        self.outputs = outputs
        self.writers: dict[tuple[str, int], PcapWriter] = {}
        self._first_lt: dict[str, int] = {}
        self._linktype: int | None = None      # the capture's first, for empty files
        self._stems: dict[tuple[str, int], str] = {}
        self._all = ["rejected"]
        for p in processes:
            stem = self._stems[(p.name, p.pid)] = file_stem(p.name, p.pid)
            if stem not in self._all:
                self._all.append(stem)
        # Every file is checked now, before any packet: an output that is an input
        # (DIR/rejected.pcap being the capture) is refused before work is done.
        for stem in self._all:
            outputs.reserve(self._path(stem), "--split")

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name + ".pcap")

    def file(self, stem: str, linktype: int) -> PcapWriter:
        """The file of ``stem`` for frames of ``linktype``."""
        return self._open(stem, linktype)

    def _open(self, stem: str, linktype: int) -> PcapWriter:
        first = self._first_lt.setdefault(stem, linktype)
        name = stem if linktype == first else f"{stem}.{linktype_name(linktype).split(' ')[0]}"
        w = self.writers.get((name, linktype))
        if w is None:
            path = self._path(name)
            w = self.writers[(name, linktype)] = PcapWriter(self.outputs.open(path, "--split"), linktype)
            w.path = path
        return w

    def _stem(self, proc) -> str:
        stem = self._stems.get((proc.name, proc.pid))
        if stem is None:
            # A process the scenario did not name (none should reach here): still safe.
            stem = self._stems[(proc.name, proc.pid)] = file_stem(proc.name, proc.pid)
        return stem

    def targets(self, v) -> list[str]:
        """The stems of the files a frame with verdict ``v`` goes to, in order."""
        if v.verdict == "deliver":
            return [self._stem(proc) for proc, _ in (v.copies if v.copies else ((v.proc, v.fd),))
                    if proc is not None]
        return ["rejected"] if v.verdict == "reject" else []

    def saw(self, linktype: int) -> None:
        """A frame of ``linktype`` came (the first one's is the empty files' link type)."""
        if self._linktype is None:
            self._linktype = linktype

    def write(self, rec) -> None:
        f = rec.frame
        if f is None:
            return
        self.saw(f.linktype)
        for stem in self.targets(rec.v):
            self.put(self._open(stem, f.linktype), f)

    @staticmethod
    def put(w: PcapWriter, f) -> None:
        try:
            w.write(f.ts_ns, f.data, f.orig_len)
        except ValueError as err:
            raise DemuxError(f"{w.path}: cannot write packet {f.n}: {err}") from None

    def close(self, summary=None) -> None:
        # Files that got nothing are written empty: "nothing reached this process".
        for stem in self._all:
            if stem not in self._first_lt:
                self._open(stem, self._linktype if self._linktype is not None else 1)
        for w in self.writers.values():
            w.close()


def annotation(rec) -> str:
    """``demux: deliver nginx pid=1201 fd=3 via listener 0.0.0.0:80``."""
    return verdict_note(rec.v)


def verdict_note(v) -> str:
    """The ``demux:`` comment of a frame with verdict ``v``."""
    text = f"demux: {v.verdict}"
    if v.proc is not None:
        text += f" {v.proc.name} pid={v.proc.pid}" + (f" fd={v.fd}" if v.fd is not None else "")
    if v.state:
        text += f" state={v.state}"
    if v.reply:
        text += f" reply={v.reply}"
    return text + f" ({v.reason})"


class AnnotateSink:
    """OUT: the whole capture as pcapng, a ``demux:`` comment on every packet."""

    whole_verdicts = True       # the comment shows every field of the verdict

    def __init__(self, path: str, outputs):
        self.path = path
        self.w = PcapngWriter(outputs.open(path, "--annotate"))

    @staticmethod
    def _about(v, direction) -> dict:
        """What a frame's EPB says of it: the comment, the pid, the direction."""
        return {"comment": verdict_note(v), "pid": v.proc.pid if v.proc is not None else None,
                "direction": direction if direction in ("in", "out") else None}

    def options(self, v, direction) -> bytes:
        """The EPB options ``write`` gives a frame with verdict ``v`` travelling ``direction``."""
        return self.w.epb_options(**self._about(v, direction))

    def write(self, rec) -> None:
        if rec.frame is not None:
            try:
                self.w.write_frame(rec.frame, **self._about(rec.v, rec.direction))
            except ValueError as err:
                raise DemuxError(f"{self.path}: cannot write packet {rec.frame.n}: {err}") from None

    def close(self, summary=None) -> None:
        self.w.close()
