"""The host a capture implies (SPEC §6), for ``demux infer`` and ``replay`` without ``-s``.

One pass over the frames, with the fast wire parser, gathers the evidence of who
answers: a SYN-ACK says "a listener is here", a RST to a SYN or an ICMP port
unreachable says "nothing is bound here", a datagram answered from the port it was
sent to says "a UDP service is here", and a TCP flow caught mid-stream says "whoever
holds the well-known port of it was listening". After the pass, the hosts that
answered are grouped by the link-layer address they answered from (a capture on a
router or of several servers holds several), the one that answered most is taken as
the host, and its sockets are written so that replay agrees with what the capture
shows: SYN-ACKed flows are delivered, refused ones rejected.

What cannot be known (pids, fds, uids, names, backlogs, SO_REUSEPORT, sockets that saw
no traffic) is said in the scenario's header comment rather than guessed silently.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from demux.kernel.sock import endpoint, unpack
from demux.scenario import (Endpoint, HostSpec, ProcessSpec, Scenario, SocketSpec,
                            normalize_address)
from demux.wire import parse
from demux.wire.packet import ACK, RST, SYN

_TCP, _UDP = 6, 17
# ICMP "port unreachable": (protocol, type, code).
_PORT_UNREACH = {(1, 3, 3), (58, 1, 4)}
_FIRST_PID = 1000
_EPHEMERAL_LOW = 32768            # Linux default ip_local_port_range start


def _is_loopback(addr: bytes) -> bool:
    return (len(addr) == 4 and addr[0] == 127) or addr == b"\x00" * 15 + b"\x01"


def _unicast(addr: bytes) -> bool:
    if len(addr) == 4:
        return not (addr[0] >= 224 or addr == b"\x00" * 4 or addr[3] == 255)
    return addr[0] != 0xFF and addr != b"\x00" * 16


def _link_source(linktype: int, data: bytes):
    """Who sent a frame at the link layer: a MAC, ``"self"`` for frames the capturing
    host sent (SLL's PACKET_OUTGOING, loopback), or None where the link type says not."""
    if linktype == 1 and len(data) >= 12:
        return bytes(data[6:12])
    if linktype == 113 and len(data) >= 16:            # SLL: pkttype, hatype, halen, addr[8]
        if data[1] == 4 or not any(data[6:14]):
            return "self"
        return bytes(data[6:6 + min(data[5], 8)])
    if linktype == 276 and len(data) >= 20:            # SLL2: ..., pkttype @10, halen @11, addr @12
        if data[10] == 4 or not any(data[12:20]):
            return "self"
        return bytes(data[12:12 + min(data[11], 8)])
    return None


class _Port:
    """Evidence about one (proto, local address, port)."""

    __slots__ = ("asked", "answered", "refused", "first_answer", "first_refusal",
                 "answer_ts", "refusal_ts", "clients", "midstream", "first_mid")

    def __init__(self):
        self.asked = 0              # SYNs / datagrams that reached it
        self.answered = 0           # SYN-ACKs / answering datagrams
        self.refused = 0            # RSTs to SYNs / ICMP port unreachables
        self.first_answer = 0       # packet number
        self.first_refusal = 0
        self.answer_ts: list[float] = []    # first and last only: [first, last]
        self.refusal_ts: list[float] = []
        self.clients: set = set()
        self.midstream = 0          # flows caught mid-stream with this as the server end
        self.first_mid = 0

    def answer(self, n, ts, client):
        if not self.answered:
            self.first_answer = n
            self.answer_ts = [ts, ts]
        else:
            self.answer_ts[1] = ts
        self.answered += 1
        self.clients.add(client)

    def refuse(self, n, ts):
        if not self.refused:
            self.first_refusal = n
        self.refused += 1
        self.refusal_ts.append(ts)


class _Evidence:
    """Everything the pass collects; ``scenario`` turns it into a host."""

    def __init__(self, name: str):
        self.name = name
        self.packets = 0
        self.t0: float | None = None
        self.ports: dict[tuple[str, bytes, int], _Port] = defaultdict(_Port)
        self.answers: Counter = Counter()                   # address -> answers sent
        self.link: dict[bytes, Counter] = defaultdict(Counter)   # address -> link sources
        self.received: Counter = Counter()                  # address -> packets to it
        # flow key -> [state, client end, first packet, key[0] sent non-RST, key[1] did, SYN time]
        self.tcp: dict[tuple, list] = {}
        self.udp_first: dict[tuple, tuple] = {}             # flow key -> (initiator end, time)
        self.udp_silent: Counter = Counter()                # (addr, port) asked, never answered
        self.warning: str | None = None

    # -- one packet ----------------------------------------------------------------------

    def feed(self, p) -> None:
        self.packets += 1
        if self.t0 is None:
            self.t0 = p.ts
        if p.error is not None or not p.family or p.frag is not None:
            return
        proto = p.proto
        if proto == _TCP:
            self._tcp(p)
        elif proto == _UDP:
            self._udp(p)
        elif (proto, p.icmp_type, p.icmp_code) in _PORT_UNREACH and p.inner is not None:
            q = p.inner
            # The quoted datagram went from the client to the closed port; the ICMP's
            # sender is the host that refused it.
            if q.proto in (_TCP, _UDP) and q.dst == p.src:
                port = self.ports[("udp" if q.proto == _UDP else "tcp", q.dst, q.dport)]
                port.refuse(p.n, p.ts)
                self._answered_by(p, q.dst)

    def _answered_by(self, p, addr: bytes) -> None:
        self.answers[addr] += 1
        src = _link_source(p.linktype, p.data)
        if src is not None:
            self.link[addr][src] += 1

    def _tcp(self, p) -> None:
        a, b = (p.src, p.sport), (p.dst, p.dport)
        key = (a, b) if a < b else (b, a)
        flags = p.flags
        self.received[p.dst] += 1
        f = self.tcp.get(key)
        if flags & SYN and not flags & ACK:
            # A new attempt (or a retransmission): the sender is the client.
            self.ports[("tcp", p.dst, p.dport)].asked += 1
            if f is None or f[0] != "syn" or f[1] != a:
                self.tcp[key] = ["syn", a, p.n, False, False, p.ts]
            return
        if f is None:
            if flags & SYN:         # SYN-ACK whose SYN came before the capture
                self.tcp[key] = f = ["open", b, p.n, False, False, p.ts]
            else:
                # Mid-stream: which end is the server is decided once the host is known.
                self.tcp[key] = f = ["mid", None, p.n, False, False, p.ts]
        if flags & SYN:
            if f[0] in ("syn", "open") and f[1] == b:
                # Times are those of the SYNs: the kernel decided when each arrived.
                self.ports[("tcp", p.src, p.sport)].answer(p.n, f[5], b[0])
                self._answered_by(p, p.src)
                f[0] = "open"
            return
        if flags & RST:
            if f[0] == "syn" and f[1] == b:
                self.ports[("tcp", p.src, p.sport)].refuse(p.n, f[5])
                self._answered_by(p, p.src)
                f[0] = "refused"
            return
        if f[0] == "mid":
            # Remember which ends sent something other than a RST: a flow answered only
            # by RSTs is no evidence of a listener.
            if a == key[0]:
                f[3] = True
            else:
                f[4] = True

    def _udp(self, p) -> None:
        a, b = (p.src, p.sport), (p.dst, p.dport)
        key = (a, b) if a < b else (b, a)
        self.received[p.dst] += 1
        first = self.udp_first.get(key)
        if first is None:
            self.udp_first[key] = (a, p.ts)
            if _unicast(p.dst):
                self.ports[("udp", p.dst, p.dport)].asked += 1
                self.udp_silent[b] += 1
            return
        if first[0] == a:
            if _unicast(p.dst):
                self.ports[("udp", p.dst, p.dport)].asked += 1
            return
        # The end that did not speak first answers from the port it was asked on.
        self.ports[("udp", p.src, p.sport)].answer(p.n, first[1], p.dst)
        self.udp_silent.pop(a, None)
        self._answered_by(p, p.src)

    # -- after the pass ------------------------------------------------------------------

    def _midstream_servers(self) -> list[tuple[tuple[bytes, int], tuple[bytes, int], int]]:
        """(server end, client end, first packet) of every flow caught mid-stream with
        non-RST traffic: the server is the end on the lower port, when that port is below
        the ephemeral range."""
        out = []
        for key, f in self.tcp.items():
            if f[0] != "mid" or not (f[3] or f[4]):
                continue
            lo, hi = key if key[0][1] <= key[1][1] else (key[1], key[0])
            if lo[1] < _EPHEMERAL_LOW and lo[1] < hi[1]:
                out.append((lo, hi, f[2]))
        return out

    def choose_host(self, mids) -> tuple[list[bytes], list[str]]:
        """The addresses of the host that answered most, and notes on the others."""
        answers = Counter(self.answers)
        for server, _client, _n in mids:
            answers[server[0]] += 1
        answers = Counter({a: c for a, c in answers.items() if not _is_loopback(a) and _unicast(a)})
        notes: list[str] = []
        if not answers:
            # Nothing answered: the address most packets went to is the best guess.
            received = Counter({a: c for a, c in self.received.items()
                                if not _is_loopback(a) and _unicast(a)})
            if received:
                addr = received.most_common(1)[0][0]
                notes.append(f"no host answered anything: took {unpack(addr)}, the address most "
                             "packets went to, as the host")
                return [addr], notes
            return [], notes
        # Group addresses by the link-layer source they answered from; addresses seen on
        # no link layer (raw IP captures) form one group.
        groups: dict[object, set[bytes]] = defaultdict(set)
        for addr in answers:
            srcs = self.link.get(addr)
            groups[srcs.most_common(1)[0][0] if srcs else None].add(addr)
        ranked = sorted(groups.values(), key=lambda g: (-sum(answers[a] for a in g), sorted(g)))
        chosen = ranked[0]
        if len(ranked) > 1:
            def show(g):
                return ", ".join(unpack(a) for a in sorted(g, key=lambda a: (len(a), a)))
            notes.append(f"{len(ranked)} hosts answered (grouped by link-layer source); took "
                         f"{show(chosen)} ({sum(answers[a] for a in chosen)} answers); not local: "
                         + "; ".join(f"{show(g)} ({sum(answers[a] for a in g)} answers)" for g in ranked[1:]))
        return sorted(chosen, key=lambda a: (len(a), a)), notes

    def scenario(self) -> tuple[Scenario, str]:
        mids = self._midstream_servers()
        addrs, notes = self.choose_host(mids)
        local = set(addrs)

        def is_local(a: bytes) -> bool:
            return a in local or _is_loopback(a)

        for server, client, n in mids:
            if is_local(server[0]):
                port = self.ports[("tcp", server[0], server[1])]
                if not port.midstream:
                    port.first_mid = n
                port.midstream += 1
                port.clients.add(client[0])

        # (proto, port) -> {address: _Port} on this host.
        by_port: dict[tuple[str, int], dict[bytes, _Port]] = defaultdict(dict)
        for (proto, addr, num), ev in self.ports.items():
            if is_local(addr):
                by_port[(proto, num)][addr] = ev

        t0 = self.t0 or 0.0
        closed: list[str] = []
        silent: list[str] = []
        procs: dict[int, ProcessSpec] = {}
        for (proto, num) in sorted(by_port, key=lambda k: (k[1], k[0])):
            evs = by_port[(proto, num)]
            open_at = {a: e for a, e in evs.items() if e.answered or e.midstream}
            if not open_at:
                refused = [a for a, e in evs.items() if e.refused]
                if refused:
                    closed.append(f"{proto} {', '.join(endpoint(a, num) for a in _sorted(refused))} "
                                  f"(refused {_times(sum(evs[a].refused for a in refused))}, first at packet "
                                  f"{min(evs[a].first_refusal for a in refused)})")
                elif proto == "udp" and any(e.asked for e in evs.values()):
                    silent.append(f"udp {', '.join(endpoint(a, num) for a in _sorted(evs))}")
                continue
            sockets = self._sockets(proto, num, evs, open_at, t0)
            proc = procs.get(num)
            if proc is None:
                from demux.services import service
                name = service(num, proto) or f"{proto}-{num}"
                proc = procs[num] = ProcessSpec(name=name, pid=0)
            proc.sockets.extend(sockets)

        processes = sorted(procs.values(), key=lambda p: p.sockets[0].bind.port)
        for i, p in enumerate(processes):
            p.pid = _FIRST_PID + i
        sc = Scenario(host=HostSpec(addresses=[normalize_address(unpack(a))[1] for a in addrs]),
                      processes=processes, path=self.name)
        return sc, self._header(sc, notes, closed, silent)

    def _sockets(self, proto, num, evs, open_at, t0) -> list[SocketSpec]:
        """The sockets that explain one port: per family, the wildcard when no address of
        that family refused it, else each answering address on its own; one dual-stack
        ``[::]`` when both families qualify for the wildcard."""
        fam = {4: [a for a in evs if len(a) == 4], 6: [a for a in evs if len(a) == 16]}
        opened = {f: [a for a in fam[f] if a in open_at] for f in (4, 6)}
        wild = {f: bool(opened[f]) and not any(evs[a].refused for a in fam[f]) for f in (4, 6)}
        if wild[4] and wild[6]:
            return [self._socket(proto, Endpoint(6, "::", num), fam[4] + fam[6], evs, t0, v6only=False)]
        out: list[SocketSpec] = []
        for f, any_addr in ((4, "0.0.0.0"), (6, "::")):
            if wild[f]:
                out.append(self._socket(proto, Endpoint(f, any_addr, num), fam[f], evs, t0,
                                        v6only=True if f == 6 else None))
            else:
                out += [self._socket(proto, _ep(a, num), [a], evs, t0, v6only=True if f == 6 else None)
                        for a in _sorted(opened[f])]
        return out

    def _socket(self, proto, bind: Endpoint, covers, evs, t0, v6only=None) -> SocketSpec:
        es = [evs[a] for a in covers if a in evs]
        s = SocketSpec(proto=proto, bind=bind, listen=proto == "tcp",
                       v6only=v6only if bind.family == 6 else None)
        answered = sum(e.answered for e in es)
        mid = sum(e.midstream for e in es)
        clients = set().union(*(e.clients for e in es)) if es else set()
        parts = []
        if answered:
            first = min(e.first_answer for e in es if e.answered)
            what = ("SYN" if proto == "tcp" else "datagram") + ("s" if answered != 1 else "")
            what += " with SYN-ACK" if proto == "tcp" else ""
            parts.append(f"answered {answered} {what}, first at packet {first}")
        if mid:
            first = min(e.first_mid for e in es if e.midstream)
            parts.append(f"{mid} flow{'s' if mid != 1 else ''} caught mid-stream, first at packet {first}")
        if clients:
            parts.append(f"{len(clients)} client address{'es' if len(clients) != 1 else ''}")
        addrs = [a for a in covers if a in evs and (evs[a].answered or evs[a].midstream)]
        if bind.wildcard and addrs:
            parts.append("on " + ", ".join(unpack(a) for a in _sorted(addrs)))
        # A port that answered at one time and refused at another was opened or closed
        # during the capture: place the socket's life between the two.
        refused = [e for e in es if e.refused and e.answered]
        if refused:
            first_ok = min(e.answer_ts[0] for e in refused)
            last_ok = max(e.answer_ts[1] for e in refused)
            ref = sorted(t for e in refused for t in e.refusal_ts)
            if ref[-1] < first_ok:
                s.at = round(max(0.0, (ref[-1] + first_ok) / 2 - t0), 6)
                parts.append(f"refused before packet {min(e.first_answer for e in refused)}: "
                             f"opened at {s.at}s")
            elif ref[0] > last_ok:
                s.close_at = round(max(0.0, (ref[0] + last_ok) / 2 - t0), 6)
                parts.append(f"refused after its last answer: closed at {s.close_at}s")
            else:
                parts.append(f"also refused {_times(sum(e.refused for e in refused))} between answers "
                             "(a listener that came and went): kept open")
        s.comment = "; ".join(parts)
        return s

    def _header(self, sc: Scenario, notes, closed, silent) -> str:
        lines = [f"Inferred by `demux infer` from {self.name} ({self.packets} packets).",
                 "Host: the addresses that answered ("
                 + (", ".join(sc.host.addresses) or "none") + ")."]
        lines += notes
        if self.warning:
            lines.append(f"Capture damaged: {self.warning}; the packets after it are not used.")
        if closed:
            lines.append("Closed ports (answered with RST or ICMP port unreachable; no socket):")
            lines += [f"  {c}" for c in closed]
        if silent:
            lines.append("UDP ports asked but never answered nor refused (unknown; no socket):")
            lines += [f"  {c}" for c in silent[:50]]
            if len(silent) > 50:
                lines.append(f"  ... and {len(silent) - 50} more")
        lines.append("Not knowable from packets: pids, fds, uids and process names (one process per "
                     "port, named after its service), backlogs, SO_REUSEPORT/SO_REUSEADDR, devices, "
                     "interfaces, sysctls, connected UDP sockets, and sockets that saw no traffic.")
        return "\n".join(lines)


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _sorted(addrs) -> list[bytes]:
    return sorted(addrs, key=lambda a: (len(a), a))


def _ep(addr: bytes, port: int) -> Endpoint:
    family, text = normalize_address(unpack(addr))
    return Endpoint(family, text, port)


def infer_frames(frames, name: str = "<capture>") -> Scenario:
    """The scenario implied by an iterable of capture Frames."""
    sc, _header = infer_frames_with_header(frames, name)
    return sc


def infer_frames_with_header(frames, name: str = "<capture>") -> tuple[Scenario, str]:
    ev = _Evidence(name)
    feed = ev.feed
    for f in frames:
        feed(parse(f.n, f.ts, f.linktype, f.data, f.ifname, f.orig_len))
    if getattr(frames, "warning", None):
        ev.warning = frames.warning
    return ev.scenario()


def infer_with_header(capture_path: str) -> tuple[Scenario, str]:
    """The scenario a capture file implies, and the header comment explaining it."""
    from demux.capture import open_capture
    with open_capture(capture_path) as reader:
        name = reader.name
        return infer_frames_with_header(reader, name)


def infer(capture_path: str) -> Scenario:
    """The scenario a capture file implies (SPEC §6)."""
    return infer_with_header(capture_path)[0]
