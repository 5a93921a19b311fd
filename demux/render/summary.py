"""The replay summary (SPEC §3): verdict counts and per-process packets and bytes."""

from __future__ import annotations

VERDICTS = ("deliver", "reject", "drop", "outbound", "ignored", "malformed")


class Summary:
    """Counts every record once; ``processes`` counts each receiving process's copies."""

    def __init__(self, scenario=None):
        self.counts = dict.fromkeys(VERDICTS, 0)
        self.packets = 0
        self.per_proc: dict[tuple[str, int], list[int]] = {}
        names: dict[str, int] = {}
        for p in (scenario.processes if scenario is not None else ()):
            names[p.name] = names.get(p.name, 0) + 1
        self._dup = {n for n, c in names.items() if c > 1}

    def key(self, proc) -> str:
        """The process's name, or NAME-PID where several processes share a name."""
        return f"{proc.name}-{proc.pid}" if proc.name in self._dup else proc.name

    def add(self, rec) -> None:
        v = rec.v
        self.packets += 1
        self.counts[v.verdict] += 1
        if v.verdict == "deliver":
            size = rec.packet.payload_len
            targets = v.copies if v.copies else ((v.proc, v.fd),)
            for proc, _fd in targets:
                if proc is None:
                    continue
                entry = self.per_proc.get((proc.name, proc.pid))
                if entry is None:
                    entry = self.per_proc[(proc.name, proc.pid)] = [0, 0, proc]
                entry[0] += 1
                entry[1] += size

    def as_dict(self) -> dict:
        d = {"packets": self.packets, **self.counts}
        d["processes"] = {self.key(proc): {"pid": pid, "packets": n, "bytes": b}
                          for (name, pid), (n, b, proc) in self.per_proc.items()}
        return d
