"""The emulated socket table in iproute2 ``ss`` columns and spelling (SPEC §5).

``ss`` prints ``Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process``;
Netid only when more than one protocol is shown. A listener's Recv-Q is its accept
queue and Send-Q its backlog; ``users:(("name",pid=N,fd=M))`` with ``-p``. Which states
are shown follows iproute2's state filter (``shown``).
"""

from __future__ import annotations

from demux.kernel import Conn
from demux.kernel.sock import ANY6, unpack

# iproute2 misc/ss.c: SS_CONN, the default state mask of the TCP table, is SS_ALL without
# LISTEN, CLOSE (printed UNCONN), TIME-WAIT and SYN-RECV; the UDP table's default is
# ESTABLISHED alone, the same thing for UDP's two states.
_NOT_CONN = frozenset({"LISTEN", "UNCONN", "TIME-WAIT", "SYN-RECV"})


def shown(proto: str, state: str, listening: bool, all_: bool) -> bool:
    """Whether iproute2's ``ss`` prints a socket of ``proto`` in ``state``.

    misc/ss.c keeps one state mask: ``-a`` sets SS_ALL, ``-l`` sets
    ``(1 << SS_LISTEN) | (1 << SS_CLOSE)``, neither leaves each table's default
    (SS_CONN). ss takes the last of ``-a``/``-l`` on its command line, and so does
    demux's (one ``states`` option both set): at most one of the two is true here.

    A TCP socket that is bound but neither listening nor connected is TCP_CLOSE, yet
    the kernel dumps it only for the pseudo-state TCP_BOUND_INACTIVE
    (inet_diag_dump_icsk's bhash2 walk), which ``-l`` does not ask for and ``-a`` does
    from iproute2 6.10 on (SS_ALL grew SS_BOUND_INACTIVE; older ss never shows one).
    """
    if all_:
        return True
    if listening:
        return state == "LISTEN" or state == "UNCONN" and proto == "udp"
    return state not in _NOT_CONN


def _addr(addr: bytes, port: int | str, device: str | None, numeric: bool, proto: str,
          dual: bool = False) -> str:
    if addr == ANY6:
        # iproute2 prints a dual-stack wildcard as "*", a v6only one as "[::]".
        host = "*" if dual else "[::]"
    elif len(addr) == 16:
        host = f"[{unpack(addr)}]"
    else:
        host = unpack(addr)
    if device:
        host += f"%{device}"
    if not numeric and isinstance(port, int) and port:
        from demux.services import service
        port = service(port, proto) or port
    return f"{host}:{port}"


def rows(kernel, tcp=True, udp=True, listening=False, all_=False, numeric=True, processes=False,
         extended=False):
    """Rows of ss's columns, as lists of strings, in ss's order (UDP before TCP: udp_show runs before tcp_show).

    Recv-Q of a connection is tcp_diag_get_info's ``rcv_nxt - copied_seq``. Only one
    still in an accept queue shows bytes: no process has read it, so ``copied_seq`` is
    still where the peer's data began (the bytes received since its SYN, plus one for
    a FIN, which moves ``rcv_nxt`` too); demux does not model reads by a process."""
    out = []
    for proto, state, laddr, lport, peer, proc, fd, obj in kernel.rows():
        if proto == "tcp" and not tcp or proto == "udp" and not udp:
            continue
        if not shown(proto, state, listening, all_):
            continue
        device = getattr(obj, "device", None) if hasattr(obj, "device") else None
        if hasattr(obj, "listener") and obj.listener is not None:
            device = obj.listener.device
        rq, sq = 0, 0
        if state == "LISTEN":
            rq, sq = obj.queued, obj.backlog
        elif isinstance(obj, Conn) and obj.queued and obj.rcv_start is not None:
            rq = (obj.rcv_nxt - obj.rcv_start) & 0xFFFFFFFF
        listener = getattr(obj, "listener", None)
        if listener is not None and listener.family == 6 and len(laddr) == 4:
            # An IPv4 connection accepted by an AF_INET6 socket is v4-mapped in ss.
            laddr = b"\x00" * 10 + b"\xff\xff" + laddr
            host, _, port = peer.rpartition(":")
            peer = f"[::ffff:{host}]:{port}"
        dual = laddr == ANY6 and not getattr(obj, "v6only", True)
        local = _addr(laddr, lport, device, numeric, proto, dual)
        if peer is None:
            wild = "*" if dual else "[::]" if len(laddr) == 16 else "0.0.0.0"
            peer = f"{wild}:*"
        elif not numeric:
            host, _, port = peer.rpartition(":")
            from demux.services import service
            peer = f"{host}:{service(int(port), proto) or port}"
        row = [proto, state, str(rq), str(sq), local, peer]
        if state == "SYN-RECV":
            # inet_req_diag_fill reports a request socket with inode 0 and uid 0: ss -p
            # finds no process holding it and -e prints no uid.
            proc = None
        spec = getattr(obj, "spec", None)
        # The table it came from showed no owner (a stand-in process holds it): no users.
        owner = spec is None or spec.owner_shown
        extra = []
        if processes and owner and proc is not None and fd is not None:
            extra.append(f'users:(("{proc.name}",pid={proc.pid},fd={fd}))')
        if extended and proc is not None and proc.uid:
            extra.append(f"uid:{proc.uid}")
        row.append(" ".join(extra))
        out.append(row)
    out.sort(key=lambda r: 0 if r[0] == "udp" else 1)
    return out


def render(kernel, tcp=False, udp=False, listening=False, all_=False, numeric=False,
           processes=False, extended=False) -> str:
    if not tcp and not udp:
        tcp = udp = True
    table = rows(kernel, tcp, udp, listening, all_, numeric, processes, extended)
    # misc/ss.c disables the Netid column when one table is shown, and the State column
    # when the state mask has a single bit: only for -u alone, whose default is
    # ESTABLISHED (-l has two bits, -a all, TCP's SS_CONN many).
    show_netid = tcp and udp
    show_state = tcp or listening or all_
    head = ((["Netid"] if show_netid else []) + (["State"] if show_state else [])
            + ["Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", "Process"])
    body = [[c for i, c in enumerate(r) if (i != 0 or show_netid) and (i != 1 or show_state)]
            for r in table]
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i])
              for i in range(len(head))]
    lines = []
    for r in [head] + body:
        cells = []
        for i, cell in enumerate(r):
            if i == len(r) - 1:
                cells.append(cell)
            elif head[i] in ("Recv-Q", "Send-Q"):
                cells.append(cell.ljust(widths[i]))
            elif head[i] == "Local Address:Port":
                cells.append(cell.rjust(widths[i]))
            else:
                cells.append(cell.ljust(widths[i]))
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
