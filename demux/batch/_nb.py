"""The numba-compiled loops of the batch engine: record walk, header parse, flow cache, jsonl.

Imported only by ``demux.batch.engine`` (numba costs a second to import, so nothing the
CLI loads at start-up imports this). Every function here works on plain numpy arrays:

- ``walk``: pcap records or pcapng blocks of a byte buffer -> frame columns;
- ``parse``: the common frames (Ethernet/VLAN, SLL, SLL2, raw IP, NULL/LOOP; IPv4
  without options or fragments, IPv6 without extension headers; TCP or UDP with lengths
  that agree) -> address, port, flag, sequence, length columns. Anything else is left
  for ``demux.wire.parse`` (column KIND = SLOW);
- ``run``: the sequential pass: flow lookup and, for a packet whose flow holds a cached
  verdict still valid, that verdict (a new UDP flow: its local end's, ``_local_end``);
  it stops at the first packet that needs the reference kernel and returns its index;
- ``jsonl``, ``pcap_records``, ``pcapng_records``: the per-packet lines of the fast
  packets from byte templates, and the frames of --split/--annotate files (byte copies
  through ``_memcpy``).

The rules for what may be cached live in ``demux.batch.engine``; this module only
applies them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from demux.kernel.table import KEEPS_ISN, KEEPS_RCV, KEEPS_WUP

# -- frame/packet columns (columns of the int64 array C[K, NCOL]: a frame's fields share cache lines) --------------------------
N, TS, OFF, CAP, ORIG, IFID, LT = 0, 1, 2, 3, 4, 5, 6
KIND, FAM, PROTO, SA_HI, SA_LO, DA_HI, DA_LO, SPORT, DPORT = 7, 8, 9, 10, 11, 12, 13, 14, 15
FLAGS, SEQ, ACK, TSVAL, PLEN, BCAST = 16, 17, 18, 19, 20, 21
VID, FLOW, DIR, WIN = 22, 23, 24, 25
NCOL = 26
SLOW, FAST = 0, 1

# -- per-flow state (rows of fst[FCAP, NFS]) ------------------------------------------
# Ten words per direction of travel (d = 0, 1), at F_DSTRIDE * d: the cached verdict id,
# its generation stamp, what cached segments record for the kernel (F_SHADOW: bits of
# Kernel.steady's KEEPS_*: the receiver's rcv_nxt and timestamp in F_RCV and F_TSV, or the
# first segment's sequence number, our ISN, in F_RCV; and the sender's rcv_wup, the latest
# one's acknowledgment number, in F_WUP, -1 unknown), recorded since? (F_DIRTY), and which
# TCP segments the verdict is for (flags & F_MASK == F_VAL, timestamp < F_UNTIL ns:
# Kernel.steady's answer). A loopback segment is both: the receiver's and the sender's.
F_VID, F_STAMP, F_RCV, F_TSV, F_SHADOW, F_DIRTY, F_MASK, F_VAL, F_UNTIL, F_WUP, F_DSTRIDE = range(11)
F_USED = 20
F_KEY = 21            # 5 words: the flow's two endpoints and its protocol/interface word
NFS = 26
STAMP_FOREVER = -2
# A bit the batch engine adds to KEEPS_RCV in F_SHADOW: the receiver's rcv_nxt is exact
# (Conn.rcv_exact). A cached segment never changes that: those that would end it go to
# the kernel, and nothing cached makes it exact again.
EXACT = 1 << 8

# -- UDP local ends (rows of lst[LCAP, NLS]) --------------------------------------------
# The verdict every peer's datagram to (or from) one local end gets (Kernel.udp_any_peer),
# for a UDP flow not cached yet: its key (address, and port, family, direction, interface
# and link broadcast in one word), the verdict id and its generation stamp.
L_USED, L_KEY, L_VID, L_STAMP = 0, 1, 4, 5
NLS = 6

# -- scalars sc[] -----------------------------------------------------------------------
S_GEN_TCP, S_GEN_UDP, S_EVENT_NS, S_NFLOWS, S_MASK, S_SLOW_FLOW, S_SLOW_DIR = 0, 1, 2, 3, 4, 5, 6
S_SLOW_LOCAL, S_NLOCAL, S_LMASK = 7, 8, 9
NSC = 10

# Interface numbers (IFID + 1) a flow's key holds: a capture with more interfaces is
# replayed by the reference reader from the first one past this.
IFMASK = (1 << 19) - 1

# -- walk result codes ------------------------------------------------------------------
W_MORE, W_BLOCK, W_DAMAGE, W_FULL, W_UNSUPPORTED = 1, 2, 3, 4, 5

# interface table rows ifs[IFCAP, 7]: linktype, mul, div, off_ns, limit, ok, snaplen
I_LT, I_MUL, I_DIV, I_OFF, I_LIMIT, I_OK, I_SNAP = 0, 1, 2, 3, 4, 5, 6


@njit(cache=True, inline="always")
def _after(a, b):
    """Sequence number a after b (the kernel's ``after``; demux.kernel.table._seq_after)."""
    d = (a - b) & 0xFFFFFFFF
    return d != 0 and d < 0x80000000


@njit(cache=True, inline="always")
def _before(a, b):
    """Sequence number a before b (the kernel's ``before``; demux.kernel.table._before)."""
    d = (b - a) & 0xFFFFFFFF
    return d != 0 and d <= 0x80000000


@njit(cache=True, inline="always")
def _u16be(b, i):
    return (np.int64(b[i]) << 8) | np.int64(b[i + 1])


@njit(cache=True, inline="always")
def _u32be(b, i):
    return (np.int64(b[i]) << 24) | (np.int64(b[i + 1]) << 16) | (np.int64(b[i + 2]) << 8) | np.int64(b[i + 3])


@njit(cache=True, inline="always")
def _u32(b, i, le):
    if le:
        return (np.int64(b[i + 3]) << 24) | (np.int64(b[i + 2]) << 16) | (np.int64(b[i + 1]) << 8) | np.int64(b[i])
    return _u32be(b, i)


@njit(cache=True, inline="always")
def _u16(b, i, le):
    if le:
        return (np.int64(b[i + 1]) << 8) | np.int64(b[i])
    return _u16be(b, i)


@njit(cache=True, inline="always")
def _u64be(b, i):
    v = np.int64(0)
    for j in range(8):
        v = (v << 8) | np.int64(b[i + j])
    return v


@njit(cache=True, nogil=True)
def walk(buf, pos, end, fmt, le, ifs, nifs, ifbase, C, kmax, n0, last_ns, eof):
    """Frames from ``buf[pos:end]`` into ``C`` until the buffer, ``kmax`` or a block the
    Python side must read. Returns (pos, frames written, code, last_ns). A pcapng frame's
    IFID is its interface's number in the whole capture: ``ifbase`` (the interfaces of
    the sections before) plus its number in its section, whose rows ``ifs`` holds."""
    k = 0
    while True:
        if k >= kmax:
            return pos, k, W_FULL, last_ns
        if fmt == 0:
            if pos + 16 > end:
                return pos, k, W_MORE, last_ns
            sec = _u32(buf, pos, le)
            frac = _u32(buf, pos + 4, le)
            caplen = _u32(buf, pos + 8, le)
            orig = _u32(buf, pos + 12, le)
            if caplen > ifs[0, I_LIMIT]:
                return pos, k, W_DAMAGE, last_ns
            if pos + 16 + caplen > end:
                return pos, k, W_MORE, last_ns
            C[k, N] = n0 + k + 1
            C[k, TS] = sec * 1000000000 + frac * ifs[0, I_MUL]
            C[k, OFF] = pos + 16
            C[k, CAP] = caplen
            C[k, ORIG] = orig
            C[k, IFID] = -1
            C[k, LT] = ifs[0, I_LT]
            k += 1
            pos += 16 + caplen
            continue
        # pcapng
        if pos + 12 > end:
            return pos, k, W_MORE, last_ns
        btype = _u32(buf, pos, le)
        if btype == 0x0A0D0D0A or btype == 1:
            return pos, k, W_BLOCK, last_ns
        blen = _u32(buf, pos + 4, le)
        if blen < 12 or blen & 3 or blen > 16 * 1024 * 1024:
            return pos, k, W_DAMAGE, last_ns
        nxt = pos + blen
        if nxt > end:
            return pos, k, W_MORE, last_ns
        if _u32(buf, nxt - 4, le) != blen:
            return pos, k, W_DAMAGE, last_ns
        if btype == 6 or btype == 2:
            if blen < 32:
                return pos, k, W_DAMAGE, last_ns
            if btype == 6:
                ifid = _u32(buf, pos + 8, le)
                hi = _u32(buf, pos + 12, le)
                lo = _u32(buf, pos + 16, le)
            else:
                ifid = _u16(buf, pos + 8, le)
                hi = _u32(buf, pos + 12, le)
                lo = _u32(buf, pos + 16, le)
            caplen = _u32(buf, pos + 20, le)
            orig = _u32(buf, pos + 24, le)
            if ifid >= nifs:
                return pos, k, W_DAMAGE, last_ns
            if caplen > ifs[ifid, I_LIMIT] or 32 + caplen > blen:
                return pos, k, W_DAMAGE, last_ns
            if ifs[ifid, I_OK] == 0:
                return pos, k, W_UNSUPPORTED, last_ns
            if ifs[ifid, I_DIV] != 1 or hi >= (1 << 30) // max(ifs[ifid, I_MUL], 1):
                # Ticks times the multiplier could overflow 64 bits: Python's ints do it.
                return pos, k, W_UNSUPPORTED, last_ns
            ns = ((hi << 32) | lo) * ifs[ifid, I_MUL] + ifs[ifid, I_OFF]
            last_ns = ns
            C[k, N] = n0 + k + 1
            C[k, TS] = ns
            C[k, OFF] = pos + 28
            C[k, CAP] = caplen
            C[k, ORIG] = orig
            C[k, IFID] = ifbase + ifid
            C[k, LT] = ifs[ifid, I_LT]
            k += 1
        elif btype == 3:
            if blen < 16:
                return pos, k, W_DAMAGE, last_ns
            if nifs == 0:
                return pos, k, W_DAMAGE, last_ns
            orig = _u32(buf, pos + 8, le)
            caplen = min(orig, blen - 16)
            if ifs[0, I_SNAP]:
                caplen = min(caplen, ifs[0, I_SNAP])
            if ifs[0, I_OK] == 0:
                return pos, k, W_UNSUPPORTED, last_ns
            C[k, N] = n0 + k + 1
            C[k, TS] = last_ns
            C[k, OFF] = pos + 12
            C[k, CAP] = caplen
            C[k, ORIG] = orig
            C[k, IFID] = ifbase
            C[k, LT] = ifs[0, I_LT]
            k += 1
        pos = nxt


@njit(cache=True)
def _tcp_tsval(b, i, end):
    """demux.wire.parser._tcp_options, for the timestamp value only (-1: none)."""
    ts = np.int64(-1)
    while i < end:
        kind = b[i]
        if kind == 0:
            return ts
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            return ts
        size = np.int64(b[i + 1])
        if size < 2 or i + size > end:
            return ts
        if kind == 8 and size == 10:
            ts = _u32be(b, i + 2)
        i += size
    return ts



@njit(cache=True)
def _link(buf, off, dlen, lt):
    """The link layers other than Ethernet: (ethertype, network header offset, broadcast);
    ethertype -3: the frame is too short or the link type unknown. A call of its own:
    written out in ``parse``'s loop, these branches made every Ethernet frame 5 ns slower."""
    bcast = 0
    et = np.int64(-1)
    o = off
    if lt == 113:
        if dlen < 16:
            return np.int64(-3), o, bcast
        pt = _u16be(buf, off)
        bcast = 1 if (pt == 1 or pt == 2) else 0
        et = _u16be(buf, off + 14)
        o = off + 16
    elif lt == 276:
        if dlen < 20:
            return np.int64(-3), o, bcast
        pt = buf[off + 10]
        bcast = 1 if (pt == 1 or pt == 2) else 0
        et = _u16be(buf, off)
        o = off + 20
    elif lt == 101 or lt == 12 or lt == 14:
        if dlen < 1:
            return np.int64(-3), o, bcast
        v = buf[off] >> 4
        et = 0x0800 if v == 4 else (0x86DD if v == 6 else -1)
    elif lt == 228:
        et = 0x0800
    elif lt == 229:
        et = 0x86DD
    elif lt == 0 or lt == 108:
        if dlen < 4:
            return np.int64(-3), o, bcast
        be = _u32be(buf, off)
        le = _u32(buf, off, True)
        if be == 2 or le == 2:
            et = 0x0800
        elif be in (10, 24, 28, 30) or le in (10, 24, 28, 30):
            et = 0x86DD
        o = off + 4
    else:
        return np.int64(-3), o, bcast
    return et, o, bcast


@njit(cache=True, nogil=True)
def parse(buf, C, k):
    """Fill the packet columns of frames 0..k; KIND says whether the fast fields hold."""
    for i in range(k):
        C[i, KIND] = SLOW
        C[i, VID] = -1
        C[i, FLOW] = -1
        off = C[i, OFF]
        dlen = C[i, CAP]
        end_f = off + dlen
        lt = C[i, LT]
        bcast = 0
        et = np.int64(-1)
        o = off
        if lt == 1:
            if dlen < 14:
                continue
            bcast = buf[off] & 1
            et = _u16be(buf, off + 12)
            o = off + 14
        else:
            et, o, bcast = _link(buf, off, dlen, lt)
            if et == -3:
                continue
        if lt == 1 or lt == 113 or lt == 276:
            while et == 0x8100 or et == 0x88A8 or et == 0x9100:
                if end_f - o < 4:
                    et = -2
                    break
                et = _u16be(buf, o + 2)
                o += 4
        orig_end = off + C[i, ORIG]
        if et == 0x0800:
            if end_f - o < 20:
                continue
            vhl = buf[o]
            if vhl != 0x45:
                continue
            tot = _u16be(buf, o + 2)
            if tot < 20:
                continue
            if tot > end_f - o and tot > orig_end - o:
                continue
            if _u16be(buf, o + 6) & 0x3FFF:
                continue
            proto = np.int64(buf[o + 9])
            sa_hi = np.int64(0)
            da_hi = np.int64(0)
            sa_lo = _u32be(buf, o + 12)
            da_lo = _u32be(buf, o + 16)
            l4 = o + 20
            ip_end = o + tot
            fam = 4
        elif et == 0x86DD:
            if end_f - o < 40:
                continue
            if buf[o] >> 4 != 6:
                continue
            plen = _u16be(buf, o + 4)
            ip_end = o + 40 + plen
            if ip_end > end_f and ip_end > orig_end:
                continue
            proto = np.int64(buf[o + 6])
            sa_hi = _u64be(buf, o + 8)
            sa_lo = _u64be(buf, o + 16)
            da_hi = _u64be(buf, o + 24)
            da_lo = _u64be(buf, o + 32)
            l4 = o + 40
            fam = 6
        else:
            continue
        seg = ip_end - l4
        have = (ip_end if ip_end < end_f else end_f) - l4
        if proto == 6:
            if have < 20:
                continue
            hl = (np.int64(buf[l4 + 12]) >> 4) * 4
            if hl < 20 or hl > have:
                continue
            C[i, FLAGS] = buf[l4 + 13]
            C[i, SEQ] = _u32be(buf, l4 + 4)
            C[i, ACK] = _u32be(buf, l4 + 8)
            if hl == 32 and buf[l4 + 20] == 1 and buf[l4 + 21] == 1 and buf[l4 + 22] == 8 and buf[l4 + 23] == 10:
                C[i, TSVAL] = _u32be(buf, l4 + 24)       # Linux's NOP, NOP, timestamp
            else:
                C[i, TSVAL] = _tcp_tsval(buf, l4 + 20, l4 + hl) if hl > 20 else -1
            C[i, WIN] = _u16be(buf, l4 + 14)
            C[i, PLEN] = seg - hl
        elif proto == 17:
            if have < 8:
                continue
            ulen = _u16be(buf, l4 + 4)
            if ulen < 8 or ulen > seg:
                continue
            C[i, FLAGS] = 0
            C[i, SEQ] = 0
            C[i, ACK] = 0
            C[i, TSVAL] = -1
            C[i, WIN] = -1
            C[i, PLEN] = ulen - 8
        else:
            continue
        C[i, KIND] = FAST
        C[i, FAM] = fam
        C[i, PROTO] = proto
        C[i, SA_HI] = sa_hi
        C[i, SA_LO] = sa_lo
        C[i, DA_HI] = da_hi
        C[i, DA_LO] = da_lo
        C[i, SPORT] = _u16be(buf, l4)
        C[i, DPORT] = _u16be(buf, l4 + 2)
        C[i, BCAST] = bcast


@njit(cache=True, inline="always")
def _mix(h, v):
    h ^= v
    h *= np.int64(-7046029254386353131)     # 0x9E3779B97F4A7C15, splitmix64-style
    return h ^ ((h >> 29) & 0x7FFFFFFFF)


@njit(cache=True, inline="always")
def _flow(C, i, fst, sc):
    """(slot, direction of travel) of packet i's flow; inserts it if new; -1 when full."""
    a_hi, a_lo, b_hi, b_lo = C[i, SA_HI], C[i, SA_LO], C[i, DA_HI], C[i, DA_LO]
    ap, bp = C[i, SPORT], C[i, DPORT]
    d = 0
    if (a_hi > b_hi) or (a_hi == b_hi and (a_lo > b_lo or (a_lo == b_lo and ap > bp))):
        a_hi, a_lo, b_hi, b_lo, ap, bp = b_hi, b_lo, a_hi, a_lo, bp, ap
        d = 1
    proto = C[i, PROTO]
    # A datagram's socket may depend on the interface (SO_BINDTODEVICE) and on a
    # link-layer broadcast: both are part of a UDP flow; a TCP connection is its 4-tuple.
    # (Multiplied in, not branched on: the branch cost the replay loop 8 ns a packet.)
    meta = (ap | (bp << 16) | (proto << 32) | (C[i, FAM] << 40)
            | ((C[i, BCAST] << 43) | (((C[i, IFID] + 1) & IFMASK) << 44)) * np.int64(proto == 17))
    h = _mix(_mix(_mix(_mix(_mix(np.int64(0x1234567), a_hi), a_lo), b_hi), b_lo), meta)
    mask = sc[S_MASK]
    s = h & mask
    while True:
        if fst[s, F_USED] == 0:
            if sc[S_NFLOWS] * 2 >= mask:
                return -1, d
            fst[s, F_USED] = 1
            fst[s, F_KEY], fst[s, F_KEY + 1], fst[s, F_KEY + 2], fst[s, F_KEY + 3], fst[s, F_KEY + 4] = a_hi, a_lo, b_hi, b_lo, meta
            fst[s, F_VID] = -1
            fst[s, F_VID + F_DSTRIDE * 1] = -1
            fst[s, F_SHADOW] = 0
            fst[s, F_SHADOW + F_DSTRIDE * 1] = 0
            fst[s, F_DIRTY] = 0
            fst[s, F_DIRTY + F_DSTRIDE * 1] = 0
            fst[s, F_WUP] = -1
            fst[s, F_WUP + F_DSTRIDE * 1] = -1
            sc[S_NFLOWS] += 1
            return s, d
        if (fst[s, F_KEY + 4] == meta and fst[s, F_KEY + 1] == a_lo and fst[s, F_KEY + 3] == b_lo
                and fst[s, F_KEY] == a_hi and fst[s, F_KEY + 2] == b_hi):
            return s, d
        s = (s + 1) & mask


@njit(cache=True)
def _is_local(fam, hi, lo, locs):
    """Kernel.is_local for an address in columns: 127/8, a v4-mapped local address, or
    one of the host's (rows of locs: family, high and low words)."""
    if fam == 6 and hi == 0 and (lo >> 32) == 0xFFFF:
        fam = 4
        lo &= 0xFFFFFFFF
    if fam == 4 and (lo >> 24) == 127:
        return True
    for j in range(locs.shape[0]):
        if locs[j, 0] == fam and locs[j, 1] == hi and locs[j, 2] == lo:
            return True
    return False


@njit(cache=True)
def _local_end(C, i, lst, locs, sc):
    """The row of datagram i's local end in lst (inserted, with no verdict, if new), when
    exactly one of its addresses is local; else, or when lst is half full, -1."""
    fam = C[i, FAM]
    dl = _is_local(fam, C[i, DA_HI], C[i, DA_LO], locs)
    if dl == _is_local(fam, C[i, SA_HI], C[i, SA_LO], locs):
        return -1
    if dl:
        hi, lo, port, out = C[i, DA_HI], C[i, DA_LO], C[i, DPORT], 0
    else:
        hi, lo, port, out = C[i, SA_HI], C[i, SA_LO], C[i, SPORT], 1
    meta = port | (fam << 16) | (out << 20) | (C[i, BCAST] << 23) | (((C[i, IFID] + 1) & IFMASK) << 24)
    mask = sc[S_LMASK]
    e = _mix(_mix(_mix(np.int64(0x7654321), hi), lo), meta) & mask
    while True:
        if lst[e, L_USED] == 0:
            if sc[S_NLOCAL] * 2 >= mask:
                return -1
            lst[e, L_USED] = 1
            lst[e, L_KEY], lst[e, L_KEY + 1], lst[e, L_KEY + 2] = hi, lo, meta
            lst[e, L_VID] = -1
            sc[S_NLOCAL] += 1
            return e
        if lst[e, L_KEY + 2] == meta and lst[e, L_KEY + 1] == lo and lst[e, L_KEY] == hi:
            return e
        e = (e + 1) & mask


@njit(cache=True, nogil=True)
def run(C, fst, lst, locs, vc, sc, start, k):
    """Packets start..k that copy their flow's cached verdict; stops at the first that
    needs the kernel and returns its index (k when none does). The flow and direction
    of that packet are left in sc[S_SLOW_FLOW], sc[S_SLOW_DIR] (-1: not parsed here)."""
    gen_tcp = sc[S_GEN_TCP]
    gen_udp = sc[S_GEN_UDP]
    ev = sc[S_EVENT_NS]
    for i in range(start, k):
        sc[S_SLOW_FLOW] = -1
        if C[i, TS] >= ev or C[i, KIND] != FAST:
            return i
        s, d = _flow(C, i, fst, sc)
        if s < 0:
            return i
        C[i, FLOW] = s
        C[i, DIR] = d
        sc[S_SLOW_FLOW] = s
        sc[S_SLOW_DIR] = d
        v = fst[s, F_VID + F_DSTRIDE * d]
        st = fst[s, F_STAMP + F_DSTRIDE * d]
        proto = C[i, PROTO]
        if proto == 6:
            if v < 0 or st != STAMP_FOREVER and st != gen_tcp:
                return i
            b = F_DSTRIDE * d
            # Not a segment the cached verdict is for, or past the entry's timer.
            if (C[i, FLAGS] & fst[s, F_MASK + b]) != fst[s, F_VAL + b] or C[i, TS] >= fst[s, F_UNTIL + b]:
                return i
            if fst[s, F_SHADOW + b] & KEEPS_WUP and C[i, WIN] == 0:
                return i          # a zero window offered (Kernel._sent): the connection is not steady
            ob = F_DSTRIDE * (1 - d)
            seq, plen = C[i, SEQ], C[i, PLEN]
            end = (seq + plen) & 0xFFFFFFFF
            wup = fst[s, F_WUP + ob]
            if fst[s, F_SHADOW + ob] & KEEPS_WUP and wup >= 0:
                # Old by what the receiver's latest segment acknowledged (Kernel._old).
                if _before(end, wup) or (end == wup and plen > 0):
                    return i
            keeps = fst[s, F_SHADOW + b]
            if keeps & KEEPS_RCV and not fst[s, F_SHADOW + ob] & KEEPS_WUP:
                # The receiver's rcv_wup is not kept by the other direction (a loopback
                # flow whose other half is not steady): the test above could not be made.
                return i
            r = fst[s, F_RCV + b]
            if keeps & EXACT and r != 0:
                # While rcv_nxt is exact: a segment past it (it ends rcv_exact:
                # Kernel._received), or data that is a copy (it ends at or before
                # rcv_nxt: Kernel._old). Once not exact, both are taken as the rest.
                if _after(seq, r) or (plen > 0 and not _after(end, r)):
                    return i
            if keeps & KEEPS_WUP and C[i, FLAGS] & 0x10:
                # Ours acknowledging less than the sender's own exact rcv_nxt (Kernel._sent
                # ends rcv_exact): that is the other direction's, live, while it is
                # cached; else the one the entry was filled with (0 when not exact).
                so = fst[s, F_SHADOW + ob]
                if so & KEEPS_RCV:
                    ro = fst[s, F_RCV + ob] if so & EXACT else 0
                elif keeps & KEEPS_RCV:
                    return i      # (a loopback segment whose other direction is not cached)
                else:
                    ro = fst[s, F_RCV + b]
                if ro != 0 and _before(C[i, ACK], ro):
                    return i
            if keeps & KEEPS_RCV:
                # tcp_rcv: rcv_nxt moves forward, the newest timestamp is kept.
                if r == 0 or _after(end, r):
                    fst[s, F_RCV + b] = end
                if C[i, TSVAL] >= 0:
                    fst[s, F_TSV + b] = C[i, TSVAL]
                fst[s, F_DIRTY + b] = 1
            elif keeps & KEEPS_ISN and not fst[s, F_DIRTY + b]:
                # The first SYN-ACK of a request socket carries our ISN.
                fst[s, F_RCV + b] = C[i, SEQ]
                fst[s, F_DIRTY + b] = 1
            if keeps & KEEPS_WUP and C[i, FLAGS] & 0x10:
                # What the sender's segment acknowledges is its rcv_wup (tcp_select_window).
                fst[s, F_WUP + b] = C[i, ACK]
        elif v < 0 or st != STAMP_FOREVER and st != gen_udp:
            # A datagram of a flow with no verdict: its local end's, if every peer gets it.
            e = _local_end(C, i, lst, locs, sc)
            if e < 0 or lst[e, L_VID] < 0 or lst[e, L_STAMP] != gen_udp:
                sc[S_SLOW_LOCAL] = e
                return i
            v = lst[e, L_VID]
            fst[s, F_VID + F_DSTRIDE * d] = v
            fst[s, F_STAMP + F_DSTRIDE * d] = gen_udp
        C[i, VID] = v
        vc[v, 0] += 1
        vc[v, 1] += C[i, PLEN]
        if vc[v, 2] < 0:
            vc[v, 2] = C[i, N]
    sc[S_SLOW_FLOW] = -1
    return k


@njit(cache=True)
def count_only(C, vc, k):
    """Fold the verdict ids of frames 0..k into vc (used after a replay with no run)."""
    for i in range(k):
        v = C[i, VID]
        if v >= 0:
            vc[v, 0] += 1
            vc[v, 1] += C[i, PLEN]


@intrinsic
def _memcpy(typingctx, dst, doff, src, soff, n):
    """memcpy(&dst[doff], &src[soff], n) for two uint8 arrays that do not overlap."""
    if dst.dtype != types.uint8 or src.dtype != types.uint8:
        return None                       # (offsets and n count bytes)
    sig = types.void(dst, types.int64, src, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        d = context.make_array(sig.args[0])(context, builder, args[0])
        s = context.make_array(sig.args[2])(context, builder, args[2])
        cgutils.raw_memcpy(builder, builder.gep(d.data, [args[1]]), builder.gep(s.data, [args[3]]), args[4], 1)
    return sig, codegen


@njit(cache=True, inline="always")
def _put(out, o, src, a, n):
    """out[o:o + n] = src[a:a + n]; returns o + n. A memcpy: numba's slice assignment
    builds two views and checks them for overlap, and a byte loop is not vectorised
    (a jsonl line's four pieces: 145 ns that way, 7 ns this way)."""
    _memcpy(out, o, src, a, n)
    return o + n


@njit(cache=True, inline="always")
def _itoa(out, o, v):
    if v < 0:
        out[o] = 45
        o += 1
        v = -v
    # The digits are counted by comparisons, and each is written with one division.
    n = 1
    t = np.int64(10)
    while n < 18 and v >= t:
        n += 1
        t *= 10
    if v >= t:
        n += 1
    for j in range(n - 1, -1, -1):
        out[o + j] = 48 + v % 10
        v //= 10
    return o + n


@njit(cache=True)
def ts_ok(C, k):
    """Can ``_ts`` write every timestamp of frames 0..k? (seconds in [2**21, 2**33))"""
    for i in range(k):
        s = C[i, TS] // 1000000000
        if C[i, TS] < 0 or s < (1 << 21) or s >= (1 << 33):
            return False
    return True


@njit(cache=True, inline="always")
def _ts(out, o, ns):
    """f"{ns / 1e9:.6f}", as demux.engine.ts_text writes it.

    ns / 1e9 as Python computes it (correctly rounded) is s + f/1e9 in doubles: the
    one rounding of f/1e9 is far smaller than the distance from any rounding midpoint.
    Its fraction x - s is exact, with at most 31 bits below the point for s >= 2**21, so
    the correctly rounded (half-even) 6 decimals are integer arithmetic."""
    s = ns // 1000000000
    f = ns - s * 1000000000
    x = np.float64(s) + np.float64(f) / 1e9
    frac = x - np.float64(s)
    m = np.int64(frac * 4294967296.0)
    p = m * 1000000
    q = p >> 32
    r = p & 0xFFFFFFFF
    if r > 0x80000000 or (r == 0x80000000 and q & 1):
        q += 1
    if q >= 1000000:
        s += 1
        q -= 1000000
    o = _itoa(out, o, s)
    out[o] = 46
    o += 1
    for j in range(5, -1, -1):
        out[o + j] = 48 + q % 10
        q //= 10
    return o + 6


@njit(cache=True, nogil=True)
def jsonl(C, k, out, tarena, ftpl, varena, vsuf, flagtpl, sarena, slow_off, slow_len, slow_tpl):
    """The lines of frames 0..k into ``out``; returns the bytes written. A fast packet's
    line is assembled from its flow's template (proto, src, dst; in tarena), its flags,
    length and its verdict's template (in varena); any other packet's line was written by
    Python into sarena at slow_off[i]: whole, or (slow_tpl[i]) only the part after
    ``len``, the rest being assembled as a fast packet's."""
    o = 0
    for i in range(k):
        v = C[i, VID]
        if v < 0 and not slow_tpl[i]:
            o = _put(out, o, sarena, slow_off[i], slow_len[i])
            continue
        s = C[i, FLOW]
        d = C[i, DIR]
        # '{"n": '
        out[o] = 123; out[o + 1] = 34; out[o + 2] = 110; out[o + 3] = 34; out[o + 4] = 58; out[o + 5] = 32
        o = _itoa(out, o + 6, C[i, N])
        # ', "ts": '
        out[o] = 44; out[o + 1] = 32; out[o + 2] = 34; out[o + 3] = 116; out[o + 4] = 115
        out[o + 5] = 34; out[o + 6] = 58; out[o + 7] = 32
        o = _ts(out, o + 8, C[i, TS])
        out[o] = 44; out[o + 1] = 32
        o = _put(out, o + 2, tarena, ftpl[s, 2 * d], ftpl[s, 2 * d + 1])
        fi = C[i, FLAGS] if C[i, PROTO] == 6 else 256
        o = _put(out, o, varena, flagtpl[fi, 0], flagtpl[fi, 1])
        o = _itoa(out, o, C[i, PLEN])
        if v < 0:
            o = _put(out, o, sarena, slow_off[i], slow_len[i])
        else:
            o = _put(out, o, varena, vsuf[v, 0], vsuf[v, 1])
    return o


@njit(cache=True)
def untemplated(C, k, ftpl):
    """Frames of 0..k with a verdict whose flow direction has no jsonl template yet (a
    UDP flow given its local end's verdict in ``run``)."""
    ids = np.empty(k, np.int64)
    m = 0
    for i in range(k):
        if C[i, VID] >= 0 and ftpl[C[i, FLOW], 2 * C[i, DIR] + 1] == 0:
            ids[m] = i
            m += 1
    return ids[:m]


@njit(cache=True)
def unwritten(C, k, vsuf):
    """The verdict ids of frames 0..k whose jsonl tails are not written yet (vsuf[v, 1]
    < 0), each once: they are marked -2 here, and written by the caller."""
    ids = np.empty(k, np.int64)
    m = 0
    for i in range(k):
        v = C[i, VID]
        if v >= 0 and vsuf[v, 1] == -1:
            vsuf[v, 1] = -2
            ids[m] = v
            m += 1
    return ids[:m]


@njit(cache=True, inline="always")
def _u32le(out, o, x):
    out[o] = x & 0xFF
    out[o + 1] = (x >> 8) & 0xFF
    out[o + 2] = (x >> 16) & 0xFF
    out[o + 3] = (x >> 24) & 0xFF


@njit(cache=True, nogil=True)
def pcap_records(C, buf, idx, out, nanos, snaplen):
    """The pcap records (``PcapWriter.write``'s format: the 16-byte header, the data cut
    to ``snaplen``) of frames ``idx`` of chunk C into ``out``; returns the bytes written,
    or -1 - j when frame idx[j] has a timestamp a pcap record cannot hold (1970 to 2106)."""
    o = 0
    for j in range(idx.shape[0]):
        i = idx[j]
        ns = C[i, TS]
        sec = ns // 1000000000                     # (floor, as Python's divmod)
        frac = ns % 1000000000
        if not nanos:
            frac = (frac + 500) // 1000           # nearest microsecond
            if frac == 1000000:
                sec += 1
                frac = 0
        if sec < 0 or sec > 0xFFFFFFFF:
            return -1 - j
        n = min(C[i, CAP], snaplen)
        orig = max(C[i, ORIG], n)
        _u32le(out, o, sec)
        _u32le(out, o + 4, frac)
        _u32le(out, o + 8, n)
        _u32le(out, o + 12, orig)
        o += 16
        o = _put(out, o, buf, C[i, OFF], n)
    return o


@njit(cache=True, nogil=True)
def pcapng_records(C, buf, k, out, ifids, opts, optoff, optlen, snaplen):
    """The EPBs (``PcapngWriter.write``'s format: header, data cut to ``snaplen`` and
    padded to 4 bytes, the options ``opts[optoff:optoff + optlen]``, the length again) of
    frames 0..k of chunk C, frame i on interface ``ifids[i]``, nanosecond timestamps that
    are non-negative; returns the bytes written."""
    o = 0
    for i in range(k):
        ticks = C[i, TS]
        n = min(C[i, CAP], snaplen)
        pad = (4 - n % 4) % 4
        ol = optlen[i]
        blen = 32 + n + pad + ol
        _u32le(out, o, 6)
        _u32le(out, o + 4, blen)
        _u32le(out, o + 8, ifids[i])
        _u32le(out, o + 12, ticks >> 32)
        _u32le(out, o + 16, ticks & 0xFFFFFFFF)
        _u32le(out, o + 20, n)
        _u32le(out, o + 24, max(C[i, ORIG], n))
        o += 28
        o = _put(out, o, buf, C[i, OFF], n)
        for j in range(pad):
            out[o + j] = 0
        o += pad
        o = _put(out, o, opts, optoff[i], ol)
        _u32le(out, o, blen)
        o += 4
    return o
