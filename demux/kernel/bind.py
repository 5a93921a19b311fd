"""bind() conflicts and ephemeral port choice, as Linux decides them.

Pure functions over lists of ``Sock``: the socket table (``demux.kernel.table``) keeps
the lists and calls these. Each rule names the kernel function it comes from.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from demux.kernel.sock import Sock, devices_compatible, rcv_saddr_equal


def tcp_bind_conflict(sk: Sock, owners: Iterable[Sock], relax: bool, reuseport_ok: bool) -> Sock | None:
    """The socket ``sk`` conflicts with, or None.

    net/ipv4/inet_connection_sock.c ``inet_bind_conflict`` over the port's bind bucket
    (``inet_csk_bind_conflict``): ``relax``/``reuseport_ok`` are True for an explicit
    port (``inet_csk_get_port``), False while searching a free one
    (``inet_csk_find_open_port``). TIME-WAIT owners are passed with state TIME-WAIT.
    """
    for sk2 in owners:
        if sk2 is sk or not devices_compatible(sk.device, sk2.device):
            continue
        if sk.reuseaddr and sk2.reuseaddr and sk2.state != "LISTEN":
            conflict = (not relax) or (not reuseport_ok and sk.reuseport and sk2.reuseport
                                       and (sk2.state == "TIME-WAIT" or sk.uid == sk2.uid))
        else:
            conflict = (not reuseport_ok or not sk.reuseport or not sk2.reuseport
                        or (sk2.state != "TIME-WAIT" and sk.uid != sk2.uid))
        if conflict and rcv_saddr_equal(sk, sk2, True):
            return sk2
    return None


def udp_port_inuse(sk: Sock, owners: Iterable[Sock], searching: bool = False) -> Sock | None:
    """The socket that holds the UDP port against ``sk``, or None.

    net/ipv4/udp.c ``udp_lib_lport_inuse``: both SO_REUSEADDR never conflict; otherwise
    overlapping addresses conflict unless both set SO_REUSEPORT with the same uid. For
    an explicit port the first overlapping socket decides (the kernel returns at once);
    while ``searching`` a free port (bitmap mode) SO_REUSEPORT does not help.
    """
    for sk2 in owners:
        if sk2 is sk:
            continue
        if sk2.reuseaddr and sk.reuseaddr:
            continue
        if not devices_compatible(sk.device, sk2.device) or not rcv_saddr_equal(sk, sk2, True):
            continue
        if not searching and sk2.reuseport and sk.reuseport and sk.uid == sk2.uid:
            return None
        return sk2
    return None


def conflict_reason(sk: Sock, other: Sock) -> str:
    """Why ``sk`` cannot share its port with ``other``: the rule that did not allow it."""
    who = f"{other.owner()} ({other.describe()})"
    if sk.proto == "udp":
        if sk.reuseport and other.reuseport and sk.uid != other.uid:
            why = f"SO_REUSEPORT needs the same uid ({sk.uid} vs {other.uid})"
        elif sk.reuseaddr != other.reuseaddr or sk.reuseport != other.reuseport:
            why = "sharing needs SO_REUSEADDR on both, or SO_REUSEPORT on both"
        else:
            why = "neither SO_REUSEADDR nor SO_REUSEPORT is set on both"
    else:
        if sk.reuseport and other.reuseport and sk.uid != other.uid:
            why = f"SO_REUSEPORT needs the same uid ({sk.uid} vs {other.uid})"
        elif sk.reuseaddr and other.reuseaddr and other.state == "LISTEN":
            why = "SO_REUSEADDR does not share a port with a listening socket"
        elif sk.reuseaddr and other.reuseaddr and sk.state == "LISTEN":
            why = "only one of the SO_REUSEADDR sockets may listen"
        else:
            why = "sharing needs SO_REUSEADDR on both (neither listening) or SO_REUSEPORT on both"
    return f"conflicts with {who}: addresses overlap on {sk.proto} port {sk.port}; {why}"


def _odd_multiple_walk(low: int, high: int, offset: int, step_parity_first: int):
    """Ports of [low, high) starting at low+offset, one parity first, then the other.

    The walk of ``inet_csk_find_open_port`` and ``__inet_hash_connect``: steps of 2 over
    an even-sized range, wrapping, then the other parity.
    """
    remaining = high - low
    if remaining > 1:
        remaining &= ~1
    if remaining <= 0:
        return
    offset %= max(remaining, 1)
    offset = (offset & ~1) | step_parity_first
    for parity_pass in range(2 if remaining > 1 else 1):
        port = low + offset
        for _ in range(0, remaining, 2 if remaining > 1 else 1):
            if port >= high:
                port -= remaining
            yield port
            port += 2 if remaining > 1 else 1
        offset = offset - 1 if step_parity_first else offset + 1


def bind_port_candidates(low: int, high: int, reserved: set[int], rng: random.Random,
                         reuseaddr: bool) -> Iterable[int]:
    """Ports bind(0) tries, in order: net/ipv4/inet_connection_sock.c
    ``inet_csk_find_open_port``. An odd offset first (connect() takes even ones), and a
    socket with SO_REUSEADDR searches the lower half of the range before the upper."""
    high += 1
    halves = [(low, high)]
    if reuseaddr and high - low >= 4:
        half = low + (((high - low) >> 2) << 1)
        halves = [(low, half), (half, high)]
    for lo, hi in halves:
        remaining = (hi - lo) & ~1 if hi - lo > 1 else hi - lo
        offset = rng.randrange(max(remaining, 1)) | 1
        for port in _odd_multiple_walk(lo, hi, offset, 1):
            if port not in reserved:
                yield port


def udp_port_candidates(low: int, high: int, reserved: set[int], rng: random.Random) -> Iterable[int]:
    """Ports a UDP bind(0) tries: net/ipv4/udp.c ``udp_lib_get_port`` starts at a random
    port of the range and covers all of it, skipping reserved ports."""
    size = high - low + 1
    start = rng.randrange(size)
    for i in range(size):
        port = low + (start + i) % size
        if port not in reserved:
            yield port


def connect_port_candidates(low: int, high: int, reserved: set[int], offset: int) -> Iterable[tuple[int, int]]:
    """(attempt index, port) that connect() tries: net/ipv4/inet_hashtables.c
    ``__inet_hash_connect``: an even offset from a hash of the destination plus a
    per-destination perturbation, stepping by 2, then odd ports."""
    for i, port in enumerate(_odd_multiple_walk(low, high + 1, offset, 0)):
        if port not in reserved:
            yield i, port


def first_free(candidates: Iterable[int], taken: Callable[[int], bool]) -> int | None:
    for port in candidates:
        if not taken(port):
            return port
    return None
