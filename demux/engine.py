"""The reference engine: frames in, one verdict per packet out, in capture order.

    frame -> wire.parse -> (fragment reassembly) -> direction -> kernel.input/output -> Record

This is the semantics of demux; a faster engine must give the same record for every
packet. Nothing here knows about output formats or files beyond the capture reader.
"""

from __future__ import annotations

from demux.kernel import Kernel, Verdict
from demux.kernel.sock import endpoint, unpack
from demux.scenario import Scenario
from demux.wire import flag_string, parse

_PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 2: "igmp", 47: "gre", 50: "esp",
                89: "ospf", 132: "sctp"}
_ICMP_UNREACH = {(1, 3, 3), (58, 1, 4)}


_FLAG_CACHE = {f: flag_string(f) for f in range(256)}


def ts_text(ts: float) -> str:
    """A packet time as the records write it: seconds with six decimals."""
    return f"{ts:.6f}"


class Record:
    """The verdict of one packet with the packet fields SPEC §3 prints."""

    __slots__ = ("n", "ts", "packet", "direction", "v", "frame")

    def __init__(self, n, ts, packet, direction, v: Verdict, frame=None):
        self.n, self.ts, self.packet, self.direction, self.v, self.frame = n, ts, packet, direction, v, frame

    def jsonl(self, encode) -> str:
        """The record as SPEC §3's jsonl object (no newline), ``encode`` being a JSON
        encoder with ", " and ": " separators. ``ts`` is written with six decimals, as
        SPEC's example and tcpdump write times (``as_dict``'s float would drop zeros)."""
        d = self.as_dict()
        d["ts"] = ""
        line = encode(d)
        i = line.index('"ts": ""')          # after "n": an int, so the first match
        return line[:i + 6] + ts_text(self.ts) + line[i + 8:]

    def as_dict(self) -> dict:
        p, v = self.packet, self.v
        proto = p.proto
        addressed = len(p.src) in (4, 16) and len(p.dst) == len(p.src)
        if proto in (6, 17) and addressed and p.l4_len >= 4:
            src, dst = endpoint(p.src, p.sport), endpoint(p.dst, p.dport)
        elif addressed:
            src, dst = unpack(p.src), unpack(p.dst)
        else:
            src = dst = None
        proc = v.proc
        return {
            "n": self.n, "ts": round(self.ts, 6),
            "proto": _PROTO_NAMES.get(proto, str(proto) if proto >= 0 else ("ip" if p.family else "other")),
            "src": src, "dst": dst,
            "flags": _FLAG_CACHE[p.flags & 0xFF] if proto == 6 and p.l4_len >= 14 else None,
            "len": p.payload_len,
            "direction": self.direction, "verdict": v.verdict,
            "process": proc.name if proc is not None else None,
            "pid": proc.pid if proc is not None else None,
            "fd": v.fd, "socket": v.socket, "state": v.state,
            "reason": v.reason, "reply": v.reply,
        }


