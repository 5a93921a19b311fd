"""A minimal TCP endpoint: the host's end of the connections the emulated kernel accepts.

Sans-IO: segments come in as parsed ``Packet`` objects beside the kernel's ``Verdict``,
packets go out as bytes (``demux.live.packets``); time is passed in. The emulated
kernel (``demux.kernel``) decides *which* socket a segment belongs to; this stack only
does what that socket's TCP does with it:

- SYN -> SYN-ACK carrying our MSS (no window scaling, SACK or timestamps are offered,
  so the peer uses none). A listener keeps at most ``backlog`` half-open connections
  (``inet_csk_reqsk_queue_is_full``); beyond that it answers with a SYN cookie and keeps
  no state (``tcp_syn_flood_action``, net.ipv4.tcp_syncookies=1), and a returning ACK
  carrying a valid cookie makes the connection (``cookie_v4_check``). Our cookie keeps
  Linux's idea (a keyed hash of the 4-tuple and a 64 s counter, the MSS in low bits),
  not its exact bit layout.
- In-order data goes to ``on_data(conn, bytes) -> bool``; False means the receive queue
  is full, so the segment is dropped and the ACK repeats the old point, as
  ``tcp_data_queue`` does when ``tcp_try_rmem_schedule`` fails; the peer retransmits.
  Duplicates and retransmissions are trimmed and re-ACKed; segments beyond ``rcv_nxt``
  (out of order) are not kept, only answered with a duplicate ACK.
- ``send`` queues the application's answer; it goes out in MSS-sized segments within
  the peer's window, with correct seq/ack, and is retransmitted from ``snd_una`` on a
  doubling timeout (``tcp_retransmit_timer``) until acknowledged.
- FIN both ways (``on_eof`` tells the application it read end-of-file; ``close`` sends
  our FIN after the queued data), RST both ways (``abort``; an incoming RST exactly at
  ``rcv_nxt`` resets, one elsewhere in the window earns a challenge ACK, RFC 5961 3.2),
  and TIME-WAIT (60 s, retransmitted FINs re-ACKed).
"""

from __future__ import annotations

import hashlib
import heapq
import os

from demux.kernel import tcp_states as ts
from demux.live import packets as pk
from demux.wire.packet import ACK, FIN, PSH, RST, SYN

M32 = 0xFFFFFFFF
RCV_WND = 65535                 # advertised window; no scaling offered
TCP_TIMEOUT_INIT = 1.0          # first SYN-ACK retransmission (include/net/tcp.h)
TCP_RTO_MIN = 0.2               # first data retransmission: RTT on a TUN is ~0
TCP_RTO_MAX = 120.0
TCP_SYNACK_RETRIES = 5          # net.ipv4.tcp_synack_retries
TCP_RETRIES2 = 15               # net.ipv4.tcp_retries2
TCP_FIN_TIMEOUT = 60.0          # net.ipv4.tcp_fin_timeout: an orphan in FIN-WAIT-2
# msstab of net/ipv4/syncookies.c: the MSS values a cookie can carry in 2 bits.
COOKIE_MSS = (536, 1300, 1440, 1460)


def seq_lt(a: int, b: int) -> bool:
    """``before()`` of include/net/tcp.h: a comes before b in sequence space."""
    return 0 < ((b - a) & M32) < 0x80000000


def seq_le(a: int, b: int) -> bool:
    return a == b or seq_lt(a, b)


