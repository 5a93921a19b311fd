"""The emulated kernel: the socket table, the socket calls, and what each segment does.

Theory of operation. ``Kernel`` holds, per protocol and port, the sockets bound there in
the kernel's chain order, the listening sockets, and the established hash (exact
4-tuple -> ``Conn``: request sockets in SYN-RECV, full connections, TIME-WAIT). Socket
calls (``socket``/``bind``/``listen``/``connect``/``close``) follow
net/ipv4/af_inet.c, inet_connection_sock.c and udp.c and produce an ``Outcome`` each.
``input`` and ``output`` take one parsed packet (``demux.wire.packet.Packet``) whose
destination, resp. source, is local, and return a ``Verdict``: the established hash
first, then the listener/UDP lookup (``demux.kernel.lookup``), then the TCP state
table (``demux.kernel.tcp_states``). Sans-IO: nothing here reads a file or a socket.
"""

from __future__ import annotations

import heapq
import random
import zlib
from zlib import crc32 as _crc32

from demux.kernel import bind as bindrules
from demux.kernel import lookup as lk
from demux.kernel import tcp_states as ts
from demux.kernel.sock import ANY4, ANY6, Sock, endpoint, is_v4mapped, pack, rcv_saddr_equal, unpack
from demux.scenario import ProcessSpec, Scenario, SocketSpec
from demux.wire.packet import flag_string

SYN, RST, FIN, ACK = 0x02, 0x04, 0x01, 0x10
_SYN_FIN_RST = SYN | FIN | RST
_SYN_FIN_RST_ACK = _SYN_FIN_RST | ACK
_QUIET = frozenset((ts.ESTAB, ts.CLOSE_WAIT))   # states a plain segment leaves unchanged
_PEER_FIN_IN = frozenset((ts.CLOSE_WAIT, ts.CLOSING, ts.LAST_ACK))   # the peer's FIN taken
_INF = float("inf")
# What the segments ``Kernel.steady`` names still record (its last item; bits, so that a
# loopback segment, both sent and received, can keep the sender's and the receiver's).
KEEPS_NOTHING, KEEPS_RCV, KEEPS_ISN, KEEPS_WUP = 0, 1, 2, 4
_ENDED_KEPT = 1 << 16
_SEND_RESET = {4: "tcp_v4_send_reset", 6: "tcp_v6_send_reset"}
_UNSYNCHRONIZED = frozenset((ts.SYN_SENT, ts.SYN_RECV))          # the handshake's states
LOOPBACK6 = b"\x00" * 15 + b"\x01"


class ProcState:
    """A scenario process: its name, pid, uid and open descriptors."""

    __slots__ = ("name", "pid", "uid", "index", "fds", "spec", "_freed", "_top")

    def __init__(self, spec: ProcessSpec, index: int):
        self.name, self.pid, self.uid, self.index, self.spec = spec.name, spec.pid, spec.uid, index, spec
        self.fds = {0, 1, 2}
        self._freed: list[int] = []       # a min-heap of closed descriptors (may hold stale ones)
        self._top = 3                     # no descriptor at or above this was handed out by a walk

    def alloc_fd(self, want: int | None = None) -> int:
        # The lowest free descriptor, as every Unix open()/socket()/accept() returns
        # (fs/file.c alloc_fd). A server with thousands of open connections would make
        # a walk from 3 quadratic: the lowest closed one comes off a heap instead.
        fds = self.fds
        if want is not None:
            fds.add(want)
            return want
        freed = self._freed
        while freed and freed[0] in fds:
            heapq.heappop(freed)
        top = self._top
        while top in fds:
            top += 1
        if freed and freed[0] < top:
            fd = heapq.heappop(freed)
        else:
            fd = top
            top += 1
        self._top = top
        fds.add(fd)
        return fd

    def free_fd(self, fd: int | None) -> None:
        if fd is not None and fd in self.fds:
            self.fds.discard(fd)
            heapq.heappush(self._freed, fd)


class Outcome:
    """The result of one socket call, as ``demux check`` reports it (SPEC §2)."""

    __slots__ = ("proc_index", "sock_index", "process", "pid", "fd", "proto", "call",
                 "local", "remote", "result", "why", "at")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def as_dict(self) -> dict:
        d = {"process": self.process, "pid": self.pid, "fd": self.fd, "proto": self.proto,
             "call": self.call, "local": self.local, "result": self.result, "why": self.why}
        if self.remote is not None:
            d["remote"] = self.remote
        if self.at is not None:
            d["at"] = self.at
        return d


class Conn:
    """A TCP connection in the established hash: request socket, full socket or TIME-WAIT."""

    __slots__ = ("key", "family", "state", "listener", "sock", "proc", "fd", "fin_out",
                 "expire", "rcv_nxt", "rcv_start", "tsval", "reason", "desc", "queued", "snd_isn",
                 "rcv_wup", "rcv_zero", "rcv_exact")

    def __init__(self, key, family, state, proc, fd, reason, listener=None, sock=None):
        self.key = key
        self.family = family
        self.state = state
        self.listener = listener      # the listener that accepted it (passive side)
        self.sock = sock              # the scenario's client socket (active side)
        self.proc = proc
        self.fd = fd
        self.fin_out = None           # the ACK number that acknowledges our FIN
        self.expire = 0.0             # absolute time a SYN-RECV or TIME-WAIT entry ends
        self.rcv_nxt = 0
        self.rcv_start = None         # the peer's first sequence number after its SYN, when seen
        self.tsval = None
        self.reason = reason
        self.desc = None
        self.queued = False           # waiting in the listener's accept queue
        self.snd_isn = None           # our initial sequence number, once our SYN or SYN-ACK is seen
        self.rcv_wup = None           # rcv_nxt as our latest segment acknowledged it, once known
        self.rcv_zero = False         # our latest segment advertised a zero window
        self.rcv_exact = False        # rcv_nxt is the kernel's: the start was seen, no hole since

    def describe(self) -> str:
        if self.desc is None:
            laddr, lport, raddr, rport = self.key
            self.desc = f"tcp {self.state} {endpoint(laddr, lport)} {endpoint(raddr, rport)}"
        return self.desc


class Verdict:
    """What the host does with one packet (SPEC §3)."""

    __slots__ = ("verdict", "proc", "fd", "socket", "state", "reason", "reply", "copies")

    def __init__(self, verdict, reason, proc=None, fd=None, socket=None, state=None, reply=None, copies=None):
        self.verdict = verdict
        self.reason = reason
        self.proc = proc
        self.fd = fd
        self.socket = socket
        self.state = state
        self.reply = reply
        self.copies = copies          # [(ProcState, fd)] for a datagram delivered to several sockets


class _Match:
    """What the listener lookup finds for one local end (address, port, arrival device),
    kept until the table changes: ``found``, the answer (listener or None, its reason);
    or, for a SO_REUSEPORT group, ``picks``, each member's answer, which the flow hash
    chooses among, with ``base``, the part of the hash the local end fixes. The answers
    are built here once, so a lookup returns one of them as it is."""

    __slots__ = ("found", "picks", "n", "base")


class Lookup:
    """The answer of ``Kernel.lookup``: receiving sockets, the reply, the steps."""

    __slots__ = ("socks", "reply", "trace")

    def __init__(self, socks, reply, trace):
        self.socks, self.reply, self.trace = socks, reply, trace


def _seq_after(a: int, b: int) -> bool:
    """The kernel's ``after(a, b)``, except at exactly half the space apart (neither)."""
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000


def _before(a: int, b: int) -> bool:
    """The kernel's ``before(a, b)``: (s32)(a - b) < 0 (half the space apart counts)."""
    return 0 < (b - a) & 0xFFFFFFFF <= 0x80000000


def _old(c: "Conn", p, end: int) -> tuple[str, bool] | None:
    """(why, whole) when a segment ending at ``end`` (FIN counted) on a synchronized
    connection is old, else None. ``rcv_wup`` is what our latest segment acknowledged
    (``tcp_select_window`` sets it to ``rcv_nxt`` on every send), so all before it
    arrived. ``tcp_sequence`` drops a segment that ends before it whole, with a duplicate
    ACK (TCP_OLD_SEQUENCE: keep-alive probes, old duplicates). One whose data or FIN ends
    at it is a retransmission: its ACK still counts (``tcp_ack``, the state's own steps),
    and ``tcp_data_queue`` drops the data, acknowledging it again (TCP_OLD_DATA, with a
    D-SACK). So is data or a FIN ending at or before ``rcv_nxt`` while that is exact
    (``rcv_exact``: the connection's start was seen and nothing came out of order since):
    a copy of what arrived while our ACK of it was delayed, e.g. a tail loss probe.
    Once a hole was seen, ``rcv_nxt`` is the furthest end seen (holes are not tracked),
    and data past ``rcv_wup`` may fill one: taken."""
    kind = _old_kind(c.rcv_wup, end, p.payload_len or p.flags & FIN, c.rcv_nxt if c.rcv_exact else 0)
    what = "data" if p.payload_len else "FIN"
    if kind == 1:
        return (f"old segment (ends at {end}, before {c.rcv_wup}, acknowledged already) for "
                f"{c.describe()[4:]}: answered with a duplicate ACK and discarded (tcp_validate_incoming: "
                "tcp_sequence)"), True
    if kind == 2:
        return (f"{what} up to {end} acknowledged already for {c.describe()[4:]}: a retransmission; its "
                f"ACK is taken, the {what} acknowledged again and discarded (tcp_data_queue)"), False
    if kind == 3:
        return (f"{what} up to {end} received already (rcv_nxt {c.rcv_nxt}; our ACK of it had not gone out) "
                f"for {c.describe()[4:]}: a retransmission; its ACK is taken, the {what} acknowledged "
                "again and discarded (tcp_data_queue)"), False
    return None


def _received(c: "Conn", p, end: int) -> None:
    """A segment ending at ``end`` was taken: ``rcv_nxt`` moves up to it. One that starts
    past ``rcv_nxt`` leaves a hole (or is an ACK the kernel does not count), so from then
    on ``rcv_nxt`` is the furthest end seen, not the kernel's (``rcv_exact`` ends)."""
    nxt = c.rcv_nxt
    # (_seq_after written out: this runs for every segment of an open connection)
    if nxt == 0 or 0 < (end - nxt) & 0xFFFFFFFF < 0x80000000:
        if nxt and 0 < (p.seq - nxt) & 0xFFFFFFFF < 0x80000000:
            c.rcv_exact = False
        c.rcv_nxt = end


