"""IP fragment reassembly, as the kernel does it before any socket lookup.

Sans-IO: ``Reassembler.push(packet)`` takes parsed packets in capture order and returns
the whole datagram (a new ``Packet``, parsed from the joined bytes, numbered with the
fragment that completed it) once the last missing piece arrives, else None. Datagrams
that never complete come out of ``expire(now)``: timed out after ``ipfrag_time``
(30 s), or discarded for overlapping fragments. Nothing here reads a file or a clock;
time is the capture's.

Rules, with the kernel function each comes from:
- key: (src, dst, id, protocol) for IPv4 (``ip4_frag_match`` via ``ipq_hashfn``),
  (src, dst, id) for IPv6 (``ip6frag_key``);
- the queue's timer starts with its first fragment and is not restarted
  (``inet_frag_create``: ``mod_timer(jiffies + timeout)``); when it fires the whole
  queue goes (``ip_expire``, ``ip6_frag_expire``);
- a last fragment (MF clear) fixes the datagram's length; a second last fragment with
  another end, or data beyond a known end, is dropped (``ip_frag_queue``,
  ``ip6_frag_queue``); an IPv4 non-last fragment is trimmed to a multiple of 8, an IPv6
  one that is not a multiple of 8 is refused (``ip6_frag_queue``: parameter problem);
  an empty fragment is dropped;
- a fragment that lies wholly inside a run already received is a duplicate and is
  dropped alone; any other overlap discards the whole datagram (RFC 5722 for IPv6, and
  IPv4 since Linux 4.19: ``inet_frag_queue_insert`` returns ``IPFRAG_DUP`` or
  ``IPFRAG_OVERLAP``);
- a datagram longer than 65535 bytes is discarded (``ip_frag_reasm``/``ip6_frag_reasm``
  "oversized").
"""

from __future__ import annotations

import struct

from demux.wire.packet import Packet
from demux.wire.parser import parse

IPFRAG_TIME = 30.0          # net.ipv4.ipfrag_time and net.ipv6.ip6frag_time, seconds
IP_MAXPACKET = 65535
LINKTYPE_RAW = 101


class Incomplete:
    """A datagram (or a lone fragment) that was not delivered, and why.

    ``reason``: ``timeout``, ``overlap``, ``oversize``, or for a single fragment dropped
    on its own ``duplicate`` / ``bad-length``; ``frames`` are the packet numbers
    involved; ``have`` bytes of ``total`` arrived (``total`` None until the last
    fragment is seen).
    """

    __slots__ = ("family", "src", "dst", "ident", "proto", "frames", "first_ts", "reason",
                 "have", "total")

    def __init__(self, family, src, dst, ident, proto, frames, first_ts, reason, have, total):
        self.family = family
        self.src = src
        self.dst = dst
        self.ident = ident
        self.proto = proto
        self.frames = frames
        self.first_ts = first_ts
        self.reason = reason
        self.have = have
        self.total = total

    def __repr__(self) -> str:
        return (f"Incomplete(reason={self.reason!r}, ident={self.ident}, frames={self.frames}, "
                f"have={self.have}, total={self.total})")


class _Queue:
    """One datagram being put together (the kernel's ``inet_frag_queue``)."""

    __slots__ = ("key", "family", "first", "frags", "runs", "tail", "length", "last_in",
                 "meat", "first_ts", "deadline", "frames", "proto")

    def __init__(self, key, p: Packet, timeout: float):
        self.key = key
        self.family = p.family
        self.proto = p.proto
        self.first = None            # the offset-0 fragment: its headers head the datagram
        self.frags = []              # (offset, data bytes, captured-all flag)
        self.runs = []               # [start, end] of contiguous runs, as the kernel keeps them
        self.tail = None             # the run the last tail-appended fragment belongs to
        self.length = 0              # datagram payload length as known so far (q.len)
        self.last_in = False         # INET_FRAG_LAST_IN
        self.meat = 0                # bytes received
        self.first_ts = p.ts
        self.deadline = p.ts + timeout
        self.frames = []

    def ended(self, reason: str) -> Incomplete:
        return Incomplete(self.family, self.key[1], self.key[2], self.key[3], self.proto,
                          list(self.frames), self.first_ts, reason, self.meat,
                          self.length if self.last_in else None)


_OK, _DUP, _OVERLAP = 0, 1, 2


