"""``demux ss``: the emulated socket table as iproute2's ss prints it (SPEC §5).

With ``--capture`` the table is the one the packets leave behind; with ``--at T`` the
one at T seconds after the first packet, the kernel's timers included (a TIME-WAIT or
SYN-RECV entry whose timer fired by then is gone, as it would be from real ``ss``).
"""

from __future__ import annotations

import sys

from demux.errors import DemuxError
from demux.kernel import Kernel
from demux.render.ss import render

# TCP header flag bits (RFC 9293 §3.1)
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_MOD = 1 << 32


class Unread:
    """What each incoming connection's receive queue holds if no process has read it.

    tcp_diag_get_info reports Recv-Q as ``rcv_nxt - copied_seq``. No process reads a
    connection still waiting in an accept queue, so its ``copied_seq`` is still the
    peer's initial sequence + 1 and its Recv-Q is every byte received in order since
    the SYN, plus one for a FIN (``tcp_fin`` advances ``rcv_nxt`` past it): the
    ``CLOSE-WAIT 10 0`` of a never-accepted connection that got 9 bytes and a FIN.
    The kernel keeps neither number, so they are read off the packets it was fed.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.seqs: dict[tuple, list[int]] = {}     # 4-tuple -> [irs + 1, rcv_nxt]

    def see(self, rec) -> None:
        """Account for one record the engine returned (the kernel has taken it)."""
        p = rec.packet
        if rec.direction != "in" or p.proto != 6 or rec.v is None or rec.v.verdict != "deliver":
            return
        key = (p.dst, p.dport, p.src, p.sport)
        flags = p.flags
        got = self.seqs.get(key)
        if flags & (_SYN | _RST | _ACK) == _SYN:
            # a new connection (or one reopening a TIME-WAIT 4-tuple) starts afresh; a
            # retransmitted SYN (same sequence) changes nothing
            start = (p.seq + 1) % _MOD
            if got is None or got[0] != start:
                self.seqs[key] = [start, start]
            return
        if got is None:
            return
        c = self.kernel.est.get(key)
        if c is None or not c.queued and c.state != "SYN-RECV":
            # accepted (its process reads it) or gone: nothing to show, nothing to keep
            del self.seqs[key]
            return
        if flags & (_SYN | _RST):
            return
        end = (p.seq + p.payload_len + (1 if flags & _FIN else 0)) % _MOD
        # In order only: a segment past a hole waits in the out-of-order queue and does
        # not move rcv_nxt; a retransmission ending at or before it moves nothing.
        if (got[1] - p.seq) % _MOD < _MOD // 2 and 0 < (end - got[1]) % _MOD < _MOD // 2:
            got[1] = end

    def queues(self) -> dict[tuple, int]:
        """Recv-Q by (local addr, local port, remote addr, remote port)."""
        return {k: (nxt - start) % _MOD for k, (start, nxt) in self.seqs.items()}


def run(args) -> int:
    if args.at is not None and not args.capture:
        raise DemuxError("--at needs --capture")
    recvq = None
    warning = None
    if args.capture:
        from demux.capture import open_capture
        from demux.engine import Engine, load_or_infer
        scenario = load_or_infer(args.capture, args.scenario)
        eng = Engine(scenario, args.seed)
        unread = Unread(eng.kernel)
        with open_capture(args.capture) as reader:
            for frame in reader:
                if args.at is not None and eng.t0 is not None and frame.ts - eng.t0 > args.at:
                    break
                unread.see(eng.feed(frame))
            else:
                # The table is the one after the packets before the damage (as replay
                # reports them); exit status 1 as replay's.
                warning = reader.warning
        if args.at is not None and eng.t0 is not None:
            eng.kernel.advance(args.at)
            # The timers too: the engine runs them only when a packet comes, and none
            # came between the last one fed and T. Kernel.expire takes the capture's
            # clock (packet timestamps), where T is t0 + at.
            eng.kernel.expire(eng.t0 + args.at)
        kernel = eng.kernel
        recvq = unread.queues()
    else:
        if args.scenario:
            from demux import scenario as scen
            sc = scen.load(args.scenario)
        else:
            # No scenario: this machine's own table, as `demux snapshot` reads it.
            from demux.snapshot import snapshot
            sc, _ = snapshot()
        kernel = Kernel.from_scenario(sc, args.seed)
        kernel.apply_all()
    sys.stdout.write(render(kernel, args.tcp, args.udp, args.listening, args.all, args.numeric,
                            args.processes, args.extended, recvq))
    if warning:
        print(f"demux ss: warning: {warning}", file=sys.stderr)
        return 1
    return 0