def _old_kind(wup: int | None, end: int, data, nxt: int = 0) -> int:
    """``_old``'s test alone: 0 not old, 1 ends before ``wup``, 2 its data (``data``
    true) ends at it, 3 its data ends after it but not after ``nxt`` (an exact
    ``rcv_nxt``; 0 unknown, as everywhere rcv_nxt is read). (_before and _seq_after
    written out: this runs for every segment of an open connection.)"""
    if wup is None:
        return 0
    if 0 < (wup - end) & 0xFFFFFFFF <= 0x80000000:
        return 1
    if not data:
        return 0
    if end == wup:
        return 2
    return 3 if nxt and not 0 < (end - nxt) & 0xFFFFFFFF < 0x80000000 else 0


def _sent(c: "Conn", p) -> None:
    """A segment our synchronized connection ``c`` sent: ``tcp_select_window`` sets
    ``rcv_wup`` to ``rcv_nxt``, which the segment acknowledges, and ``rcv_wnd`` to the
    window it offers (not a RST: it closes). Only a zero window is kept: the offered
    window is a multiple of the scale, so a field of 0 is a window of 0 bytes whatever
    the scale, while other fields need the scale from the handshake."""
    if p.flags & ACK and not p.flags & RST:
        c.rcv_wup = p.ack
        c.rcv_zero = p.window == 0
        if c.rcv_exact and c.rcv_nxt and 0 < (c.rcv_nxt - p.ack) & 0xFFFFFFFF <= 0x80000000:   # _before
            # The kernel acknowledges its rcv_nxt: it took less than demux counted (an ACK
            # of data never sent, PAWS, memory...), so rcv_nxt is no longer its own.
            c.rcv_exact = False


def _beyond_zero_window(c: "Conn", p) -> str | None:
    """Why a segment is dropped whole while ``c`` offers a zero window, else None.
    ``tcp_sequence`` (6.17 on; measured on 6.18): the right edge is ``rcv_nxt`` plus
    what is left of the window, nothing: ``rcv_wup``, where the window closed, or the
    peer's FIN + 1 once that is taken (a bare FIN may lie past the edge; nothing else
    is taken after it). A segment starting past the edge is out of the window, and one
    whose data ends past it is too while the receive queue holds data, which it does:
    the unread data is why the window is zero. Its ACK is not processed (the drop comes
    before ``tcp_ack``), and a RST in it resets nothing (only ``tcp_reset_check`` would)."""
    edge = c.rcv_wup
    if c.state in _PEER_FIN_IN and c.rcv_nxt and _seq_after(c.rcv_nxt, edge):
        edge = c.rcv_nxt
    end = (p.seq + p.payload_len) & 0xFFFFFFFF
    if not (_seq_after(p.seq, edge) or _seq_after(end, edge)):
        return None
    return (f"beyond the receive window: {c.describe()[4:]} offered a zero window at {edge} (its application "
            f"has not read what it has) and the {'RST' if p.flags & RST else 'segment'} "
            f"{'starts' if _seq_after(p.seq, edge) else 'ends'} past it: discarded, its ACK not processed, "
            "answered with a duplicate ACK (rate limited) (tcp_validate_incoming: tcp_sequence)")


def _ack_covers(ack: int, fin_out: int) -> bool:
    return ((ack - fin_out) & 0xFFFFFFFF) < 0x80000000


