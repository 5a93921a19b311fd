"""Seeded synthetic captures for benchmarks and tests: realistic traffic of one server host.

``make(path, packets, seed)`` writes a classic pcap (Ethernet, microseconds) of
``packets`` packets and returns the scenario TOML that goes with it (``SCENARIO``). The
host 10.0.0.1 / fd00::1 runs nginx on :80 (IPv4), four SO_REUSEPORT workers on :443 (a
group on 0.0.0.0 and one on [::], v6only, as nginx's ``listen ... reuseport`` makes),
sshd on [::]:22 (dual-stack), a resolver on udp :53, and makes outbound HTTPS
connections itself. The traffic, flow by flow:

- inbound TCP: handshake, a heavy-tailed number of data segments both ways, then a
  close by the client, a close by the server (TIME-WAIT here), or a client RST;
- TIME-WAIT reuse: a later connection on the same 4-tuple, higher sequence numbers;
- mid-stream flows (their handshake was before the capture), IPv4 and IPv6;
- SYNs to a closed port answered by the kernel's RST;
- outbound connections from ephemeral ports;
- UDP queries and answers on :53, queries to a closed port answered by ICMP;
- noise: ARP, malformed TCP (bad data offset), IPv4 fragments.

Flows are built as numpy columns (no per-packet Python) and the records are written by
one numba loop, so millions of packets take seconds. Headers only are captured (the
payload is counted in the IP length and orig_len, as with a short snaplen), which keeps
files small; the replay never reads payload bytes.
"""

from __future__ import annotations

import struct

import numpy as np

LOCAL4 = 0x0A000001          # 10.0.0.1
LOCAL6_HI, LOCAL6_LO = 0xFD00000000000000, 1
T0 = 1_764_000_000

SCENARIO = """# The host of demux.synth captures.
[host]
name = "synth"
addresses = ["10.0.0.1", "fd00::1"]

[[process]]
name = "nginx"
pid = 1201
sockets = [ { proto = "tcp", bind = "0.0.0.0:80", listen = true } ]

[[process]]
name = "worker-1"
pid = 1301
sockets = [ { proto = "tcp", bind = "0.0.0.0:443", listen = true, reuseport = true },
            { proto = "tcp", bind = "[::]:443", listen = true, reuseport = true, v6only = true } ]

[[process]]
name = "worker-2"
pid = 1302
sockets = [ { proto = "tcp", bind = "0.0.0.0:443", listen = true, reuseport = true },
            { proto = "tcp", bind = "[::]:443", listen = true, reuseport = true, v6only = true } ]

[[process]]
name = "worker-3"
pid = 1303
sockets = [ { proto = "tcp", bind = "0.0.0.0:443", listen = true, reuseport = true },
            { proto = "tcp", bind = "[::]:443", listen = true, reuseport = true, v6only = true } ]

[[process]]
name = "worker-4"
pid = 1304
sockets = [ { proto = "tcp", bind = "0.0.0.0:443", listen = true, reuseport = true },
            { proto = "tcp", bind = "[::]:443", listen = true, reuseport = true, v6only = true } ]

[[process]]
name = "sshd"
pid = 801
sockets = [ { proto = "tcp", bind = "[::]:22", listen = true, v6only = false } ]

[[process]]
name = "resolver"
pid = 901
sockets = [ { proto = "udp", bind = "0.0.0.0:53" } ]
"""

# Packet kinds the writer knows.
K_TCP, K_UDP, K_ICMP, K_ARP, K_BADTCP, K_FRAG1, K_FRAG2 = range(7)
S, A, F, R, PSH = 0x02, 0x10, 0x01, 0x04, 0x08

