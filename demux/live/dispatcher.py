"""The live loop: packets from the device, through the emulated kernel, to the processes.

    read -> wire.parse -> (reassembly) -> kernel.input -> verdict
        deliver: TCP -> stack -> handler process; UDP -> handler process
        reject:  RST (tcp_v4_send_reset) / ICMP port unreachable (icmp_send), rate-limited
        drop:    counted with its reason (a TIME-WAIT segment is answered with an ACK)
    handler answers -> stack / UDP datagram -> write; FIN and RST sent -> kernel.output

The kernel lookup chooses the receiving socket, so SO_REUSEPORT groups spread flows
over their processes exactly as in replay, one flow always on one member. One thread
and one ``select``; the device is anything with ``fileno``/``read``/``write`` (a TUN,
or a datagram socketpair in tests and benchmarks). SIGINT/SIGTERM end the loop through
a wake-up pipe; ``shutdown`` stops the handler processes.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from demux.kernel import tcp_states as ts
from demux.live import packets as pk
from demux.live.handlers import Worker
from demux.live.stack import Stack
from demux.wire import parse
from demux.wire.packet import FIN, RST
from demux.wire.reassembly import Reassembler

LINKTYPE_RAW = 101
_BATCH = 512                  # packets read per wake-up before the handlers get a turn


def _reason_class(reason: str) -> str:
    """Aggregate kernel drop reasons, which name addresses and counts, into kinds."""
    if "TIME-WAIT" in reason:
        return "segment for a TIME-WAIT socket"
    if "accept queue" in reason:
        return "accept queue full"
    if reason.startswith("RST"):
        return "RST without a connection"
    return reason.split(":")[0]


class Dispatcher:
    """One emulated host answering on one device. See the module docstring."""

    def __init__(self, kernel, device, handlers: dict, queue: int = 256, out=None):
        self.kernel = kernel
        self.dev = device
        self.out = out or sys.stderr
        self.mtu = device.mtu()
        self.workers = [Worker(p, handlers[p.name], queue) for p in kernel.procs]
        self.stack = Stack(self.mtu, on_data=self._tcp_data, on_eof=self._tcp_eof,
                           on_forget=self._forget)
        self.reasm = Reassembler()
        self.t0 = time.monotonic()
        self.stopping = False
        self._wake_r = self._wake_w = -1
        self._ip_id = 0
        self._tx_dropped0 = device.tx_dropped()
        self.n_in = self.n_out = self.write_errors = 0
        self.ignored = self.malformed = 0
        self.delivered: dict[int, list[int]] = {}      # proc index -> [packets, bytes, to handler]
        self.rejected = {"rst": 0, "icmp-port-unreachable": 0, "silent": 0, "icmp rate-limited": 0}
        self._icmp_limited_seen = 0
        self.dropped: dict[str, int] = {}
        self.restarts: dict[int, int] = {}

    # ---- life --------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        for w in self.workers:
            self._start(w)

    def _start(self, w: Worker) -> None:
        others = [fd for o in self.workers if o is not w for fd in o.fds()]
        others += [fd for fd in (self.dev.fileno(), self._wake_r, self._wake_w) if fd >= 0]
        w.start(others)

    def install_signals(self) -> None:
        """SIGINT/SIGTERM set ``stopping``; the wake-up pipe interrupts ``select``."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)

        def stop(signum, frame):
            self.stopping = True
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def shutdown(self) -> None:
        for w in self.workers:
            w.stop()
        if self._wake_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def run(self, duration: float | None = None) -> None:
        end = None if duration is None else self.now() + duration
        dev = self.dev.fileno()
        while not self.stopping:
            now = self.now()
            if end is not None and now >= end:
                break
            timeout = 0.5
            nd = self.stack.next_deadline()
            if nd is not None:
                timeout = min(timeout, max(0.0, nd - now))
            if end is not None:
                timeout = min(timeout, max(0.0, end - now))
            rl = [dev]
            if self._wake_r >= 0:
                rl.append(self._wake_r)
            by_fd = {}
            for w in self.workers:
                by_fd[w.from_child] = w
                by_fd[w.sentinel] = w
                rl.append(w.from_child)
                rl.append(w.sentinel)
            wl = [w.to_child for w in self.workers if w.pending]
            try:
                r, wr, _ = select.select(rl, wl, [], timeout)
            except InterruptedError:
                continue
            now = self.now()
            if dev in r:
                self.pump(now)
            for fd in r:
                w = by_fd.get(fd)
                if w is None:
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    continue
                if fd == w.sentinel:
                    self._restart(w, now)
                elif fd == w.from_child:
                    self._answers(w, now)
            for w in self.workers:
                if w.pending:
                    w.flush()
            nd = self.stack.next_deadline()
            if nd is not None and nd <= now:
                self._send_all(self.stack.tick(now), now)

    def pump(self, now: float) -> int:
        """Read and handle what the device has, up to a batch."""
        n = 0
        read = self.dev.read
        while n < _BATCH:
            frame = read()
            if frame is None:
                break
            n += 1
            try:
                self.handle(frame, now)
            except Exception as err:     # one bad packet must not end the host: count, say once
                key = f"internal error: {type(err).__name__}: {err}"
                if key not in self.dropped:
                    print(f"demux live: packet {self.n_in}: {key}", file=self.out, flush=True)
                self.dropped[key] = self.dropped.get(key, 0) + 1
        for w in self.workers:
            if w.pending:
                w.flush()
        return n

    # ---- one packet --------------------------------------------------------------------

    def handle(self, frame: bytes, now: float) -> None:
        self.n_in += 1
        k = self.kernel
        p = parse(self.n_in, now, LINKTYPE_RAW, frame)
        if p.error is not None:
            self.malformed += 1
            return
        if not p.family or not (k.is_local(p.dst) or (p.proto == 17 and k.is_broadcast(p.dst, False))):
            self.ignored += 1     # router solicitations, MLD, traffic for other hosts
            return
        if p.frag is not None:
            p = self.reasm.push(p)
            if p is None:
                return
            if p.error is not None:
                self.malformed += 1
                return
        if p.proto not in (6, 17):
            self.ignored += 1
            return
        if k.events:
            k.advance(now)
        v = k.input(p, now)
        verdict = v.verdict
        if verdict == "deliver":
            self._count(v.proc, p)
            if p.proto == 6:
                listener = backlog = None
                # A SYN the kernel took without a request socket was answered by a cookie.
                cookie = v.state == ts.LISTEN and p.flags & 0x12 == 0x02
                proc = v.proc
                if v.state == ts.SYN_RECV:
                    kc = k.est.get((p.dst, p.dport, p.src, p.sport))
                    if kc is not None and kc.listener is not None:
                        listener, backlog = id(kc.listener), kc.listener.backlog
                        if not kc.listener.accept:
                            # The process never calls accept(): the kernel ACKs the data,
                            # which waits in the queued socket and reaches no handler.
                            proc = None
                self._send_all(self.stack.input(p, proc, now, listener, backlog, cookie), now)
            else:
                self._udp(p, v)
        elif verdict == "reject":
            self._reject(p, v, now)
        else:
            self.dropped[_reason_class(v.reason)] = self.dropped.get(_reason_class(v.reason), 0) + 1
            if v.state == ts.TIME_WAIT and p.proto == 6:   # tcp_timewait_state_process re-ACKs
                self._send_all(self.stack.timewait_ack(p), now)

    def _count(self, proc, p) -> None:
        if proc is None:
            return
        d = self.delivered.get(proc.index)
        if d is None:
            d = self.delivered[proc.index] = [0, 0, 0]
        d[0] += 1
        d[1] += p.payload_len

    def _reject(self, p, v, now: float) -> None:
        if v.reply == "rst":
            pkt = pk.tcp_reset(p)
            if pkt is not None:
                self.rejected["rst"] += 1
                self._write(pkt)
                return
        elif v.reply == "icmp-port-unreachable":
            self.rejected["icmp-port-unreachable"] += 1
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            self._write(pk.icmp_port_unreachable(p, self._ip_id))
            return
        # The kernel's ICMP rate limit decided (reply None): count it apart from silence.
        limited = self.kernel.icmp_ratelimited
        if limited != self._icmp_limited_seen:
            self._icmp_limited_seen = limited
            self.rejected["icmp rate-limited"] += 1
            return
        self.rejected["silent"] += 1

    def _udp(self, p, v) -> None:
        data = bytes(p.data[p.payload_off:p.payload_off + p.payload_len])
        targets = v.copies or [(v.proc, v.fd)]
        for proc, _fd in targets:
            if proc is None:
                continue
            w = self.workers[proc.index]
            addr = ("udp", p.dst, p.dport, p.src, p.sport, None)
            if w.put(addr, data):
                d = self.delivered.get(proc.index)
                if d is not None:
                    d[2] += 1
            else:
                self._drop_full(w)

    def _drop_full(self, w: Worker) -> None:
        key = f"handler queue full ({w.proc.name} pid {w.proc.pid})"
        self.dropped[key] = self.dropped.get(key, 0) + 1

    # ---- stack callbacks -----------------------------------------------------------------

    def _tcp_data(self, conn, data: bytes) -> bool:
        proc = conn.proc
        if proc is None:
            return True
        w = self.workers[proc.index]
        laddr, lport, raddr, rport = conn.key
        if not w.put(("tcp", laddr, lport, raddr, rport, conn.id), data):
            self._drop_full(w)
            return False
        d = self.delivered.get(proc.index)
        if d is not None:
            d[2] += 1
        return True

    def _tcp_eof(self, conn) -> None:
        if conn.proc is not None:
            laddr, lport, raddr, rport = conn.key
            self.workers[conn.proc.index].put(("tcp", laddr, lport, raddr, rport, conn.id), None, force=True)

    def _forget(self, key) -> None:
        # The stack answered a SYN with a cookie: no request socket exists after all.
        self.kernel.est.pop(key, None)

    # ---- answers -------------------------------------------------------------------------

    def _answers(self, w: Worker, now: float) -> None:
        for addr, answer, close in w.replies():
            proto, laddr, lport, raddr, rport, cid = addr
            if proto == "udp":
                if answer:
                    self._ip_id = (self._ip_id + 1) & 0xFFFF
                    for pkt in pk.udp_packets(laddr, raddr, lport, rport, answer, self.mtu, self._ip_id):
                        self._write(pkt)
                continue
            c = self.stack.conns.get((laddr, lport, raddr, rport))
            if c is None or c.id != cid:
                continue            # the connection is gone (reset, timed out)
            if answer:
                self._send_all(self.stack.send(c, answer, now), now)
            if close:
                self._send_all(self.stack.close(c, now), now)

    def _restart(self, w: Worker, now: float) -> None:
        how = w.reap()
        lost = w.outstanding
        self.restarts[w.proc.index] = self.restarts.get(w.proc.index, 0) + 1
        if lost:
            key = f"lost in a dead handler ({w.proc.name} pid {w.proc.pid})"
            self.dropped[key] = self.dropped.get(key, 0) + lost
        # The kernel closes a dead process's sockets; with data it never read, that is a
        # RST (tcp_close -> tcp_send_active_reset).
        for c in [c for c in self.stack.conns.values() if c.proc is w.proc]:
            self._send_all(self.stack.abort(c, "handler process died"), now)
        self._start(w)
        print(f"demux live: handler {w.proc.name} (pid {w.proc.pid}) {how}; restarted as "
              f"os pid {w.os_proc.pid}", file=self.out, flush=True)

    # ---- out -----------------------------------------------------------------------------

    def _write(self, pkt: bytes) -> None:
        if self.dev.write(pkt):
            self.n_out += 1
        else:
            self.write_errors += 1

    def _send_all(self, pkts: list[bytes], now: float) -> None:
        for pkt in pkts:
            self._write(pkt)
            # FIN and RST change the kernel's TCP state (tcp_states); SYN-ACKs, ACKs and
            # data do not, and the kernel already holds the request socket for a SYN-ACK.
            ip_hl = 20 if pkt[0] >> 4 == 4 else 40
            if pkt[ip_hl + 13] & (FIN | RST):
                self.kernel.output(parse(0, now, LINKTYPE_RAW, pkt), now)

    # ---- report --------------------------------------------------------------------------

    def summary(self) -> str:
        tx_dropped = self.dev.tx_dropped() - self._tx_dropped0
        if tx_dropped > 0:
            self.dropped["device queue full before demux read it (tx_dropped)"] = tx_dropped
        lines = [f"demux live: {self.n_in} packets in, {self.n_out} out"
                 + (f" ({self.write_errors} writes failed)" if self.write_errors else "")]
        lines.append("delivered:")
        for w in self.workers:
            d = self.delivered.get(w.proc.index, [0, 0, 0])
            extra = f", restarted {self.restarts[w.proc.index]}x" if w.proc.index in self.restarts else ""
            lines.append(f"  {w.proc.name} pid {w.proc.pid}: {d[0]} packets, {d[1]} bytes, "
                         f"{d[2]} to the handler{extra}")
        rj = self.rejected
        lines.append(f"rejected: {rj['rst'] + rj['icmp-port-unreachable'] + rj['silent'] + rj['icmp rate-limited']}"
                     f" (rst {rj['rst']}, icmp-port-unreachable {rj['icmp-port-unreachable']}, "
                     f"icmp rate-limited {rj['icmp rate-limited']}, no reply {rj['silent']})")
        lines.append(f"dropped: {sum(self.dropped.values())}")
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n} {reason}")
        st = self.stack.stats
        lines.append(f"tcp: {st['syncookies_sent']} SYN cookies sent (SYN queue full), "
                     f"{st['syncookies_ok']} accepted; {st['retransmits']} retransmissions, "
                     f"{st['timeouts']} timeouts")
        lines.append(f"ignored: {self.ignored} (not TCP/UDP to the host), malformed: {self.malformed}")
        return "\n".join(lines)


def describe_workers(d: Dispatcher) -> list[str]:
    return [f"  {w.proc.name} pid {w.proc.pid} (uid {w.proc.uid}) -> os pid {w.os_proc.pid}"
            for w in d.workers]