class Conn:
    """One connection of the stack, keyed like the kernel's established hash:
    (local addr, local port, remote addr, remote port)."""

    __slots__ = ("key", "id", "state", "iss", "irs", "snd_una", "snd_nxt", "snd_wnd",
                 "rcv_nxt", "mss", "sendq", "unacked", "fin_wanted", "fin_seq",
                 "rto", "deadline", "retries", "expire", "proc", "listener", "tag")

    def __init__(self, key, cid: int, iss: int, irs: int, mss: int, window: int, proc, listener):
        self.key = key
        self.id = cid
        self.state = ts.SYN_RECV
        self.iss = iss
        self.irs = irs
        self.snd_una = iss
        self.snd_nxt = (iss + 1) & M32
        self.snd_wnd = window
        self.rcv_nxt = (irs + 1) & M32
        self.mss = mss
        self.sendq = bytearray()        # queued by the application, not yet sent
        self.unacked = bytearray()      # sent, not yet acknowledged (from snd_una)
        self.fin_wanted = False         # the application closed: FIN after sendq
        self.fin_seq = None             # sequence number of our FIN once sent
        self.rto = TCP_TIMEOUT_INIT
        self.deadline = 0.0             # retransmission due (0: none)
        self.retries = 0
        self.expire = 0.0               # TIME-WAIT / FIN-WAIT-2 end
        self.proc = proc                # the scenario process that owns it
        self.listener = listener        # id of the listener while half-open
        self.tag = None                 # the caller's own data

    def __repr__(self) -> str:
        return f"Conn(id={self.id}, state={self.state}, snd_nxt={self.snd_nxt}, rcv_nxt={self.rcv_nxt})"