# Flow types: (name, weight, proto kind, prefix script, suffix script); a script entry is
# (direction, flags): direction 0 from the flow's initiator, 1 back.
_TYPES = [
    ("in-client-close", 30, K_TCP, [(0, S), (1, S | A), (0, A)], [(0, F | A), (1, A), (1, F | A), (0, A)]),
    ("in-server-close", 25, K_TCP, [(0, S), (1, S | A), (0, A)], [(1, F | A), (0, A), (0, F | A), (1, A)]),
    ("in-reset", 5, K_TCP, [(0, S), (1, S | A), (0, A)], [(0, R)]),
    ("midstream", 8, K_TCP, [], []),
    ("closed-port", 4, K_TCP, [(0, S), (1, R | A)], []),
    ("outbound", 8, K_TCP, [(0, S), (1, S | A), (0, A)], [(0, F | A), (1, A), (1, F | A), (0, A)]),
    ("udp-dns", 12, K_UDP, [], []),
    ("udp-closed", 3, K_UDP, [(0, 0), (1, 0)], []),
    ("noise", 2, -1, [], []),
    ("tw-reuse", 3, K_TCP, [(0, S), (1, S | A), (0, A)], [(0, F | A), (1, A), (1, F | A), (0, A)]),
]


def _scripts():
    n = len(_TYPES)
    width = max(max(len(t[3]), len(t[4])) for t in _TYPES) or 1
    pre = np.zeros((n, width, 2), np.int64)
    suf = np.zeros((n, width, 2), np.int64)
    pl = np.array([len(t[3]) for t in _TYPES])
    sl = np.array([len(t[4]) for t in _TYPES])
    for i, t in enumerate(_TYPES):
        for j, e in enumerate(t[3]):
            pre[i, j] = e
        for j, e in enumerate(t[4]):
            suf[i, j] = e
    return pre, suf, pl, sl


def _draw(rng, nflows: int, mean_data: float):
    """Flow types, data segment counts, packet counts and noise kinds of ``nflows`` flows."""
    pre, suf, pl, sl = _scripts()
    weights = np.array([t[1] for t in _TYPES], float)
    names = [t[0] for t in _TYPES]
    typ = rng.choice(len(_TYPES), nflows, p=weights / weights.sum())
    # Heavy-tailed data segment counts (Pareto, alpha 1.2), capped.
    ndata = np.minimum((mean_data / 6) * (rng.pareto(1.2, nflows) + 1), 50_000).astype(np.int64)
    dns = typ == names.index("udp-dns")
    ndata[dns] = 2 * rng.integers(1, 20, dns.sum())
    ndata[np.isin(typ, [names.index("closed-port"), names.index("udp-closed")])] = 0
    L = pl[typ] + sl[typ] + ndata
    noise = typ == names.index("noise")
    noise_kind = rng.choice([K_ARP, K_BADTCP, K_FRAG1], nflows)
    L[noise] = np.where(noise_kind[noise] == K_FRAG1, 2, 1)
    return typ, ndata, L, noise_kind


