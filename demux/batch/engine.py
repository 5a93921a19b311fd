"""The batch replay engine: the reference engine's verdicts, most of them without the kernel.

Theory of operation. A verdict depends on the packet's flow and on the phase the flow is
in; within a phase, packet after packet of a flow gets the same verdict. So:

1. ``_nb.walk`` cuts the capture into frame columns, a chunk at a time (memory stays
   one read buffer plus one chunk of columns, three of each with two workers, whatever
   the capture's length);
2. ``_nb.parse`` reads the common headers into columns; anything unusual (fragments,
   ICMP, IP options, IPv6 extension headers, bad lengths, non-IP) is marked SLOW;
3. ``_nb.run`` walks the chunk in capture order. A packet copies its flow's cached
   verdict when the cache says that packet cannot change anything; otherwise the loop
   stops and the packet goes through the reference engine itself (``Engine.decide`` on
   ``demux.wire.parse``'s Packet: the one place the semantics live), after which the
   flow's cache is refilled from the kernel's state, and the loop resumes.

What may be cached (the rules this engine adds; the differential tests in
tests/test_batch.py hold them to the reference, packet for packet):

- TCP: the segments ``Kernel.steady`` names for the connection the established hash
  holds for the flow (in the kernel, beside the paths it summarises): plain segments on
  ESTAB/CLOSE-WAIT with no FIN of ours outstanding and an open window (not old; while
  ``rcv_nxt`` is exact, not a copy and no hole: the entry carries the EXACT bit then),
  a request socket's SYN-ACK out and retransmitted SYN in, plain
  segments out of TIME-WAIT; each before the entry's timer (a margin before it: the
  kernel decides those with its own float arithmetic). Their verdict is
  ``Kernel.steady_verdict``. The only thing such a segment records is what ``steady``
  names: ``rcv_nxt`` and the newest timestamp of an open connection (read later by
  ``tcp_timewait_state_process``), ``rcv_wup`` from what ours acknowledge, or a request
  socket's ISN from its first SYN-ACK (the handshake's last ACK must acknowledge it),
  which the loop keeps per flow and writes back into the ``Conn`` before the flow's next
  packet reaches the kernel. A loopback segment is both sent and received: both
  connections must be steady for it.
- UDP: the verdict of the flow's previous datagram in the same direction, if it was
  ``deliver``/``outbound`` and the socket table did not change while it was decided
  (a UDP lookup is a function of the table and the packet's addresses, ports, interface
  and link-layer broadcast bit, all of which key the flow). A flow with none yet (a DNS
  server's every query comes from a new port) gets its local end's: the verdict of the
  last datagram to (or from) that address, port, interface and broadcast bit, if
  ``Kernel.udp_any_peer`` says every peer gets it there, it was decided since the table
  last changed, and exactly one of the datagram's addresses is local (``_nb._local_end``
  reads the host's addresses; a loopback datagram is also the sender's output).
- Transit TCP/UDP (neither address local): always ``ignored``.
- Nothing is cached across a scenario ``at``/``close_at`` event: packets from just
  before an event's time go to the kernel, which applies it; every cache is void after.
- Socket-table changes (a client socket claimed, an unknown local socket made, a socket
  unhashed) void the UDP caches; a claim (which may move an established entry) voids
  the TCP caches as well. The kernel's ``generation`` (moved by every table change)
  tells the first; claims are counted through the kernel's own method, not changed.

Output: ``--summary`` needs only per-verdict counts (the loop counts per cached verdict;
packets that went to the kernel are added to the ``Summary`` as the reference does);
jsonl lines of cached packets are assembled by ``_nb.jsonl`` from byte templates made
with the reference's own JSON escaping (per flow direction: proto, src, dst; per verdict:
the fields after ``len``). A packet that went to the kernel and that ``_nb.parse`` read
gets the same line start, with the fields after ``len`` written from its Record; any
other packet is encoded whole from its Record.

``--split`` and ``--annotate`` (demux.render.split's sinks) get every frame's Record in
capture order: the kernel's for packets that went to it, one made from the cached
verdict for the rest. A split sink takes a chunk at once: its files are chosen by the
verdict's name and process, and each file's frames of the chunk become one run of pcap
records in numba (``_nb.pcap_records``).

A capture the walker cannot finish (damage part-way, a pcapng interface with an
unsupported link type or timestamp resolution) is finished with the reference reader
from the first frame not yet replayed, on the same kernel: same records, same warning.

Workers. The kernel's state is shared by all flows (each process's lowest free
descriptor, accept-queue counts, ICMP rate limits, connect()'s port perturbation,
client claims), so flows cannot be sharded over independent kernels without changing
verdicts. One kernel decides; ``workers > 1`` moves the rest off its thread: the read,
walk and parse run a few chunks ahead on a second thread (``_Producer``), and jsonl is
formatted on a third (``_Writer``); the numba loops release the GIL. Output is identical.
"""

from __future__ import annotations

import gc
import json
import struct
import threading
from collections import deque

import numpy as np

from demux.batch import _nb
from demux.capture import MAX_RECORD, CaptureReader, Frame, _PCAP_MAGICS, _Damage, open_capture
from demux.engine import Engine, Record, ts_text
from demux.kernel import Verdict
from demux.kernel.table import KEEPS_ISN, KEEPS_RCV, KEEPS_WUP
from demux.kernel.sock import endpoint
from demux.render.summary import Summary
from demux.wire import flag_string, parse

_UNTIL_MAX_S = 9.0e9        # past this a timer's nanoseconds would not fit an int64: never
_INT64_MAX = (1 << 63) - 1
# One direction of travel of a flow's row, F_VID to F_WUP, written at once by _recache.
_DIRECTION = struct.Struct("=10q")
assert (_nb.F_VID, _nb.F_STAMP, _nb.F_RCV, _nb.F_TSV, _nb.F_SHADOW, _nb.F_DIRTY, _nb.F_MASK, _nb.F_VAL,
        _nb.F_UNTIL, _nb.F_WUP) == tuple(range(10))
# Packets this close before a scenario event's time go to the kernel, which decides
# with exact float arithmetic whether the event is due.
_EVENT_MARGIN_NS = 1_000_000
_FLOWS_FIRST = 1 << 12      # the flow table's first size (832 KB), before it grows
_LOCAL_ENDS = 1 << 12      # UDP local ends kept (_nb.L_*), cleared when a quarter full
_READ = 2 << 20     # with 8192-frame chunks: a chunk's columns and bytes stay in the CPU caches


def _encoder():
    """The same encoder as demux.render.records.JsonlSink, so bytes agree, for dicts.

    ``JSONEncoder.encode`` builds a new C encoder on every call; the kernel path encodes
    a few dicts per packet, so the C encoder is built once here, with the arguments
    ``JSONEncoder.iterencode`` gives it (no circular-reference check: records have none)."""
    e = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=False)
    from json.encoder import c_make_encoder, encode_basestring
    if c_make_encoder is None:      # pragma: no cover - CPython ships _json
        return e.encode
    it = c_make_encoder(None, e.default, encode_basestring, None, e.key_separator, e.item_separator,
                        e.sort_keys, e.skipkeys, e.allow_nan)
    join = "".join

    def enc(o: dict) -> str:
        return join(it(o, 0))
    return enc


