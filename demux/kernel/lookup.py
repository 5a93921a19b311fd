"""Which socket an incoming segment or datagram belongs to: the listener and UDP lookups.

The established hash (exact 4-tuple) is a dict in ``demux.kernel.table``; this module is
the second stage, over the sockets bound to the destination port, in the kernel's
chain order (``table`` keeps that order: new sockets at the head, AF_INET6 SO_REUSEPORT
sockets at the tail). Each function returns the chosen socket(s) and, when asked, the
steps as lines of text for ``explain``.
"""

from __future__ import annotations

import zlib

from demux.kernel.sock import ANY4, ANY6, Sock, endpoint, is_v4mapped


class ReuseportGroup:
    """A SO_REUSEPORT group (net/core/sock_reuseport.c ``struct sock_reuseport``)."""

    __slots__ = ("socks", "has_conns", "serial")
    _next = 0

    def __init__(self, first: Sock):
        ReuseportGroup._next += 1
        self.serial = ReuseportGroup._next
        self.socks: list[Sock] = [first]
        self.has_conns = False

    def add(self, sk: Sock) -> None:
        self.socks.append(sk)

    def detach(self, sk: Sock) -> None:
        # reuseport_detach_sock: the last member takes the leaving one's slot.
        i = self.socks.index(sk)
        self.socks[i] = self.socks[-1]
        self.socks.pop()

    def __repr__(self) -> str:
        return f"<ReuseportGroup {self.serial} of {len(self.socks)}>"


def flow_hash_base(seed: int, daddr: bytes, dport: int) -> int:
    """The part of ``flow_hash`` the local end (address and port) fixes: a lookup table
    computes it once per local end, so a flow costs one CRC over the peer's address."""
    return zlib.crc32(daddr, (seed ^ dport) & 0xFFFFFFFF)


def flow_hash(seed: int, saddr: bytes, sport: int, daddr: bytes, dport: int) -> int:
    """A 32-bit hash of the 4-tuple. The kernel uses ``inet_ehashfn`` (jhash) with a secret
    drawn at boot, so its spread differs per boot; demux uses CRC-32 (the local end's,
    then the peer's address, with the ports and ``seed`` mixed in), so a run is
    reproducible, one flow always maps to one member, and it costs one C call a flow."""
    return zlib.crc32(saddr, flow_hash_base(seed, daddr, dport) ^ sport)


def reciprocal_scale(value: int, n: int) -> int:
    """include/linux/math.h ``reciprocal_scale``: maps a 32-bit value onto [0, n)."""
    return (value * n) >> 32


def reuseport_select(group: ReuseportGroup, hashval: int, steps: list | None) -> Sock | None:
    """net/core/sock_reuseport.c ``reuseport_select_sock_by_hash``: start at
    ``reciprocal_scale(hash, n)`` and skip connected (TCP_ESTABLISHED) UDP members."""
    n = len(group.socks)
    if n == 0:
        return None
    i = j = reciprocal_scale(hashval, n)
    while True:
        sk = group.socks[i]
        if not (sk.proto == "udp" and sk.raddr is not None):
            if steps is not None:
                steps.append(f"SO_REUSEPORT group of {n}: flow hash {hashval:#010x} picks member "
                             f"{i + 1} of {n}: {sk.owner()}")
            return sk
        i = (i + 1) % n
        if i == j:
            return None


def _dev_ok(sk: Sock, ifname: str | None) -> bool:
    # inet_sk_bound_dev_eq: an unbound socket takes any device.
    return sk.device is None or sk.device == ifname


def _tcp_score(sk: Sock, family: int, daddr: bytes, ifname: str | None) -> int:
    """net/ipv4/inet_hashtables.c / net/ipv6/inet6_hashtables.c ``compute_score``."""
    if family == 4:
        if sk.v6only or sk.rcv4 != daddr:
            return -1
    elif sk.family != 6 or sk.addr != daddr:
        return -1
    if not _dev_ok(sk, ifname):
        return -1
    score = 2 if sk.device else 1
    if family == 4 and sk.family == 4:
        score += 1      # an AF_INET socket beats a dual-stack AF_INET6 one
    return score


def _in_bucket(sk: Sock, family: int, addr: bytes) -> bool:
    """Is the socket in the lhash2/hslot2 bucket of ``addr``? IPv4 wildcard and ``::``
    share a bucket, as do an IPv4 address and its v4-mapped form (``ipv6_portaddr_hash``)."""
    if family == 4:
        return sk.rcv4 == addr
    return sk.family == 6 and sk.addr == addr