class Reassembler:
    """Fragment queues keyed as the kernel keys them; see the module docstring."""

    def __init__(self, timeout: float = IPFRAG_TIME):
        self.timeout = timeout
        self._queues: dict[tuple, _Queue] = {}
        self._ended: list[Incomplete] = []
        self.last_fragments: list[int] = []    # frames of the datagram push() just returned

    def push(self, p: Packet) -> Packet | None:
        """Take one packet. A non-fragment comes straight back; a fragment gives the
        reassembled datagram when it completes one, else None."""
        frag = p.frag
        if frag is None:
            return p
        self._sweep(p.ts)
        key = (p.family, p.src, p.dst, frag.ident, p.proto if p.family == 4 else None)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(key, p, self.timeout)
        q.frames.append(p.n)

        offset = frag.offset
        end = offset + p.payload_len
        lone = Incomplete(p.family, p.src, p.dst, frag.ident, p.proto, [p.n], p.ts, "bad-length",
                          p.payload_len, None)
        if not frag.more:
            # ip_frag_queue: "If we already have some bits beyond end or have different
            # end, the segment is corrupted."
            if end < q.length or (q.last_in and end != q.length):
                return self._drop_one(q, lone)
            q.last_in = True
            q.length = end
        else:
            if end & 7:
                if p.family == 6:           # ip6_frag_queue: parameter problem, dropped
                    return self._drop_one(q, lone)
                end &= ~7                   # ip_frag_queue trims to 8-byte units
            if end > q.length:
                if q.last_in:               # "Some bits beyond end -> corruption."
                    return self._drop_one(q, lone)
                q.length = end
        if end == offset:
            return self._drop_one(q, lone)

        verdict = self._insert(q, offset, end)
        if verdict == _DUP:
            lone.reason = "duplicate"
            return self._drop_one(q, lone)
        if verdict == _OVERLAP:
            del self._queues[key]
            self._ended.append(q.ended("overlap"))
            return None

        start, stop = p.l4_off, p.l4_off + (end - offset)
        chunk = p.data[start:stop]
        q.frags.append((offset, chunk, len(chunk) == end - offset))
        q.meat += end - offset
        if offset == 0:
            q.first = p
        if not (q.last_in and q.first is not None and q.meat == q.length):
            return None
        del self._queues[key]
        return self._join(q, p)

    def expire(self, now: float) -> list[Incomplete]:
        """Datagrams given up by ``now``: timed out, or discarded since the last call."""
        self._sweep(now)
        ended, self._ended = self._ended, []
        return ended

    def pending(self) -> list[Incomplete]:
        """The datagrams still waiting for fragments (reason ``pending``)."""
        return [q.ended("pending") for q in self._queues.values()]

    # -- internals ---------------------------------------------------------------

    def _sweep(self, now: float) -> None:
        # ip_expire / ip6_frag_expire: the timer fires ``timeout`` after the first
        # fragment; queues are created in time order, so the oldest come first.
        if not self._queues:
            return
        for key in [k for k, q in self._queues.items() if q.deadline <= now]:
            self._ended.append(self._queues.pop(key).ended("timeout"))

    def _drop_one(self, q: _Queue, lone: Incomplete) -> None:
        q.frames.pop()
        if not q.frames:
            del self._queues[q.key]
        self._ended.append(lone)
        return None

    @staticmethod
    def _insert(q: _Queue, offset: int, end: int) -> int:
        """inet_frag_queue_insert: append to the tail run, or find the run it meets."""
        tail = q.tail
        if tail is None:
            run = [offset, end]
            q.runs.append(run)
            q.tail = run
            return _OK
        if tail[1] < end:
            # The common case: the fragment reaches past the tail.
            if offset < tail[1]:
                return _OVERLAP
            if offset == tail[1]:
                tail[1] = end
            else:
                run = [offset, end]
                q.runs.append(run)
                q.tail = run
            return _OK
        for run in q.runs:
            if end <= run[0] or offset >= run[1]:
                continue
            return _DUP if run[0] <= offset and end <= run[1] else _OVERLAP
        q.runs.append([offset, end])       # a run of its own; the tail stays
        return _OK

    def _join(self, q: _Queue, last: Packet) -> Packet | None:
        first = q.first
        frag = first.frag
        body = bytearray(q.length)
        captured = q.length
        for offset, chunk, whole in q.frags:
            body[offset:offset + len(chunk)] = chunk
            if not whole:
                captured = min(captured, offset + len(chunk))
        data = first.data
        if q.family == 4:
            head = bytearray(data[first.l3_off:first.l4_off])
            total = len(head) + q.length
            if total > IP_MAXPACKET:
                self._ended.append(q.ended("oversize"))
                return None
            # ip_frag_reasm: fix the total length, clear the fragment fields (DF kept,
            # as it is when every fragment carried it), recompute the checksum.
            struct.pack_into("!H", head, 2, total)
            head[6] &= 0x40
            head[7] = 0
            head[10:12] = b"\0\0"
            struct.pack_into("!H", head, 10, _checksum(head))
        else:
            # ip6_frag_reasm: drop the Fragment header, point the header before it at
            # what the fragments carry, and fix the payload length.
            head = bytearray(data[first.l3_off:frag.hdr_off])
            head[frag.nxt_off - first.l3_off] = first.proto
            plen = len(head) - 40 + q.length
            if plen > IP_MAXPACKET:
                self._ended.append(q.ended("oversize"))
                return None
            struct.pack_into("!H", head, 4, plen)
        whole = bytes(head) + bytes(body)
        cut = len(head) + captured
        out = parse(last.n, last.ts, LINKTYPE_RAW, whole[:cut], last.ifname, len(whole))
        out.link_bcast = last.link_bcast
        self.last_fragments = list(q.frames)
        return out


def _checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", bytes(header[:len(header) // 2 * 2])))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