def _value_encoder(enc):
    """One JSON value as ``enc`` writes it inside a dict, the common types without the
    encoder's per-call setup: None, str (the C string escaper json itself uses) and
    exact ints; anything else through ``enc`` itself."""
    from json.encoder import encode_basestring as esc
    int_repr = int.__repr__

    def value(x) -> str:
        if x is None:
            return "null"
        t = x.__class__
        if t is str:
            return esc(x)
        if t is int:
            return int_repr(x)
        return enc({"": x})[5:-1]
    return value


def _verdict_tail(value, direction, v) -> bytes:
    """The end of a record's jsonl line, after ``len``: what ``Record.as_dict`` puts
    there, as the reference's encoder writes it, with the newline."""
    proc = v.proc
    if proc is None:
        who = ', "process": null, "pid": null, "fd": '
    else:
        who = ', "process": ' + value(proc.name) + ', "pid": ' + value(proc.pid) + ', "fd": '
    return (', "direction": ' + value(direction) + ', "verdict": ' + value(v.verdict) + who + value(v.fd)
            + ', "socket": ' + value(v.socket) + ', "state": ' + value(v.state) + ', "reason": '
            + value(v.reason) + ', "reply": ' + value(v.reply) + "}\n").encode()


def _local_addresses(k) -> np.ndarray:
    """The host's addresses as ``_nb._is_local`` reads them: rows of (family, high and
    low 64 bits as _nb.parse's columns hold them)."""
    rows = [(4, 0, int.from_bytes(a, "big")) for a in sorted(k.local4)]
    rows += [(6, int.from_bytes(a[:8], "big", signed=True), int.from_bytes(a[8:], "big", signed=True))
             for a in sorted(k.local6)]
    return np.array(rows, np.int64).reshape(-1, 3)


def _address(fam: int, hi: int, lo: int) -> bytes:
    """An address from its columns (the inverse of _local_addresses' rows)."""
    if fam == 4:
        return lo.to_bytes(4, "big")
    return hi.to_bytes(8, "big", signed=True) + lo.to_bytes(8, "big", signed=True)


class _Arena:
    """An append-only byte store numba can read: (offset, length) per piece."""

    def __init__(self, cap: int = 1 << 16):
        self.buf = np.empty(cap, np.uint8)
        self.mv = memoryview(self.buf)        # a bytes copy into it costs no numpy call
        self.used = 0

    def add(self, b: bytes) -> tuple[int, int]:
        n = len(b)
        if self.used + n > len(self.buf):
            new = np.empty(max(2 * len(self.buf), self.used + n), np.uint8)
            new[:self.used] = self.buf[:self.used]
            self.buf = new
            self.mv = memoryview(new)
        off = self.used
        self.mv[off:off + n] = b
        self.used += n
        return off, n

    def clear(self) -> None:
        self.used = 0