def columns(packets: int, seed: int = 0, mean_data: float = 60.0):
    """The packet columns of a capture of ``packets`` packets (fewer only when the
    heavy tail falls short), in time order."""
    # A pilot draw sizes the flow count so the capture comes out near ``packets``.
    pilot = _draw(np.random.default_rng(seed + 1_000_003), 200_000, mean_data)[2].mean()
    nflows = max(4, int(round(1.15 * packets / pilot)))
    rng = np.random.default_rng(seed)
    pre, suf, pl, sl = _scripts()
    names = [t[0] for t in _TYPES]
    t_dns, t_noise, t_tw, t_srv = (names.index(x) for x in ("udp-dns", "noise", "tw-reuse", "in-server-close"))
    typ, ndata, L, noise_kind = _draw(rng, nflows, mean_data)
    fam = np.where(rng.random(nflows) < 0.2, 6, 4)
    fam[np.isin(typ, [t_dns, names.index("udp-closed"), t_noise])] = 4
    kind = np.array([t[2] for t in _TYPES])[typ]
    kind = np.where(typ == t_noise, noise_kind, kind)
    raddr = (0x0A010000 + rng.integers(1, 60000, nflows)).astype(np.int64)     # 10.1.x.y
    rport = rng.integers(1024, 65535, nflows)
    lport = rng.choice([80, 443, 443, 22], nflows)
    lport[fam == 6] = rng.choice([22, 443], (fam == 6).sum())
    lport[typ == names.index("closed-port")] = 8080
    lport[typ == t_dns] = 53
    lport[typ == names.index("udp-closed")] = 161
    outbound = typ == names.index("outbound")
    raddr[outbound] = 0x5DB80000 + rng.integers(1, 60000, outbound.sum())         # 93.184.x.y
    lport[outbound] = rng.integers(32768, 61000, outbound.sum())
    rport[outbound] = 443
    isn0 = rng.integers(0, 1 << 32, nflows)
    isn1 = rng.integers(0, 1 << 32, nflows)
    duration = packets / 100_000.0          # about 100 kpps
    start = rng.random(nflows) * duration
    # TIME-WAIT reuse: copy the 4-tuple of a server-closed flow; start after it, in TIME-WAIT.
    tw = np.flatnonzero(typ == t_tw)
    srv = np.flatnonzero(typ == t_srv)
    if len(srv) and len(tw):
        src_of = rng.choice(srv, len(tw))
        raddr[tw], rport[tw], lport[tw], fam[tw] = raddr[src_of], rport[src_of], lport[src_of], fam[src_of]
        isn0[tw] = (isn0[src_of] + 10_000_000) & 0xFFFFFFFF
    else:
        src_of = np.zeros(0, np.int64)

    P = int(L.sum())
    flow = np.repeat(np.arange(nflows), L)
    first = np.concatenate(([0], np.cumsum(L)[:-1]))
    j = np.arange(P) - np.repeat(first, L)
    ft = typ[flow]
    Lp = L[flow]
    in_pre = j < pl[ft]
    in_suf = j >= Lp - sl[ft]
    d = rng.integers(0, 2, P)
    flags = np.where(rng.random(P) < 0.7, PSH | A, A)
    jp = np.minimum(j, pre.shape[1] - 1)
    js = np.clip(j - (Lp - sl[ft]), 0, suf.shape[1] - 1)
    d = np.where(in_pre, pre[ft, jp, 0], np.where(in_suf, suf[ft, js, 0], d))
    flags = np.where(in_pre, pre[ft, jp, 1], np.where(in_suf, suf[ft, js, 1], flags))
    pk = kind[flow]
    udp = pk == K_UDP
    d = np.where(udp & ~in_pre, j % 2, d)
    flags = np.where(udp, 0, flags)
    plen = np.where(flags & PSH, rng.integers(1, 1460, P), 0)
    plen = np.where(udp, rng.integers(20, 512, P), plen)
    plen = np.where(pk == K_FRAG1, 0, plen)
    # UDP to a closed port: the answer is the kernel's ICMP port unreachable.
    pk = np.where((ft == names.index("udp-closed")) & (d == 1), K_ICMP, pk)
    pk = np.where((pk == K_FRAG1) & (j == 1), K_FRAG2, pk)
    # Sequence numbers: each direction's bytes (and SYN/FIN) so far in its flow.
    seqs = []
    for side in (0, 1):
        contrib = np.where(d == side, plen + ((flags & S) > 0) + ((flags & F) > 0), 0)
        cs = np.cumsum(contrib) - contrib
        seqs.append(cs - cs[first][flow])
    isn = (isn0[flow], isn1[flow])
    seq = np.where(d == 0, isn[0] + seqs[0], isn[1] + seqs[1]) & 0xFFFFFFFF
    ack = np.where(d == 0, isn[1] + seqs[1], isn[0] + seqs[0]) & 0xFFFFFFFF
    ack = np.where(flags & A, ack, 0)
    # Time: exponential gaps (0.2 ms mean) within a flow.
    gap = rng.exponential(0.0002, P)
    gap[first] = 0
    t = np.cumsum(gap)
    t = t - t[first][flow]
    if len(tw):
        end_src = t[first[src_of] + L[src_of] - 1]
        start[tw] = start[src_of] + end_src + 0.5 + rng.random(len(tw))
    ts = start[flow] + t
    # Cut at ``packets``: the flows still going at that moment end with the capture.
    order = np.argsort(ts, kind="stable")[:packets]
    # Endpoints: the flow's initiator is the remote host except for outbound flows.
    local_first = outbound[flow]
    f6 = fam[flow] == 6
    r_hi = np.where(f6, 0xFD01000000000000 - (1 << 64), 0)
    r_lo = np.where(f6, raddr[flow], raddr[flow])
    l_hi = np.where(f6, LOCAL6_HI - (1 << 64), 0)
    l_lo = np.where(f6, LOCAL6_LO, LOCAL4)
    from_local = (d == 1) ^ local_first
    cols = {
        "ts_ns": (T0 * 1_000_000_000 + (ts * 1e9).astype(np.int64))[order],
        "kind": pk[order], "fam": fam[flow][order],
        "s_hi": np.where(from_local, l_hi, r_hi)[order], "s_lo": np.where(from_local, l_lo, r_lo)[order],
        "d_hi": np.where(from_local, r_hi, l_hi)[order], "d_lo": np.where(from_local, r_lo, l_lo)[order],
        "sport": np.where(from_local, lport[flow], rport[flow])[order],
        "dport": np.where(from_local, rport[flow], lport[flow])[order],
        "flags": flags[order], "seq": seq[order], "ack": ack[order], "plen": plen[order],
        "tsval": ((ts * 1000).astype(np.int64) & 0xFFFFFFFF)[order],
    }
    # microsecond capture: timestamps are whole microseconds
    cols["ts_ns"] -= cols["ts_ns"] % 1000
    return cols


