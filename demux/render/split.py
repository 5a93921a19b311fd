"""``--split DIR`` and ``--annotate OUT``: the capture's frames written back out by verdict."""

from __future__ import annotations

import os

from demux.capture import linktype_name
from demux.errors import DemuxError
from demux.pcapout import PcapngWriter, PcapWriter


class SplitSink:
    """DIR/NAME-PID.pcap per receiving process and DIR/rejected.pcap, each a plain pcap.

    A pcap holds one link type: a frame of another link type than its file's first
    goes to a sibling file named after that link type, so nothing is lost."""

    def __init__(self, directory: str):
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            raise DemuxError(f"{directory}: cannot create: {err.strerror}") from None
        self.dir = directory
        self.writers: dict[tuple[str, int], PcapWriter] = {}
        self._first_lt: dict[str, int] = {}
        self._open("rejected", None)

    def _open(self, stem: str, linktype: int | None) -> PcapWriter | None:
        if linktype is None:
            return None
        first = self._first_lt.setdefault(stem, linktype)
        name = stem if linktype == first else f"{stem}.{linktype_name(linktype).split(' ')[0]}"
        w = self.writers.get((name, linktype))
        if w is None:
            w = self.writers[(name, linktype)] = PcapWriter(os.path.join(self.dir, name + ".pcap"), linktype)
        return w

    def write(self, rec) -> None:
        f = rec.frame
        if f is None:
            return
        v = rec.v
        if v.verdict == "deliver":
            targets = v.copies if v.copies else ((v.proc, v.fd),)
            for proc, _ in targets:
                if proc is not None:
                    self._open(f"{proc.name}-{proc.pid}", f.linktype).write(f.ts_ns, f.data, f.orig_len)
        elif v.verdict == "reject":
            self._open("rejected", f.linktype).write(f.ts_ns, f.data, f.orig_len)

    def close(self, summary=None) -> None:
        if not any(stem == "rejected" for stem, _ in self.writers):
            # An empty rejected.pcap still says "nothing was rejected" to the reader.
            PcapWriter(os.path.join(self.dir, "rejected.pcap"), 1).close()
        for w in self.writers.values():
            w.close()


def annotation(rec) -> str:
    """``demux: deliver nginx pid=1201 fd=3 via listener 0.0.0.0:80``."""
    v = rec.v
    text = f"demux: {v.verdict}"
    if v.proc is not None:
        text += f" {v.proc.name} pid={v.proc.pid}" + (f" fd={v.fd}" if v.fd is not None else "")
    if v.state:
        text += f" state={v.state}"
    if v.reply:
        text += f" reply={v.reply}"
    return text + f" ({v.reason})"


class AnnotateSink:
    def __init__(self, path: str):
        try:
            self.w = PcapngWriter(path)
        except OSError as err:
            raise DemuxError(f"{path}: cannot write: {err.strerror}") from None

    def write(self, rec) -> None:
        if rec.frame is not None:
            v = rec.v
            self.w.write_frame(rec.frame, comment=annotation(rec),
                               pid=v.proc.pid if v.proc is not None else None,
                               direction=rec.direction if rec.direction in ("in", "out") else None)

    def close(self, summary=None) -> None:
        self.w.close()