def tcp_listener(chain: list[Sock], family: int, saddr: bytes, sport: int, daddr: bytes, dport: int,
                 ifname: str | None, seed: int, steps: list | None,
                 pick: bool = True) -> tuple[Sock | None, bool]:
    """``__inet_lookup_listener``: the exact-address bucket, then the wildcard bucket
    (``inet_lhash2_lookup`` on each). Returns (socket, matched in the exact bucket).
    With ``pick`` False a SO_REUSEPORT group is answered by the member that ended the
    search, before the flow hash picks one: that answer depends on the local end only,
    so the table caches it."""
    wild = ANY4 if family == 4 else ANY6
    for exact, addr in ((True, daddr), (False, wild)):
        hiscore, result = 0, None
        bucket = [sk for sk in chain if _in_bucket(sk, family, addr)]
        if steps is not None:
            steps.append(f"listeners on {endpoint(addr, dport)}{' (exact address)' if exact else ' (wildcard)'}: "
                         + (f"{len(bucket)}, in chain order; the first best score wins" if bucket else "none"))
        for sk in bucket:
            score = _tcp_score(sk, family, addr, ifname)
            if steps is not None:
                steps.append(f"  {sk.owner()} {sk.describe()}: score {score}"
                             + (f" (bound to {sk.device})" if sk.device and score > 0 else "")
                             + (" (IPV6_V6ONLY refuses IPv4)" if score < 0 and family == 4 and sk.v6only else ""))
            if score > hiscore:
                # inet_lookup_reuseport: a group member ends the search at once.
                if sk.group is not None:
                    if not pick:
                        return sk, exact
                    picked = reuseport_select(sk.group, flow_hash(seed, saddr, sport, daddr, dport), steps)
                    if picked is not None:
                        return picked, exact
                result, hiscore = sk, score
        if result is not None:
            return result, exact
    return None, False


def _udp_score(sk: Sock, family: int, saddr: bytes, sport: int, daddr: bytes, ifname: str | None) -> int:
    """net/ipv4/udp.c and net/ipv6/udp.c ``compute_score``."""
    if family == 4:
        if sk.v6only or sk.rcv4 != daddr:
            return -1
        score = 2 if sk.family == 4 else 1
        if sk.raddr is not None:
            raddr = sk.raddr[12:] if len(sk.raddr) == 16 else sk.raddr
            if len(sk.raddr) == 16 and not is_v4mapped(sk.raddr):
                return -1
            if raddr != saddr:
                return -1
            score += 4
        if sk.rport:
            if sk.rport != sport:
                return -1
            score += 4
        if not _dev_ok(sk, ifname):
            return -1
        if sk.device:
            score += 4
        return score
    if sk.family != 6 or sk.addr != daddr:
        return -1
    score = 0
    if sk.rport:
        if sk.rport != sport:
            return -1
        score += 1
    if sk.raddr is not None and sk.raddr != ANY6:
        if sk.raddr != saddr:
            return -1
        score += 1
    if not _dev_ok(sk, ifname):
        return -1
    if sk.device:
        score += 1
    return score


def udp_unicast(chain: list[Sock], family: int, saddr: bytes, sport: int, daddr: bytes, dport: int,
                ifname: str | None, seed: int, steps: list | None,
                pick: bool = True) -> tuple[Sock | None, bool]:
    """``__udp4_lib_lookup`` / ``__udp6_lib_lookup`` with ``udp4_lib_lookup2``. ``pick``
    as for ``tcp_listener``; the answer without it is the sender's business only where
    no socket on the port is connected."""
    wild = ANY4 if family == 4 else ANY6
    for exact, addr in ((True, daddr), (False, wild)):
        # udp4_lib_lookup2 starts at 0 (IPv4 scores start at 1), udp6_lib_lookup2 at -1.
        badness, result = (0 if family == 4 else -1), None
        bucket = [sk for sk in chain if _in_bucket(sk, family, addr)]
        if steps is not None:
            steps.append(f"UDP sockets on {endpoint(addr, dport)}"
                         f"{' (exact address)' if exact else ' (wildcard)'}: {len(bucket) or 'none'}")
        for sk in bucket:
            score = _udp_score(sk, family, saddr, sport, addr, ifname)
            if steps is not None:
                steps.append(f"  {sk.owner()} {sk.describe()}: score {score}"
                             + (" (connected to this peer)" if score > 0 and sk.raddr is not None else ""))
            if score > badness:
                badness = score
                if sk.raddr is not None:
                    result = sk
                    continue
                if sk.group is None:
                    result = sk
                    continue
                if not pick:
                    return sk, exact
                picked = reuseport_select(sk.group, flow_hash(seed, saddr, sport, daddr, dport), steps)
                if picked is None:
                    result = sk
                    continue
                if not sk.group.has_conns:
                    return picked, exact
                # A group with connected members falls back to scoring (reuseport_has_conns).
                result = picked
                badness = _udp_score(picked, family, saddr, sport, addr, ifname)
        if result is not None:
            return result, exact
    return None, False


def udp_multicast(chain: list[Sock], family: int, saddr: bytes, sport: int, daddr: bytes,
                  ifname: str | None, steps: list | None) -> list[Sock]:
    """``__udp4_lib_mcast_deliver``: a copy to every socket ``__udp_is_mcast_sock``
    accepts (wildcard or the group/broadcast address, matching peer if connected).
    IP_MULTICAST_ALL is on by default, so group membership is not required per socket."""
    out = []
    for sk in chain:
        if family == 4:
            if sk.v6only or sk.rcv4 not in (ANY4, daddr):
                continue
            if sk.raddr is not None:
                raddr = sk.raddr[12:] if len(sk.raddr) == 16 else sk.raddr
                if raddr != saddr:
                    continue
        else:
            if sk.family != 6 or sk.addr not in (ANY6, daddr):
                continue
            if sk.raddr is not None and sk.raddr != saddr:
                continue
        if sk.rport and sk.rport != sport:
            continue
        if not _dev_ok(sk, ifname):
            continue
        out.append(sk)
    if steps is not None:
        steps.append(f"broadcast/multicast to {endpoint(daddr, 0)[:-2]}: a copy to each of "
                     f"{len(out)} matching socket(s)")
        steps.extend(f"  {sk.owner()} {sk.describe()}" for sk in out)
    return out