def _writer():
    from numba import njit

    @njit(cache=True)
    def put16(b, o, v):
        b[o] = (v >> 8) & 0xFF
        b[o + 1] = v & 0xFF

    @njit(cache=True)
    def put32(b, o, v):
        b[o] = (v >> 24) & 0xFF
        b[o + 1] = (v >> 16) & 0xFF
        b[o + 2] = (v >> 8) & 0xFF
        b[o + 3] = v & 0xFF

    @njit(cache=True)
    def put64(b, o, v):
        for i in range(8):
            b[o + i] = (v >> (56 - 8 * i)) & 0xFF

    @njit(cache=True)
    def ip(b, o, fam, proto, s_hi, s_lo, d_hi, d_lo, paylen, frag):
        if fam == 4:
            b[o] = 0x45
            put16(b, o + 2, 20 + paylen)
            put16(b, o + 4, 0x1234)
            put16(b, o + 6, frag)
            b[o + 8] = 64
            b[o + 9] = proto
            put32(b, o + 12, s_lo)
            put32(b, o + 16, d_lo)
            return o + 20
        b[o] = 0x60
        put16(b, o + 4, paylen)
        b[o + 6] = proto
        b[o + 7] = 64
        put64(b, o + 8, s_hi)
        put64(b, o + 16, s_lo)
        put64(b, o + 24, d_hi)
        put64(b, o + 32, d_lo)
        return o + 40

    @njit(cache=True)
    def write(out, ts_ns, kind, fam, s_hi, s_lo, d_hi, d_lo, sport, dport, flags, seq, ack, plen, tsval):
        o = 0
        for i in range(len(kind)):
            rec = o
            o += 16
            h = o
            # Ethernet: the host's MAC is 02:00:00:00:00:01, the router's ...:02
            for q in range(12):
                out[h + q] = 0
            out[h] = 2
            out[h + 6] = 2
            local_src = (fam[i] == 4 and s_lo[i] == 0x0A000001) or (fam[i] == 6 and s_lo[i] == 1 and s_hi[i] != 0)
            out[h + 5] = 2 if local_src else 1
            out[h + 11] = 1 if local_src else 2
            k = kind[i]
            orig_extra = 0
            if k == 3:      # ARP request, broadcast
                for q in range(6):
                    out[h + q] = 0xFF
                put16(out, h + 12, 0x0806)
                a = h + 14
                for q in range(28):
                    out[a + q] = 0
                put16(out, a, 1)
                put16(out, a + 2, 0x0800)
                out[a + 4] = 6
                out[a + 5] = 4
                put16(out, a + 6, 1)
                put32(out, a + 24, 0x0A000001)
                o = a + 28
            else:
                put16(out, h + 12, 0x0800 if fam[i] == 4 else 0x86DD)
                o = h + 14
                if k == 0 or k == 4:
                    l4 = ip(out, o, fam[i], 6, s_hi[i], s_lo[i], d_hi[i], d_lo[i], 32 + plen[i], 0)
                    put16(out, l4, sport[i])
                    put16(out, l4 + 2, dport[i])
                    put32(out, l4 + 4, seq[i])
                    put32(out, l4 + 8, ack[i])
                    out[l4 + 12] = 0x30 if k == 4 else 0x80
                    out[l4 + 13] = flags[i]
                    put16(out, l4 + 14, 65535)
                    out[l4 + 16] = 0
                    out[l4 + 17] = 0
                    out[l4 + 18] = 0
                    out[l4 + 19] = 0
                    out[l4 + 20] = 1
                    out[l4 + 21] = 1
                    out[l4 + 22] = 8
                    out[l4 + 23] = 10
                    put32(out, l4 + 24, tsval[i])
                    put32(out, l4 + 28, 0)
                    o = l4 + 32
                    orig_extra = plen[i]
                elif k == 1:
                    l4 = ip(out, o, fam[i], 17, s_hi[i], s_lo[i], d_hi[i], d_lo[i], 8 + plen[i], 0)
                    put16(out, l4, sport[i])
                    put16(out, l4 + 2, dport[i])
                    put16(out, l4 + 4, 8 + plen[i])
                    put16(out, l4 + 6, 0)
                    o = l4 + 8
                    orig_extra = plen[i]
                elif k == 2:    # ICMP port unreachable quoting the datagram (to the sender)
                    l4 = ip(out, o, 4, 1, 0, s_lo[i], 0, d_lo[i], 8 + 28, 0)
                    out[l4] = 3
                    out[l4 + 1] = 3
                    for q in range(2, 8):
                        out[l4 + q] = 0
                    qd = ip(out, l4 + 8, 4, 17, 0, d_lo[i], 0, s_lo[i], 8 + plen[i], 0)
                    put16(out, qd, dport[i])
                    put16(out, qd + 2, sport[i])
                    put16(out, qd + 4, 8 + plen[i])
                    put16(out, qd + 6, 0)
                    o = qd + 8
                else:           # IPv4 fragments of a UDP datagram to :53: 8 bytes each
                    first = k == 5
                    l4 = ip(out, o, 4, 17, 0, s_lo[i], 0, d_lo[i], 8, 0x2000 if first else 1)
                    if first:
                        put16(out, l4, sport[i])
                        put16(out, l4 + 2, 53)
                        put16(out, l4 + 4, 16)
                        put16(out, l4 + 6, 0)
                    else:
                        for q in range(8):
                            out[l4 + q] = 0x41
                    o = l4 + 8
            caplen = o - h
            sec = ts_ns[i] // 1000000000
            usec = (ts_ns[i] % 1000000000) // 1000
            for q, v in enumerate((sec, usec, caplen, caplen + orig_extra)):
                out[rec + 4 * q] = v & 0xFF
                out[rec + 4 * q + 1] = (v >> 8) & 0xFF
                out[rec + 4 * q + 2] = (v >> 16) & 0xFF
                out[rec + 4 * q + 3] = (v >> 24) & 0xFF
        return o

    return write


def make(path: str, packets: int = 200_000, seed: int = 0, mean_data: float = 60.0) -> str:
    """Write the capture; returns the scenario text (also ``SCENARIO``)."""
    c = columns(packets, seed, mean_data)
    write = _writer()
    n = len(c["kind"])
    step = 1 << 20
    with open(path, "wb") as f:
        # pcap file header: little-endian, microseconds, v2.4, snaplen 65535, Ethernet
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        out = np.empty(step * 120, np.uint8)
        for a in range(0, n, step):
            sl = slice(a, min(n, a + step))
            m = write(out, *(np.ascontiguousarray(c[k][sl]) for k in
                             ("ts_ns", "kind", "fam", "s_hi", "s_lo", "d_hi", "d_lo", "sport", "dport",
                              "flags", "seq", "ack", "plen", "tsval")))
            f.write(memoryview(out)[:m])
    return SCENARIO