class BatchEngine:
    """Replays one capture against one scenario; ``run`` returns (Summary, warning)."""

    def __init__(self, scenario, seed: int = 0, flow_capacity: int = 1 << 17, chunk: int = 1 << 13,
                 jsonl_out=None, workers: int = 1, read_size: int = _READ, gc_floor: int = 1 << 15,
                 sinks=()):
        self.scenario = scenario
        self.eng = Engine(scenario, seed)
        self.k = self.eng.kernel
        self.K = chunk
        self.read_size = read_size
        self.C = np.zeros((chunk, _nb.NCOL), np.int64)
        cap = 1
        while cap < flow_capacity:
            cap <<= 1
        # The flow table starts small and doubles each time it is cleared, up to
        # flow_capacity: a capture with few live flows keeps its table in the CPU caches,
        # and pays no page faults for slots it never uses.
        self.fcap_max = cap
        self.sc = np.zeros(_nb.NSC, np.int64)
        self.sc[_nb.S_EVENT_NS] = -(1 << 62)       # until the first packet sets t0
        self.scm = memoryview(self.sc)
        self._flow_table(min(cap, _FLOWS_FIRST))
        self.lst = np.zeros((_LOCAL_ENDS, _nb.NLS), np.int64)
        self.lm = memoryview(self.lst).cast("B").cast("q")
        self.sc[_nb.S_LMASK] = _LOCAL_ENDS - 1
        self.sc[_nb.S_SLOW_LOCAL] = -1
        self.locs = _local_addresses(self.k)
        self.Cm = memoryview(self.C).cast("B").cast("q")
        self.vc = np.zeros((1024, 3), np.int64)
        self.vc[:, 2] = -1
        self.vsuf = np.zeros((1024, 2), np.int64)
        self.vids: dict[tuple, int] = {}
        self.vlist: list = []                 # vid -> (direction, Verdict, key) or None (free)
        self.free: list[int] = []
        self.gc_floor = self.gc_at = gc_floor
        self.agg_counts = dict.fromkeys(("deliver", "reject", "drop", "outbound", "ignored", "malformed"), 0)
        self.agg_proc: dict = {}
        self.finfo: dict[int, tuple] = {}
        self.slots: dict[tuple, list[int]] = {}   # a TCP flow's (src, sport, dst, dport) -> its slots
        self.shadowed: dict[int, list] = {}
        self.summary = Summary(scenario)
        self.first_n: dict[tuple[str, int], int] = {}
        self.t0_ns: int | None = None
        self.n_events = len(self.k.events)
        self.claims = 0
        self.slow_packets = 0
        self.ifnames: list[str | None] = []
        self.out = jsonl_out
        # --split/--annotate: each gets every frame's Record, in capture order (_to_sinks).
        self.sinks = list(sinks)
        self.slow_recs: dict[int, Record] = {}
        self.oarena = _Arena()                        # --annotate: EPB options per verdict id
        self.vopt = np.full((1024, 2), -1, np.int64)
        # Verdicts whole (jsonl, annotations), or only their name and process (counts, split).
        self.exact = jsonl_out is not None or any(getattr(sk, "whole_verdicts", True) for sk in self.sinks)
        self.enc = _encoder()
        self.value = _value_encoder(self.enc)
        self.tarena = _Arena()
        self.varena = _Arena()
        self.sarena = bytearray()
        self.slow_off = np.zeros(chunk, np.int64)
        self.slow_len = np.zeros(chunk, np.int64)
        # 1: the kernel packet's line is its flow's template line with the suffix in the
        # slow arena; 0: the whole line is in the slow arena.
        self.slow_tpl = np.zeros(chunk, np.int64)
        self.slow_offm, self.slow_lenm, self.slow_tplm = (memoryview(a) for a in
                                                          (self.slow_off, self.slow_len, self.slow_tpl))
        self._ts_fine = False
        self.max_tpl = 0
        self.max_suf = 0
        self.flagtpl = np.zeros((257, 2), np.int64)
        if jsonl_out is not None:
            self._flag_templates()
        self.workers = max(1, workers)
        self._writer = None
        self._bufs: list = []
        self._pool_lock = threading.Lock()
        self._watch()

    # ---- watching the kernel's table -----------------------------------------------

    def _watch(self) -> None:
        """Count the kernel's client claims through its own method (an instance attribute
        shadows the class's; the kernel itself is untouched). Every other socket-table
        change moves ``Kernel.generation``, which ``_decide`` compares; a claim that
        keeps the socket's address and port moves nothing there, yet it changes what
        the next lookup finds (the socket is claimed once), and a claim may move an
        established entry: it voids the TCP caches as well as the UDP ones."""
        k = self.k
        orig = k._claim_client

        def watched(*a, **kw):
            r = orig(*a, **kw)
            if r is not None:
                self.claims += 1
            return r
        k._claim_client = watched

    # ---- verdict ids -----------------------------------------------------------------

    def _vid(self, direction: str, v: Verdict) -> int:
        """The id of an observed verdict (interned on every field)."""
        proc = v.proc
        copies = tuple((id(p), fd) for p, fd in v.copies) if v.copies else None
        key = (direction, v.verdict, v.reason, proc, v.fd, v.socket, v.state, v.reply, copies)
        vid = self.vids.get(key)
        return vid if vid is not None else self._register(key, direction, v)

    def _register(self, key, direction: str, v: Verdict) -> int:
        if self.free:
            vid = self.free.pop()
            self.vlist[vid] = (direction, v, key)
        else:
            vid = len(self.vlist)
            self.vlist.append((direction, v, key))
        self.vids[key] = vid
        if vid >= len(self.vc):
            vc = np.zeros((2 * len(self.vc), 3), np.int64)
            vc[:, 2] = -1
            vc[:len(self.vc)] = self.vc
            self.vc = vc
            vs = np.zeros((2 * len(self.vsuf), 2), np.int64)
            vs[:len(self.vsuf)] = self.vsuf
            self.vsuf = vs
        # Its jsonl tail is written when a chunk's line first needs it (_emit): many
        # cached verdicts (a request socket's, a TIME-WAIT's) are never used.
        self.vsuf[vid, 1] = -1
        if vid < len(self.vopt):
            self.vopt[vid, 1] = -1            # (the id may have been another verdict's)
        return vid

    def _suffix(self, vid: int, direction: str, v: Verdict) -> None:
        b = _verdict_tail(self.value, direction, v)
        self.vsuf[vid] = self.varena.add(b)
        self.max_suf = max(self.max_suf, len(b))

    def _harvest(self, vid: int) -> None:
        """Move a verdict id's counts into the running totals and free the id."""
        direction, v, key = self.vlist[vid]
        cnt = int(self.vc[vid, 0])
        if cnt:
            self.agg_counts[v.verdict] += cnt
            if v.verdict == "deliver":
                size = int(self.vc[vid, 1])
                fn = int(self.vc[vid, 2])
                for proc, _fd in (v.copies if v.copies else ((v.proc, v.fd),)):
                    if proc is None:
                        continue
                    pk = (proc.name, proc.pid)
                    e = self.agg_proc.get(pk)
                    if e is None:
                        e = self.agg_proc[pk] = [0, 0, proc]
                    e[0] += cnt
                    e[1] += size
                    if pk not in self.first_n or fn < self.first_n[pk]:
                        self.first_n[pk] = fn
        self.vc[vid] = (0, 0, -1)
        del self.vids[key]
        self.vlist[vid] = None
        self.free.append(vid)

    def _gc(self) -> None:
        """Free the verdict ids no flow refers to any more (their counts are kept), so
        memory follows the live flows, not the capture's length."""
        if self._writer is not None:
            self._writer.drain()      # it may still read the freed ids' templates
        fst = self.fst
        used = fst[:, _nb.F_USED] == 1
        refs = np.unique(np.concatenate((fst[used, _nb.F_VID], fst[used, _nb.F_VID + _nb.F_DSTRIDE],
                                         self.lst[self.lst[:, _nb.L_USED] == 1, _nb.L_VID])))
        live = set(refs[refs >= 0].tolist())
        for vid, entry in enumerate(self.vlist):
            if entry is not None and vid not in live:
                self._harvest(vid)
        self.gc_at = max(self.gc_floor, 2 * len(live))
        if self.out is not None and self.varena.used > 4 * (1 << 20):
            # Compact the verdict templates: only flags and live ids are kept.
            self.varena = _Arena()
            self._flag_templates()
            self.vsuf[:, 1] = -1           # written again as lines need them

    def _flag_templates(self) -> None:
        for f in range(256):
            self.flagtpl[f] = self.varena.add(
                (', "flags": ' + json.dumps(flag_string(f)) + ', "len": ').encode())
        self.flagtpl[256] = self.varena.add(b', "flags": null, "len": ')

    # ---- the flow cache --------------------------------------------------------------

    def _sync(self, s: int) -> None:
        """Write what the cached packets recorded (rcv_nxt and timestamp, our ISN, rcv_wup)
        back into the Conns; the flow records nothing more until its cache is refilled."""
        conns = self.shadowed.pop(s, None)
        if conns is None:
            return
        fm = self.fm
        for d in (0, 1):
            b = s * _nb.NFS + _nb.F_DSTRIDE * d
            self._write_back(conns, d, b)
            fm[b + _nb.F_SHADOW] = 0
            fm[b + _nb.F_DIRTY] = 0
            fm[b + _nb.F_WUP] = -1

    def _write_back(self, conns, d: int, b: int) -> None:
        """conns: [receiver of direction 0, of 1, sender of direction 0, of 1]."""
        fm = self.fm
        keeps = fm[b + _nb.F_SHADOW]
        if fm[b + _nb.F_DIRTY]:
            c = conns[d]
            if keeps & KEEPS_RCV and c is not None:
                c.rcv_nxt = fm[b + _nb.F_RCV]
                tsv = fm[b + _nb.F_TSV]
                if tsv >= 0:
                    c.tsval = tsv
            elif keeps & KEEPS_ISN and conns[2 + d] is not None and conns[2 + d].snd_isn is None:
                conns[2 + d].snd_isn = fm[b + _nb.F_RCV]
        if keeps & KEEPS_WUP and conns[2 + d] is not None and fm[b + _nb.F_WUP] >= 0:
            conns[2 + d].rcv_wup = fm[b + _nb.F_WUP]

    def _flush_all(self) -> None:
        """What every flow's cached packets recorded, into its Conns; the flows keep
        recording (``_sync`` ends that until the flow's cache is refilled)."""
        fm = self.fm
        for s, conns in self.shadowed.items():
            for d in (0, 1):
                b = s * _nb.NFS + _nb.F_DSTRIDE * d
                self._write_back(conns, d, b)
                if not fm[b + _nb.F_SHADOW] & KEEPS_ISN:     # (the ISN is the first one's)
                    fm[b + _nb.F_DIRTY] = 0

    def _sync_all(self) -> None:
        for s in list(self.shadowed):
            self._sync(s)

    def _template(self, s: int, d: int, proto: int, src, sport, dst, dport) -> None:
        ftm = self.ftm
        if self.out is None or ftm[4 * s + 2 * d + 1]:
            return
        value = self.value
        t = (('"proto": "tcp", "src": ' if proto == 6 else '"proto": "udp", "src": ') + value(endpoint(src, sport))
             + ', "dst": ' + value(endpoint(dst, dport))).encode()
        ftm[4 * s + 2 * d], ftm[4 * s + 2 * d + 1] = self.tarena.add(t)
        self.max_tpl = max(self.max_tpl, len(t))

    def _flow_info(self, s: int, d: int, p) -> tuple:
        """Per direction of travel of flow ``s``: (kind, key of the receiving connection,
        key of the sending one, src, sport, dst, dport); kind is in/out/loop/transit."""
        info = self.finfo.get(s)
        if info is None:
            k = self.k
            both = []
            for dd in (0, 1):
                src, sport, dst, dport = ((p.src, p.sport, p.dst, p.dport) if dd == d
                                          else (p.dst, p.dport, p.src, p.sport))
                sl, dl = k.is_local(src), k.is_local(dst)
                kind = ("loop" if sl else "in") if dl else ("out" if sl else "transit")
                both.append((kind, (dst, dport, src, sport), (src, sport, dst, dport), src, sport, dst, dport))
                self.slots.setdefault((src, sport, dst, dport), []).append(s)
            info = self.finfo[s] = (both[0], both[1])
        return info

    def _also_sent(self, q, key_out):
        """A loopback segment is the sender's output as well: (the in-side's ``steady``
        answer ``q`` narrowed to the segments the sending connection is steady for too,
        both flag tests at once and both records kept; the sending connection), or
        (None, None) when they contradict or it is not steady."""
        co = self.k.est.get(key_out)
        qo = self.k.steady(co, "out") if co is not None else None
        if qo is None or q[3] & KEEPS_RCV and qo[3] & KEEPS_ISN:      # (those share F_RCV)
            return None, None
        common = q[0] & qo[0]
        if q[1] & common != qo[1] & common:
            return None, None
        return (q[0] | qo[0], q[1] | qo[1], min(q[2], qo[2]), q[3] | qo[3]), co

    def _recache(self, s: int, d: int, p, rec, quiet: bool) -> None:
        """Fill flow ``s``'s cache from the kernel's state after one of its packets: per
        direction of travel, all ten words at once (``_DIRECTION``)."""
        fb = self.fb
        row = s * _nb.NFS
        if p.proto == 6:
            est = self.k.est
            steady = self.k.steady
            vids = self.vids
            exact = self.exact
            conns = None
            stamp = self.scm[_nb.S_GEN_TCP]
            info = self.finfo.get(s) or self._flow_info(s, d, p)
            for dd, (kind, key_in, key_out, src, sport, dst, dport) in enumerate(info):
                o = 8 * (row + _nb.F_DSTRIDE * dd)
                if kind == "transit":
                    vid = self._vid("transit", Verdict("ignored", "transit: neither address is local to this host"))
                    _DIRECTION.pack_into(fb, o, vid, _nb.STAMP_FOREVER, 0, -1, 0, 0, 0, 0, _INT64_MAX, -1)
                    if self.out is not None:
                        self._template(s, dd, 6, src, sport, dst, dport)
                    continue
                direction = "out" if kind == "out" else "in"
                c = est.get(key_out if kind == "out" else key_in)
                q = None
                if c is not None:
                    q = steady(c, direction)
                    sender = c if kind == "out" else None
                    if q is not None and kind == "loop":
                        # (A socket connected to itself: its one 4-tuple is both ends, and
                        # both halves of the flow are one direction here: not cached.)
                        q, sender = (None, None) if key_in == key_out else self._also_sent(q, key_out)
                if q is None:
                    _DIRECTION.pack_into(fb, o, -1, stamp, 0, -1, 0, 0, 0, 0, 0, -1)
                    continue
                # The id of the verdict Kernel.steady_verdict gives c's steady segments,
                # interned on what it is made of. Without jsonl or annotations only its
                # name and process count, and those depend on the direction, the state
                # and the process alone (steady_verdict says so): one id serves every
                # connection alike.
                key = (direction, c, c.state, c.fd, c.reason) if exact else (direction, c.proc, c.state)
                vid = vids.get(key)
                if vid is None:
                    vid = self._register(key, direction, self.k.steady_verdict(c, direction))
                mask, val, until, keeps = q
                # Packets this close to the timer go to the kernel, which decides with
                # exact float arithmetic whether the entry is gone.
                until = _INT64_MAX if until > _UNTIL_MAX_S else int(until * 1e9) - _EVENT_MARGIN_NS
                if keeps:
                    if conns is None:
                        conns = [None, None, None, None]
                    conns[dd] = c if keeps & KEEPS_RCV else None
                    conns[2 + dd] = sender
                    # The receiver's rcv_nxt and timestamp, the sender's rcv_wup; nothing
                    # recorded yet. (An entry going out with KEEPS_WUP alone keeps the
                    # sender's exact rcv_nxt, which its ACKs must not fall behind:
                    # Kernel._sent.)
                    _DIRECTION.pack_into(
                        fb, o, vid, stamp, c.rcv_nxt if keeps & KEEPS_RCV or c.rcv_exact else 0,
                        -1 if c.tsval is None else c.tsval,
                        keeps | _nb.EXACT if keeps & KEEPS_RCV and c.rcv_exact else keeps, 0, mask, val, until,
                        -1 if sender is None or sender.rcv_wup is None else sender.rcv_wup)
                else:
                    _DIRECTION.pack_into(fb, o, vid, stamp, 0, -1, 0, 0, mask, val, until, -1)
                if self.out is not None:
                    self._template(s, dd, 6, src, sport, dst, dport)
            if conns is not None:
                self.shadowed[s] = conns
            return
        # UDP: the verdict just seen, if nothing in the table moved while it was decided.
        v = rec.v
        vid = -1
        stamp = self.scm[_nb.S_GEN_UDP]
        if rec.direction == "transit":
            vid = self._vid("transit", v)
            stamp = _nb.STAMP_FOREVER
        elif quiet and v.verdict in ("deliver", "outbound") and rec.packet is p:
            vid = self._vid(rec.direction, v)
            e = self.scm[_nb.S_SLOW_LOCAL]
            if e >= 0 and self.k.udp_any_peer(p, rec.direction):
                # (run found e from the addresses: exactly one is local, as rec.direction says)
                self.lm[e * _nb.NLS + _nb.L_VID] = vid
                self.lm[e * _nb.NLS + _nb.L_STAMP] = stamp
        _DIRECTION.pack_into(fb, 8 * (row + _nb.F_DSTRIDE * d), vid, stamp, 0, -1, 0, 0, 0, 0, 0, -1)
        if vid >= 0:
            self._template(s, d, 17, p.src, p.sport, p.dst, p.dport)

    def _flow_table(self, cap: int) -> None:
        self.fcap = cap
        self.fst = np.zeros((cap, _nb.NFS), np.int64)
        self.ftpl = np.zeros((cap, 4), np.int64)
        self.sc[_nb.S_MASK] = cap - 1
        # Flat int64 views of the same memory: the kernel path reads and writes a few
        # words per packet, and a memoryview item costs a fraction of a numpy index.
        self.fb = memoryview(self.fst).cast("B")
        self.fm = self.fb.cast("q")
        self.ftm = memoryview(self.ftpl).cast("B").cast("q")

    def _clear_flows(self) -> None:
        """Forget every flow (the table is full of flows that may be long gone)."""
        if self._writer is not None:
            self._writer.drain()      # it may still read the flow templates
        self._sync_all()
        if self.fcap < self.fcap_max:
            self._flow_table(2 * self.fcap)
        else:
            self.fst[:] = 0
            self.ftpl[:] = 0
        self.tarena.clear()
        self.finfo.clear()
        self.slots.clear()
        self.sc[_nb.S_NFLOWS] = 0
        self._gc()

    # ---- the kernel path -----------------------------------------------------------

    def _event_threshold(self) -> None:
        evs = self.k.events
        if not evs or self.t0_ns is None:
            self.sc[_nb.S_EVENT_NS] = _INT64_MAX if self.t0_ns is not None else -(1 << 62)
            return
        rel = evs[0][0]
        at = self.t0_ns + rel * 1e9 - _EVENT_MARGIN_NS
        self.sc[_nb.S_EVENT_NS] = _INT64_MAX if at > 2.0 ** 62 else max(int(at), -(1 << 62))

    def _decide(self, p, frame=None) -> Record:
        """One packet through the reference engine, with the bookkeeping around it.
        Returns (record, quiet: the socket table did not change while it was decided)."""
        k = self.k
        gen, claims = k.generation, self.claims
        rec = self.eng.decide(p, frame)
        self.slow_packets += 1
        if self.t0_ns is None:
            self.t0_ns = self._first_ns
            self._event_threshold()
        quiet = True
        if len(k.events) != self.n_events:
            self.n_events = len(k.events)
            quiet = False
            self.scm[_nb.S_GEN_TCP] += 1
            self.scm[_nb.S_GEN_UDP] += 1
            self._event_threshold()
        elif self.claims != claims:
            quiet = False
            self.scm[_nb.S_GEN_TCP] += 1
            self.scm[_nb.S_GEN_UDP] += 1
        elif k.generation != gen:
            quiet = False
            self.scm[_nb.S_GEN_UDP] += 1
        summ = self.summary
        before = len(summ.per_proc)
        summ.add(rec)
        if len(summ.per_proc) != before:
            for key in list(summ.per_proc)[before:]:
                self.first_n.setdefault(key, rec.n)
        return rec, quiet

    def _slow(self, buf, i: int) -> None:
        o = i * _nb.NCOL
        n, ns, off, cap, orig, ifid, lt = self.Cm[o:o + _nb.LT + 1].tolist()
        scm = self.scm
        s, d = scm[_nb.S_SLOW_FLOW], scm[_nb.S_SLOW_DIR]
        if s >= 0 and s in self.shadowed:
            self._sync(s)
        if self.t0_ns is None:
            self._first_ns = ns
        p = parse(n, ns / 1000000000, lt, self.bufm[off:off + cap].tobytes(),
                  self.ifnames[ifid] if ifid >= 0 else None, orig)
        # A TCP segment the numba parser left (IP options, extension headers, a segment
        # near a scenario event): its flows get what their cached packets recorded, and
        # after the kernel their caches are refilled (a FIN with IP options moves the
        # connection on). A fragment's datagram is known only once the kernel joins it:
        # then every flow is brought up to date, and every TCP cache voided.
        known = ()
        whole = False
        if s < 0 and p.proto == 6 and p.error is None:
            if p.frag is None:
                known = self.slots.get((p.src, p.sport, p.dst, p.dport), ())
                for slot in known:
                    if slot in self.shadowed:
                        self._sync(slot)
            elif self.shadowed:
                self._flush_all()
                whole = True
        rec, quiet = self._decide(p)
        for slot in known:
            self._recache(slot, 0, p, rec, quiet)
        if whole:
            self.scm[_nb.S_GEN_TCP] += 1
        if s >= 0:
            self._recache(s, d, p, rec, quiet)
        self.scm[_nb.S_SLOW_LOCAL] = -1
        if self.sinks:
            self.slow_recs[i] = rec
        if self.out is not None:
            if (s >= 0 and self._ts_fine and rec.packet is p
                    and p.payload_len == self.Cm[o + _nb.PLEN] and p.flags & 0xFF == self.Cm[o + _nb.FLAGS]):
                # A packet the numba parser read (s >= 0): its line starts as a cached
                # packet's does (n, ts, the flow's template, flags, len), which
                # _nb.jsonl writes; only the verdict's fields are encoded here.
                if not self.ftm[4 * s + 2 * d + 1]:
                    self._template(s, d, p.proto, p.src, p.sport, p.dst, p.dport)
                line = _verdict_tail(self.value, rec.direction, rec.v)
                self.slow_tplm[i] = 1
            else:
                line = (rec.jsonl(self.enc) + "\n").encode()
                self.slow_tplm[i] = 0
            self.slow_offm[i] = len(self.sarena)
            self.slow_lenm[i] = len(line)
            self.sarena += line

    def _chunk(self, buf, k: int) -> None:
        C = self.C
        if self.sc[_nb.S_NFLOWS] * 4 > self.fcap:
            # A quarter full: start afresh (flows still alive come back through the
            # kernel once). Past half full within a chunk, new flows go to the kernel.
            self._clear_flows()
        if self.sc[_nb.S_NLOCAL] * 4 > _LOCAL_ENDS:
            self.lst[:] = 0           # (their verdict ids are freed by the next _gc)
            self.sc[_nb.S_NLOCAL] = 0
        if self.bufm is None or self.bufm.obj is not buf:
            self.bufm = memoryview(buf)
        if self.out is not None:
            self._ts_fine = _nb.ts_ok(C, k)
        run, slow = _nb.run, self._slow
        fst, sc = self.fst, self.sc
        i = 0
        while i < k:
            i = run(C, fst, self.lst, self.locs, self.vc, sc, i, k)
            if i >= k:
                break
            slow(buf, i)
            i += 1
        if self.sinks:
            self._to_sinks(buf, k)
        if self.out is not None:
            self._emit(k)
        if len(self.vids) > self.gc_at:
            self._gc()

    def _to_sinks(self, buf, k: int) -> None:
        """--split/--annotate: every frame of the chunk and its Record (the kernel's, or one
        made from the cached verdict), in capture order, before the buffer is reused. A
        split sink (files chosen by verdict and process only) takes the chunk at once."""
        slow = self.slow_recs
        writes = []
        for sk in self.sinks:
            if hasattr(sk, "targets"):
                self._split_chunk(sk, buf, k)
            elif not (hasattr(sk, "options") and self._annotate_chunk(sk, buf, k)):
                writes.append(sk.write)
        if not writes:
            slow.clear()
            return
        Cm, vlist, ncol, vcol = self.Cm, self.vlist, _nb.NCOL, _nb.VID
        for i in range(k):
            frame = self._frame(i)
            rec = slow.get(i)
            if rec is not None:
                rec.frame = frame
            else:
                direction, v, _key = vlist[Cm[i * ncol + vcol]]
                rec = Record(frame.n, frame.ts, None, direction, v, frame)
            for write in writes:
                write(rec)
        slow.clear()

    def _annotate_chunk(self, sink, buf, k: int) -> bool:
        """``AnnotateSink.write`` for a whole chunk, as one run of EPBs built in numba
        (``_nb.pcapng_records``); each verdict's options are encoded once. False (the
        frames then go one by one) when a frame needs what only ``PcapngWriter.write``
        does: an interface not declared yet, a timestamp before 1970."""
        C, w = self.C, sink.w
        if k == 0:
            return True
        if C[:k, _nb.TS].min() < 0:
            return False
        keys = C[:k, _nb.LT] * 65536 + (C[:k, _nb.IFID] + 1)
        uk = np.unique(keys)
        iids = np.empty(len(uk), np.int64)
        for j, key in enumerate(uk.tolist()):
            lt, ic = divmod(key, 65536)
            iid = w.interface_id(lt, self.ifnames[ic - 1] if ic > 0 else None)
            if iid is None:
                return False
            iids[j] = iid
        ifids = iids[np.searchsorted(uk, keys)]
        arena = self.oarena
        if arena.used > 4 * (1 << 20):
            arena.clear()
            self.vopt[:, 1] = -1
        if len(self.vopt) < len(self.vlist):
            grown = np.full((2 * len(self.vlist), 2), -1, np.int64)
            grown[:len(self.vopt)] = self.vopt
            self.vopt = grown
        vid = C[:k, _nb.VID]
        cached = vid >= 0
        used = np.unique(vid[cached])
        vlist = self.vlist
        for v in used[self.vopt[used, 1] < 0].tolist():
            direction, ver, _key = vlist[v]
            self.vopt[v] = arena.add(sink.options(ver, direction))
        optoff = np.zeros(k, np.int64)
        optlen = np.zeros(k, np.int64)
        optoff[cached] = self.vopt[vid[cached], 0]
        optlen[cached] = self.vopt[vid[cached], 1]
        for i, rec in self.slow_recs.items():
            optoff[i], optlen[i] = arena.add(sink.options(rec.v, rec.direction))
        caps = np.minimum(C[:k, _nb.CAP], w.snaplen)
        out = np.empty(int(32 * k + caps.sum() + 3 * k + optlen.sum()), np.uint8)
        n = _nb.pcapng_records(C, buf, k, out, ifids, arena.buf, optoff, optlen, w.snaplen)
        w.write_records(memoryview(out)[:n], k)
        return True

    def _frame(self, i: int) -> Frame:
        n, ns, off, cap, orig, ifid, lt = self.Cm[i * _nb.NCOL:i * _nb.NCOL + _nb.LT + 1].tolist()
        return Frame(n, ns / 1000000000, ns, lt, self.bufm[off:off + cap].tobytes(), orig,
                     self.ifnames[ifid] if ifid >= 0 else None, -1)

    def _split_chunk(self, sink, buf, k: int) -> None:
        """``SplitSink.write`` for a whole chunk: each file's frames, in capture order, as
        one run of pcap records (``_nb.pcap_records``)."""
        C = self.C
        if k == 0:
            return
        sink.saw(int(C[0, _nb.LT]))
        stems: dict[str, int] = {}
        order: list[str] = []

        def ids(v) -> list[int]:
            out = []
            for stem in sink.targets(v):
                t = stems.get(stem)
                if t is None:
                    t = stems[stem] = len(order)
                    order.append(stem)
                out.append(t)
            return out
        vid = C[:k, _nb.VID]
        tgt = np.full(k, -1, np.int64)
        extra: dict[int, list[int]] = {}        # frames that go to several files
        cached = vid >= 0
        if cached.any():
            uniq = np.unique(vid[cached])
            table = np.full(int(uniq[-1]) + 1, -1, np.int64)
            for v in uniq.tolist():
                t = ids(self.vlist[v][1])
                if len(t) == 1:
                    table[v] = t[0]
                elif t:
                    table[v] = -2
                    for i in np.flatnonzero(vid == v).tolist():
                        for x in t:
                            extra.setdefault(x, []).append(i)
            tgt[cached] = table[vid[cached]]
        for i, rec in self.slow_recs.items():
            t = ids(rec.v)
            if len(t) == 1:
                tgt[i] = t[0]
            for x in (t if len(t) > 1 else ()):
                extra.setdefault(x, []).append(i)
        lts = C[:k, _nb.LT]
        for t, stem in enumerate(order):
            mine = np.flatnonzero(tgt == t)
            if t in extra:
                mine = np.sort(np.concatenate((mine, np.array(extra[t], np.int64))), kind="stable")
            mlts = lts[mine]
            kinds, first = np.unique(mlts, return_index=True)
            # Link types in the order their first frame comes (the first is the file's own).
            for lt in kinds[np.argsort(first)].tolist():
                idx = mine[mlts == lt] if len(kinds) > 1 else mine
                w = sink.file(stem, lt)
                out = np.empty(16 * len(idx) + int(C[idx, _nb.CAP].sum()), np.uint8)
                while len(idx):
                    n = _nb.pcap_records(C, buf, idx, out, w.nanos, w.snaplen)
                    if n >= 0:
                        w.write_records(memoryview(out)[:n], len(idx))
                        break
                    # A timestamp no pcap holds: the records before it, then the frame
                    # itself through SplitSink, which refuses it with its words.
                    bad = -1 - n
                    if bad:
                        n = _nb.pcap_records(C, buf, idx[:bad], out, w.nanos, w.snaplen)
                        w.write_records(memoryview(out)[:n], bad)
                    sink.put(w, self._frame(int(idx[bad])))
                    idx = idx[bad + 1:]

    def _emit(self, k: int) -> None:
        done = set()
        Cm, ncol = self.Cm, _nb.NCOL
        for i in _nb.untemplated(self.C, k, self.ftpl).tolist():
            # A flow given its local end's verdict in _nb.run: its template, from the columns.
            fam, proto, sh, sl, dh, dl, sport, dport = Cm[i * ncol + _nb.FAM:i * ncol + _nb.DPORT + 1].tolist()
            s, d = Cm[i * ncol + _nb.FLOW], Cm[i * ncol + _nb.DIR]
            if (s, d) not in done:
                done.add((s, d))
                self._template(s, d, proto, _address(fam, sh, sl), sport, _address(fam, dh, dl), dport)
        vlist = self.vlist
        for vid in _nb.unwritten(self.C, k, self.vsuf).tolist():
            direction, v, _key = vlist[vid]
            self._suffix(vid, direction, v)
        sa = np.frombuffer(bytes(self.sarena), np.uint8) if self.sarena else np.zeros(1, np.uint8)
        if not self._ts_fine:
            # Timestamps the numba writer cannot print exactly: these lines go through
            # the reference encoder's float repr instead.
            self._python_ts_lines(k)
            sa = np.frombuffer(bytes(self.sarena), np.uint8)
        bound = k * (self.max_tpl + self.max_suf + 120) + len(sa)
        out = self._outbuf(bound)
        C = self.C
        # The writer may still read this chunk when the next is replayed: the columns
        # are copied (their array goes back to the pool). The template tables are not:
        # a slot is only written while empty, and is emptied, like a verdict id is
        # freed, only after the writer has drained.
        args = (C.copy() if self.workers > 1 else C, k, out, self.tarena.buf, self.ftpl,
                self.varena.buf, self.vsuf, self.flagtpl, sa, self.slow_off[:k].copy(), self.slow_len[:k].copy(),
                self.slow_tpl[:k].copy())
        self.sarena = bytearray()
        if self.workers > 1:
            # Format this chunk on another core (the numba writer releases the GIL)
            # while the next chunk is replayed; chunks are written in order.
            self._writer.submit(args)
        else:
            n = _nb.jsonl(*args)
            self.out.write(memoryview(out)[:n])

    def _outbuf(self, size: int):
        """An output buffer of at least ``size`` bytes, reused: fresh pages for every
        chunk would cost a page fault per 4 KiB written."""
        pool = self._writer.free if self._writer is not None else self._bufs
        with self._pool_lock:
            buf = pool.pop() if pool else None
        if buf is None or len(buf) < size:
            buf = np.empty(max(size, 1 << 20), np.uint8)
        if self._writer is None:
            self._bufs.append(buf)
        return buf

    def _python_ts_lines(self, k: int) -> None:
        C = self.C
        for i in range(k):
            v = int(C[i, _nb.VID])
            if v < 0:
                continue
            direction, ver, _key = self.vlist[v]
            s, d = int(C[i, _nb.FLOW]), int(C[i, _nb.DIR])
            tpl = bytes(self.tarena.buf[self.ftpl[s, 2 * d]:self.ftpl[s, 2 * d] + self.ftpl[s, 2 * d + 1]])
            fi = int(C[i, _nb.FLAGS]) if C[i, _nb.PROTO] == 6 else 256
            fl = bytes(self.varena.buf[self.flagtpl[fi, 0]:self.flagtpl[fi, 0] + self.flagtpl[fi, 1]])
            suf = bytes(self.varena.buf[self.vsuf[v, 0]:self.vsuf[v, 0] + self.vsuf[v, 1]])
            ts = ts_text(int(C[i, _nb.TS]) / 1000000000)
            line = (b'{"n": ' + str(int(C[i, _nb.N])).encode() + b', "ts": ' + ts.encode() + b", "
                    + tpl + fl + str(int(C[i, _nb.PLEN])).encode() + suf)
            self.slow_off[i] = len(self.sarena)
            self.slow_len[i] = len(line)
            self.slow_tpl[i] = 0
            self.sarena += line
            C[i, _nb.VID] = -1       # run() has counted it already; only its line moves

    # ---- reading the capture -------------------------------------------------------

    def run(self, path: str):
        """Replay the capture; returns (Summary, warning or None, notes): the notes are
        ``Engine.finish``'s lines on IP datagrams never reassembled."""
        # open_capture refuses what the reference refuses, with the same words.
        with open_capture(path) as reader:
            fmt = reader.format
            first_lt = next(iter(reader.linktypes)) if reader.linktypes else None
        if self.workers > 1 and self.out is not None:
            self._writer = _Writer(self.out, self._pool_lock)
        # The objects alive before the replay (numba's compiler, the modules: ~10^5)
        # cannot become garbage during it; a full collection would still walk them all
        # (~0.1 s each on a small VM). Out of the collector's sight while the replay runs,
        # back afterwards; not when the caller froze objects of its own.
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            warning = self._run(path, fmt, first_lt)
        finally:
            if freeze:
                gc.unfreeze()
            if self._writer is not None:
                self._writer.close()
        self._sync_all()
        return self._finish_summary(), warning, self.eng.finish()

    def _run(self, path, fmt, first_lt):
        f = open(path, "rb", buffering=0)
        try:
            if self.workers == 1:
                # One buffer and one column array: each chunk is replayed before the
                # walk goes on (the generator is suspended meanwhile).
                chunks = self._produce(f, fmt, first_lt, None)
            else:
                chunks = _Producer(self._produce, f, fmt, first_lt, self.K)
            try:
                for msg in chunks:
                    kind = msg[0]
                    if kind == "chunk":
                        _, buf, C, k, names = msg
                        if C is not self.C:
                            self.C = C
                            self.Cm = memoryview(C).cast("B").cast("q")
                        self.ifnames = names
                        self._chunk(buf, k)
                        if self.workers > 1:
                            chunks.give_back(C)
                    elif kind == "free":
                        chunks.give_back(msg[1])
                    elif kind == "rest":
                        return self._reference_rest(path, msg[1])
                    else:
                        return None
            finally:
                if self.workers > 1:
                    chunks.stop()
        finally:
            f.close()

    def _produce(self, f, fmt, first_lt, pool):
        """The capture as parsed chunks, in order: ("chunk", buffer, columns, frames,
        interface names) messages; ("free", buffer) once no later chunk reads that
        buffer; last ("end",) or ("rest", frames so far): the reference reader finishes
        from there (damage part-way, or something the walker leaves to it).

        Without ``pool`` one read buffer and ``self.C`` serve every chunk. With it (a
        ``_Producer``, which runs this on its own thread: walk and parse release the
        GIL), buffers and column arrays come from the pool and go back to it when the
        replay is done with them; a buffer's unread tail moves to the next buffer."""
        ifs = np.zeros((64, 7), np.int64)
        nifs = 0
        rd = self.read_size
        size = rd + max(MAX_RECORD, 16 << 20) + 64   # one read plus a partial record or block
        buf = pool.buffer(size) if pool is not None else np.empty(size, np.uint8)
        names: list = []              # every interface's name, by its number in the capture
        ifbase = 0
        n = 0
        end = f.readinto(memoryview(buf)[:rd])
        eof = end < rd
        pos = 0
        le = True
        last_ns = 0
        if fmt == "pcap":
            le_magic, nanos = _PCAP_MAGICS[bytes(buf[:4])]
            le = le_magic == "<"
            snaplen = int.from_bytes(bytes(buf[16:20]), "little" if le else "big")
            ifs[0] = (first_lt, 1 if nanos else 1000, 1, 0,
                      snaplen if 0 < snaplen < MAX_RECORD else MAX_RECORD, 1, snaplen)
            nifs = 1
            names = [None]
            pos = 24
            mode = 0
        else:
            mode = 1
        frozen = tuple(names)
        while True:
            C = pool.columns() if pool is not None else self.C
            pos, k, code, last_ns = _nb.walk(buf, pos, end, mode, le, ifs, nifs, ifbase, C, self.K, n, last_ns,
                                             eof)
            if k:
                _nb.parse(buf, C, k)
                yield "chunk", buf, C, k, frozen
                n += k
            elif pool is not None:
                pool.give_back(C)
            if code == _nb.W_FULL:
                continue
            if code == _nb.W_BLOCK:
                res = self._block(buf, pos, end, eof, ifs, nifs, names)
                if res is None:
                    code = _nb.W_MORE
                elif res == "damage":
                    yield "rest", n
                    return
                else:
                    pos, nifs, le = res
                    if nifs == 0:
                        ifbase = len(names)       # a new section: its interfaces follow
                    frozen = tuple(names)
                    continue
            if code == _nb.W_MORE:
                if eof:
                    yield ("rest", n) if pos < end else ("end",)
                    return
                rest = end - pos
                if pool is not None:
                    old, buf = buf, pool.buffer(size)
                    buf[:rest] = old[pos:end]
                    yield "free", old
                else:
                    buf[:rest] = buf[pos:end]
                got = f.readinto(memoryview(buf)[rest:rest + rd])
                eof = got < rd
                end = rest + got
                pos = 0
                if not got and not rest:
                    yield "end",
                    return
                continue
            # damage, or something the walker leaves to the reference reader
            yield "rest", n
            return

    def _block(self, buf, pos, end, eof, ifs, nifs, names):
        """A pcapng section header or interface description at ``pos``: (new pos,
        interfaces, little-endian) or None to read more, "damage" to stop. ``names``
        (the interfaces' names by id) follows."""
        if pos + 12 > end:
            return None if not eof else "damage"
        bom = bytes(buf[pos + 8:pos + 12])
        le = self._le
        btype_le = int.from_bytes(bytes(buf[pos:pos + 4]), "little")
        if btype_le == 0x0A0D0D0A:
            if bom == b"\x4d\x3c\x2b\x1a":
                le = True
            elif bom == b"\x1a\x2b\x3c\x4d":
                le = False
            else:
                return "damage"
        order = "little" if le else "big"
        blen = int.from_bytes(bytes(buf[pos + 4:pos + 8]), order)
        if blen < 12 or blen & 3 or blen > 16 * 1024 * 1024:
            return "damage"
        if pos + blen > end:
            return None if not eof else "damage"
        if int.from_bytes(bytes(buf[pos + blen - 4:pos + blen]), order) != blen:
            return "damage"
        if btype_le == 0x0A0D0D0A:
            if blen < 28:
                return "damage"
            self._le = le
            return pos + blen, 0, le          # (interfaces are numbered on across sections)
        if blen < 20:
            return "damage"
        ifaces: list = []
        r = object.__new__(CaptureReader)
        r.linktypes = set()
        block = bytes(buf[pos:pos + blen])
        from demux.capture import _S
        try:
            # The reference reader's own IDB parser, on a copy of the block.
            r._parse_idb(block, 0, blen, _S["<" if le else ">"], ifaces, pos)
        except _Damage:
            return "damage"
        linktype, ifname, mul, div, off_ns, limit, ok, snap = ifaces[0]
        if nifs >= len(ifs) or len(names) >= _nb.IFMASK:
            return "damage"               # (the reference reader goes on from here)
        ifs[nifs] = (linktype, mul, div, off_ns, limit, 1 if ok else 0, snap)
        names.append(ifname)
        return pos + blen, nifs + 1, le

    _le = True
    _first_ns = 0
    bufm = None

    def _reference_rest(self, path: str, done: int):
        """Frames after ``done`` through the reference reader and engine, same kernel."""
        if self._writer is not None:
            self._writer.drain()
        self._sync_all()
        enc = self.enc
        with open_capture(path) as reader:
            for frame in reader:
                if frame.n <= done:
                    continue
                if self.t0_ns is None:
                    self._first_ns = frame.ts_ns
                p = parse(frame.n, frame.ts, frame.linktype, frame.data, frame.ifname, frame.orig_len)
                rec, _ = self._decide(p, frame)
                for sink in self.sinks:
                    sink.write(rec)
                if self.out is not None:
                    self.out.write((rec.jsonl(enc) + "\n").encode())
            return reader.warning

    # ---- the summary -----------------------------------------------------------------

    def _finish_summary(self) -> Summary:
        for vid, entry in enumerate(self.vlist):
            if entry is not None:
                self._harvest(vid)
        summ = self.summary
        for verdict, cnt in self.agg_counts.items():
            summ.packets += cnt
            summ.counts[verdict] += cnt
        for pk, (cnt, size, proc) in self.agg_proc.items():
            entry = summ.per_proc.get(pk)
            if entry is None:
                entry = summ.per_proc[pk] = [0, 0, proc]
            entry[0] += cnt
            entry[1] += size
        # The reference lists processes in the order they first received a packet.
        first = self.first_n
        summ.per_proc = dict(sorted(summ.per_proc.items(), key=lambda kv: first.get(kv[0], 0)))
        return summ