class Engine:
    """Packet-by-packet replay against one emulated host."""

    def __init__(self, scenario: Scenario, seed: int = 0):
        self.scenario = scenario
        self.kernel = Kernel.from_scenario(scenario, seed)
        self.t0: float | None = None
        self._local: dict[bytes, bool] = {}
        self.incomplete: list = []          # datagrams reassembly gave up on
        # SO_BINDTODEVICE needs the arrival interface; a capture without interface names
        # gets the one the scenario gives the local address (or its only interface).
        from demux.kernel.sock import pack
        self.ifnames = {pack(a): name for name, addrs in scenario.host.interfaces.items() for a in addrs}
        real = [n for n in scenario.host.interfaces if n != "lo"]
        self.default_if = real[0] if len(real) == 1 else None
        self.reassembler = None
        try:
            from demux.wire.reassembly import Reassembler
            self.reassembler = Reassembler()
        except ImportError:        # pragma: no cover - the wire layer ships it
            pass

    def feed(self, frame, steps: list | None = None) -> Record:
        """The record of one captured frame."""
        p = parse(frame.n, frame.ts, frame.linktype, frame.data, frame.ifname, frame.orig_len)
        return self.decide(p, frame, steps)

    def decide(self, p, frame=None, steps: list | None = None) -> Record:
        if self.t0 is None:
            self.t0 = p.ts
        k = self.kernel
        if k.events:
            k.advance(p.ts - self.t0)
        if p.error is not None:
            return Record(p.n, p.ts, p, None, Verdict("malformed", p.error), frame)
        if not p.family:
            return Record(p.n, p.ts, p, None, Verdict("ignored", "not an IP packet"), frame)
        memo = self._local
        src_local = memo.get(p.src)
        if src_local is None:
            src_local = self._remember(p.src)
        dst_local = memo.get(p.dst)
        if dst_local is None:
            dst_local = self._remember(p.dst)
        if dst_local:
            direction = "in"
        elif src_local:
            direction = "out"
        elif p.proto == 17 and k.is_broadcast(p.dst, p.link_bcast):
            direction = "in"
        else:
            direction = "transit"
        if p.frag is not None and self.reassembler is not None:
            whole = self.reassembler.push(p)
            self.incomplete.extend(self.reassembler.expire(p.ts))
            if whole is None:
                return Record(p.n, p.ts, p, direction,
                              Verdict("ignored", f"IP fragment (id {p.frag.ident}, offset {p.frag.offset}) "
                                      "held for reassembly"), frame)
            if whole.error is not None:
                return Record(p.n, p.ts, p, direction, Verdict("malformed", whole.error), frame)
            p = whole
        if p.proto not in (6, 17):
            return Record(p.n, p.ts, p, direction, Verdict("ignored", self._not_transport(p)), frame)
        if direction == "transit":
            return Record(p.n, p.ts, p, direction,
                          Verdict("ignored", "transit: neither address is local to this host"), frame)
        if p.ifname is None and self.ifnames:
            p.ifname = self._interface(p.dst if direction == "in" else p.src)
        if steps is not None:
            steps.append(f"direction {direction}: "
                         + (f"{unpack(p.dst)} is local" if direction == "in" else f"{unpack(p.src)} is local"))
        if direction == "in":
            if src_local:
                # Host to itself (loopback): a capture shows the packet once, but it is both
                # the sender's output and the receiver's input; both sockets move on.
                k.output(p, p.ts, None)
            v = k.input(p, p.ts, steps)
        else:
            v = k.output(p, p.ts, steps)
        return Record(p.n, p.ts, p, direction, v, frame)

    def _remember(self, addr: bytes) -> bool:
        # Is this address the host's? Asked twice a packet, so remembered per address.
        if len(self._local) > 1 << 16:
            self._local.clear()
        local = self._local[addr] = self.kernel.is_local(addr)
        return local

    def _interface(self, local: bytes) -> str | None:
        name = self.ifnames.get(local)
        if name is None:
            name = "lo" if (local[0] == 127 if len(local) == 4 else local == b"\x00" * 15 + b"\x01") \
                else self.default_if
        return name

    def finish(self) -> list[str]:
        """Lines on what the replay could not complete: IP datagrams whose fragments
        never all arrived, or that the kernel's reassembly discards (overlaps...)."""
        ended = list(self.incomplete)
        if self.reassembler is not None:
            ended += self.reassembler.pending()
        self.incomplete = []
        return [f"IP datagram id {q.ident} from {unpack(q.src)} never reassembled ({q.reason}; "
                f"{q.have} of {q.total if q.total is not None else '?'} bytes; packets "
                f"{', '.join(str(n) for n in q.frames)})" for q in ended]

    @staticmethod
    def _not_transport(p) -> str:
        name = _PROTO_NAMES.get(p.proto, f"IP protocol {p.proto}")
        if (p.proto, p.icmp_type, p.icmp_code) in _ICMP_UNREACH and p.inner is not None:
            q = p.inner
            return (f"{name} port unreachable for {_PROTO_NAMES.get(q.proto, q.proto)} "
                    f"{endpoint(q.src, q.sport)} -> {endpoint(q.dst, q.dport)}: not TCP or UDP")
        return f"{name}: not TCP or UDP"


def replay(reader, scenario: Scenario, seed: int = 0):
    """Records for every frame of an open capture."""
    eng = Engine(scenario, seed)
    feed = eng.feed
    for frame in reader:
        yield feed(frame)


def explain_lookup(capture_path: str, n: int, scenario_path: str | None, seed: int = 0):
    """(lookup steps, verdict dict) for packet ``n``, with the state the packets before
    it built. Used by ``demux explain``."""
    from demux.capture import open_capture
    from demux.errors import DemuxError
    notes: list[str] = []
    scenario = load_or_infer(capture_path, scenario_path, notes)
    eng = Engine(scenario, seed)
    with open_capture(capture_path) as reader:
        for frame in reader:
            if frame.n < n:
                eng.feed(frame)
                continue
            steps = [f"host: {line}" for line in notes]
            rec = eng.feed(frame, steps)
            d = rec.as_dict()
            steps.append(f"verdict: {d['verdict']}" + (f" -> {d['process']} pid {d['pid']} fd {d['fd']}"
                                                        if d["process"] else "")
                         + f" ({d['reason']})")
            return steps, d
    raise DemuxError(f"{capture_path}: no packet {n}")


def load_or_infer(capture_path: str, scenario_path: str | None, notes: list[str] | None = None) -> Scenario:
    """The scenario file given, else the one the capture implies (SPEC §6).

    A scenario file that names no host address (``import-ss`` of a host whose sockets are
    all bound to the wildcard, as ``ss -tlnp`` usually shows) would make every packet of
    the host's own capture transit: it takes the addresses the capture implies instead,
    and ``notes`` gets a line saying so."""
    from demux import scenario as scen
    from demux.infer import infer
    if not scenario_path:
        return infer(capture_path)
    sc = scen.load(scenario_path)
    if sc.host.addresses or sc.host.interfaces:
        return sc
    import os
    if capture_path == "-" or not os.path.isfile(capture_path):
        if notes is not None:
            notes.append(f"{scenario_path} names no host address, and "
                         f"{'standard input' if capture_path == '-' else capture_path} cannot be read twice "
                         "to find them: only loopback is local")
        return sc
    addrs = infer(capture_path).host.addresses
    if addrs:
        sc.host.addresses = list(addrs)
        if notes is not None:
            notes.append(f"{scenario_path} names no host address: took {', '.join(addrs)} from the "
                         "capture (the host that answered), as `demux infer` would")
    return sc