class Stack:
    """All TCP connections of the emulated host. See the module docstring."""

    def __init__(self, mtu: int = 1500, on_data=None, on_eof=None, on_gone=None, on_forget=None,
                 secret: bytes | None = None):
        self.mtu = mtu
        self.on_data = on_data or (lambda conn, data: True)
        self.on_eof = on_eof or (lambda conn: None)
        self.on_gone = on_gone or (lambda conn, why: None)      # the connection left the table
        self.on_forget = on_forget or (lambda key: None)        # a SYN answered without state
        self.secret = secret if secret is not None else os.urandom(16)
        self.conns: dict[tuple, Conn] = {}
        self.half_open: dict[object, int] = {}                  # listener -> SYN-RECV count
        # (due time, conn id, conn): a lazy heap; an entry whose conn has moved on is
        # skipped when it comes up, so arming a timer never searches.
        self.timers: list[tuple[float, int, Conn]] = []
        self._next_id = 1
        self.stats = {"syncookies_sent": 0, "syncookies_ok": 0, "syncookies_bad": 0,
                      "rcvq_drops": 0, "dup_acks": 0, "retransmits": 0, "timeouts": 0}

    # ---- helpers ---------------------------------------------------------------------

    def _our_mss(self, family_v4: bool) -> int:
        return self.mtu - (40 if family_v4 else 60)

    def _hash(self, key, extra: int) -> int:
        h = hashlib.blake2s(key[0] + key[2] + bytes((key[1] >> 8, key[1] & 255, key[3] >> 8, key[3] & 255))
                            + extra.to_bytes(8, "big"), key=self.secret, digest_size=4)
        return int.from_bytes(h.digest(), "big")

    def _isn(self, key, now: float) -> int:
        # secure_tcp_seq: a keyed hash of the 4-tuple plus a clock ticking every 64 ns.
        return (self._hash(key, 0) + int(now * 15625000)) & M32

    def _cookie(self, key, client_isn: int, slot: int, mss_index: int) -> int:
        return ((self._hash(key, ((slot & M32) << 32) | client_isn) & ~3) | mss_index) & M32

    def _seg(self, c: Conn, flags: int, seq: int | None = None, payload: bytes = b"",
             options: bytes = b"") -> bytes:
        laddr, lport, raddr, rport = c.key
        return pk.tcp_packet(laddr, raddr, lport, rport, c.snd_nxt if seq is None else seq,
                             c.rcv_nxt if flags & ACK else 0, flags, RCV_WND, options, payload)

    def _ack(self, c: Conn) -> bytes:
        return self._seg(c, ACK)

    def _synack(self, c: Conn) -> bytes:
        return self._seg(c, SYN | ACK, c.iss, options=pk.mss_option(self._our_mss(len(c.key[0]) == 4)))

    def _arm(self, c: Conn, now: float) -> None:
        if not c.deadline:
            c.deadline = now + c.rto
            self._at(c, c.deadline)

    def _at(self, c: Conn, t: float) -> None:
        heapq.heappush(self.timers, (t, c.id, c))

    def _remove(self, c: Conn, why: str) -> None:
        if self.conns.get(c.key) is c:
            del self.conns[c.key]
        self._leave_half_open(c)
        c.state = ts.CLOSE
        self.on_gone(c, why)

    def _leave_half_open(self, c: Conn) -> None:
        if c.listener is not None:
            n = self.half_open.get(c.listener, 1) - 1
            if n:
                self.half_open[c.listener] = n
            else:
                self.half_open.pop(c.listener, None)
            c.listener = None

    def _new(self, key, iss: int, irs: int, mss: int, window: int, proc, listener) -> Conn:
        c = Conn(key, self._next_id, iss, irs, mss, window, proc, listener)
        self._next_id += 1
        self.conns[key] = c
        if listener is not None:
            self.half_open[listener] = self.half_open.get(listener, 0) + 1
        return c

    def _peer_mss(self, p) -> int:
        # RFC 9293 3.7.1: without the option, 536 (IPv4) / 1220 (IPv6); never more than ours.
        default = 536 if p.family == 4 else 1220
        return min(p.mss or default, self._our_mss(p.family == 4))

    # ---- segments in -----------------------------------------------------------------

    def input(self, p, proc, now: float, listener=None, backlog: int | None = None,
              cookie: bool = False) -> list[bytes]:
        """A segment the kernel delivered to ``proc``'s socket. ``listener`` (any
        hashable) and ``backlog`` name the listener when the segment is a SYN it took;
        ``cookie`` says the kernel's request queue was full, so the SYN gets a cookie."""
        key = (p.dst, p.dport, p.src, p.sport)
        flags = p.flags
        c = self.conns.get(key)
        if c is not None and c.state == ts.TIME_WAIT and flags & SYN and not flags & (ACK | RST):
            self._remove(c, "TIME-WAIT reopened by a new SYN")      # tcp_timewait_state_process
            c = None
        if c is None:
            return self._no_conn(p, key, proc, now, listener, backlog, cookie)
        return self._conn_input(c, p, now)

    def _no_conn(self, p, key, proc, now, listener, backlog, cookie=False) -> list[bytes]:
        flags = p.flags
        if flags & RST:
            return []
        if flags & SYN and not flags & (ACK | FIN):      # TCP_LISTEN discards a SYN with FIN
            mss = self._peer_mss(p)
            if cookie or (backlog is not None and self.half_open.get(listener, 0) >= max(backlog, 1)):
                # inet_csk_reqsk_queue_is_full -> tcp_syn_flood_action: a cookie, no state.
                self.stats["syncookies_sent"] += 1
                self.on_forget(key)
                idx = max(i for i, m in enumerate(COOKIE_MSS) if m <= mss or i == 0)
                cookie = self._cookie(key, p.seq, int(now) >> 6, idx)
                laddr, lport, raddr, rport = key
                return [pk.tcp_packet(laddr, raddr, lport, rport, cookie, p.seq + 1, SYN | ACK, RCV_WND,
                                      pk.mss_option(self._our_mss(p.family == 4)))]
            c = self._new(key, self._isn(key, now), p.seq, mss, p.window, proc, listener)
            self._arm(c, now)
            return [self._synack(c)]
        if flags & ACK and not flags & SYN:
            c = self._cookie_check(p, key, proc, now)
            if c is not None:
                return self._conn_input(c, p, now)
            # tcp_rcv_state_process in LISTEN: an ACK gets a RST (tcp_v4_send_reset).
            return [pk.tcp_reset(p)]
        return []      # LISTEN discards anything else (no ACK, no SYN)

    def _cookie_check(self, p, key, proc, now) -> Conn | None:
        """``cookie_v4_check``: the ACK acknowledges a cookie from this or one of the two
        previous 64-second slots (MAX_SYNCOOKIE_AGE)."""
        if not self.stats["syncookies_sent"]:
            return None
        iss = (p.ack - 1) & M32
        irs = (p.seq - 1) & M32
        slot = int(now) >> 6
        for s in (slot, slot - 1, slot - 2):
            if self._cookie(key, irs, s, iss & 3) == iss:
                self.stats["syncookies_ok"] += 1
                c = self._new(key, iss, irs, COOKIE_MSS[iss & 3], p.window, proc, None)
                c.state = ts.ESTAB
                return c
        self.stats["syncookies_bad"] += 1
        return None

    def _conn_input(self, c: Conn, p, now: float) -> list[bytes]:
        flags, seq = p.flags, p.seq
        out: list[bytes] = []
        if flags & RST:
            # RFC 5961 3.2 (tcp_validate_incoming): reset only exactly at rcv_nxt.
            if seq == c.rcv_nxt or (c.state == ts.SYN_RECV and flags & ACK and p.ack == c.snd_nxt):
                self._remove(c, "reset by the peer")
            elif seq_le(c.rcv_nxt, seq) and seq_lt(seq, c.rcv_nxt + RCV_WND):
                out.append(self._ack(c))          # challenge ACK
            return out
        if flags & SYN:
            if c.state == ts.SYN_RECV and not flags & ACK and seq == c.irs:
                return [self._synack(c)]          # the SYN again: our SYN-ACK was lost
            return [self._ack(c)]                 # SYN in a synchronized state: challenge ACK
        if not flags & ACK:
            return out                            # RFC 9293 3.10.7.4 fifth: no ACK, drop
        ack = p.ack
        if c.state == ts.SYN_RECV:
            if ack != c.snd_nxt:
                return [pk.tcp_reset(p)]          # unacceptable ACK of our SYN-ACK
            c.state = ts.ESTAB
            c.snd_una = ack
            c.deadline = 0.0
            c.retries = 0
            c.rto = TCP_RTO_MIN
            self._leave_half_open(c)
        elif seq_lt(c.snd_una, ack) and seq_le(ack, c.snd_nxt):
            n = (ack - c.snd_una) & M32
            del c.unacked[:n]
            c.snd_una = ack
            c.retries = 0
            c.rto = TCP_RTO_MIN
            c.deadline = 0.0
            if c.snd_una != c.snd_nxt:
                self._arm(c, now)
            if c.fin_seq is not None and ack == ((c.fin_seq + 1) & M32):
                if c.state == ts.FIN_WAIT_1:
                    c.state = ts.FIN_WAIT_2
                    c.expire = now + TCP_FIN_TIMEOUT
                    self._at(c, c.expire)
                elif c.state == ts.CLOSING:
                    self._time_wait(c, now)
                elif c.state == ts.LAST_ACK:
                    self._remove(c, "closed")
                    return out
        elif seq_lt(c.snd_nxt, ack):
            return [self._ack(c)]                 # acknowledges what we never sent
        if seq_le(c.snd_una, ack):
            c.snd_wnd = p.window
        plen = p.payload_len
        if plen or flags & FIN:
            out.extend(self._receive(c, p, now))
        out.extend(self._flush(c, now))
        return out

    def _receive(self, c: Conn, p, now: float) -> list[bytes]:
        plen = p.payload_len
        if c.state not in (ts.ESTAB, ts.FIN_WAIT_1, ts.FIN_WAIT_2):
            return [self._ack(c)]                 # after the peer's FIN: a retransmission
        off = (c.rcv_nxt - p.seq) & M32
        if off >= 0x80000000:
            self.stats["dup_acks"] += 1           # beyond rcv_nxt: out of order, not kept
            return [self._ack(c)]
        fin = 1 if p.flags & FIN else 0
        if off >= plen + fin:
            self.stats["dup_acks"] += 1           # all of it seen before
            return [self._ack(c)]
        if off < plen:
            data = bytes(p.data[p.payload_off + off:p.payload_off + plen])
            if not self.on_data(c, data):
                self.stats["rcvq_drops"] += 1
                return [self._ack(c)]             # tcp_data_queue: no room, drop, ACK the old point
            c.rcv_nxt = (c.rcv_nxt + len(data)) & M32
        if fin:
            c.rcv_nxt = (c.rcv_nxt + 1) & M32     # tcp_fin
            if c.state == ts.ESTAB:
                c.state = ts.CLOSE_WAIT
            elif c.state == ts.FIN_WAIT_1:
                c.state = ts.CLOSING
            else:
                self._time_wait(c, now)
            self.on_eof(c)
        return [self._ack(c)]

    def _time_wait(self, c: Conn, now: float) -> None:
        c.state = ts.TIME_WAIT
        c.deadline = 0.0
        c.expire = now + ts.TIME_WAIT_SECONDS
        self._at(c, c.expire)

    def timewait_ack(self, p) -> list[bytes]:
        """The kernel dropped a segment for a TIME-WAIT socket and answers it with an
        ACK (``tcp_timewait_state_process`` -> TCP_TW_ACK)."""
        c = self.conns.get((p.dst, p.dport, p.src, p.sport))
        return [self._ack(c)] if c is not None and c.state == ts.TIME_WAIT else []

    # ---- the application's side ------------------------------------------------------

    def send(self, c: Conn, data: bytes, now: float) -> list[bytes]:
        """The application writes ``data``; what can go out now is returned."""
        if c.state not in (ts.ESTAB, ts.CLOSE_WAIT) or c.fin_wanted or self.conns.get(c.key) is not c:
            return []                             # EPIPE: written after close
        c.sendq += data
        return self._flush(c, now)

    def close(self, c: Conn, now: float) -> list[bytes]:
        """The application closes: FIN once the queued data is out."""
        if self.conns.get(c.key) is not c or c.fin_wanted:
            return []
        c.fin_wanted = True
        return self._flush(c, now)

    def abort(self, c: Conn, why: str) -> list[bytes]:
        """RST the connection and forget it (``tcp_send_active_reset``)."""
        if self.conns.get(c.key) is not c:
            return []
        out = [] if c.state in (ts.TIME_WAIT, ts.SYN_RECV) else [self._seg(c, RST | ACK)]
        self._remove(c, why)
        return out

    def _flush(self, c: Conn, now: float) -> list[bytes]:
        out = []
        if c.state in (ts.SYN_RECV, ts.TIME_WAIT, ts.CLOSE):
            return out
        while c.sendq:
            room = (c.snd_una + c.snd_wnd - c.snd_nxt) & M32
            if room >= 0x80000000:
                room = 0
            n = min(len(c.sendq), c.mss, room)
            if n <= 0:
                break
            chunk = bytes(c.sendq[:n])
            del c.sendq[:n]
            out.append(self._seg(c, ACK | (PSH if not c.sendq else 0), payload=chunk))
            c.unacked += chunk
            c.snd_nxt = (c.snd_nxt + n) & M32
        if c.fin_wanted and not c.sendq and c.fin_seq is None and c.state in (ts.ESTAB, ts.CLOSE_WAIT):
            out.append(self._seg(c, FIN | ACK))
            c.fin_seq = c.snd_nxt
            c.snd_nxt = (c.snd_nxt + 1) & M32
            c.state = ts.FIN_WAIT_1 if c.state == ts.ESTAB else ts.LAST_ACK
        if c.snd_una != c.snd_nxt:
            self._arm(c, now)
        return out

    # ---- time ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``tick`` may have work (possibly early, never late)."""
        return self.timers[0][0] if self.timers else None

    def tick(self, now: float) -> list[bytes]:
        """Retransmissions due and connections whose time is up."""
        out: list[bytes] = []
        timers = self.timers
        while timers and timers[0][0] <= now:
            c = heapq.heappop(timers)[2]
            if c.state == ts.CLOSE:
                continue
            if c.expire and now >= c.expire and c.state in (ts.TIME_WAIT, ts.FIN_WAIT_2):
                self._remove(c, "TIME-WAIT ended" if c.state == ts.TIME_WAIT else "FIN-WAIT-2 timeout")
                continue
            if not c.deadline or now < c.deadline:
                continue
            limit = TCP_SYNACK_RETRIES if c.state == ts.SYN_RECV else TCP_RETRIES2
            if c.retries >= limit:
                self.stats["timeouts"] += 1
                out.extend(self.abort(c, "retransmission timeout"))
                continue
            c.retries += 1
            self.stats["retransmits"] += 1
            c.rto = min(c.rto * 2, TCP_RTO_MAX)
            c.deadline = now + c.rto
            self._at(c, c.deadline)
            if c.state == ts.SYN_RECV:
                out.append(self._synack(c))
            elif c.unacked:
                out.append(self._seg(c, ACK, c.snd_una, payload=bytes(c.unacked[:c.mss])))
            elif c.fin_seq is not None:
                out.append(self._seg(c, FIN | ACK, c.fin_seq))
        return out