class Kernel:
    """One emulated host. Build it with ``Kernel.from_scenario``."""

    def __init__(self, scenario: Scenario, seed: int = 0):
        self.scenario = scenario
        self.seed = seed
        self.rng = random.Random(seed)
        sc = scenario
        self.port_low, self.port_high = sc.port_range()
        self.reserved = sc.reserved_ports()
        self.unpriv = int(sc.sysctl["net.ipv4.ip_unprivileged_port_start"])
        self.bindv6only = bool(sc.sysctl["net.ipv6.bindv6only"])
        self.somaxconn = int(sc.sysctl["net.core.somaxconn"])
        self.nonlocal4 = bool(sc.sysctl["net.ipv4.ip_nonlocal_bind"])
        self.nonlocal6 = bool(sc.sysctl["net.ipv6.ip_nonlocal_bind"])
        self.local4: set[bytes] = set()
        self.local6: set[bytes] = {LOOPBACK6}
        # Directed broadcast addresses: from the prefix when the scenario gives one
        # ("10.0.0.1/24"), else the address's /24, the usual LAN.
        self.bcast4: set[bytes] = {b"\xff" * 4}
        for a in sc.host.addresses:
            b = pack(a)
            (self.local4 if len(b) == 4 else self.local6).add(b)
            if len(b) == 4 and b[0] != 127:
                plen = sc.host.prefixes.get(a, 24)
                if plen <= 30:
                    host_mask = (1 << (32 - plen)) - 1
                    self.bcast4.add((int.from_bytes(b, "big") | host_mask).to_bytes(4, "big"))
        self.procs = [ProcState(p, i) for i, p in enumerate(sc.processes)]
        self.owners: dict[tuple[str, int], list[Sock]] = {}      # bind buckets, head first
        self.listeners: dict[int, list[Sock]] = {}               # TCP lhash2 chains per port
        self.udp: dict[int, list[Sock]] = {}                     # UDP hslot2 chains per port
        self.est: dict[tuple, Conn] = {}                         # the established hash
        self.udp_implicit: dict[tuple[bytes, int], Sock] = {}    # unknown local UDP senders
        self.perturb: dict[tuple, int] = {}                      # __inet_hash_connect table_perturb
        self.icmp_peers: dict[bytes, tuple[float, float]] = {}   # inet_peer rate_tokens, rate_last
        self.icmp_ratelimited = 0                                # IcmpOutRateLimitHost
        self.syncookies = int(sc.sysctl["net.ipv4.tcp_syncookies"])
        self.cookies: dict[tuple, Sock] = {}                     # SYN-ACKs sent as cookies
        self.ended: dict[tuple, None] = {}                       # 4-tuples whose connection ended here
        self._lcache: dict[tuple, tuple] = {}                    # UDP match per local end
        self._tcp_matches: dict[tuple, _Match] = {}              # listener match per local end
        self.generation = 0                                      # bumped by every table change
        self.timers: list = []                                   # heap of (expiry, serial, conn)
        self._udp_connected_ports: set[int] = set()
        self.outcomes: list[Outcome] = []
        self.socks: list[Sock] = []
        self._serial = 0
        self._by_index: dict[tuple[int, int], Sock] = {}
        self.events: list[tuple[float, int, str, int, int]] = []
        self.clients: list[Sock] = []                            # scenario connect()ed sockets

    # ---- scenario timeline ---------------------------------------------------------

    @classmethod
    def from_scenario(cls, scenario: Scenario, seed: int = 0) -> "Kernel":
        """A kernel with every socket call that happens before the capture applied."""
        k = cls(scenario, seed)
        order = 0
        for pi, p in enumerate(scenario.processes):
            for si, s in enumerate(p.sockets):
                k.events.append((-1.0 if s.at is None else s.at, order, "open", pi, si))
                order += 1
                if s.close_at is not None:
                    k.events.append((s.close_at, order, "close", pi, si))
                    order += 1
        k.events.sort()
        k.advance(-0.5)
        return k

    def advance(self, rel: float) -> None:
        """Apply the scenario's calls due by ``rel`` seconds after the first packet."""
        while self.events and self.events[0][0] <= rel:
            t, _, what, pi, si = self.events.pop(0)
            if what == "open":
                self._open(pi, si, None if t < 0 else t)
            else:
                sk = self._by_index.get((pi, si))
                if sk is not None and sk.state != "CLOSE":
                    self.close(sk)

    def apply_all(self) -> None:
        self.advance(float("inf"))

    def is_local(self, addr: bytes) -> bool:
        if len(addr) == 4:
            return addr[0] == 127 or addr in self.local4
        if is_v4mapped(addr):
            return self.is_local(addr[12:])
        return addr in self.local6

    # ---- socket calls --------------------------------------------------------------

    def _new_sock(self, proc, index, proto, family) -> Sock:
        self.generation += 1
        self._serial += 1
        sk = Sock(self._serial, proc, index, proto, family)
        self.socks.append(sk)
        return sk

    def _open(self, pi: int, si: int, at: float | None) -> Outcome:
        proc = self.procs[pi]
        spec: SocketSpec = proc.spec.sockets[si]
        sk = self._new_sock(proc, (pi, si), spec.proto, spec.family)
        sk.spec = spec
        sk.uid = proc.uid
        sk.reuseaddr, sk.reuseport, sk.accept = spec.reuseaddr, spec.reuseport, spec.accept
        sk.device = spec.device
        if sk.family == 6:
            sk.v6only = self.bindv6only if spec.v6only is None else spec.v6only
        sk.fd = proc.alloc_fd(spec.fd)
        call, result, why = "bind", "ok", ""
        if spec.device and self.scenario.host.interfaces and spec.device not in self.scenario.host.interfaces:
            result, why = "ENODEV", f"SO_BINDTODEVICE: no interface {spec.device!r} on this host"
        if result == "ok" and spec.bind is not None:
            result, why = self.bind(sk, pack(spec.bind.addr), spec.bind.port)
        if result == "ok" and spec.listen:
            call = "listen"
            result, why = self.listen(sk, spec.backlog)
        if result == "ok" and spec.connect is not None:
            call = "connect"
            result, why = self.connect(sk, pack(spec.connect.addr), spec.connect.port)
        if result == "ok":
            self._by_index[(pi, si)] = sk
            if spec.connect is not None:
                self.clients.append(sk)
            local = sk.local()
        else:
            local = str(spec.bind) if spec.bind is not None else sk.local()
            self._forget(sk)
            proc.free_fd(sk.fd)
        out = Outcome(proc_index=pi, sock_index=si, process=proc.name, pid=proc.pid, fd=sk.fd,
                      proto=spec.proto, call=call, local=local,
                      remote=str(spec.connect) if spec.connect is not None else None,
                      result=result, why=why, at=at)
        self.outcomes.append(out)
        return out

    def _local_ok(self, addr: bytes, family: int) -> bool:
        if family == 4:
            # inet_addr_valid_or_nonlocal: local, wildcard, broadcast or multicast.
            return (addr == ANY4 or self.is_local(addr) or addr == b"\xff" * 4
                    or 224 <= addr[0] <= 239 or self.nonlocal4)
        return addr == ANY6 or self.is_local(addr) or addr[0] == 0xFF or self.nonlocal6

    def bind(self, sk: Sock, addr: bytes, port: int) -> tuple[str, str]:
        """bind(): net/ipv4/af_inet.c ``__inet_bind`` / net/ipv6/af_inet6.c ``__inet6_bind``,
        then ``inet_csk_get_port`` (TCP) or ``udp_lib_get_port`` (UDP)."""
        needs_cap = 0 < port < self.unpriv and sk.uid != 0
        eacces = (f"port {port} is below net.ipv4.ip_unprivileged_port_start ({self.unpriv}) "
                  f"and uid {sk.uid} lacks CAP_NET_BIND_SERVICE")
        if sk.family == 6:
            if addr[0] == 0xFF and sk.proto == "tcp":
                return "EINVAL", "a TCP socket cannot bind a multicast address"
            if needs_cap:                      # __inet6_bind checks the port first
                return "EACCES", eacces
            # __ipv6_addr_needs_scope_id: link-local addresses and link/interface-local
            # multicast name an interface; without SO_BINDTODEVICE (no scope id) EINVAL.
            if ((addr[0] == 0xFE and addr[1] & 0xC0 == 0x80) or (addr[0] == 0xFF and addr[1] & 0x0F <= 2)) \
                    and sk.device is None:
                return "EINVAL", f"{unpack(addr)} is link-local: it needs a scope id or a bound device"
            if is_v4mapped(addr):
                if sk.v6only:
                    return "EINVAL", "a v4-mapped address on an IPV6_V6ONLY socket"
                if not self._local_ok(addr[12:], 4):
                    return "EADDRNOTAVAIL", f"{endpoint(addr, port)[1:].split(']')[0]} is not a local address"
                sk.rcv4 = addr[12:]
            elif addr == ANY6:
                sk.rcv4 = ANY4
            else:
                if not self._local_ok(addr, 6):
                    return "EADDRNOTAVAIL", f"{endpoint(addr, port)[1:].split(']')[0]} is not a local address"
                sk.v6only = True               # a specific IPv6 address sets ipv6only
                sk.rcv4 = None
        else:
            if not self._local_ok(addr, 4):    # __inet_bind checks the address first
                return "EADDRNOTAVAIL", f"{endpoint(addr, port).rsplit(':', 1)[0]} is not a local address"
            if needs_cap:
                return "EACCES", eacces
            sk.rcv4 = addr
        sk.addr = addr
        return self._get_port(sk, port)

    def _owners(self, proto: str, port: int) -> list[Sock]:
        return self.owners.setdefault((proto, port), [])

    def _conflict(self, sk: Sock, port: int, searching: bool) -> Sock | None:
        owners = self.owners.get((sk.proto, port), ())
        if sk.proto == "tcp":
            return bindrules.tcp_bind_conflict(sk, owners, relax=not searching, reuseport_ok=not searching)
        return bindrules.udp_port_inuse(sk, owners, searching=searching)

    def _get_port(self, sk: Sock, port: int) -> tuple[str, str]:
        if port == 0:
            if sk.proto == "tcp":
                cands = bindrules.bind_port_candidates(self.port_low, self.port_high, self.reserved,
                                                       self.rng, sk.reuseaddr)
            else:
                cands = bindrules.udp_port_candidates(self.port_low, self.port_high, self.reserved, self.rng)
            chosen = bindrules.first_free(cands, lambda p: self._conflict(sk, p, True) is not None)
            if chosen is None:
                return "EADDRINUSE", (f"no free port left in ip_local_port_range "
                                      f"{self.port_low}-{self.port_high}")
            sk.port = chosen
            why = f"port {chosen} chosen from ip_local_port_range {self.port_low}-{self.port_high}"
        else:
            sk.port = port
            other = self._conflict(sk, port, False)
            if other is not None:
                reason = bindrules.conflict_reason(sk, other)
                sk.port = 0
                return "EADDRINUSE", reason
            holders = [o for o in self.owners.get((sk.proto, port), ()) if o.state != "CLOSE"]
            why = (f"no other socket holds {sk.proto} port {port}" if not holders else
                   f"shares {sk.proto} port {port} with {len(holders)} socket(s): "
                   + self._share_reason(sk, holders[0]))
        self._owners(sk.proto, sk.port).insert(0, sk)
        if sk.proto == "udp":
            self._udp_hash(sk)
        return "ok", why

    @staticmethod
    def _share_reason(sk: Sock, other: Sock) -> str:
        if not rcv_saddr_equal(sk, other, True):
            return "the addresses do not overlap"
        if sk.reuseport and other.reuseport:
            return "both set SO_REUSEPORT with the same uid"
        if sk.reuseaddr and other.reuseaddr:
            return "both set SO_REUSEADDR"
        return "their bound devices differ"

    def _udp_hash(self, sk: Sock, head_only: bool = False) -> None:
        chain = self.udp.setdefault(sk.port, [])
        if sk in chain:
            chain.remove(sk)
        # udp_lib_get_port: AF_INET6 SO_REUSEPORT sockets go to the tail, others to the head.
        if sk.family == 6 and sk.reuseport and not head_only:
            chain.append(sk)
        else:
            chain.insert(0, sk)
        if sk.reuseport and sk.group is None:
            self._join_group(sk, chain)
        self._table_changed()

    def _join_group(self, sk: Sock, chain: list[Sock]) -> None:
        """``inet_reuseport_add_sock`` / ``udp_reuseport_add_sock``: join a group of the same
        family, v6only, device, uid and exact address on this port, else start one."""
        for sk2 in chain:
            if (sk2 is not sk and sk2.group is not None and sk2.family == sk.family
                    and sk2.v6only == sk.v6only and sk2.device == sk.device and sk2.reuseport
                    and sk2.uid == sk.uid and rcv_saddr_equal(sk, sk2, False)):
                sk.group = sk2.group
                sk.group.add(sk)
                return
        sk.group = lk.ReuseportGroup(sk)

    def listen(self, sk: Sock, backlog: int = 4096) -> tuple[str, str]:
        """listen(): net/ipv4/inet_connection_sock.c ``inet_csk_listen_start`` re-runs
        ``inet_csk_get_port`` with the socket now in LISTEN, so it can fail too."""
        if sk.port == 0:
            result, why = self._get_port(sk, 0)
            if result != "ok":
                return result, why
        sk.state = "LISTEN"
        sk.describe_cache = None
        other = bindrules.tcp_bind_conflict(sk, self.owners.get(("tcp", sk.port), ()), True, True)
        if other is not None:
            sk.state = "UNCONN"
            return "EADDRINUSE", bindrules.conflict_reason(sk, other)
        # sk_max_ack_backlog = min(backlog, net.core.somaxconn)
        sk.backlog = min(backlog if backlog >= 0 else self.somaxconn, self.somaxconn)
        chain = self.listeners.setdefault(sk.port, [])
        # __inet_hash: AF_INET6 SO_REUSEPORT listeners go to the tail, others to the head.
        if sk.family == 6 and sk.reuseport:
            chain.append(sk)
        else:
            chain.insert(0, sk)
        if sk.reuseport:
            self._join_group(sk, chain)
        self._table_changed()
        return "ok", f"listening on {sk.local()} with backlog {sk.backlog}"

    def source_address(self, raddr: bytes, family: int) -> bytes | None:
        """The source address a route to ``raddr`` gives (ip_route_connect): the address
        itself when local, 127.0.0.1/::1 for loopback, else the host's first address."""
        if family == 6 and is_v4mapped(raddr):
            src4 = self.source_address(raddr[12:], 4)
            return None if src4 is None else b"\x00" * 10 + b"\xff\xff" + src4
        if self.is_local(raddr):
            return b"\x7f\x00\x00\x01" if family == 4 and raddr[0] == 127 else raddr
        pool = [pack(a) for a in self.scenario.host.addresses]
        pool = [a for a in pool if len(a) == (4 if family == 4 else 16)]
        return pool[0] if pool else None

    def connect(self, sk: Sock, raddr: bytes, rport: int) -> tuple[str, str]:
        """connect(): TCP ``__inet_hash_connect`` picks a port making the 4-tuple unique;
        UDP ``ip4_datagram_connect`` sets the peer and a source address (and rehashes)."""
        src = sk.addr if not sk.wildcard else self.source_address(raddr, sk.family)
        if src is None:
            return "ENETUNREACH", f"no route to {endpoint(raddr, rport)}: the host has no address of that family"
        if sk.proto == "udp":
            if sk.port == 0:
                result, why = self._get_port(sk, 0)
                if result != "ok":
                    return "EAGAIN", why
            if sk.wildcard:
                sk.addr = src
                sk.rcv4 = src if sk.family == 4 else (src[12:] if is_v4mapped(src) else None)
                self._udp_hash(sk, head_only=True)      # udp_lib_rehash moves it to the head
            sk.raddr, sk.rport, sk.state = raddr, rport, "ESTAB"
            sk.describe_cache = None
            if sk.group is not None:
                sk.group.has_conns = True
            self._table_changed()
            return "ok", f"connected to {endpoint(raddr, rport)} from {sk.local()}"
        # TCP
        if self.is_local(raddr):
            hit, _ = lk.tcp_listener(self.listeners.get(rport, []), 4 if len(raddr) == 4 else 6,
                                     src, 0, raddr, rport, None, self.seed, None)
            if hit is None:
                return "ECONNREFUSED", f"no listener on {endpoint(raddr, rport)}: the kernel answers RST"
        if sk.port == 0:
            dest = (src, raddr, rport)
            offset = zlib.crc32(src + raddr + rport.to_bytes(2, "big"), self.seed) + self.perturb.get(dest, 0)
            for i, port in bindrules.connect_port_candidates(self.port_low, self.port_high, self.reserved, offset):
                holders = self.owners.get(("tcp", port), ())
                if any(not o.by_connect for o in holders):
                    continue          # a port bind() took is never shared by connect()
                if (src, port, raddr, rport) in self.est:
                    continue          # the 4-tuple must be unique (TIME-WAIT included)
                self.perturb[dest] = self.perturb.get(dest, 0) + i + 2
                sk.port, sk.by_connect = port, True
                self._owners("tcp", port).insert(0, sk)
                break
            else:
                return "EADDRNOTAVAIL", (f"no port of ip_local_port_range {self.port_low}-{self.port_high} "
                                         f"gives a unique 4-tuple towards {endpoint(raddr, rport)}")
        elif (src, sk.port, raddr, rport) in self.est:
            return "EADDRNOTAVAIL", f"4-tuple {endpoint(src, sk.port)} -> {endpoint(raddr, rport)} is in use"
        sk.addr = src
        sk.rcv4 = src if sk.family == 4 else (src[12:] if is_v4mapped(src) else None)
        sk.raddr, sk.rport, sk.state = raddr, rport, "ESTAB"
        sk.describe_cache = None
        key = (src, sk.port, raddr, rport)
        c = Conn(key, sk.family, ts.ESTAB, sk.proc, sk.fd, "connection of " + sk.owner(), sock=sk)
        self.est[key] = c
        return "ok", f"connected to {endpoint(raddr, rport)} from {sk.local()}"

    def connect_capacity(self, raddr: bytes, rport: int, time_wait: int = 0) -> dict:
        """How many concurrent connect()s one source address can open towards
        ``raddr:rport`` before EADDRNOTAVAIL (the NAT question), from the same rules
        ``connect`` applies: the walk of ``__inet_hash_connect`` over an even-sized
        ip_local_port_range, minus reserved ports, ports bind() holds and 4-tuples in
        use; ``time_wait`` more connections closed in the last 60 s hold theirs too,
        unless net.ipv4.tcp_tw_reuse allows reuse (2, the default: loopback only)."""
        family = 4 if len(raddr) == 4 else 6
        src = self.source_address(raddr, family)
        if src is None:
            raise ValueError("no source address of that family")
        walk = [port for _, port in bindrules.connect_port_candidates(self.port_low, self.port_high,
                                                                      set(), 0)]
        reserved = sum(1 for port in walk if port in self.reserved)
        bound = sum(1 for port in walk if port not in self.reserved
                    and any(not o.by_connect for o in self.owners.get(("tcp", port), ())))
        in_use = sum(1 for (a, lp, ra, rp) in self.est if a == src and ra == raddr and rp == rport)
        tw_reuse = int(self.scenario.sysctl["net.ipv4.tcp_tw_reuse"])
        loopback = raddr[0] == 127 if family == 4 else raddr == LOOPBACK6
        tw_held = 0 if (tw_reuse == 1 or (tw_reuse == 2 and loopback)) else time_wait
        usable = len(walk) - reserved - bound
        free = max(usable - in_use - tw_held, 0)
        return {"source": unpack(src), "destination": endpoint(raddr, rport),
                "port_range": f"{self.port_low}-{self.port_high}", "ports_walked": len(walk),
                "reserved": reserved, "held_by_bind": bound, "usable": usable,
                "established": in_use, "time_wait": tw_held, "free": free,
                "per_second_sustained": round(usable / ts.TIME_WAIT_SECONDS, 1) if tw_held else None}

    def _forget(self, sk: Sock) -> None:
        for table in (self.owners.get((sk.proto, sk.port)), self.listeners.get(sk.port) if sk.proto == "tcp" else None,
                      self.udp.get(sk.port) if sk.proto == "udp" else None):
            if table is not None and sk in table:
                table.remove(sk)
        if sk.group is not None:
            sk.group.detach(sk)
            sk.group = None
        if sk in self.clients:
            self.clients.remove(sk)
        self._table_changed()

    def close(self, sk: Sock) -> None:
        """close(): a listener's pending and unaccepted connections go with it
        (``inet_csk_listen_stop``); accepted connections live on."""
        self._forget(sk)
        if sk.state == "LISTEN":
            for key, c in list(self.est.items()):
                if c.listener is sk and (c.state == ts.SYN_RECV or c.queued):
                    del self.est[key]
        if sk.proc is not None:
            sk.proc.free_fd(sk.fd)
        sk.state = "CLOSE"
        sk.describe_cache = None

    # ---- the lookup, as a question (tests, explain) --------------------------------

    def lookup(self, proto: str, src: str, sport: int, dst: str, dport: int,
               ifname: str | None = None) -> Lookup:
        """Which socket(s) would receive a SYN / datagram from src:sport to dst:dport."""
        s, d = pack(src), pack(dst)
        family = 4 if len(d) == 4 else 6
        steps: list[str] = []
        if proto == "tcp":
            c = self.est.get((d, dport, s, sport))
            if c is not None:
                steps.append(f"established hash: {c.describe()}")
                return Lookup([c.sock or c.listener], None, steps)
            steps.append("established hash: no entry for this 4-tuple")
            sk, _ = lk.tcp_listener(self.listeners.get(dport, []), family, s, sport, d, dport, ifname, self.seed, steps)
            return Lookup([sk] if sk else [], None if sk else "rst", steps)
        if self.is_broadcast(d, False):
            socks = lk.udp_multicast(self.udp.get(dport, []), family, s, sport, d, ifname, steps)
            return Lookup(socks, None, steps)
        sk, _ = lk.udp_unicast(self.udp.get(dport, []), family, s, sport, d, dport, ifname, self.seed, steps)
        return Lookup([sk] if sk else [], None if sk else "icmp-port-unreachable", steps)

    def is_broadcast(self, d: bytes, link_bcast: bool = False) -> bool:
        """A broadcast or multicast destination, delivered to every matching socket."""
        if len(d) == 4:
            return d in self.bcast4 or 224 <= d[0] <= 239 or (link_bcast and d not in self.local4)
        return d[0] == 0xFF

    # ---- packets ---------------------------------------------------------------------

    def ephemeral_note(self, port: int) -> str:
        cat = "well-known" if port < 1024 else "registered" if port < 49152 else "dynamic"
        inside = "in" if self.port_low <= port <= self.port_high else "outside"
        return f"port {port} ({cat}, {inside} the ephemeral range {self.port_low}-{self.port_high})"

    def expire(self, now: float) -> None:
        """The kernel's timers up to ``now``: request sockets past their SYN-ACK retries
        and TIME-WAIT sockets past 60 s leave the established hash (``inet_twsk_kill``,
        ``reqsk_timer_handler``), so memory follows live connections, not the capture."""
        timers, est = self.timers, self.est
        while timers and timers[0][0] <= now:
            expiry, _, c = heapq.heappop(timers)
            if c.expire == expiry and est.get(c.key) is c:
                self._drop_conn(c)

    def _arm(self, c: Conn) -> None:
        self._serial += 1
        heapq.heappush(self.timers, (c.expire, self._serial, c))

    def input(self, p, now: float, steps: list | None = None) -> Verdict:
        """A packet whose destination is local."""
        if self.timers and self.timers[0][0] <= now:
            self.expire(now)
        if p.proto == 6:
            return self._tcp_in(p, now, steps)
        return self._udp_in(p, now, steps)

    def output(self, p, now: float, steps: list | None = None) -> Verdict:
        """A packet the host sent."""
        if self.timers and self.timers[0][0] <= now:
            self.expire(now)
        if p.proto == 6:
            return self._tcp_out(p, now, steps)
        return self._udp_out(p, now, steps)

    # TCP ------------------------------------------------------------------------------

    def _listener(self, ifname, local: bytes, lport: int, remote: bytes, rport: int,
                  steps: list | None = None) -> tuple[Sock | None, str | None]:
        """``__inet_lookup_listener`` for a segment from remote:rport to local:lport:
        (listener or None, the reason a verdict gives). Everything before the flow hash
        depends on the local end only, so that is kept per local end until the table
        changes; a flow then costs one dict lookup (and one CRC in a SO_REUSEPORT group)."""
        if steps is not None:
            l, exact = lk.tcp_listener(self.listeners.get(lport, ()), 4 if len(local) == 4 else 6, remote,
                                       rport, local, lport, ifname, self.seed, steps)
            return l, (self._listener_reason(l, exact, local, lport) if l is not None else None)
        m = self._tcp_matches.get((local, lport, ifname)) or self._tcp_match(local, lport, ifname)
        if m.picks is None:
            return m.found
        # reuseport_select_sock_by_hash: reciprocal_scale(flow hash, group size), with
        # lookup.flow_hash's second half written out (tests/test_kernel_rules.py holds
        # the two together).
        return m.picks[(_crc32(remote, m.base ^ rport) * m.n) >> 32]

    def _tcp_match(self, local: bytes, lport: int, ifname) -> _Match:
        sk, exact = lk.tcp_listener(self.listeners.get(lport, ()), 4 if len(local) == 4 else 6, b"", 0,
                                    local, lport, ifname, self.seed, None, pick=False)
        m = _Match()
        m.found, m.picks, m.n, m.base = (None, None), None, 0, 0
        if sk is not None and sk.group is not None:
            m.picks = tuple((member, self._listener_reason(member, exact, local, lport))
                            for member in sk.group.socks)
            m.n = len(m.picks)
            m.base = lk.flow_hash_base(self.seed, local, lport)
        elif sk is not None:
            m.found = (sk, self._listener_reason(sk, exact, local, lport))
        self._tcp_matches[(local, lport, ifname)] = m
        return m

    def _udp_lookup(self, p, local: bytes, lport: int, remote: bytes, rport: int, steps):
        if steps is not None or lport in self._udp_connected_ports:
            return lk.udp_unicast(self.udp.get(lport, ()), 4 if len(local) == 4 else 6, remote, rport, local,
                                  lport, p.ifname, self.seed, steps)
        sk, exact = self._udp_local(local, lport, p.ifname)
        if sk is not None and sk.group is not None:
            picked = lk.reuseport_select(sk.group, lk.flow_hash(self.seed, remote, rport, local, lport), None)
            sk = picked or sk
        return sk, exact

    def _udp_local(self, local: bytes, lport: int, ifname) -> tuple:
        """The UDP lookup by the local end alone (socket or SO_REUSEPORT group, exact),
        where no connected socket shares the port: kept until the table changes."""
        key = ("udp", local, lport, ifname)
        hit = self._lcache.get(key)
        if hit is None:
            hit = self._lcache[key] = lk.udp_unicast(self.udp.get(lport, ()), 4 if len(local) == 4 else 6, b"", 0,
                                                     local, lport, ifname, self.seed, None, pick=False)
        return hit

    def udp_any_peer(self, p, direction: str) -> bool:
        """Whether every peer's unicast datagram to ("in") or from ("out") the local end of
        datagram ``p`` gets the verdict ``p`` got, while the socket table stays as it is,
        so a faster engine may give it to a new flow there without asking. So it is when
        ``_udp_lookup`` finds a bound socket by the local end alone: no connected UDP
        socket on the port (``udp4_lib_lookup2`` scores those by the peer), no SO_REUSEPORT
        group of several (the flow hash picks a member), not broadcast or multicast
        (``udp_multicast`` matches each socket's peer), and no socket claimed or made for
        it (``_claim_client`` and the implicit sockets change the table)."""
        local, lport = (p.dst, p.dport) if direction == "in" else (p.src, p.sport)
        if lport in self._udp_connected_ports or direction == "in" and self.is_broadcast(p.dst, p.link_bcast):
            return False
        sk, _ = self._udp_local(local, lport, p.ifname)
        return sk is not None and (sk.group is None or len(sk.group.socks) == 1)

    def _table_changed(self) -> None:
        """Every change to the socket table comes here: caches of lookups are dropped and
        ``generation`` moves on (the batch engine watches it)."""
        self.generation += 1
        self._lcache.clear()
        self._tcp_matches.clear()
        self._udp_connected_ports = {sk.port for chain in self.udp.values() for sk in chain
                                     if sk.raddr is not None}

    @staticmethod
    def _listener_reason(l: Sock, exact: bool, local: bytes, lport: int) -> str:
        if exact:
            r = f"listener {l.local()} (exact address)"
        else:
            r = f"listener {l.local()} (wildcard; no listener on {endpoint(local, lport)})"
        if l.group is not None and len(l.group.socks) > 1:
            r += f"; SO_REUSEPORT member {l.group.socks.index(l) + 1} of {len(l.group.socks)} by flow hash"
        return r

    @staticmethod
    def _synq_full(l: Sock, now: float) -> bool:
        """``inet_csk_reqsk_queue_is_full``: half-open requests >= the backlog; request
        sockets past their SYN-ACK retries are forgotten first."""
        q = l.synq
        while q:
            key, expire = next(iter(q.items()))
            if expire > now:
                break
            del q[key]
        return len(q) >= max(l.backlog, 1)

    def _drop_conn(self, c: Conn) -> None:
        if c.listener is not None:
            c.listener.synq.pop(c.key, None)
        self.est.pop(c.key, None)
        self._dequeue(c)
        # Its start was seen, so a late segment of it is no connection that began before
        # the capture (_midstream). The most recent ones are enough: stragglers come soon.
        ended = self.ended
        ended.pop(c.key, None)
        ended[c.key] = None
        if len(ended) > _ENDED_KEPT:
            del ended[next(iter(ended))]

    @staticmethod
    def _dequeue(c: Conn) -> None:
        """The connection leaves its listener's accept queue."""
        if c.queued and c.listener is not None:
            c.listener.queued -= 1
            c.queued = False

    def _established(self, key: tuple, now: float, steps) -> Conn | None:
        """``__inet_lookup_established``: the exact 4-tuple; SYN-RECV and TIME-WAIT
        entries past their time are gone (their timers would have fired)."""
        c = self.est.get(key)
        if c is not None and c.expire and now >= c.expire:
            if steps is not None:
                steps.append(f"established hash: {c.describe()} expired at {c.expire:.6f}")
            self._drop_conn(c)
            return None
        return c

    @staticmethod
    def steady(c: Conn, direction: str) -> tuple[int, int, float, int] | None:
        """Which segments of connection ``c`` travelling ``direction`` ("in"/"out") change
        nothing in any table, so a faster engine may give them ``steady_verdict``
        without asking again: those whose flags byte ``& mask == value``, arriving before
        ``until`` (absolute seconds; a timer ends the entry then). The last item says
        what such a segment still records, the only thing it updates: KEEPS_RCV, it
        moves ``rcv_nxt`` and the newest timestamp (kept for TIME-WAIT's reopening
        test); KEEPS_ISN, the first one's sequence number is our ISN (``snd_isn``, which
        the handshake's last ACK must acknowledge); KEEPS_WUP, the acknowledgment number
        of the latest one is ``rcv_wup``; else KEEPS_NOTHING. A segment coming in whose
        other direction keeps ``rcv_wup`` is steady only if it is not old by it (``_old``:
        it ends after it, or at it without data); with KEEPS_RCV, while ``rcv_exact``,
        only if it does not start past ``rcv_nxt`` and, with data, ends past it (a copy is
        ``_old``'s, a segment past it ends ``rcv_exact``: ``_received``; once ``rcv_nxt``
        is not exact, both are taken as any other). One going out with KEEPS_WUP is
        steady only if it does not acknowledge less than the receiving side's ``rcv_nxt``
        while that is exact (``_sent`` ends ``rcv_exact`` then). None: any segment may change
        something. The paths this summarises, which use ``steady_verdict`` (the straight
        paths build the open-connection verdict inline: it is the hot path;
        tests/test_batch.py holds the cache to them packet for packet):

        - a plain segment (no SYN, FIN, RST; with ACK when it comes in) on ESTAB or
          CLOSE-WAIT with no FIN of ours outstanding and an open window (one going out
          that offers a zero window is not steady: the cache must see its window field):
          ``_tcp_in``/``_tcp_out``'s straight path;
        - a request socket (SYN-RECV): a retransmitted SYN in is answered again
          (``_conn_in``), and a SYN-ACK out is its answer (``_conn_out``);
        - TIME-WAIT: a plain segment out is the TIME-WAIT socket's (one in restarts the
          timer, ``tcp_timewait_state_process``)."""
        st = c.state
        if st in _QUIET:
            if c.expire or c.fin_out is not None or c.rcv_zero:
                return None               # (a zero window: _beyond_zero_window; the update out ends it)
            if direction == "in":
                if st == ts.CLOSE_WAIT:
                    return None           # (data after the peer's FIN is discarded: _conn_in)
                return _SYN_FIN_RST_ACK, ACK, _INF, KEEPS_RCV     # (without ACK: discarded, _conn_in)
            return _SYN_FIN_RST, 0, _INF, KEEPS_WUP
        if not c.expire:
            return None
        if st == ts.SYN_RECV:
            if direction == "out":       # (a RST from it is not: _conn_out)
                return SYN | RST, SYN, c.expire, (KEEPS_ISN if c.snd_isn is None else KEEPS_NOTHING)
            return SYN | ACK | RST, SYN, c.expire, KEEPS_NOTHING
        if st == ts.TIME_WAIT and direction == "out":
            # (a segment in restarts the timer: inet_twsk_reschedule)
            return _SYN_FIN_RST, 0, c.expire, KEEPS_NOTHING
        return None

    @staticmethod
    def steady_verdict(c: Conn, direction: str) -> Verdict:
        """The verdict of the segments ``steady`` names. Its verdict and process depend
        only on ``direction``, ``c.state`` and ``c.proc`` (the batch engine's summary
        counts them by those)."""
        st = c.state
        if st == ts.SYN_RECV:
            l = c.listener
            sock = l.describe() if l else c.describe()
            if direction == "out":
                return Verdict("outbound", "SYN-ACK from the request socket; " + c.reason, c.proc, c.fd, sock,
                               ts.SYN_RECV)
            return Verdict("deliver", "retransmitted SYN: the pending request socket answers again; "
                           + c.reason, c.proc, c.fd, sock, ts.SYN_RECV)
        if st == ts.TIME_WAIT:
            return Verdict("outbound", "sent by the TIME-WAIT socket (no process owns it)",
                           socket=c.describe(), state=ts.TIME_WAIT)
        return Verdict("deliver" if direction == "in" else "outbound", c.reason, c.proc, c.fd, c.describe(), st)

    def _tw_reschedule(self, c: Conn, now: float) -> None:
        """``inet_twsk_reschedule(tw, TCP_TIMEWAIT_LEN)``: the TIME-WAIT timer starts over."""
        c.expire = now + ts.TIME_WAIT_SECONDS
        self._arm(c)

    def _tcp_in(self, p, now, steps) -> Verdict:
        key = (p.dst, p.dport, p.src, p.sport)
        flags = p.flags
        c = self.est.get(key)
        if (c is not None and flags & _SYN_FIN_RST_ACK == ACK and not c.expire and c.fin_out is None
                and c.state == ts.ESTAB and steps is None and not c.rcv_zero
                and not _old_kind(c.rcv_wup, (end := (p.seq + p.payload_len) & 0xFFFFFFFF), p.payload_len,
                                  c.rcv_nxt if c.rcv_exact else 0)):
            # The common case: data or an ACK on an open connection changes no state
            # (what _conn_in would do for it, without the detour; an old one goes there,
            # and CLOSE-WAIT's, which may bring data after the peer's FIN).
            _received(c, p, end)
            if p.tsval is not None:
                c.tsval = p.tsval
            # steady_verdict's open-connection case, inline on the hottest path.
            return Verdict("deliver", c.reason, c.proc, c.fd, c.describe(), c.state)
        c = self._established(key, now, steps)
        prefix = ""
        if c is not None:
            if steps is not None:
                steps.append(f"established hash: exact 4-tuple hit: {c.describe()}")
            if c.state != ts.TIME_WAIT:
                return self._conn_in(c, p, now, steps)
            # tcp_timewait_state_process. PAWS: with timestamps on both sides, a segment
            # with an older TSval than the last one seen is rejected.
            paws_reject = p.tsval is not None and c.tsval is not None and _seq_after(c.tsval, p.tsval)
            if (not paws_reject and p.seq == c.rcv_nxt
                    and (flags & RST or not p.payload_len and not flags & (SYN | FIN))):
                # "In window segment, it may be only reset or bare ack."
                if flags & RST:
                    self._drop_conn(c)
                    return Verdict("drop", "RST ends the TIME-WAIT socket (net.ipv4.tcp_rfc1337=0)",
                                   socket=c.describe(), state=ts.CLOSE)
                self._tw_reschedule(c, now)
                return Verdict("drop", f"bare ACK in window for {c.describe()[4:]}: the 60 s timer "
                               "restarts, nothing is sent (tcp_timewait_state_process)",
                               socket=c.describe(), state=ts.TIME_WAIT)
            # With timestamps on both sides only a newer TSval reopens; else a higher seq.
            newer = (_seq_after(p.tsval, c.tsval) if p.tsval is not None and c.tsval is not None
                     else _seq_after(p.seq, c.rcv_nxt))
            if flags & SYN and not flags & (ACK | RST) and newer:
                self._drop_conn(c)
                prefix = "new SYN reopens the TIME-WAIT 4-tuple; "
                if steps is not None:
                    steps.append("TIME-WAIT: SYN with a higher sequence number: TCP_TW_SYN, "
                                 "the lookup goes on to the listeners")
            elif flags & RST:
                return Verdict("drop", f"RST out of window for {c.describe()[4:]}: ignored "
                               "(tcp_timewait_state_process)", socket=c.describe(), state=ts.TIME_WAIT)
            else:
                if paws_reject or flags & ACK:
                    self._tw_reschedule(c, now)
                return Verdict("drop", f"segment for {c.describe()[4:]}: answered with an ACK and dropped "
                               "(tcp_timewait_state_process)", socket=c.describe(), state=ts.TIME_WAIT)
        elif steps is not None:
            steps.append("established hash: no entry for this 4-tuple")
        if flags & SYN and not flags & (ACK | RST):
            l, reason = self._listener(p.ifname, p.dst, p.dport, p.src, p.sport, steps)
            if l is None:
                return Verdict("reject", prefix + f"no socket listens on tcp {endpoint(p.dst, p.dport)}: "
                               f"the kernel answers RST ({_SEND_RESET[p.family]})", reply="rst")
            if flags & FIN:
                # tcp_rcv_state_process, TCP_LISTEN: "if (th->fin) goto discard".
                return Verdict("drop", prefix + f"SYN with FIN for listener {l.local()}: discarded "
                               "(tcp_rcv_state_process)", l.proc, l.fd, l.describe(), ts.LISTEN)
            if prefix:
                reason = prefix + reason
            # tcp_conn_request: a full accept queue drops the SYN (LISTEN_OVERFLOWS).
            if l.queued > l.backlog:
                return Verdict("drop", f"accept queue of {l.local()} full ({l.queued} waiting, backlog "
                               f"{l.backlog}): SYN dropped (ListenOverflows)", proc=l.proc, fd=l.fd,
                               socket=l.describe(), state=ts.LISTEN)
            # tcp_conn_request: a full request queue (inet_csk_reqsk_queue_is_full) answers
            # with a SYN cookie and keeps no request socket, or drops without cookies.
            if self._synq_full(l, now):
                if not self.syncookies:
                    return Verdict("drop", f"request queue of {l.local()} full ({len(l.synq)} half-open, "
                                   f"backlog {l.backlog}) and net.ipv4.tcp_syncookies=0: SYN dropped",
                                   l.proc, l.fd, l.describe(), ts.LISTEN)
                if len(self.cookies) > 65536:
                    self.cookies.clear()
                self.cookies[key] = l
                return Verdict("deliver", f"{reason}; request queue full ({len(l.synq)} half-open, backlog "
                               f"{l.backlog}): answered with a SYN cookie, no request socket kept",
                               l.proc, l.fd, l.describe(), ts.LISTEN)
            c = Conn(key, p.family, ts.SYN_RECV, l.proc, l.fd, reason, listener=l)
            c.expire = now + ts.SYN_RECV_SECONDS
            c.rcv_start = (p.seq + 1) & 0xFFFFFFFF
            c.rcv_nxt = (c.rcv_start + p.payload_len) & 0xFFFFFFFF
            c.rcv_exact = not p.payload_len     # (without Fast Open the kernel drops a SYN's data)
            c.tsval = p.tsval
            self.est[key] = c
            self._arm(c)
            l.synq[key] = c.expire
            return Verdict("deliver", reason, l.proc, l.fd, l.describe(), ts.SYN_RECV)
        if flags & RST:
            l, _ = self._listener(p.ifname, p.dst, p.dport, p.src, p.sport, steps)
            if l is not None:
                return Verdict("drop", f"RST without a connection: listener {l.local()} ignores it",
                               l.proc, l.fd, l.describe(), ts.LISTEN)
            return Verdict("reject", f"RST to tcp {endpoint(p.dst, p.dport)} with no socket: "
                           "nothing is sent back to a RST")
        # tcp_v4_cookie_check: only a segment without SYN can carry a cookie's final ACK.
        l = self.cookies.pop(key, None) if flags & (ACK | SYN) == ACK else None
        if l is not None and l.state == "LISTEN":
            # cookie_v4_check: the final ACK carries the cookie; the child is made now.
            if l.queued > l.backlog:
                return Verdict("drop", f"accept queue of {l.local()} full: the SYN cookie's final ACK "
                               "is dropped", l.proc, l.fd, l.describe(), ts.LISTEN)
            c = Conn(key, p.family, ts.SYN_RECV, l.proc, l.fd,
                     f"SYN cookie checked on the final ACK; listener {l.local()}", listener=l)
            c.rcv_start = p.seq           # the final ACK carries the peer's first sequence after its SYN
            self.est[key] = c
            return self._conn_in(c, p, now, steps)
        if not flags & (ACK | SYN):
            # Every segment after a handshake carries ACK, so this one (a null, FIN or
            # Xmas probe) cannot be a connection that began before the capture: a
            # listener discards it (tcp_rcv_state_process, TCP_LISTEN takes only SYN,
            # ACK and RST); with no socket the kernel answers RST.
            l, _ = self._listener(p.ifname, p.dst, p.dport, p.src, p.sport, steps)
            what = f"segment without ACK ({flag_string(flags)})"
            if l is not None:
                return Verdict("drop", f"{what} for listener {l.local()}: discarded (tcp_rcv_state_process)",
                               l.proc, l.fd, l.describe(), ts.LISTEN)
            return Verdict("reject", f"{what} to tcp {endpoint(p.dst, p.dport)}, no connection and no "
                           f"listener: the kernel answers RST ({_SEND_RESET[p.family]})", reply="rst")
        if flags & SYN:
            # A SYN-ACK with no connection: the listener answers RST (TCP_LISTEN: "if
            # (th->ack) return 1"), it does not start one.
            l, _ = self._listener(p.ifname, p.dst, p.dport, p.src, p.sport, steps)
            if l is not None:
                return Verdict("reject", f"SYN-ACK for listener {l.local()} with no connection: the kernel "
                               "answers RST (tcp_rcv_state_process)", reply="rst")
        # A segment of a connection whose start is not in the capture.
        return self._midstream(p, p.dst, p.dport, p.src, p.sport, now, "in", steps)

    def _claim_client(self, proto, local, lport, remote, rport, sent: bool) -> Sock | None:
        """A scenario socket connect()ed to ``remote:rport`` whose local port (or source
        address) was the emulator's guess: the capture shows the real one, so adopt it.
        Only what the scenario left open is adopted: a port asked as 0, and a source
        address that routing chose, the latter only from a packet the host ``sent``
        (a datagram *to* another local address never reaches a connected socket)."""
        for sk in self.clients:
            if (sk.proto != proto or sk.claimed or sk.raddr is None or sk.rport != rport
                    or not (sk.raddr == remote or sk.raddr[12:] == remote)):
                continue
            bound = sk.spec.bind if sk.spec is not None else None
            port_guessed = bound is None or bound.port == 0
            addr_guessed = bound is None or bound.wildcard
            same_addr = sk.addr == local or sk.addr[12:] == local
            if (sk.port == lport or port_guessed) and (same_addr or (addr_guessed and sent)):
                sk.claimed = True
                if sk.port != lport or not same_addr:
                    if proto == "tcp":
                        old = (sk.addr, sk.port, sk.raddr, sk.rport)
                        self.est.pop(old, None)
                    self._rebind(sk, local, lport)
                return sk
        return None

    def _rebind(self, sk: Sock, addr: bytes, port: int) -> None:
        for table in (self.owners.get((sk.proto, sk.port)), self.udp.get(sk.port) if sk.proto == "udp" else None):
            if table is not None and sk in table:
                table.remove(sk)
        if sk.family == 6 and len(addr) == 4:
            addr = b"\x00" * 10 + b"\xff\xff" + addr
        sk.addr, sk.port = addr, port
        sk.rcv4 = addr if len(addr) == 4 else (addr[12:] if is_v4mapped(addr) else None)
        sk.describe_cache = None
        self._owners(sk.proto, port).insert(0, sk)
        if sk.proto == "udp":
            self._udp_hash(sk, head_only=True)
        self._table_changed()

    def _midstream(self, p, local, lport, remote, rport, now, direction, steps) -> Verdict:
        key = (local, lport, remote, rport)
        if key in self.ended:
            # A late segment of a connection that ended in the capture: no socket holds the
            # 4-tuple, and one with ACK meets a listener's or no socket's RST (TCP_LISTEN:
            # "if (th->ack) return 1"; tcp_v4_send_reset).
            if direction == "in":
                return Verdict("reject", f"the connection tcp {endpoint(local, lport)} {endpoint(remote, rport)} "
                               "ended earlier in the capture; no socket holds it: the kernel answers RST "
                               f"({_SEND_RESET[p.family]})", reply="rst")
            return Verdict("outbound", f"on tcp {endpoint(local, lport)} {endpoint(remote, rport)}, whose "
                           "connection ended earlier in the capture: no socket owns it")
        sk = self._claim_client("tcp", local, lport, remote, rport, direction == "out")
        if sk is not None:
            c = Conn(key, p.family, ts.ESTAB, sk.proc, sk.fd,
                     f"connection of {sk.owner()} (assumed established: its handshake is not in the capture)",
                     sock=sk)
        else:
            l, reason = self._listener(p.ifname, local, lport, remote, rport, steps)
            if l is not None:
                c = Conn(key, p.family, ts.ESTAB, l.proc, None,
                         "assumed established (handshake before the capture); accepted from " + reason,
                         listener=l)
                self._accept(c, l)
            elif self.port_low <= lport <= self.port_high and not self.owners.get(("tcp", lport)):
                c = Conn(key, p.family, ts.ESTAB, None, None,
                         f"unknown local client: {self.ephemeral_note(lport)}; assumed established "
                         "(its SYN is not in the capture)")
            elif direction == "in":
                return Verdict("reject", f"no connection and no listener for tcp {endpoint(local, lport)}: "
                               f"the kernel answers RST ({_SEND_RESET[p.family]})", reply="rst")
            else:
                c = Conn(key, p.family, ts.ESTAB, None, None,
                         f"unknown local socket on {self.ephemeral_note(lport)}; assumed established")
        if steps is not None:
            steps.append(c.reason)
        self.est[key] = c
        return self._conn_in(c, p, now, steps) if direction == "in" else self._conn_out(c, p, now, steps)

    def _accept(self, c: Conn, l: Sock) -> None:
        """The completed connection joins the accept queue; a process that calls accept()
        takes it at once and gets the lowest free descriptor."""
        if l.accept and l.proc is not None and l.state == "LISTEN":
            c.fd = l.proc.alloc_fd()
        else:
            c.queued = True
            l.queued += 1

    @staticmethod
    def _event(flags: int, ack: int, c: Conn) -> str:
        if flags & RST:
            return ts.RST
        if flags & SYN:
            return ts.SYNACK if flags & ACK else ts.SYN
        acks_fin = bool(flags & ACK) and c.fin_out is not None and _ack_covers(ack, c.fin_out)
        if flags & FIN:
            return ts.FIN_ACK_FIN if acks_fin else ts.FIN
        return ts.ACK_FIN if acks_fin else ts.ACK

    @staticmethod
    def _handshake_ack(c: Conn, p) -> Verdict | None:
        """A segment on a connection whose SYN or SYN-ACK we sent: the verdict when the
        handshake's rules discard it, else None. Only ISN+1 acknowledges our SYN.

        - SYN-RECV (``tcp_check_req``): a segment with ACK, without RST, that
          acknowledges anything else goes to the listener, which answers RST (``if
          (th->ack) return 1`` in TCP_LISTEN); the request socket stays. (A RST ends the
          request whatever it acknowledges: measured on 6.18.)
        - SYN-SENT (``tcp_rcv_synsent_state_process``): such an ACK gets a RST
          (reset_and_undo), one with RST is ignored; a RST without ACK and an ACK
          without SYN are discarded. The socket stays in SYN-SENT."""
        flags = p.flags
        isn = c.snd_isn
        syn_recv = c.state == ts.SYN_RECV
        if (flags & ACK and isn is not None and p.ack != (isn + 1) & 0xFFFFFFFF
                and not (syn_recv and flags & RST)):
            sock = c.listener.describe() if syn_recv and c.listener else c.describe()
            if flags & RST:
                return Verdict("drop", f"RST acknowledges {p.ack}, not our SYN ({(isn + 1) & 0xFFFFFFFF}): "
                               f"ignored (tcp_rcv_synsent_state_process); {c.describe()[4:]} stays",
                               c.proc, c.fd, sock, c.state)
            who = ("tcp_check_req hands it to the listener, which" if syn_recv
                   else "tcp_rcv_synsent_state_process: the socket")
            return Verdict("drop", f"ACK {p.ack} is not ISN+1 ({(isn + 1) & 0xFFFFFFFF}): {who} answers RST "
                           f"({_SEND_RESET[c.family]}); {c.describe()[4:]} stays", c.proc, c.fd, sock,
                           c.state, reply="rst")
        if c.state == ts.SYN_SENT:
            if flags & RST and not flags & ACK:
                return Verdict("drop", f"RST without ACK for {c.describe()[4:]}: ignored "
                               "(tcp_rcv_synsent_state_process)", c.proc, c.fd, c.describe(), c.state)
            if flags & ACK and not flags & (SYN | RST):
                return Verdict("drop", f"ACK without SYN for {c.describe()[4:]}: discarded "
                               "(tcp_rcv_synsent_state_process)", c.proc, c.fd, c.describe(), c.state)
        return None

    def _conn_in(self, c: Conn, p, now, steps) -> Verdict:
        flags = p.flags
        if not flags & (ACK | SYN | RST):
            # tcp_rcv_state_process / tcp_rcv_established: "if (!th->ack && !th->rst &&
            # !th->syn) goto discard" (a request socket's tcp_check_req likewise).
            return Verdict("drop", f"segment without ACK ({flag_string(flags)}) for {c.describe()[4:]}: "
                           "discarded (tcp_rcv_state_process)", c.proc, c.fd, c.describe(), c.state)
        if c.state not in _UNSYNCHRONIZED and c.rcv_nxt:
            # tcp_validate_incoming (RFC 5961): in a synchronized state a SYN is answered
            # with a challenge ACK and discarded; a RST resets only at exactly rcv_nxt
            # (in the window otherwise: a challenge ACK; outside it: ignored), or at
            # rcv_nxt - 1 once the peer's FIN is in (tcp_reset_check). A zero window is
            # checked first (tcp_sequence): a RST with data past its edge is discarded.
            reset_check = c.state in _PEER_FIN_IN and p.seq == (c.rcv_nxt - 1) & 0xFFFFFFFF
            if flags & RST and c.rcv_zero and not reset_check:
                why = _beyond_zero_window(c, p)
                if why is not None:
                    return Verdict("drop", why, c.proc, c.fd, c.describe(), c.state)
            if flags & RST and p.seq != c.rcv_nxt and not reset_check:
                return Verdict("drop", f"RST at sequence {p.seq}, not rcv_nxt {c.rcv_nxt}, for "
                               f"{c.describe()[4:]}: no reset; a challenge ACK if it is in the window "
                               "(tcp_validate_incoming, RFC 5961)", c.proc, c.fd, c.describe(), c.state)
            if flags & SYN and not flags & RST:
                return Verdict("drop", f"SYN on {c.describe()[4:]}: answered with a challenge ACK and "
                               "discarded (tcp_validate_incoming, RFC 5961)", c.proc, c.fd, c.describe(),
                               c.state)
        if c.state not in _UNSYNCHRONIZED and not flags & (SYN | RST):
            old = _old(c, p, (p.seq + p.payload_len + (1 if flags & FIN else 0)) & 0xFFFFFFFF)
            if old is not None:
                if old[1]:
                    return Verdict("drop", old[0], c.proc, c.fd, c.describe(), c.state)
                flags &= ~FIN             # an old FIN: only the ACK counts
            elif c.rcv_zero:
                why = _beyond_zero_window(c, p)
                if why is not None:
                    return Verdict("drop", why, c.proc, c.fd, c.describe(), c.state)
        else:
            old = None
        # Data from rcv_nxt on once the peer's FIN is in: only its ACK counts (below).
        after_fin = bool(p.payload_len and c.state in _PEER_FIN_IN and c.rcv_nxt
                         and not _before(p.seq, c.rcv_nxt))
        if c.state in _UNSYNCHRONIZED:
            v = self._handshake_ack(c, p)
            if v is not None:
                return v
        ev = self._event(flags, p.ack, c)
        end = (p.seq + p.payload_len + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        if c.state == ts.SYN_RECV:
            l = c.listener
            if ev == ts.SYN:
                return self.steady_verdict(c, "in")
            if ev == ts.RST:
                self._drop_conn(c)
                return Verdict("deliver", "RST aborts the half-open connection", c.proc, c.fd,
                               l.describe() if l else c.describe(), ts.CLOSE)
            if ev == ts.SYNACK:
                return Verdict("drop", "SYN-ACK for a request socket: dropped", c.proc, c.fd,
                               c.describe(), ts.SYN_RECV)
            # tcp_check_req -> tcp_v4_syn_recv_sock: a full accept queue drops the final ACK.
            if l is not None and c.sock is None and l.queued > l.backlog:
                return Verdict("drop", f"accept queue of {l.local()} full ({l.queued} waiting, backlog "
                               f"{l.backlog}): final ACK dropped, the connection stays half-open "
                               "(tcp_abort_on_overflow=0)", c.proc, l.fd, l.describe(), ts.SYN_RECV)
            c.expire = 0.0
            # tcp_create_openreq_child: the new socket's rcv_wup is rcv_nxt, ISN+1.
            if c.rcv_start is not None:
                c.rcv_wup = c.rcv_start
            if l is not None:
                l.synq.pop(c.key, None)
            if l is not None and c.sock is None:
                c.fd = None
                self._accept(c, l)
        new = ts.next_state(c.state, "in", ev)
        if c.state == ts.SYN_SENT and new != ts.SYN_SENT and flags & SYN:
            # tcp_rcv_synsent_state_process: rcv_nxt = rcv_wup = SEQ+1; data in the SYN-ACK
            # is not taken (without Fast Open).
            c.rcv_nxt = c.rcv_wup = end = (p.seq + 1) & 0xFFFFFFFF
            c.rcv_exact = True
        if not after_fin:
            _received(c, p, end)
        if p.tsval is not None:
            c.tsval = p.tsval
        v = self._settle(c, new, now, "deliver")
        if old is not None:
            v.verdict, v.reason = "drop", old[0]
        elif after_fin:
            # tcp_rcv_state_process, step 7: the peer sent its FIN, so nothing from
            # rcv_nxt on is queued ("if (!before(seq, rcv_nxt)) break"); its ACK counted.
            v.verdict = "drop"
            v.reason = (f"data after the peer's FIN (from {p.seq}, rcv_nxt {c.rcv_nxt}) for "
                        f"{c.describe()[4:]}: its ACK is taken, the data discarded (tcp_rcv_state_process)")
        return v

    def _settle(self, c: Conn, new: str, now: float, verdict: str) -> Verdict:
        if new != c.state:
            c.state = new
            c.desc = None
        fd, proc = c.fd, c.proc
        if new == ts.TIME_WAIT:
            c.expire = now + ts.TIME_WAIT_SECONDS
            self._arm(c)
            self._release(c)
        elif new == ts.CLOSE:
            self._release(c)
            self._drop_conn(c)
        v = Verdict(verdict, c.reason, proc, fd, c.describe(), new)
        return v

    def _release(self, c: Conn) -> None:
        # The application closed its descriptor (FIN or RST went out, or the peer reset).
        if c.proc is not None and c.fd is not None and c.sock is None:
            c.proc.free_fd(c.fd)
            c.fd = None
        if c.sock is not None:
            if c.sock.state != "CLOSE":
                self._forget(c.sock)
                if c.sock.proc is not None:
                    c.sock.proc.free_fd(c.sock.fd)
                c.sock.state = "CLOSE"
            c.fd = None           # the connection outlives the descriptor (TIME-WAIT is no one's)
        self._dequeue(c)

    def _tcp_out(self, p, now, steps) -> Verdict:
        key = (p.src, p.sport, p.dst, p.dport)
        flags = p.flags
        c = self.est.get(key)
        if (c is not None and not flags & _SYN_FIN_RST and not c.expire and c.fin_out is None
                and c.state in _QUIET):
            _sent(c, p)
            return Verdict("outbound", c.reason, c.proc, c.fd, c.describe(), c.state)   # as in _tcp_in
        c = self._established(key, now, None)
        if c is not None and c.state == ts.TIME_WAIT:
            if flags & SYN and not flags & ACK:
                self._drop_conn(c)      # connect() reusing a TIME-WAIT 4-tuple
                c = None
            else:
                return self.steady_verdict(c, "out")
        if c is not None:
            return self._conn_out(c, p, now, steps)
        if flags & RST:
            return Verdict("outbound", "the kernel's RST: no socket took the segment it answers")
        if flags & SYN and not flags & ACK:
            sk = self._claim_client("tcp", p.src, p.sport, p.dst, p.dport, True)
            if sk is not None:
                c = Conn(key, p.family, ts.SYN_SENT, sk.proc, sk.fd, "connect() of " + sk.owner(), sock=sk)
            else:
                c = Conn(key, p.family, ts.SYN_SENT, None, None,
                         f"unknown local client: {self.ephemeral_note(p.sport)}")
            self.est[key] = c
            c.fin_out = None
            c.snd_isn = p.seq
            return Verdict("outbound", c.reason, c.proc, c.fd, c.describe(), ts.SYN_SENT)
        if flags & SYN and flags & ACK:
            l, reason = self._listener(p.ifname, p.src, p.sport, p.dst, p.dport, steps)
            if l is not None:
                reason = "SYN-ACK of a request socket whose SYN is not in the capture; " + reason
                c = Conn(key, p.family, ts.SYN_RECV, l.proc, l.fd, reason, listener=l)
                c.expire = now + ts.SYN_RECV_SECONDS
                c.rcv_nxt = c.rcv_start = p.ack
                c.rcv_exact = True
                c.snd_isn = p.seq
                self.est[key] = c
                self._arm(c)
                return Verdict("outbound", reason, l.proc, l.fd, l.describe(), ts.SYN_RECV)
        return self._midstream(p, p.src, p.sport, p.dst, p.dport, now, "out", steps)

    def _conn_out(self, c: Conn, p, now, steps) -> Verdict:
        flags = p.flags
        if (flags & RST and c.state in _UNSYNCHRONIZED and c.snd_isn is not None
                and p.seq != (c.snd_isn + 1) & 0xFFFFFFFF):
            # Not this socket's own reset (that one carries ISN+1): the kernel's answer to
            # a segment that acknowledged something else (_handshake_ack); it stays.
            return Verdict("outbound", f"the kernel's RST to a segment that acknowledged {p.seq}, not our "
                           f"SYN; {c.describe()[4:]} stays", c.proc, c.fd, c.describe(), c.state)
        if c.state not in _UNSYNCHRONIZED:
            _sent(c, p)
        if c.state == ts.SYN_SENT and flags & SYN and not flags & (ACK | RST):
            c.snd_isn = p.seq         # a retransmission keeps it; a new connect() from the port has its own
        if c.state == ts.SYN_RECV and flags & SYN:
            if c.snd_isn is None:
                c.snd_isn = p.seq         # the SYN-ACK: retransmissions carry the same ISN
            return self.steady_verdict(c, "out")
        ev = self._event(flags, 0, c)
        if flags & FIN and c.fin_out is None:
            c.fin_out = (p.seq + p.payload_len + 1) & 0xFFFFFFFF
        new = ts.next_state(c.state, "out", ev)
        v = self._settle(c, new, now, "outbound")
        if flags & FIN and c.fd is not None and c.proc is not None:
            # The application called close(): its descriptor is free for the next accept()
            # or socket(); a client's socket stays bound until the connection is gone.
            c.proc.free_fd(c.fd)
            if c.sock is not None and c.sock.fd == c.fd:
                c.sock.fd = None
            c.fd = None
        return v

    # UDP ------------------------------------------------------------------------------

    def _udp_in(self, p, now, steps) -> Verdict:
        family = p.family
        chain = self.udp.get(p.dport, ())
        if self.is_broadcast(p.dst, p.link_bcast):
            socks = lk.udp_multicast(chain, family, p.src, p.sport, p.dst, p.ifname, steps)
            if not socks:
                return Verdict("reject", f"no socket on udp port {p.dport} for this broadcast/multicast: "
                               "dropped without ICMP")
            first = socks[0]
            return Verdict("deliver", f"broadcast/multicast: a copy to each of {len(socks)} socket(s): "
                           + ", ".join(s.owner() for s in socks), first.proc, first.fd, first.describe(),
                           first.state, copies=[(s.proc, s.fd) for s in socks])
        sk, exact = self._udp_lookup(p, p.dst, p.dport, p.src, p.sport, steps)
        if sk is None:
            sk = self._claim_client("udp", p.dst, p.dport, p.src, p.sport, False) or \
                self.udp_implicit.get((p.dst, p.dport))
            if sk is None:
                if self._icmp_allowed(p.src, now):
                    return Verdict("reject", f"no socket on udp {endpoint(p.dst, p.dport)}: the kernel answers "
                                   "ICMP port unreachable", reply="icmp-port-unreachable")
                return Verdict("reject", f"no socket on udp {endpoint(p.dst, p.dport)}; the ICMP port "
                               f"unreachable to {unpack(p.src)} is rate-limited "
                               f"({'icmp_ratelimit 1000' if p.family == 4 else 'icmp.ratelimit 100'} ms, burst 6)")
            exact = True
        return Verdict("deliver", self._udp_reason(sk, exact, p.dst, p.dport), sk.proc, sk.fd,
                       sk.describe(), sk.state)

    def _icmp_allowed(self, peer: bytes, now: float) -> bool:
        """net/ipv4/icmp.c ``icmpv4_xrlim_allow`` (and ``icmpv6_xrlim_allow``) ->
        net/ipv4/inetpeer.c ``inet_peer_xrlim_allow``: a token bucket per destination,
        one token per icmp_ratelimit (1 s), at most XRLIM_BURST_FACTOR (6) saved; a new
        peer starts as if last seen 60 s ago. Loopback destinations are never limited."""
        if self.is_local(peer):
            return True
        # icmp_ratelimit is 1000 ms for IPv4; net.ipv6.icmp.ratelimit measured 100 ms on 6.18.
        cost = 1.0 if len(peer) == 4 else 0.1
        tokens, last = self.icmp_peers.get(peer, (0.0, now - 60.0))
        tokens = min(tokens + (now - last), 6 * cost)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        else:
            self.icmp_ratelimited += 1
        if len(self.icmp_peers) > 1 << 16:      # the inetpeer cache is bounded too
            self.icmp_peers.clear()
        self.icmp_peers[peer] = (tokens, now)
        return allowed

    def _udp_reason(self, sk: Sock, exact: bool, local: bytes, lport: int) -> str:
        if sk.proc is None:
            return f"unknown local UDP socket that sent from {self.ephemeral_note(lport)}"
        if sk.raddr is not None:
            r = f"connected socket {sk.local()} -> {endpoint(sk.raddr, sk.rport)} (peer matches)"
        elif exact:
            r = f"socket {sk.local()} (exact address)"
        else:
            r = f"socket {sk.local()} (wildcard; no socket on {endpoint(local, lport)})"
        if sk.group is not None and len(sk.group.socks) > 1:
            r += f"; SO_REUSEPORT member {sk.group.socks.index(sk) + 1} of {len(sk.group.socks)} by flow hash"
        return r

    def _udp_out(self, p, now, steps) -> Verdict:
        family = p.family
        sk, exact = self._udp_lookup(p, p.src, p.sport, p.dst, p.dport, steps)
        if sk is None:
            sk = self._claim_client("udp", p.src, p.sport, p.dst, p.dport, True) or \
                self.udp_implicit.get((p.src, p.sport))
        if sk is None:
            sk = self._new_sock(None, None, "udp", family)
            sk.addr, sk.port = p.src, p.sport
            self.udp_implicit[(p.src, p.sport)] = sk
        return Verdict("outbound", ("sent by " + self._udp_reason(sk, exact, p.src, p.sport)) if sk.proc
                       else f"unknown local client: {self.ephemeral_note(p.sport)}",
                       sk.proc, sk.fd, sk.describe() if sk.proc else None, sk.state if sk.proc else "UNCONN")

    # ---- the table, for ss ----------------------------------------------------------

    def rows(self):
        """Every socket and connection: (proto, state, local, peer, proc, fd, sock_or_conn)."""
        for sk in self.socks:
            if sk.state == "CLOSE" or sk.proc is None or (sk.proto == "tcp" and sk.state == "ESTAB"):
                continue
            if sk.port == 0 and sk.state == "UNCONN" and sk.proto == "tcp":
                continue
            peer = endpoint(sk.raddr, sk.rport) if sk.raddr is not None else None
            yield sk.proto, sk.state, sk.addr, sk.port, peer, sk.proc, sk.fd, sk
        for c in self.est.values():
            laddr, lport, raddr, rport = c.key
            yield "tcp", c.state, laddr, lport, endpoint(raddr, rport), c.proc if c.fd is not None or c.state == ts.SYN_RECV else None, c.fd, c
