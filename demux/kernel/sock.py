"""The emulated ``struct sock``: one socket of one process, and its address helpers.

Addresses are packed bytes (4 for IPv4, 16 for IPv6), as the packet parser gives them.
An IPv6 socket also carries the IPv4 address it answers for (``rcv4``), the way Linux
keeps ``sk_rcv_saddr`` beside ``sk_v6_rcv_saddr`` (net/ipv6/af_inet6.c ``__inet6_bind``):
``::`` answers for 0.0.0.0 unless v6only, ``::ffff:a.b.c.d`` for a.b.c.d, and any other
IPv6 address for no IPv4 address at all (binding it sets ipv6only).
"""

from __future__ import annotations

import socket as _socket

ANY4 = b"\x00" * 4
ANY6 = b"\x00" * 16
V4MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def pack(addr: str) -> bytes:
    """Packed bytes of an address in text."""
    return _socket.inet_pton(_socket.AF_INET6 if ":" in addr else _socket.AF_INET, addr)


def unpack(addr: bytes) -> str:
    """Text of packed address bytes, compressed as ``ss`` and Wireshark print it."""
    if len(addr) == 4:
        return _socket.inet_ntop(_socket.AF_INET, addr)
    return _socket.inet_ntop(_socket.AF_INET6, addr)


_ENDPOINTS: dict[tuple[bytes, int], str] = {}


def endpoint(addr: bytes, port: int) -> str:
    """``10.0.0.1:80`` or ``[2001:db8::1]:443``; cached, since flows repeat them."""
    key = (addr, port)
    text = _ENDPOINTS.get(key)
    if text is None:
        if len(_ENDPOINTS) > 1 << 18:
            _ENDPOINTS.clear()
        text = _ENDPOINTS[key] = (f"[{unpack(addr)}]:{port}" if len(addr) == 16
                                  else f"{unpack(addr)}:{port}")
    return text


def is_v4mapped(addr: bytes) -> bool:
    return len(addr) == 16 and addr[:12] == V4MAPPED_PREFIX


class Sock:
    """One socket. ``state`` is ``UNCONN``/``LISTEN``/``ESTAB`` (or ``CLOSE`` once gone).

    ``index`` is (process index, socket index) of the scenario socket it came from;
    ``group`` the SO_REUSEPORT group it belongs to (``sock_reuseport``), else None.
    """

    __slots__ = ("serial", "proc", "index", "fd", "proto", "family", "addr", "port",
                 "rcv4", "v6only", "reuseaddr", "reuseport", "uid", "device",
                 "state", "raddr", "rport", "backlog", "accept", "queued", "group",
                 "by_connect", "spec", "claimed", "describe_cache", "synq")

    def __init__(self, serial: int, proc, index: tuple[int, int] | None, proto: str, family: int):
        self.serial = serial
        self.proc = proc              # ProcState of the owning process (None: unknown local)
        self.index = index
        self.fd: int | None = None
        self.proto = proto            # "tcp" | "udp"
        self.family = family          # 4 | 6
        self.addr = ANY4 if family == 4 else ANY6
        self.port = 0
        self.rcv4: bytes | None = ANY4
        self.v6only = False
        self.reuseaddr = False
        self.reuseport = False
        self.uid = 0
        self.device: str | None = None
        self.state = "UNCONN"
        self.raddr: bytes | None = None
        self.rport = 0
        self.backlog = 0
        self.accept = True
        self.queued = 0               # connections waiting in the accept queue
        self.synq: dict = {}          # half-open request sockets: 4-tuple -> expiry time
        self.group = None
        self.by_connect = False       # port chosen by connect() (tb->fastreuse = -1)
        self.spec = None
        self.claimed = False          # a client socket matched to a flow of the capture
        self.describe_cache = None

    @property
    def wildcard(self) -> bool:
        return self.addr == ANY4 or self.addr == ANY6

    def local(self) -> str:
        return endpoint(self.addr, self.port)

    def describe(self) -> str:
        """``tcp LISTEN 0.0.0.0:80`` / ``udp ESTAB 10.0.0.1:5000 10.0.0.53:53``."""
        if self.describe_cache is None:
            text = f"{self.proto} {self.state} {self.local()}"
            if self.raddr is not None:
                text += f" {endpoint(self.raddr, self.rport)}"
            self.describe_cache = text
        return self.describe_cache

    def owner(self) -> str:
        if self.proc is None:
            return "an unknown local process"
        return f"{self.proc.name} pid {self.proc.pid} fd {self.fd}"

    def rcv_addr6(self) -> bytes | None:
        """``inet6_rcv_saddr``: the IPv6 bound address, None for an AF_INET socket."""
        return self.addr if self.family == 6 else None

    def __repr__(self) -> str:
        return f"<Sock {self.describe()} {self.owner()}>"


def rcv_saddr_equal(sk: Sock, sk2: Sock, match_wildcard: bool = True) -> bool:
    """Do two sockets' bound addresses overlap? net/ipv4/inet_connection_sock.c
    ``inet_rcv_saddr_equal`` with ``ipv6_rcv_saddr_equal`` / ``ipv4_rcv_saddr_equal``."""
    if sk.family == 6:
        a6 = sk.addr
        b6 = sk2.rcv_addr6()
        a_mapped = is_v4mapped(a6)
        b_mapped = b6 is None or is_v4mapped(b6)
        if a_mapped and b_mapped:
            # Both mapped (or sk2 is AF_INET): compare as IPv4.
            if sk2.v6only:
                return False
            a4, b4 = sk.rcv4, sk2.rcv4
            if a4 == b4:
                return True
            return match_wildcard and (a4 == ANY4 or b4 == ANY4)
        a_any = a6 == ANY6
        b_any = b6 == ANY6
        if a_any and b_any:
            return True
        if b_any and match_wildcard and not (sk2.v6only and a_mapped):
            return True
        if a_any and match_wildcard and not (sk.v6only and b_mapped):
            return True
        return b6 is not None and a6 == b6
    # sk is AF_INET
    if sk2.v6only or sk2.rcv4 is None:
        return False
    if sk.rcv4 == sk2.rcv4:
        return True
    return match_wildcard and (sk.rcv4 == ANY4 or sk2.rcv4 == ANY4)


def devices_compatible(a: str | None, b: str | None) -> bool:
    """Bound devices overlap when either is unbound or both are the same."""
    return a is None or b is None or a == b