class _Producer:
    """Runs ``BatchEngine._produce`` on a second thread, a few chunks ahead of the replay
    (the numba walk and parse release the GIL, so they run beside the kernel's Python).
    Iterating gives its messages in order. Buffers and column arrays are pooled: the
    replay gives each back when done with it (``give_back``), so the walk never writes
    where a chunk still being replayed reads."""

    def __init__(self, produce, f, fmt, first_lt, chunk: int, depth: int = 3):
        import queue
        self.chunk = chunk
        self.msgs = queue.Queue()
        self.free_bufs = queue.Queue()
        self.free_cols = queue.Queue()
        self.nbufs = self.ncols = 0
        self.depth = depth
        self.stopping = False
        self.t = threading.Thread(target=self._loop, args=(produce, f, fmt, first_lt), daemon=True)
        self.t.start()

    def _take(self, q):
        import queue
        while not self.stopping:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        raise _Stopped

    def buffer(self, size: int):
        if self.nbufs < self.depth:
            self.nbufs += 1
            return np.empty(size, np.uint8)
        return self._take(self.free_bufs)

    def columns(self):
        if self.ncols < self.depth:
            self.ncols += 1
            return np.zeros((self.chunk, _nb.NCOL), np.int64)
        return self._take(self.free_cols)

    def give_back(self, a) -> None:
        (self.free_cols if a.ndim == 2 else self.free_bufs).put(a)

    def _loop(self, produce, f, fmt, first_lt) -> None:
        try:
            for msg in produce(f, fmt, first_lt, self):
                self.msgs.put(msg)
        except _Stopped:
            return
        except BaseException as e:      # raised again on the replay's thread
            self.msgs.put(("error", e))

    def __iter__(self):
        while True:
            msg = self.msgs.get()
            if msg[0] == "error":
                raise msg[1]
            yield msg
            if msg[0] in ("end", "rest"):
                return

    def stop(self) -> None:
        self.stopping = True
        self.t.join()


class _Stopped(Exception):
    """The replay ended early: the producer thread leaves."""


class _Writer:
    """Formats and writes jsonl chunks on a second thread, in submission order."""

    def __init__(self, out, pool_lock):
        self.out = out
        self.free: list = []          # output buffers written out, ready for reuse
        self.pool_lock = pool_lock
        self.q: deque = deque()
        self.cv = threading.Condition()
        self.closed = False
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def submit(self, args) -> None:
        with self.cv:
            while len(self.q) >= 4:
                self.cv.wait()
            self.q.append(args)
            self.cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.q and not self.closed:
                    self.cv.wait()
                if not self.q:
                    return
                args = self.q[0]
            try:
                n = _nb.jsonl(*args)
                self.out.write(memoryview(args[2])[:n])
            except BaseException as e:      # surfaced by close()
                self.error = e
            with self.pool_lock:
                self.free.append(args[2])
            with self.cv:
                self.q.popleft()
                self.cv.notify_all()

    def drain(self) -> None:
        with self.cv:
            while self.q:
                self.cv.wait()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.t.join()
        if self.error is not None:
            raise self.error
